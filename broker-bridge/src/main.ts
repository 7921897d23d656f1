/**
 * broker-bridge CLI. Entry flow: `run` → Bridge.start() → per message EnrollmentService / RotationService
 * / IngestService.handle().
 *   bridge ca init   --dir DIR --trust-domain TD [--pkcs11-module SO --pkcs11-token LABEL --pkcs11-pin-env VAR]
 *   bridge ca import --dir DIR --trust-domain TD --root PEM --issuing PEM --issuing-key PEM
 *   bridge broker-config --out DIR --host H --enroll-port P --device-port P --server-cert F --server-key F
 *                        --client-ca F --persistence-dir DIR [--crl-file F] [--user NAME] [--base-topic fleet/v1]
 *                        [--station ID]... [--operator ID]... [--auditor ID]...
 *     Writes mosquitto.conf, enroll.acl, device.acl (0644) and makes the files mosquitto reads usable by
 *     the user it runs as (default: `mosquitto` when run as root and that user exists, else none); see
 *     broker/broker-file-access.ts.
 *   bridge cert issue --ca-dir DIR --kind server --dns NAME... [--ip ADDR...] --out PREFIX [--days N] [--force] [--json]
 *   bridge cert issue --ca-dir DIR --kind role --role bridge|station:ID|operator:ID|auditor:ID --out PREFIX [...]
 *     [--issuing-key PEM | --pkcs11-module SO --pkcs11-token LABEL --pkcs11-pin-env VAR]
 *     From the issuing CA (never the root): writes PREFIX.crt (leaf + issuing CA) and PREFIX.key (0600,
 *     never overwritten without --force), records serial, CN, kind and notAfter in DIR/issued.json, and
 *     prints serial and notAfter. Default validity 90 days.
 *   bridge run --config bridge.json
 *   bridge revoke --config bridge.json (--device ID | --serial HEX) --reason R
 *     Offline: needs the inventory, so only while `bridge run` is stopped (LevelDB allows one process;
 *     with the bridge running it fails with REVOCATION_BRIDGE_RUNNING: use the operator MQTT command
 *     `<base>/operators/<id>/commands/revoke` instead). Signs the new CRL, writes the broker's CRL and
 *     ACL files and signals mosquitto (`broker` in bridge.json); the next `bridge run` publishes the CRL.
 * bridge --help, bridge <command> --help, bridge --version.
 * Logs JSON lines to stdout.
 */
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { createProgramLogger } from '../../common/logger.js';
import { systemClock } from '../../common/clock.js';
import { isCodedError } from '../../common/coded-error.js';
import { Topics } from '../../common/protocol/topics.js';
import { array, int, num, object, oneOf, optional, parseMessage, SchemaError, str } from '../../common/protocol/schema.js';
import { MqttTransport } from '../../common/transport/mqtt-transport.js';
import { STATION_ID_PATTERN } from '../../common/protocol/station.js';
import { parseCertificates } from '../../native/lib/ek-certificate.js';
import { BRIDGE_SESSION, Bridge, DEFAULT_BRIDGE_CLIENT_ID } from './bridge.js';
import { applyBrokerFileAccess, defaultBrokerUser, planBrokerFileAccess } from './broker/broker-file-access.js';
import { generateMosquittoConfig } from './broker/mosquitto-config.js';
import { assertOutputsWritable, issueServiceCertificate, roleCommonName, writeServiceCertificateFiles } from './broker/service-cert.js';
import { createCa, importCa, openBackend, type BackendSpec } from './ca/ca-setup.js';
import { CertificateIssuer } from './ca/issuer.js';
import { readIssuedRegistry, recordIssued } from './ca/issued-registry.js';
import { EnrollmentService } from './enrollment/enrollment-service.js';
import { DefaultEnrollmentPolicy } from './enrollment/policy.js';
import { DEFAULT_RATE_LIMITS, RateLimiter } from './enrollment/rate-limiter.js';
import { LevelInventory } from './inventory/level-inventory.js';
import { CrlSigner } from './ca/crl.js';
import { FileBrokerEnforcement } from './revocation/broker-enforcement.js';
import { OperatorRevokeHandler } from './revocation/operator-handler.js';
import { readRetained } from './revocation/read-retained.js';
import { RevocationService, type RevocationServiceOptions } from './revocation/revocation-service.js';
import { TrustBundleSigner } from './trust/trust-bundle-signer.js';
import { RotationService } from './rotation/rotation-service.js';
import { IngestService } from './telemetry/ingest-service.js';
import { TimeService } from './telemetry/time-service.js';
import { StationRegistrationHandler } from './registration/station-handler.js';
import { OperatorHandler } from './operator/operator-handler.js';
import { CampaignService } from './campaign/campaign-service.js';
import { FleetMetrics } from './metrics/fleet-metrics.js';
import { MetricsServer } from './metrics/metrics-server.js';
import { metricsConfigSchema, metricsListen } from './metrics/metrics-config.js';
import { BUILD_VERSION } from '../../common/build-version.js';

