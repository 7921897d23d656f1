import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { stationIdOfCommonName } from '../../common/protocol/station.js';
import { DEFAULT_EK_VALIDITY, EK_VALIDITY_POLICIES, parseCertificates, type EkValidityPolicy } from '../../native/lib/ek-certificate.js';
import { parseDuration } from './duration.js';
import { StationError } from './errors.js';
import type { FleetEndpoints } from './station.js';

/**
 * Command line → validated options. Every user mistake becomes a STATION_USAGE error with a message
 * naming the flag, before anything touches a TPM, mints a token, or opens the inventory or a
 * connection: URLs, certificate files, the station's own certificate and key, durations, numbers.
 */
export const COMMANDS = ['provision', 'import'] as const;
export type CommandName = (typeof COMMANDS)[number];

const BRIDGE_FLAGS = `--bridge mqtts://HOST:PORT --cert PEM --key PEM --ca PEM [--bridge-timeout 10s]`;

export const HELP: Record<CommandName, string> = {
  provision: `usage: station provision --manifest FILE --out DIR --roots PEM [--roots PEM …] [--intermediates PEM …]
                         --enroll-url mqtts://HOST:PORT --device-url mqtts://HOST:PORT --trust-bundle PEM
                         [--base-topic fleet/v1] [--token-ttl 7d] [--parallel 1]
                         [--ek-validity ignore-expiry|strict] [--factory-trusted-ek]
                         (${BRIDGE_FLAGS} | --export FILE | --inventory DIR)

Provisions every device of the manifest (JSON lines {"deviceId","tcti","metadata"}): verifies its
EK certificate against the TPM manufacturers (--roots, --intermediates), mints a one-time enrollment
token, registers the device, then writes out/devices/<id>.json (mode 0600) with the token. Resumable:
a re-run skips provisioned devices. out/audit.jsonl records every outcome (never a token).
A manifest line may name "ekCertificateFile" (PEM or DER, relative to the manifest): the EK
certificate its vendor serves online, used instead of the TPM's NV and verified the same way.
--factory-trusted-ek (off by default): a TPM holding no EK certificate at all is registered by its EK
public key instead of refused (STATION_EK_MISSING); audited as ekTrust "factory", and the bridge
accepts it only from stations its factoryTrustedEkStations lists (docs/hardware.md).
Where registrations go:
  --bridge      online, through the running bridge over MQTT with this station's role:station:<id>
                certificate (--cert/--key, --ca the fleet root); each device waits for the bridge's
                acknowledgment before its bootstrap file is written. Retryable refusals are retried
                with backoff; --bridge-timeout bounds the wait for each reply.
  --export      appended to a JSON-lines file for an offline line (then: station import).
  --inventory   straight into a bridge inventory directory (only while no bridge runs on it).
Exit codes: 0 all provisioned, 1 a device refused or the bridge unavailable, 2 usage or bad input.`,
  import: `usage: station import --file FILE (${BRIDGE_FLAGS} [--base-topic fleet/v1] | --inventory DIR)

Imports an export file (station provision --export) into the fleet: through the running bridge
(--bridge, in batches, each device acknowledged) or into an inventory directory no bridge holds
(--inventory). Idempotent: a registration the fleet holds already counts as unchanged; a device id
bound to another EK is a conflict; malformed lines are reported by number.
Exit codes: 0 done, 1 conflicts, refusals, bad lines or the bridge unavailable, 2 usage or bad input.`,
};

export const OVERVIEW = `usage: station <command> [options]   (station <command> --help, station --version)

Commands:
  provision   provision the devices of a manifest (register them, write their bootstrap files)
  import      import an offline export file into the fleet

Errors are one line "station: CODE: message". Exit codes: 0 done, 1 failed, 2 usage or bad input.
See provisioning/README.md.`;

/** How the station reaches the running bridge (online registration). */
export interface BridgeSettings {
  readonly url: string;
  readonly caPem: string;
  readonly certPem: string;
  readonly keyPem: string;
  /** From the certificate's CN `role:station:<id>`. */
  readonly stationId: string;
  readonly baseTopic: string;
  /** How long one reply is waited for before the request is sent again. */
  readonly replyTimeoutMs: number;
}

export type RegistrationTarget = { readonly export: string } | { readonly inventory: string } | { readonly bridge: BridgeSettings };

