import { CodedError } from '../../../common/coded-error.js';
import { CLIENT_ID_PREFIX, DEVICE_TOPICS, ENROLL_TOPICS, FLEET_TOPICS, Topics } from '../../../common/protocol/topics.js';

/**
 * Generates mosquitto.conf and its ACL file from the fleet's settings; operators never hand-write
 * them. Two listeners:
 * - enrollment: TLS (server-authenticated), no client certificate. A client may only use the
 *   `<base>/enroll/<its client id>/…` topics (`%c` patterns) of its random `enr-…` client id, so a
 *   fresh device can enroll and see nothing else, and nobody can read or answer another's challenge.
 * - device: mutual TLS with certificates from the fleet CA, `use_identity_as_username` (username = CN)
 *   and `use_username_as_clientid` (client id = CN, whatever `enr-…` id the client asked for).
 * Every client id must start with `enr-` (`clientid_prefixes`): so no client can take over the session
 * of a device or of the bridge on either listener.
 *   A device (CN = device id) may only use its own topics plus read-only fleet topics. Roles use CNs
 *   with a ':' (`role:bridge`, `role:station:*`, `role:operator:*`), which device ids can never contain,
 *   so no device certificate can carry a role.
 *
 * Persistence is on: retained messages (device status, the trust bundle) and persistent sessions (the
 * bridge's, with the QoS1 messages queued for it) survive a broker restart. mosquitto writes its
 * database every `autosave_interval` seconds and on a clean shutdown (SIGTERM); a SIGKILL loses at most
 * the changes since the last save.
 */
export interface MosquittoConfigInput {
  readonly baseTopic: string;
  readonly enrollListener: { readonly host: string; readonly port: number };
  readonly deviceListener: { readonly host: string; readonly port: number };
  /** PEM files the broker reads (paths on the broker host). */
  readonly tls: {
    readonly serverCertFile: string;
    readonly serverKeyFile: string;
    /** CA bundle trusted for client certificates on the device listener (fleet issuing chain + root). */
    readonly clientCaFile: string;
  };
  /** ACL file for the enrollment listener and for the device listener (one each). */
  readonly enrollAclFile: string;
  readonly deviceAclFile: string;
  /** CN of the bridge's certificate; default `role:bridge`. */
  readonly bridgeIdentity?: string;
  readonly stationIdentities?: readonly string[];
  readonly operatorIdentities?: readonly string[];
  /** Read-only observers of everything under the base topic (monitoring, tests): `role:auditor:<id>`. */
  readonly auditorIdentities?: readonly string[];
  readonly logFile?: string;
  /**
   * Run as this user (`user` line): mosquitto started as root drops to it before loading the TLS files,
   * and rereads ACLs, CRL and this config as it on SIGHUP. Without it, a root-started mosquitto drops to
   * `mosquitto`. `bridge broker-config --user` also makes the files readable by it (broker-file-access.ts).
   */
  readonly user?: string;
  readonly maxPacketSize?: number;
  /**
   * State directory for mosquitto's persistence database (`mosquitto.db`), on the broker host; written
   * as `persistence_location` with the trailing slash mosquitto needs. Must exist and be writable by the
   * user the broker runs as.
   */
  readonly persistenceDir: string;
  /** Seconds between database saves. Default 30. */
  readonly autosaveIntervalSec?: number;
  /** Per-client queue of QoS1 messages (in flight + waiting). Default `DEFAULT_MAX_QUEUED_MESSAGES`. */
  readonly maxQueuedMessages?: number;
  /**
   * The issuing CA's CRL (PEM) for the mutual-TLS listener (`crlfile`). The file must exist before
   * mosquitto starts (an empty CRL from the revocation service will do). With it set, every client
   * certificate must come from a CA with a CRL in the file: the fleet issues every certificate on this
   * listener from the issuing CA. mosquitto rereads it on SIGHUP (new handshakes only).
   */
  readonly crlFile?: string;
  /** Identities (CNs) with no rights at all on the device listener; see `withRevokedIdentities`. */
  readonly revokedIdentities?: readonly string[];
}