/** Logs on stderr: readable on a terminal, JSON lines otherwise; LOG_LEVEL / LOG_FORMAT honoured. */
const logger = (() => {
  try {
    return createProgramLogger({ program: 'broker-bridge', version: BUILD_VERSION });
  } catch (e) {
    fail(e instanceof Error ? e.message : String(e), isCodedError(e) ? e.code : 'BRIDGE_USAGE');
  }
})();

/** A user error: one line with a code on stderr, exit 2. */
function fail(msg: string, code = 'BRIDGE_USAGE'): never {
  process.stderr.write(`bridge: ${code}: ${msg.split('\n')[0]}\n`);
  process.exit(2);
}

/** Codes of `cert issue` failures that are the operator's input (exit 2); the rest are outages (exit 1). */
const CERT_INPUT_ERRORS: ReadonlySet<string> = new Set([
  'SERVICE_CERT_BAD_REQUEST',
  'SERVICE_CERT_OUTPUT_EXISTS',
  'CA_KEY_NOT_FOUND',
  'CA_KEY_PERMISSIONS',
  'CA_CONFIG_INVALID',
  'CA_POLICY_DENIED',
  'ISSUED_REGISTRY_INVALID',
]);

/** Validity of `cert issue` certificates unless --days says otherwise. */
const CERT_DEFAULT_DAYS = 90;


const rateLimitSchema = object({ ratePerSec: num({ min: 0.001, max: 100_000 }), burst: int({ min: 1, max: 1_000_000 }) });