export type StationCommand =
  | { readonly kind: 'help'; readonly command?: CommandName }
  | { readonly kind: 'version' }
  | {
      readonly kind: 'provision';
      readonly manifest: string;
      readonly out: string;
      readonly roots: readonly string[];
      readonly intermediates: readonly string[];
      /** What EK/vendor certificate validity periods count for (native/lib/ek-certificate.ts). */
      readonly ekValidity: EkValidityPolicy;
      readonly fleet: FleetEndpoints;
      readonly tokenTtlSec: number;
      readonly parallel: number;
      readonly sink: RegistrationTarget;
      /** The factory-trusted EK policy (station.ts StationPolicy). */
      readonly factoryTrustedEk: boolean;
    }
  | { readonly kind: 'import'; readonly file: string; readonly target: { readonly inventory: string } | { readonly bridge: BridgeSettings } };

// What the agent accepts (agent/src/config.ts), checked again as a URL below.
const AGENT_URL = /^mqtts:\/\/[A-Za-z0-9.:[\]-]+:\d{1,5}$/;
const TOPIC = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;
// The agent accepts at most this many trust bundle certificates (agent/src/config.ts).
const MAX_TRUST_BUNDLE = 8;
const DEFAULT_REPLY_TIMEOUT = '10s';

const usage = (message: string): never => {
  throw new StationError('STATION_USAGE', message);
};

const isCommand = (c: string): c is CommandName => (COMMANDS as readonly string[]).includes(c);

export function parseCommand(argv: readonly string[]): StationCommand {
  const [command, ...rest] = argv;
  if (command === undefined || command === 'help' || command === '--help' || command === '-h') {
    const about = rest[0];
    if (about !== undefined && command === 'help') return isCommand(about) ? { kind: 'help', command: about } : usage(`unknown command ${JSON.stringify(about)}`);
    return { kind: 'help' };
  }
  if ((command === '--version' || command === '-V') && rest.length === 0) return { kind: 'version' };
  if (!isCommand(command)) return usage(`unknown command ${JSON.stringify(command)}; commands: ${COMMANDS.join(', ')}`);
  if (rest.includes('--help') || rest.includes('-h')) return { kind: 'help', command };
  return command === 'provision' ? parseProvision(rest) : parseImport(rest);
}

type Spec = Record<string, { type: 'string'; multiple?: boolean; default?: string } | { type: 'boolean'; default?: boolean }>;

function parse<O extends Spec>(args: string[], options: O) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values;
  } catch (e) {
    // parseArgs explains the mistake well; only its stack would be noise.
    return usage((e as Error).message.split('\n')[0]!);
  }
}

function required(value: string | undefined, flag: string): string {
  if (value === undefined || value === '') return usage(`--${flag} is required`);
  return value;
}

const bridgeOptions = {
  bridge: { type: 'string' },
  cert: { type: 'string' },
  key: { type: 'string' },
  ca: { type: 'string' },
  'bridge-timeout': { type: 'string', default: DEFAULT_REPLY_TIMEOUT },
} as const satisfies Spec;

function parseImport(args: string[]): StationCommand {
  const v = parse(args, { file: { type: 'string' }, inventory: { type: 'string' }, 'base-topic': { type: 'string', default: 'fleet/v1' }, ...bridgeOptions });
  const file = required(v.file, 'file');
  if ((v.inventory === undefined) === (v.bridge === undefined)) usage('give exactly one of --bridge URL or --inventory DIR');
  const target = v.bridge !== undefined ? { bridge: bridgeSettings(v, baseTopicOf(v['base-topic']!)) } : { inventory: required(v.inventory, 'inventory') };
  return { kind: 'import', file, target };
}