/**
 * Per-client queue limit. The bridge has one persistent session that receives every device's requests,
 * events and status: while it is away (restart, deploy, crash) mosquitto queues them for it and drops
 * what exceeds this limit (mosquitto's default is 1000, a few seconds of a fleet's traffic). 100 000
 * messages cover e.g. 10 000 devices each publishing a status and a few events during the outage; at
 * the 2–4 KiB message limits that bounds the queue at a few hundred MiB of broker memory in the worst
 * case, usually far less. Devices' own queues stay tiny (they receive only their own answers).
 */
export const DEFAULT_MAX_QUEUED_MESSAGES = 100_000;

export const BRIDGE_IDENTITY = 'role:bridge';

const ROLE = /^role:[a-z]+(:[A-Za-z0-9._-]+)?$/;
const HOST = /^[A-Za-z0-9.:-]+$/;
const PATH = /^[^\n\r\0]+$/;
/** POSIX portable user names (Debian's NAME_REGEX, plus upper case and dots): nothing else fits a config line. */
export const USER_NAME = /^[A-Za-z_][A-Za-z0-9._-]{0,31}\$?$/;
// Absolute (mosquitto's working directory is not ours to know) and without whitespace (mosquitto trims values).
const PERSISTENCE_DIR = /^\/[^\s\0]*$/;

