import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { isOperatorId } from '../../common/protocol/operator.js';
import { int, object, optional, parseMessage, SchemaError, str } from '../../common/protocol/schema.js';
import { DEFAULT_BASE_TOPIC, Topics } from '../../common/protocol/topics.js';
import { OperatorCliError, usage } from './errors.js';

/**
 * Where the broker is and who the operator is. Each setting comes from its flag, else its environment
 * variable, else the config file (`--config FILE` or OPERATOR_CONFIG; relative paths in it are
 * relative to the file). Unknown config keys are refused with the key named.
 */
export interface ConnectionSettings {
  /** mqtts://host:port of the broker's mutual-TLS listener. */
  readonly broker: string;
  readonly certPem: string;
  readonly keyPem: string;
  /** PEM roots that the broker's server certificate chains to. */
  readonly caPem: string;
  readonly operatorId: string;
  readonly baseTopic: string;
  readonly timeoutMs: number;
}

export const SETTINGS = [
  { flag: 'broker', arg: 'URL', env: 'OPERATOR_BROKER', key: 'broker', help: 'mqtts://host:port of the broker (mutual-TLS listener)' },
  { flag: 'cert', arg: 'FILE', env: 'OPERATOR_CERT', key: 'cert', help: 'operator certificate (PEM; CN role:operator:<id>)' },
  { flag: 'key', arg: 'FILE', env: 'OPERATOR_KEY', key: 'key', help: 'its private key (PEM)' },
  { flag: 'ca', arg: 'FILE', env: 'OPERATOR_CA', key: 'ca', help: 'fleet root certificate (PEM)' },
  { flag: 'operator-id', arg: 'ID', env: 'OPERATOR_ID', key: 'operatorId', help: 'default: from the certificate CN' },
  { flag: 'base-topic', arg: 'TOPIC', env: 'OPERATOR_BASE_TOPIC', key: 'baseTopic', help: `default ${DEFAULT_BASE_TOPIC}` },
  { flag: 'timeout', arg: 'SEC', env: 'OPERATOR_TIMEOUT', key: 'timeoutSec', help: 'seconds to wait for the bridge (default 10)' },
] as const;

const configSchema = object({
  broker: optional(str({ max: 256 })),
  cert: optional(str({ max: 1024 })),
  key: optional(str({ max: 1024 })),
  ca: optional(str({ max: 1024 })),
  operatorId: optional(str({ max: 64 })),
  baseTopic: optional(str({ max: 128 })),
  timeoutSec: optional(int({ min: 1, max: 600 })),
});
type ConfigFile = ReturnType<typeof configSchema.parse>;

const BROKER_URL = /^mqtts:\/\/[A-Za-z0-9.:[\]-]+:\d{1,5}$/;
const DEFAULT_TIMEOUT_SEC = 10;

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new OperatorCliError('OPERATOR_FILE_UNREADABLE', `cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

function readConfigFile(path: string): ConfigFile {
  try {
    return parseMessage(readText(path, 'config file'), configSchema, 64 * 1024);
  } catch (e) {
    if (e instanceof SchemaError) throw new OperatorCliError('OPERATOR_CONFIG_INVALID', `${path}: ${e.message}`);
    throw e;
  }
}

/** The operator id a certificate names (`CN=role:operator:<id>`), or undefined. */
export function operatorIdOfCertificate(certPem: string): string | undefined {
  let subject: string;
  try {
    subject = new X509Certificate(certPem).subject;
  } catch {
    throw new OperatorCliError('OPERATOR_CERT_INVALID', 'the --cert file is not a PEM certificate');
  }
  const cn = subject.split('\n').find((l) => l.startsWith('CN='))?.slice(3);
  const m = cn === undefined ? null : /^role:operator:(.+)$/.exec(cn);
  return m && isOperatorId(m[1]!) ? m[1] : undefined;
}

export function resolveSettings(flags: Readonly<Record<string, string | undefined>>, env: NodeJS.ProcessEnv): ConnectionSettings {
  const configPath = flags['config'] ?? env['OPERATOR_CONFIG'];
  const file = configPath ? readConfigFile(configPath) : {};
  const base = configPath ? dirname(resolve(configPath)) : process.cwd();
  const get = (s: (typeof SETTINGS)[number]): string | undefined => {
    const fromFile = (file as Record<string, string | number | undefined>)[s.key];
    return flags[s.flag] ?? env[s.env] ?? (fromFile === undefined ? undefined : String(fromFile));
  };
  const path = (s: (typeof SETTINGS)[number]): string => {
    const v = get(s);
    if (v === undefined) throw usage(`--${s.flag} is required (or ${s.env}, or "${s.key}" in the config file)`);
    // Paths from the config file are relative to it; from flags and env to the working directory.
    return (flags[s.flag] ?? env[s.env]) !== undefined ? v : resolve(base, v);
  };
  const [brokerS, certS, keyS, caS, idS, topicS, timeoutS] = SETTINGS;
  const broker = get(brokerS) ?? '';
  if (!BROKER_URL.test(broker)) throw usage(broker ? `--broker must look like mqtts://host:port, got ${JSON.stringify(broker)}` : '--broker is required (or OPERATOR_BROKER, or "broker" in the config file)');
  const certPem = readText(path(certS), 'certificate');
  const keyPem = readText(path(keyS), 'key');
  const caPem = readText(path(caS), 'CA certificate');
  const fromCert = operatorIdOfCertificate(certPem);
  const given = get(idS);
  if (given !== undefined && !isOperatorId(given)) throw usage(`--operator-id ${JSON.stringify(given)}: letters, digits, '.', '_' and '-' only`);
  if (given !== undefined && fromCert !== undefined && given !== fromCert) {
    throw new OperatorCliError('OPERATOR_CERT_INVALID', `--operator-id ${given} does not match the certificate (role:operator:${fromCert}); the broker lets an operator use only its own topics`);
  }
  const operatorId = given ?? fromCert;
  if (operatorId === undefined) throw new OperatorCliError('OPERATOR_CERT_INVALID', 'the certificate CN is not role:operator:<id>; give --operator-id');
  const timeoutText = get(timeoutS) ?? String(DEFAULT_TIMEOUT_SEC);
  const timeoutSec = /^\d{1,3}$/.test(timeoutText) && Number(timeoutText) >= 1 && Number(timeoutText) <= 600 ? Number(timeoutText) : NaN;
  if (Number.isNaN(timeoutSec)) throw usage(`--timeout must be whole seconds from 1 to 600, got ${JSON.stringify(timeoutText)}`);
  const baseTopic = get(topicS) ?? DEFAULT_BASE_TOPIC;
  try {
    new Topics(baseTopic);
  } catch (e) {
    throw usage(`--base-topic: ${(e as Error).message}`);
  }
  return { broker, certPem, keyPem, caPem, operatorId, baseTopic, timeoutMs: timeoutSec * 1000 };
}