function parseProvision(args: string[]): StationCommand {
  const v = parse(args, {
    manifest: { type: 'string' },
    out: { type: 'string' },
    roots: { type: 'string', multiple: true },
    intermediates: { type: 'string', multiple: true },
    'enroll-url': { type: 'string' },
    'device-url': { type: 'string' },
    'trust-bundle': { type: 'string' },
    'base-topic': { type: 'string', default: 'fleet/v1' },
    'token-ttl': { type: 'string', default: '7d' },
    parallel: { type: 'string', default: '1' },
    'ek-validity': { type: 'string', default: DEFAULT_EK_VALIDITY },
    'factory-trusted-ek': { type: 'boolean', default: false },
    export: { type: 'string' },
    inventory: { type: 'string' },
    ...bridgeOptions,
  });
  const manifest = required(v.manifest, 'manifest');
  const out = required(v.out, 'out');
  if (!v.roots?.length) usage('--roots is required (the TPM manufacturers whose EK certificates are trusted)');
  const enrollUrl = mqttsUrl(required(v['enroll-url'], 'enroll-url'), 'enroll-url');
  const deviceUrl = mqttsUrl(required(v['device-url'], 'device-url'), 'device-url');
  const baseTopic = baseTopicOf(v['base-topic']!);
  const tokenTtlSec = parseDuration(v['token-ttl']!, '--token-ttl');
  const parallel = Number(v.parallel);
  if (!Number.isInteger(parallel) || parallel < 1 || parallel > 64) usage('--parallel: expected an integer from 1 to 64');
  const ekValidity = v['ek-validity'] as EkValidityPolicy;
  if (!EK_VALIDITY_POLICIES.includes(ekValidity)) usage(`--ek-validity: expected ${EK_VALIDITY_POLICIES.join(' or ')}, got ${JSON.stringify(ekValidity)}`);
  const targets = [v.export, v.inventory, v.bridge].filter((t) => t !== undefined).length;
  if (targets !== 1) usage('give exactly one of --bridge URL, --export FILE or --inventory DIR');
  const trustBundle = certificatesIn(required(v['trust-bundle'], 'trust-bundle'), 'trust-bundle');
  if (trustBundle.length > MAX_TRUST_BUNDLE) usage(`--trust-bundle: at most ${MAX_TRUST_BUNDLE} certificates`);
  const roots = v.roots!.flatMap((p) => certificatesIn(p, 'roots'));
  const intermediates = (v.intermediates ?? []).flatMap((p) => certificatesIn(p, 'intermediates'));
  const sink: RegistrationTarget =
    v.bridge !== undefined ? { bridge: bridgeSettings(v, baseTopic) } : v.export !== undefined ? { export: required(v.export, 'export') } : { inventory: required(v.inventory, 'inventory') };
  return {
    kind: 'provision',
    manifest,
    out,
    roots,
    intermediates,
    ekValidity,
    fleet: { enrollUrl, deviceUrl, trustBundle, baseTopic },
    tokenTtlSec,
    parallel,
    sink,
    factoryTrustedEk: v['factory-trusted-ek'] === true,
  };
}

function baseTopicOf(value: string): string {
  if (value.length > 128 || !TOPIC.test(value)) usage(`--base-topic: ${JSON.stringify(value)} is not a topic prefix such as fleet/v1`);
  return value;
}

/**
 * The station's side of online registration: the bridge URL, the fleet root it verifies the broker
 * with, and its own `role:station:<id>` certificate and matching key.
 */
function bridgeSettings(v: { bridge?: string; cert?: string; key?: string; ca?: string; 'bridge-timeout'?: string }, baseTopic: string): BridgeSettings {
  const url = mqttsUrl(required(v.bridge, 'bridge'), 'bridge');
  const caPem = certificatesIn(required(v.ca, 'ca'), 'ca').join('');
  const certPem = readText(required(v.cert, 'cert'), 'cert');
  const keyPem = readText(required(v.key, 'key'), 'key');
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch (e) {
    return usage(`--cert: ${v.cert} holds no readable certificate: ${(e as Error).message}`);
  }
  let matches: boolean;
  try {
    matches = cert.checkPrivateKey(createPrivateKey(keyPem));
  } catch (e) {
    return usage(`--key: ${v.key} holds no readable private key: ${(e as Error).message}`);
  }
  if (!matches) usage(`--key: ${v.key} is not the key of the certificate in ${v.cert}`);
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(cert.subject)?.[1] ?? '';
  const stationId = stationIdOfCommonName(cn);
  if (stationId === undefined) usage(`--cert: the certificate's CN is ${JSON.stringify(cn)}, not role:station:<id>`);
  const replyTimeoutMs = parseDuration(v['bridge-timeout'] ?? DEFAULT_REPLY_TIMEOUT, '--bridge-timeout') * 1000;
  return { url, caPem, certPem, keyPem, stationId: stationId!, baseTopic, replyTimeoutMs };
}

/** mqtts://HOST:PORT and nothing else: what the agent accepts, with a host and a port in 1–65535. */
export function mqttsUrl(value: string, flag: string): string {
  const bad = (): never => usage(`--${flag}: expected mqtts://HOST:PORT, got ${JSON.stringify(value.slice(0, 100))}`);
  if (value.length > 256 || !AGENT_URL.test(value)) return bad();
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    return bad();
  }
  const port = Number(u.port);
  if (u.protocol !== 'mqtts:' || !u.hostname || !(port >= 1 && port <= 65_535) || u.pathname !== '') bad();
  return value;
}

function readText(path: string, flag: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    return usage(`--${flag}: cannot read ${path}: ${(e as Error).message}`);
  }
}

/** Every certificate in a PEM file, each as its own PEM string. */
function certificatesIn(path: string, flag: string): string[] {
  const text = readText(path, flag);
  let certs;
  try {
    certs = parseCertificates([text]);
  } catch (e) {
    return usage(`--${flag}: ${path} holds a malformed certificate: ${(e as Error).message}`);
  }
  if (certs.length === 0) usage(`--${flag}: ${path} holds no PEM certificate`);
  return certs.map((c) => c.pem);
}