export function generateMosquittoConfig(input: MosquittoConfigInput): { conf: string; enrollAcl: string; deviceAcl: string } {
  const topics = new Topics(input.baseTopic);
  const bridge = input.bridgeIdentity ?? BRIDGE_IDENTITY;
  for (const id of [bridge, ...(input.stationIdentities ?? []), ...(input.operatorIdentities ?? []), ...(input.auditorIdentities ?? [])]) {
    if (!ROLE.test(id)) throw new CodedError('BROKER_CONFIG_INVALID', `role identity ${JSON.stringify(id)} must look like role:<name>[:<id>]`);
  }
  for (const l of [input.enrollListener, input.deviceListener]) {
    if (!HOST.test(l.host) || !Number.isInteger(l.port) || l.port < 1 || l.port > 65535) {
      throw new CodedError('BROKER_CONFIG_INVALID', `invalid listener ${l.host}:${l.port}`);
    }
  }
  const files = [input.tls.serverCertFile, input.tls.serverKeyFile, input.tls.clientCaFile, input.enrollAclFile, input.deviceAclFile, input.logFile ?? '-', input.crlFile ?? '-'];
  if (input.user !== undefined && !USER_NAME.test(input.user)) throw new CodedError('BROKER_CONFIG_INVALID', `user ${JSON.stringify(input.user)} is not a valid user name`);
  if (!files.every((f) => PATH.test(f))) throw new CodedError('BROKER_CONFIG_INVALID', 'file paths must be single-line');
  if (!PERSISTENCE_DIR.test(input.persistenceDir)) {
    throw new CodedError('BROKER_CONFIG_INVALID', `persistence directory ${JSON.stringify(input.persistenceDir)} must be an absolute single-line path without spaces`);
  }
  const persistenceDir = input.persistenceDir.endsWith('/') ? input.persistenceDir : `${input.persistenceDir}/`;
  const autosave = input.autosaveIntervalSec ?? 30;
  const maxQueued = input.maxQueuedMessages ?? DEFAULT_MAX_QUEUED_MESSAGES;
  for (const [name, n] of [['autosaveIntervalSec', autosave], ['maxQueuedMessages', maxQueued]] as const) {
    if (!Number.isInteger(n) || n < 1) throw new CodedError('BROKER_CONFIG_INVALID', `${name} must be a positive integer`);
  }

  const tls = [`certfile ${input.tls.serverCertFile}`, `keyfile ${input.tls.serverKeyFile}`, 'tls_version tlsv1.2'];
  const conf = [
    '# Generated by broker-bridge; do not edit by hand.',
    'per_listener_settings true',
    // One client-id namespace spans every listener. Every client id must start with `enr-` (others get
    // CONNACK 5), and the mutual-TLS listener replaces it with the certificate CN: no anonymous
    // enrollment client can take over a device's or the bridge's session, and no certificate another's.
    // Deprecated in mosquitto 2.0 but working (it logs one deprecation line; ../shared/FACTS.md).
    `clientid_prefixes ${CLIENT_ID_PREFIX}`,
    // Without it QoS1 pipelining stalls ~44 ms per batch (Nagle + delayed ACK).
    'set_tcp_nodelay true',
    'persistence true',
    `persistence_location ${persistenceDir}`,
    `autosave_interval ${autosave}`,
    // QoS1 messages queued per client while it is away; see DEFAULT_MAX_QUEUED_MESSAGES.
    `max_queued_messages ${maxQueued}`,
    `max_packet_size ${input.maxPacketSize ?? 65536}`,
    ...(input.user ? [`user ${input.user}`] : []),
    ...(input.logFile ? [`log_dest file ${input.logFile}`] : ['log_dest stderr']),
    'log_type error',
    'log_type warning',
    'log_type notice',
    'log_type subscribe',
    '',
    '# Enrollment: TLS, no client certificate; each client confined to its own enroll topics.',
    `listener ${input.enrollListener.port} ${input.enrollListener.host}`,
    ...tls,
    'require_certificate false',
    'allow_anonymous true',
    `acl_file ${input.enrollAclFile}`,
    '',
    '# Devices, bridge, stations, operators: mutual TLS, username = certificate CN.',
    `listener ${input.deviceListener.port} ${input.deviceListener.host}`,
    ...tls,
    `cafile ${input.tls.clientCaFile}`,
    'require_certificate true',
    ...(input.crlFile ? [`crlfile ${input.crlFile}`] : []),
    'use_identity_as_username true',
    'use_username_as_clientid true',
    'allow_anonymous false',
    `acl_file ${input.deviceAclFile}`,
    '',
  ].join('\n');

  const dev = (suffix: string) => `${topics.base}/devices/%u/${suffix}`;
  const enr = (suffix: string) => `${topics.base}/enroll/%c/${suffix}`;
  const enrollAcl = [
    '# Generated by broker-bridge; do not edit by hand.',
    '# Enrollment listener: anonymous clients, each confined to the enroll topics of its own random',
    '# enr-… client id; the device id travels in the payload and is checked against token and EK.',
    `pattern write ${enr(ENROLL_TOPICS.enroll)}`,
    `pattern write ${enr(ENROLL_TOPICS.enrollProof)}`,
    `pattern read ${enr(ENROLL_TOPICS.enrollChallenge)}`,
    `pattern read ${enr(ENROLL_TOPICS.enrollAccepted)}`,
    `pattern read ${enr(ENROLL_TOPICS.enrollRejected)}`,
    '',
  ].join('\n');
  const deviceAcl = [
    '# Generated by broker-bridge; do not edit by hand.',
    `user ${bridge}`,
    `topic readwrite ${topics.base}/#`,
    '',
    ...(input.stationIdentities ?? []).flatMap((s) => [
      `user ${s}`,
      `topic read ${topics.base}/${FLEET_TOPICS.trustBundle}`,
      // Online registration: each station only its own command and reply topics.
      `topic write ${topics.base}/stations/${s.split(':')[2] ?? '-'}/commands/+`,
      `topic read ${topics.base}/stations/${s.split(':')[2] ?? '-'}/commands/+/reply`,
      '',
    ]),
    ...(input.operatorIdentities ?? []).flatMap((o) => [
      `user ${o}`,
      `topic read ${topics.base}/devices/+/${DEVICE_TOPICS.status}`,
      // Operator commands (revocation): each operator only its own command and reply topics.
      `topic write ${topics.base}/operators/${o.split(':')[2] ?? '-'}/commands/+`,
      `topic read ${topics.base}/operators/${o.split(':')[2] ?? '-'}/commands/+/reply`,
      '',
    ]),
    ...(input.auditorIdentities ?? []).flatMap((a) => [`user ${a}`, `topic read ${topics.base}/#`, '']),
    '# Patterns apply to every client: a device (username = its id) uses only its own topics.',
    `pattern readwrite ${dev(DEVICE_TOPICS.status)}`,
    `pattern write ${dev(DEVICE_TOPICS.events)}`,
    `pattern read ${dev(DEVICE_TOPICS.eventsAck)}`,
    '# Rotation, over the device\'s own mutual-TLS session: requests out, answers in.',
    `pattern write ${dev(DEVICE_TOPICS.rotateBegin)}`,
    `pattern write ${dev(DEVICE_TOPICS.rotateRequest)}`,
    `pattern write ${dev(DEVICE_TOPICS.rotateConfirm)}`,
    `pattern read ${dev(DEVICE_TOPICS.rotateChallenge)}`,
    `pattern read ${dev(DEVICE_TOPICS.rotateAccepted)}`,
    `pattern read ${dev(DEVICE_TOPICS.rotateConfirmed)}`,
    `pattern read ${dev(DEVICE_TOPICS.rotateRejected)}`,
    '# Fleet commands (rotate-now, reattest) and the clock check.',
    `pattern read ${dev(DEVICE_TOPICS.command)}`,
    `pattern write ${dev(DEVICE_TOPICS.timeRequest)}`,
    `pattern read ${dev(DEVICE_TOPICS.timeReply)}`,
    '# Fleet-wide reads for every client on this listener: the trust bundle, and the CRL (parts of the',
    '# complete CRL and the delta; only the bridge writes). mosquitto warns that these two patterns lack',
    '# %u/%c: expected. `topic` lines before the first `user` line would not do: they bind only clients',
    '# without a username, and here every client has one (its certificate CN).',
    `pattern read ${topics.base}/${FLEET_TOPICS.trustBundle}`,
    `pattern read ${topics.allCrl()}`,
    '',
    REVOKED_BEGIN,
    REVOKED_END,
    '',
  ].join('\n');
  return { conf, enrollAcl, deviceAcl: withRevokedIdentities(deviceAcl, input.revokedIdentities ?? []) };
}

