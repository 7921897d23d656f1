import { closeSync, fstatSync, openSync, readFileSync } from 'node:fs';
import { CodedError } from '../../common/coded-error.js';
import { x509FromPem } from '../../common/x509-cache.js';
import { DEFAULT_BASE_TOPIC, DEVICE_ID_PATTERN } from '../../common/protocol/topics.js';
import { array, int, literal, object, oneOf, optional, str, type Infer } from '../../common/protocol/schema.js';

/**
 * The bootstrap config the factory station writes for each device (provisioning/). It holds the
 * one-time enrollment token, so the file must be readable by its owner only.
 */
export type AgentConfigErrorCode = 'AGENT_CONFIG_INVALID' | 'AGENT_CONFIG_PERMISSIONS' | 'AGENT_CONFIG_UNREADABLE';

export class AgentConfigError extends CodedError<AgentConfigErrorCode> {}

const url = str({ max: 256, pattern: /^mqtts:\/\/[A-Za-z0-9.:[\]-]+:\d{1,5}$/ });
const pem = str({ max: 8192, pattern: /^-----BEGIN CERTIFICATE-----[\s\S]+-----END CERTIFICATE-----\s*$/ });

export const bootstrapSchema = object({
  v: literal(1),
  deviceId: str({ max: 64, pattern: DEVICE_ID_PATTERN }),
  tcti: str({ min: 1, max: 256 }),
  /**
   * The EK the station verified and registered (it falls through to RSA when the ECC certificate does
   * not verify); absent in older files: the agent's own order, ECC then RSA.
   */
  ekKind: optional(oneOf(['ecc', 'rsa'] as const)),
  /**
   * 'factory': the TPM has no EK certificate and the station registered its EK under the factory-trusted
   * EK policy (docs/hardware.md); the agent then enrolls with the `ekKind` EK and no certificate.
   */
  ekTrust: optional(literal('factory')),
  baseTopic: optional(str({ max: 128, pattern: /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/ })),
  enrollUrl: url,
  deviceUrl: url,
  /** PEM roots; the brokers' server certificates and the fleet CA chain to them. */
  trustBundle: array(pem, { min: 1, max: 8 }),
  token: str({ min: 16, max: 128, pattern: /^[A-Za-z0-9_-]+$/ }),
  tokenExpiresAt: int({ min: 0, max: 8_640_000_000_000_000 }),
});

export type BootstrapConfig = Infer<typeof bootstrapSchema>;

/** Validates a parsed bootstrap document; `baseTopic` defaults to `fleet/v1`. */
export function parseBootstrap(json: unknown): BootstrapConfig {
  let config: BootstrapConfig;
  try {
    config = bootstrapSchema.parse(json, '');
  } catch (e) {
    throw new AgentConfigError('AGENT_CONFIG_INVALID', `bootstrap config: ${(e as Error).message}`, { cause: e });
  }
  return { ...config, baseTopic: config.baseTopic ?? DEFAULT_BASE_TOPIC };
}

/**
 * Parses every trust bundle certificate. Separate from the schema check because the station's tests
 * write placeholder PEMs; the agent calls it before it connects anywhere.
 */
export function checkTrustBundle(config: BootstrapConfig): void {
  config.trustBundle.forEach((p, i) => {
    try {
      x509FromPem(p);
    } catch (e) {
      throw new AgentConfigError('AGENT_CONFIG_INVALID', `bootstrap config: trustBundle[${i}] is not a certificate`, { cause: e });
    }
  });
}

/** Reads the bootstrap file, refusing one that group or others can access (it holds the token). */
export function loadBootstrap(path: string): BootstrapConfig {
  let text: string;
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    // fstat the descriptor we read from: the mode checked is the mode of the file read.
    const mode = fstatSync(fd).mode & 0o077;
    if (mode !== 0) {
      throw new AgentConfigError(
        'AGENT_CONFIG_PERMISSIONS',
        `${path} is accessible to group/others (mode ${(mode | 0o600).toString(8)}); chmod 600 it`,
      );
    }
    text = readFileSync(fd, 'utf8');
  } catch (e) {
    if (e instanceof AgentConfigError) throw e;
    throw new AgentConfigError('AGENT_CONFIG_UNREADABLE', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new AgentConfigError('AGENT_CONFIG_INVALID', `${path} is not JSON`, { cause: e });
  }
  return parseBootstrap(json);
}