const configSchema = object({
  dataDir: str({ max: 512 }),
  trustDomain: str({ max: 253 }),
  baseTopic: optional(str({ max: 128 })),
  brokerUrl: str({ max: 256, pattern: /^mqtts:\/\// }),
  /** PEM files: the bridge's role:bridge client certificate and key, the CA files from `ca init`. */
  bridgeCert: str({ max: 512 }),
  bridgeKey: str({ max: 512 }),
  caDir: str({ max: 512 }),
  issuingKey: optional(str({ max: 512 })),
  pkcs11: optional(object({ module: str({ max: 512 }), tokenLabel: str({ max: 64 }), pinEnv: str({ max: 64 }), keyLabel: optional(str({ max: 64 })) })),
  manufacturerRoots: array(str({ max: 512 }), { min: 1, max: 64 }),
  /** TPM vendors' intermediate CA files (PEM): path elements, never trust anchors. */
  manufacturerIntermediates: optional(array(str({ max: 512 }), { max: 256 })),
  /** 'ignore-expiry' (default) or 'strict' (see native/lib/ek-certificate.ts). */
  ekValidity: optional(oneOf(['ignore-expiry', 'strict'] as const)),
  /**
   * Station ids whose factory-trusted EKs (TPMs without an EK certificate, docs/hardware.md) the bridge
   * registers. Default none: every device must bring an EK certificate.
   */
  factoryTrustedEkStations: optional(array(str({ max: 64, pattern: STATION_ID_PATTERN }), { max: 64 })),
  certificateLifetimeSec: optional(int({ min: 3600, max: 366 * 86_400 })),
  sharedGroup: optional(str({ max: 64, pattern: /^[A-Za-z0-9_-]+$/ })),
  /** MQTT client id of the bridge's persistent session; stable across restarts. Default `role:bridge`. */
  /** Must start with `enr-` (the broker renames it to the certificate CN). */
  clientId: optional(str({ max: 64, pattern: /^enr-[A-Za-z0-9._-]+$/ })),
  /**
   * The broker's files on this host, for revocation: `crlFile` and `deviceAclFile` as in the generated
   * mosquitto.conf (`broker-config --crl-file`), `pidFile` where mosquitto's pid is (mosquitto.conf
   * `pid_file`, or the service manager's): the bridge rewrites both files and sends SIGHUP. Without
   * it the CRL is still signed and published, but the broker does not enforce it.
   */
  broker: optional(object({ crlFile: str({ max: 512 }), deviceAclFile: str({ max: 512 }), pidFile: optional(str({ max: 512 })) })),
  /** CRL nextUpdate − thisUpdate (default 24 h); a new CRL is signed when a quarter of it is left. */
  crlNextUpdateSec: optional(int({ min: 300, max: 30 * 86_400 })),
  /** How often the revocation service checks for a CRL to re-sign and retries failed broker updates (default 60 s). */
  revocationCheckSec: optional(int({ min: 5, max: 3600 })),
  /** Enrollment and rotation rate limits; each side defaults to DEFAULT_RATE_LIMITS. */
  rateLimit: optional(object({ perDevice: optional(rateLimitSchema), global: optional(rateLimitSchema) })),
  /** notBefore of issued device certificates lies this far in the past, for device clock skew (default 300). */
  certificateBackdateSec: optional(int({ min: 0, max: 86_400 })),
  /** How long an enrollment challenge and a rotation nonce stay valid (default 120 s each). */
  challengeTtlSec: optional(int({ min: 10, max: 3600 })),
  rotationTtlSec: optional(int({ min: 10, max: 3600 })),
  /** Pause between attempts to reach the broker, at start and after a lost connection (default 1000 ms). */
  reconnectMs: optional(int({ min: 100, max: 60_000 })),
  /** Prometheus endpoint: absent or port 0 = off; host default 127.0.0.1 (docs/metrics.md). */
  metrics: optional(metricsConfigSchema),
});

/** bridge.json, validated; a bad file is the operator's input: one line naming the field, exit 2. */
function readConfig(path: string): ReturnType<typeof configSchema.parse> {
  let text: Buffer;
  try {
    text = readFileSync(path);
  } catch (e) {
    return fail(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 'BRIDGE_CONFIG_UNREADABLE');
  }
  try {
    return parseMessage(text, configSchema, 64 * 1024);
  } catch (e) {
    if (e instanceof SchemaError) fail(`${path}: ${e.message}`, e.code === 'SCHEMA_INVALID' ? 'BRIDGE_CONFIG_INVALID' : e.code);
    throw e;
  }
}

/**
 * A manufacturer trust file, checked when the bridge starts: readable, with at least one certificate,
 * each readable as the EK verifier reads it (vendor quirks included). A bad file is exit 2 naming it,
 * not a refusal of every device of that vendor later.
 */
function readManufacturerFile(path: string, field: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    return fail(`${field}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 'BRIDGE_CONFIG_INVALID');
  }
  let count: number;
  try {
    count = parseCertificates([text]).length;
  } catch (e) {
    return fail(`${field}: ${path} holds a certificate that cannot be read: ${(e as Error).message}`, 'BRIDGE_CONFIG_INVALID');
  }
  if (count === 0) fail(`${field}: ${path} holds no PEM certificate`, 'BRIDGE_CONFIG_INVALID');
  return text;
}

function revocationService(
  cfg: ReturnType<typeof configSchema.parse>,
  backend: Awaited<ReturnType<typeof openBackend>>,
  inventory: LevelInventory,
  io?: Pick<RevocationServiceOptions, 'publish' | 'readRetained' | 'metrics'>,
): RevocationService {
  return new RevocationService({
    inventory,
    topics: new Topics(cfg.baseTopic ?? 'fleet/v1'),
    issuedRegistry: () => readIssuedRegistry(cfg.caDir),
    crlSigner: new CrlSigner({ backend, issuingCertificate: readFileSync(join(cfg.caDir, 'issuing.pem')), clock: systemClock }),
    clock: systemClock,
    stateFile: join(cfg.dataDir, 'crl-state.json'),
    ...(cfg.broker ? { enforcement: new FileBrokerEnforcement({ crlFile: cfg.broker.crlFile, deviceAclFile: cfg.broker.deviceAclFile, ...(cfg.broker.pidFile ? { pidFile: cfg.broker.pidFile } : {}) }) } : {}),
    ...(io ?? {}),
    ...(cfg.crlNextUpdateSec ? { nextUpdateSec: cfg.crlNextUpdateSec } : {}),
    logger,
  });
}

function backendSpec(dir: string, o: { issuingKey?: string; pkcs11?: { module: string; tokenLabel: string; pinEnv: string; keyLabel?: string } }): BackendSpec {
  if (o.pkcs11) {
    const pin = process.env[o.pkcs11.pinEnv] ?? fail(`environment variable ${o.pkcs11.pinEnv} (PKCS#11 PIN) is not set`);
    return { kind: 'pkcs11', modulePath: o.pkcs11.module, tokenLabel: o.pkcs11.tokenLabel, pin, keyLabel: o.pkcs11.keyLabel ?? 'fleet-issuing-ca' };
  }
  return { kind: 'file', keyPath: o.issuingKey ?? join(dir, 'issuing-key.pem') };
}

const cliOptions = {
  dir: { type: 'string' },
  'trust-domain': { type: 'string' },
  'pkcs11-module': { type: 'string' },
  'pkcs11-token': { type: 'string' },
  'pkcs11-pin-env': { type: 'string' },
  root: { type: 'string' },
  issuing: { type: 'string' },
  'issuing-key': { type: 'string' },
  out: { type: 'string' },
  host: { type: 'string' },
  'enroll-port': { type: 'string' },
  'device-port': { type: 'string' },
  'server-cert': { type: 'string' },
  'server-key': { type: 'string' },
  'client-ca': { type: 'string' },
  'base-topic': { type: 'string', default: 'fleet/v1' },
  station: { type: 'string', multiple: true },
  operator: { type: 'string', multiple: true },
  auditor: { type: 'string', multiple: true },
  config: { type: 'string' },
  'persistence-dir': { type: 'string' },
  'crl-file': { type: 'string' },
  user: { type: 'string' },
  device: { type: 'string' },
  serial: { type: 'string' },
  reason: { type: 'string' },
  'ca-dir': { type: 'string' },
  kind: { type: 'string' },
  role: { type: 'string' },
  dns: { type: 'string', multiple: true },
  ip: { type: 'string', multiple: true },
  days: { type: 'string' },
  force: { type: 'boolean' },
  json: { type: 'boolean' },
} as const satisfies ParseArgsConfig['options'];

/**
 * `cert issue`: a service (broker server) or role (client) certificate from the issuing CA, through
 * the same issueServiceCertificate the embedded fleet uses. Recorded in the CA's issued.json before
 * the files are written, so no certificate is handed out that revocation cannot map to its CN.
 */
async function certIssue(v: CliValues, pkcs11: Pkcs11Cli | undefined): Promise<void> {
  const caDir = v['ca-dir'] ?? fail('--ca-dir is required');
  const out = v.out ?? fail('--out is required (a path prefix: PREFIX.crt and PREFIX.key are written)');
  const kind = v.kind === 'server' || v.kind === 'role' ? v.kind : fail('--kind must be server or role');
  if (pkcs11 && v['issuing-key']) fail('give --issuing-key or the --pkcs11-* options, not both');
  let commonName: string;
  if (kind === 'server') {
    if (v.role !== undefined) fail('--role is for --kind role');
    if (!v.dns?.length && !v.ip?.length) fail('--kind server needs at least one --dns NAME or --ip ADDR');
    commonName = v.dns?.[0] ?? v.ip![0]!;
  } else {
    if (v.dns !== undefined || v.ip !== undefined) fail('--dns and --ip are for --kind server');
    try {
      commonName = roleCommonName(v.role ?? fail('--kind role needs --role bridge|station:ID|operator:ID|auditor:ID'));
    } catch (e) {
      return certFailure(e);
    }
  }
  const days = v.days === undefined ? CERT_DEFAULT_DAYS : /^[1-9][0-9]{0,4}$/.test(v.days) ? Number(v.days) : fail('--days must be a whole number of days, 1 to 99999');
  let backend: Awaited<ReturnType<typeof openBackend>> | undefined;
  let failure: unknown;
  try {
    await assertOutputsWritable(out, { force: v.force === true });
    let issuingCertPem: string;
    try {
      issuingCertPem = readFileSync(join(caDir, 'issuing.pem'), 'utf8');
    } catch {
      return fail(`${join(caDir, 'issuing.pem')} is not readable; --ca-dir must be a directory made by \`ca init\` or \`ca import\``, 'CA_CONFIG_INVALID');
    }
    backend = await openBackend(backendSpec(caDir, pkcs11 ? { pkcs11 } : v['issuing-key'] ? { issuingKey: v['issuing-key'] } : {}), 'find');
    const cert = await issueServiceCertificate({
      issuingCertPem,
      backend,
      commonName,
      usage: kind === 'server' ? 'server' : 'client',
      ...(kind === 'server' ? { dns: v.dns ?? [], ips: v.ip ?? [] } : {}),
      clock: systemClock,
      lifetimeSec: days * 86_400,
    });
    await recordIssued(caDir, {
      serial: cert.serialNumber,
      commonName,
      kind,
      notBefore: cert.notBefore.getTime(),
      notAfter: cert.notAfter.getTime(),
      issuedAt: systemClock.now(),
      ...(cert.subjectAltNames.length ? { sans: [...cert.subjectAltNames] } : {}),
    });
    // Clients and the broker get the issuing CA with the leaf: trusting only the root is then enough.
    const files = await writeServiceCertificateFiles(out, { certPem: cert.leafPem + (issuingCertPem.endsWith('\n') ? issuingCertPem : `${issuingCertPem}\n`), keyPem: cert.keyPem }, { force: v.force === true });
    const result = { commonName, kind, serial: cert.serialNumber, notAfter: cert.notAfter.toISOString(), cert: files.cert, key: files.key };
    process.stdout.write(
      v.json ? `${JSON.stringify(result)}\n` : `issued ${kind} certificate ${commonName}\nserial:   ${result.serial}\nnotAfter: ${result.notAfter}\ncert:     ${files.cert}\nkey:      ${files.key}\n`,
    );
  } catch (e) {
    failure = e;
  } finally {
    await backend?.close().catch(() => undefined);
  }
  if (failure !== undefined) {
    const keyFile = isCodedError(failure) && failure.code === 'CA_KEY_NOT_FOUND' && !pkcs11 && !v['issuing-key'];
    certFailure(failure, keyFile ? ' (a CA whose key is in a PKCS#11 token needs --pkcs11-module, --pkcs11-token and --pkcs11-pin-env; an imported CA --issuing-key)' : '');
  }
}

/** One line with the code; exit 2 for the operator's input, 1 for an outage. Never a stack trace. */
function certFailure(e: unknown, hint = ''): never {
  const code = isCodedError(e) ? e.code : 'INTERNAL';
  process.stderr.write(`bridge: ${code}: ${String((e as Error)?.message ?? e).split('\n')[0]}${hint}\n`);
  process.exit(CERT_INPUT_ERRORS.has(code) ? 2 : 1);
}

/**
 * `broker-config`: mosquitto.conf and its ACLs, and the files they name made usable by the user mosquitto
 * runs as. Everything is validated (the user exists, the files exist and the user can reach them)
 * before anything is written; user errors are one line with a code, exit 2.
 */
function brokerConfig(v: CliValues, need: (k: keyof CliValues) => string): void {
  const out = resolve(need('out'));
  const port = (k: 'enroll-port' | 'device-port') => {
    const n = Number(need(k));
    return Number.isInteger(n) && n > 0 && n < 65536 ? n : fail(`--${k} must be a port number`);
  };
  const host = need('host');
  const user = v.user ?? defaultBrokerUser();
  const tls = { serverCertFile: resolve(need('server-cert')), serverKeyFile: resolve(need('server-key')), clientCaFile: resolve(need('client-ca')) };
  const persistenceDir = resolve(need('persistence-dir'));
  const crlFile = v['crl-file'] ? resolve(v['crl-file']) : undefined;
  const written = { conf: join(out, 'mosquitto.conf'), enrollAcl: join(out, 'enroll.acl'), deviceAcl: join(out, 'device.acl') };
  let plan: ReturnType<typeof planBrokerFileAccess>;
  let generated: ReturnType<typeof generateMosquittoConfig>;
  try {
    generated = generateMosquittoConfig({
      baseTopic: v['base-topic']!,
      enrollListener: { host, port: port('enroll-port') },
      deviceListener: { host, port: port('device-port') },
      tls,
      enrollAclFile: written.enrollAcl,
      deviceAclFile: written.deviceAcl,
      persistenceDir,
      ...(crlFile ? { crlFile } : {}),
      ...(user ? { user } : {}),
      stationIdentities: v.station ?? [],
      operatorIdentities: v.operator ?? [],
      auditorIdentities: v.auditor ?? [],
    });
    plan = planBrokerFileAccess(user, {
      secret: [tls.serverKeyFile],
      public: [tls.serverCertFile, tls.clientCaFile],
      // mosquitto rereads these as its user on SIGHUP; the bridge replaces the CRL (0644) later.
      publicLater: [written.conf, written.enrollAcl, written.deviceAcl, ...(crlFile ? [crlFile] : [])],
      persistenceDir,
    });
  } catch (e) {
    return fail((e as Error).message, isCodedError(e) ? e.code : 'INTERNAL');
  }
  mkdirSync(out, { recursive: true });
  writeFileSync(written.conf, generated.conf, { mode: 0o644 });
  writeFileSync(written.enrollAcl, generated.enrollAcl, { mode: 0o644 });
  writeFileSync(written.deviceAcl, generated.deviceAcl, { mode: 0o644 });
  applyBrokerFileAccess(plan);
  if (!user && process.geteuid?.() === 0) {
    // mosquitto started as root without a `user` line drops to `mosquitto`, or to `nobody` when that user does not exist.
    logger.warn('no user "mosquitto" on this host: give --user NAME (the user mosquitto runs as), or start mosquitto as a non-root user that owns these files');
  }
  logger.info({ out, user: user ?? null, persistenceDir, changed: plan.changes }, `wrote mosquitto.conf, enroll.acl, device.acl${user ? `; mosquitto runs as ${user}` : ''}`);
}

type Pkcs11Cli = { module: string; tokenLabel: string; pinEnv: string };
const parseCli = (args: string[]) => parseArgs({ args, strict: true, options: cliOptions }).values;
type CliValues = ReturnType<typeof parseCli>;

/** `bridge --help` and `bridge <command> --help`: what each command does and takes (the comment above, kept in step). */
const HELP: Readonly<Record<string, string>> = {
  'ca init': 'bridge ca init --dir DIR --trust-domain TD [--pkcs11-module SO --pkcs11-token LABEL --pkcs11-pin-env VAR]\n  Creates the root and issuing CA (keep root-key.pem offline).',
  'ca import': 'bridge ca import --dir DIR --trust-domain TD --root PEM --issuing PEM --issuing-key PEM\n  Imports an existing root and issuing CA.',
  'cert issue':
    'bridge cert issue --ca-dir DIR --kind server --dns NAME... [--ip ADDR...] --out PREFIX [--days N] [--force] [--json]\n' +
    'bridge cert issue --ca-dir DIR --kind role --role bridge|station:ID|operator:ID|auditor:ID --out PREFIX [--days N] [--force] [--json]\n' +
    '  From the issuing CA: PREFIX.crt (leaf + issuing CA), PREFIX.key (0600, never overwritten without --force); default 90 days.',
  'broker-config':
    'bridge broker-config --out DIR --host H --enroll-port P --device-port P --server-cert F --server-key F --client-ca F\n' +
    '                     --persistence-dir DIR [--crl-file F] [--user NAME] [--base-topic fleet/v1] [--station ID]... [--operator ID]... [--auditor ID]...\n' +
    '  Writes mosquitto.conf, enroll.acl, device.acl and makes the files mosquitto reads usable by its user.',
  run: 'bridge run --config bridge.json\n  The bridge between the broker and the CA (see broker-bridge/README.md for bridge.json).',
  revoke: 'bridge revoke --config bridge.json (--device ID | --serial HEX) --reason R [--json]\n  Offline revocation, while `bridge run` is stopped (else: the operator MQTT command). Prints the serials revoked and the CRL number.',
};

function helpText(): string {
  return `usage: bridge <command> [options]   (bridge <command> --help, bridge --version)\n\n${Object.values(HELP).join('\n\n')}\n\nExit codes: 0 done, 1 failed, 2 usage or bad input (one line with a code). See broker-bridge/README.md.`;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.length === 1 && (argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help')) {
    process.stdout.write(`${helpText()}\n`);
    return;
  }
  if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
    process.stdout.write(`${BUILD_VERSION}\n`);
    return;
  }
  const grouped = argv[0] === 'ca' || argv[0] === 'cert';
  const cmd = grouped ? `${argv[0]} ${argv[1] ?? ''}` : (argv[0] ?? '');
  const rest = argv.slice(grouped ? 2 : 1);
  if (rest.includes('--help') || rest.includes('-h')) {
    const help = HELP[cmd];
    if (!help) fail(`unknown command "${cmd.trim()}"; commands: ${Object.keys(HELP).join(', ')}`);
    process.stdout.write(`usage: ${help}\n`);
    return;
  }
  let v: CliValues;
  try {
    v = parseCli(rest);
  } catch (e) {
    fail((e as Error).message);
  }
  const need = (k: keyof typeof v) => (v[k] as string | undefined) ?? fail(`--${k} is required`);
  const pkcs11 = v['pkcs11-module']
    ? { module: v['pkcs11-module'], tokenLabel: need('pkcs11-token'), pinEnv: need('pkcs11-pin-env') }
    : undefined;

  switch (cmd) {
    case 'ca init': {
      const dir = need('dir');
      const ca = await createCa({
        outDir: dir,
        clock: systemClock,
        trustDomain: need('trust-domain'),
        root: { commonName: `${v['trust-domain']} root` },
        issuing: { commonName: `${v['trust-domain']} issuing CA` },
        backend: backendSpec(dir, pkcs11 ? { pkcs11 } : {}),
        keepRootKey: true,
      });
      await ca.backend.close();
      logger.info({ files: ca.files }, 'CA created; keep root-key.pem offline');
      return;
    }
    case 'ca import': {
      const dir = need('dir');
      const ca = await importCa({
        outDir: dir,
        trustDomain: need('trust-domain'),
        rootCertificate: readFileSync(need('root')),
        issuingCertificate: readFileSync(need('issuing')),
        backend: backendSpec(dir, pkcs11 ? { pkcs11 } : { issuingKey: need('issuing-key') }),
      });
      await ca.backend.close();
      logger.info({ files: ca.files }, 'CA imported');
      return;
    }
    case 'broker-config':
      return brokerConfig(v, need);
    case 'cert issue':
      return certIssue(v, pkcs11);
    case 'run': {
      const cfg = readConfig(need('config'));
      // One manufacturer trust for enrollment and the stations' online registration; checked first.
      const ekTrust = {
        roots: cfg.manufacturerRoots.map((p) => readManufacturerFile(p, 'manufacturerRoots')),
        intermediates: (cfg.manufacturerIntermediates ?? []).map((p) => readManufacturerFile(p, 'manufacturerIntermediates')),
        ...(cfg.ekValidity ? { ekValidity: cfg.ekValidity } : {}),
      };
      const backend = await openBackend(backendSpec(cfg.caDir, cfg), 'find');
      const issuer = new CertificateIssuer({ backend, issuingCertificate: readFileSync(join(cfg.caDir, 'issuing.pem')), clock: systemClock, trustDomain: cfg.trustDomain });
      const root = readFileSync(join(cfg.caDir, 'root.pem'), 'utf8');
      const inventory = new LevelInventory(join(cfg.dataDir, 'inventory'));
      await inventory.open();
      const topics = new Topics(cfg.baseTopic ?? 'fleet/v1');
      const listen = metricsListen(cfg.metrics);
      let revocationRef: RevocationService | undefined;
      let campaignsRef: CampaignService | undefined;
      const metrics = listen
        ? new FleetMetrics({ inventory, clock: systemClock, processMetrics: true, crl: { get current() { return revocationRef?.current; } }, campaigns: { list: () => campaignsRef?.list() ?? [] } })
        : undefined;
      const m = metrics ? { metrics } : {};
      const common = {
        inventory,
        issuer,
        policy: new DefaultEnrollmentPolicy({ trustDomain: cfg.trustDomain, lifetimeSec: cfg.certificateLifetimeSec ?? 30 * 86_400, backdateSec: cfg.certificateBackdateSec ?? 300 }),
        clock: systemClock,
        topics,
        chainPems: [issuer.issuingCertificatePem],
        trustBundlePems: [root],
        logger,
        ...m,
      };
      // Separate budgets: enroll requests anyone can send under a device's id must not cost it its rotations.
      const rate = { perKey: cfg.rateLimit?.perDevice ?? DEFAULT_RATE_LIMITS.perDevice, global: cfg.rateLimit?.global ?? DEFAULT_RATE_LIMITS.global };
      const limiter = () => new RateLimiter({ ...rate, clock: systemClock });
      const enrollment = new EnrollmentService({ ...common, limiter: limiter(), ...(cfg.challengeTtlSec ? { challengeTtlMs: cfg.challengeTtlSec * 1000 } : {}), ekTrust });
      const rotation = new RotationService({ ...common, limiter: limiter(), ...(cfg.rotationTtlSec ? { rotationTtlMs: cfg.rotationTtlSec * 1000 } : {}) });
      const publish = (topic: string, p: Buffer, opts: { qos: 0 | 1; retain: boolean }) => transport.publish(topic, p, opts);
      const campaigns = new CampaignService({ store: inventory, clock: systemClock, topics, publish, logger });
      campaignsRef = campaigns;
      const ingest = new IngestService({ inventory, clock: systemClock, topics, logger, onEvent: (id, e) => campaigns.onDeviceEvent(id, e) });
      const transport = new MqttTransport({
        url: cfg.brokerUrl,
        clientId: cfg.clientId ?? DEFAULT_BRIDGE_CLIENT_ID,
        ...BRIDGE_SESSION,
        ...(cfg.reconnectMs ? { reconnectPeriodMs: cfg.reconnectMs } : {}),
        tls: { ca: root, cert: readFileSync(cfg.bridgeCert, 'utf8'), key: readFileSync(cfg.bridgeKey, 'utf8') },
        logger,
      });
      const revocation = revocationService(cfg, backend, inventory, {
        publish: (topic, p) => (transport.connected ? transport.publish(topic, p, { qos: 1, retain: true }) : Promise.reject(new Error('not connected'))),
        readRetained: (topic) => readRetained(transport, topic),
        ...m,
      });
      revocationRef = revocation;
      // Before the broker connection: mosquitto cannot start without the CRL file this writes.
      await revocation.start({ publish: false });
      const trustBundleSigner = new TrustBundleSigner({ backend, signerChain: [issuer.issuingCertificatePem], stateFile: join(cfg.dataDir, 'trust-bundle-state.json'), clock: systemClock });
      // Signed (or loaded) once before connecting: a bad CA set-up or state file stops the start here.
      await trustBundleSigner.message([root]);
      const bridge = new Bridge({
        transport,
        topics,
        handlers: [enrollment, rotation, ingest, new OperatorRevokeHandler({ topics, revocation, logger }), new TimeService({ topics, clock: systemClock }),
          new StationRegistrationHandler({ topics, inventory, ekTrust, clock: systemClock, logger, ...(cfg.factoryTrustedEkStations ? { factoryTrustedEkStations: cfg.factoryTrustedEkStations } : {}) }),
          new OperatorHandler({ topics, inventory, clock: systemClock, publish, campaigns, logger }),
        ],
        trustBundle: () => trustBundleSigner.message([root]),
        logger,
        ...(cfg.sharedGroup ? { sharedGroup: cfg.sharedGroup } : {}),
        ...(cfg.reconnectMs ? { connectRetryMs: cfg.reconnectMs } : {}),
      });
      let stopping = false;
      let metricsServer: MetricsServer | undefined;
      const stop = async () => {
        stopping = true;
        await metricsServer?.stop();
        await campaigns.stop();
        await revocation.stop();
        await bridge.stop();
        await inventory.close();
        await backend.close();
        process.exit(0);
      };
      process.once('SIGINT', () => void stop());
      process.once('SIGTERM', () => void stop());
      try {
        // Waits for an unreachable broker (one log line), so the bridge may start before mosquitto.
        await bridge.start();
      } catch (e) {
        if (stopping) return;
        throw e;
      }
      // Publishes the CRL now that the bridge is connected (the base only when the broker lost it), and
      // again after every reconnect; then a new CRL before each nextUpdate and retries of anything that failed.
      await revocation.republish();
      transport.onConnectionChange((up) => {
        if (up) void revocation.republish().catch(() => undefined);
      });
      revocation.startTimer((cfg.revocationCheckSec ?? 60) * 1000);
      // Running campaigns go on where they stood (their current wave's unanswered commands are sent again).
      await campaigns.start();
      if (metrics && listen) {
        metricsServer = new MetricsServer({ source: metrics, ...listen, onError: (err) => logger.error({ err }, 'metrics scrape failed') });
        try {
          await metricsServer.start();
        } catch (e) {
          fail((e as Error).message, 'METRICS_LISTEN_FAILED');
        }
        logger.info({ url: metricsServer.url }, 'metrics served');
      }
      logger.info({ broker: cfg.brokerUrl }, 'bridge running');
      return;
    }
    case 'revoke': {
      const cfg = readConfig(need('config'));
      const reason = need('reason');
      if ((v.device === undefined) === (v.serial === undefined)) fail('give exactly one of --device and --serial');
      const inventory = new LevelInventory(join(cfg.dataDir, 'inventory'));
      try {
        await inventory.open();
      } catch (e) {
        if (isCodedError(e) && e.code === 'INVENTORY_LOCKED') {
          process.stderr.write(
            'bridge: REVOCATION_BRIDGE_RUNNING: the inventory is locked by a running bridge; stop it, or send the operator command <base>/operators/<id>/commands/revoke\n',
          );
          process.exit(3);
        }
        throw e;
      }
      const backend = await openBackend(backendSpec(cfg.caDir, cfg), 'find');
      const revocation = revocationService(cfg, backend, inventory);
      try {
        await revocation.start();
        const r = v.device !== undefined ? await revocation.revokeDevice(v.device, reason) : await revocation.revokeSerial(v.serial!, reason);
        // The result on stdout (the log is for what happened along the way).
        const result = { serials: r.serials, crlNumber: r.crlNumber.toString(), enforced: r.enforced };
        process.stdout.write(
          v.json
            ? `${JSON.stringify(result)}\n`
            : `revoked ${r.serials.length ? r.serials.join(', ') : 'nothing new (already revoked)'}; CRL ${result.crlNumber}; broker ${r.enforced ? 'files rewritten and reloaded' : 'files not updated (none configured, or the update failed)'}\n`,
        );
        if (cfg.broker && !r.enforced) process.exitCode = 4;
      } catch (e) {
        const c = e as { code?: string; message?: string };
        process.stderr.write(`bridge: ${c.code ?? 'INTERNAL'}: ${c.message ?? String(e)}\n`);
        process.exitCode = 2;
      } finally {
        await revocation.stop();
        await inventory.close();
        await backend.close();
      }
      return;
    }
    default:
      fail(`unknown command "${argv.join(' ')}"; commands: ca init, ca import, cert issue, broker-config, run, revoke`);
  }
}

main().catch((e: { code?: string; message?: string }) => {
  logger.error({ code: e.code }, e.message ?? String(e));
  process.exit(1);
});