const REVOKED_BEGIN = '# BEGIN revoked identities (rewritten by the revocation service)';
const REVOKED_END = '# END revoked identities';

/**
 * The device ACL with `ids` stripped of every right: a `user <id>` entry with `topic deny #`. mosquitto
 * checks a client's own entries before the `pattern` lines and an explicit deny there ends the check
 * (verified with mosquitto 2.0.11 and an independent client: test/revocation). The ACL is checked on
 * every delivery and reread on SIGHUP, so this cuts an open session's rights within a reload, which a
 * new CRL alone does not (it only refuses new handshakes). Replaces the section between the markers
 * and leaves the rest of the file as generated.
 */
export function withRevokedIdentities(acl: string, ids: readonly string[]): string {
  const begin = acl.indexOf(REVOKED_BEGIN);
  const end = acl.indexOf(REVOKED_END);
  if (begin < 0 || end < begin) throw new CodedError('BROKER_CONFIG_INVALID', 'device ACL has no revoked-identities section');
  for (const id of ids) {
    if (!/^[A-Za-z0-9:._-]{1,128}$/.test(id)) throw new CodedError('BROKER_CONFIG_INVALID', `cannot write identity ${JSON.stringify(id)} into the ACL`);
  }
  const entries = [...new Set(ids)].sort().flatMap((id) => [`user ${id}`, 'topic deny #']);
  return acl.slice(0, begin) + [REVOKED_BEGIN, ...entries, ''].join('\n') + acl.slice(end);
}
