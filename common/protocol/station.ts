import { array, base64, bool, int, literal, object, oneOf, optional, parseMessage, SchemaError, str, type Infer, type Schema } from './schema.js';
import { DEVICE_ID_PATTERN, type Topics } from './topics.js';
import { ROLE_MEMBER_ID_PATTERN, commandTopicFamily } from './command-topics.js';

/**
 * Factory station commands: request/reply over MQTT on the mutual-TLS listener, version 1.
 *   `<base>/stations/<station id>/commands/<command>`        station → bridge, QoS1, not retained
 *   `<base>/stations/<station id>/commands/<command>/reply`  bridge → station
 * `<station id>` is the station certificate's CN without `role:station:`. The broker's ACL lets
 * `role:station:<id>` write only `<base>/stations/<id>/commands/+` and read only
 * `<base>/stations/<id>/commands/+/reply`, so the topic names an authenticated station and no station
 * reads another's replies.
 *
 * `register`: one to REGISTER_MAX_DEVICES devices, each with its EK certificate and the SHA-256 of
 * a one-time enrollment token the station minted. The token itself never travels: it goes only into
 * the device's bootstrap file, which the station writes after the bridge acknowledged the device.
 *
 * Rules (the same as common/protocol/operator.ts):
 * - The bridge validates the payload (size limit first, then JSON, then the closed schema) before using
 *   any field. A retained message is never taken as a command.
 * - `requestId` names one logical request of one station: a repeat (QoS1 redelivery, a retry after a
 *   lost reply) gets the first answer byte for byte and changes nothing. The same id with a different
 *   payload is refused (REQUEST_ID_REUSED). An answer holding a retryable per-device refusal is not
 *   remembered: the repeat is worked again, and devices registered meanwhile come back `unchanged`.
 * - Every command is answered exactly once on its reply topic: `ok: true` with one result per device
 *   in request order, or `ok: false` for the whole request with a code from STATION_REPLY_CODES. A
 *   refusal of a payload that failed the schema carries no `requestId`.
 * - Registration is idempotent per device: the same device, EK, metadata and token again is
 *   `unchanged` (nothing written); the same device and EK with new metadata or a new token is
 *   `updated` (the new token supersedes the device's unused ones); a new device is `registered`.
 */

/** Station ids go into topics and ACL lines: no MQTT wildcards, no '/'. */
export const STATION_ID_PATTERN = ROLE_MEMBER_ID_PATTERN;
export const STATION_ROLE_PREFIX = 'role:station:';

export function isStationId(id: string): boolean {
  return STATION_ID_PATTERN.test(id);
}

/** The station id of a certificate CN `role:station:<id>`; undefined for any other CN. */
export function stationIdOfCommonName(cn: string): string | undefined {
  if (!cn.startsWith(STATION_ROLE_PREFIX)) return undefined;
  const id = cn.slice(STATION_ROLE_PREFIX.length);
  return isStationId(id) ? id : undefined;
}

export const STATION_COMMANDS = ['register'] as const;
export type StationCommand = (typeof STATION_COMMANDS)[number];

export type StationTopicErrorCode = 'TOPIC_INVALID_STATION_ID';

const family = commandTopicFamily('stations', STATION_COMMANDS, 'TOPIC_INVALID_STATION_ID' satisfies StationTopicErrorCode, 'station');

/** The command topic of `stationId` and its reply topic. Throws TOPIC_INVALID_STATION_ID. */
export function stationTopics(topics: Topics, stationId: string, command: StationCommand): { command: string; reply: string } {
  return family.topics(topics, stationId, command);
}

/** Subscription filter matching `command` from every station (the bridge's side). */
export function allStationCommands(topics: Topics, command: StationCommand): string {
  return family.all(topics, command);
}

/** Splits an incoming command topic into station id and command; undefined for anything else (replies included). */
export function parseStationCommand(topics: Topics, topic: string): { stationId: string; command: StationCommand } | undefined {
  const p = family.parse(topics, topic);
  return p && { stationId: p.id, command: p.command };
}

/**
 * Device metadata (model, serial, owner, whatever the line records): a flat, bounded map of strings.
 * The schema module has closed objects only, so this open-keyed one is built here.
 */
const METADATA_KEY = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/;
export const METADATA_MAX_KEYS = 32;
export const METADATA_MAX_VALUE = 256;

export const metadataSchema: Schema<Record<string, string>> = {
  parse(v, path) {
    const at = (k: string) => (path ? `${path}.${k}` : k);
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new SchemaError('SCHEMA_INVALID', path, 'expected an object');
    const entries = Object.entries(v);
    if (entries.length > METADATA_MAX_KEYS) throw new SchemaError('SCHEMA_INVALID', path, `more than ${METADATA_MAX_KEYS} keys`);
    const out: Record<string, string> = {};
    for (const [k, value] of entries) {
      if (!METADATA_KEY.test(k)) throw new SchemaError('SCHEMA_INVALID', at(k), `key does not match ${METADATA_KEY}`);
      if (typeof value !== 'string') throw new SchemaError('SCHEMA_INVALID', at(k), 'expected a string');
      if (value.length > METADATA_MAX_VALUE) throw new SchemaError('SCHEMA_INVALID', at(k), `longer than ${METADATA_MAX_VALUE} characters`);
      out[k] = value;
    }
    return out;
  },
};

/** Key-order-insensitive metadata equality, since JSON round trips need not keep insertion order. */
export function sameMetadata(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.hasOwn(b, k) && a[k] === b[k]);
}

/** Station request ids: as the operator's (a person may type them). */
export const STATION_REQUEST_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
const requestId = str({ min: 1, max: 64, pattern: STATION_REQUEST_ID_PATTERN });
const hex64 = str({ min: 64, max: 64, pattern: /^[0-9a-f]{64}$/ });
const time = int({ min: 0, max: 8_640_000_000_000_000 });

/** Devices per `register` request. */
export const REGISTER_MAX_DEVICES = 32;
/** Size limit of a `register` request: below the broker's max_packet_size (64 KiB) with room for the topic. */
export const REGISTER_MAX_BYTES = 60 * 1024;
/** Size limit of its reply. */
export const REGISTER_REPLY_MAX_BYTES = 64 * 1024;
/** DER EK certificates larger than this are refused (real ones are 0.5–1.5 KB). */
export const EK_CERTIFICATE_MAX_BYTES = 4096;

/** DER SubjectPublicKeyInfo of an EK: RSA-4096 at most (~550 bytes). */
export const EK_PUBLIC_MAX_BYTES = 1024;

/**
 * One device of a `register` request. `ekPublicHash` is the hex SHA-256 of the DER SubjectPublicKeyInfo
 * of the key `ekCertificate` certifies (the bridge checks it). A TPM without an EK certificate comes
 * instead with `ekTrust: 'factory'` and the EK's SPKI in `ekPublic`, which the bridge accepts only from
 * the stations its factory-trusted EK policy names (docs/hardware.md). `tokenCreatedAt`/`tokenExpiresAt`
 * are the station's clock, ms since the epoch.
 */
export const stationDevice = object({
  deviceId: str({ max: 64, pattern: DEVICE_ID_PATTERN }),
  ekKind: oneOf(['rsa', 'ecc'] as const),
  /** DER, standard base64. Absent for a factory-trusted EK. */
  ekCertificate: optional(base64({ maxBytes: EK_CERTIFICATE_MAX_BYTES, minBytes: 1 })),
  ekTrust: optional(literal('factory')),
  /** DER SubjectPublicKeyInfo of a factory-trusted EK, standard base64. */
  ekPublic: optional(base64({ maxBytes: EK_PUBLIC_MAX_BYTES, minBytes: 1 })),
  ekPublicHash: hex64,
  metadata: metadataSchema,
  tokenHash: hex64,
  tokenCreatedAt: time,
  tokenExpiresAt: time,
});

export const stationRegisterRequest = object({
  v: literal(1),
  requestId,
  devices: array(stationDevice, { min: 1, max: REGISTER_MAX_DEVICES }),
});

/**
 * Codes of a refusal, of the whole request (`ok: false`) or of one device (a result with `ok: false`).
 * `retryable`: the same request may succeed later unchanged. The message next to each is what a
 * refusal says when the code's own message would reveal internals.
 */
export const STATION_REPLY_CODES = {
  SCHEMA_TOO_LARGE: { retryable: false, message: 'command exceeds its size limit' },
  SCHEMA_NOT_JSON: { retryable: false, message: 'command is not JSON' },
  SCHEMA_INVALID: { retryable: false, message: 'command failed schema validation' },
  /** This requestId was used for another payload. */
  REQUEST_ID_REUSED: { retryable: false, message: 'requestId already used for another request' },
  /**
   * Well-formed but inconsistent: ekPublicHash is not the hash of the certificate's key, ekKind is not
   * its key type, the token is already expired, lasts longer than a year or expires before it was
   * created, or the device appears twice in the request.
   */
  REGISTRATION_INVALID: { retryable: false, message: 'invalid registration' },
  /** The device id is registered with another EK, the EK with another device id, or the token hash is another device's. */
  REGISTRATION_CONFLICT: { retryable: false, message: 'conflicts with a registered device' },
  /** The device is revoked: a new token would not let it enroll again. */
  REGISTRATION_REVOKED: { retryable: false, message: 'device is revoked' },
  /** The device enrolled after this token was minted, with another token: the token is stale. */
  REGISTRATION_SUPERSEDED: { retryable: false, message: 'token minted before the device last enrolled' },
  /** The EK certificate does not chain to a manufacturer the fleet trusts (or cannot be parsed). */
  EK_UNTRUSTED: { retryable: false, message: 'EK certificate not trusted' },
  /** The chain is valid but outside a validity period, under the fleet's strict EK validity policy. */
  EK_CERT_EXPIRED: { retryable: false, message: 'EK certificate outside its validity period' },
  /** The bridge cannot write its inventory now (shutting down, closed). */
  UNAVAILABLE: { retryable: true, message: 'fleet service temporarily unavailable' },
  INTERNAL: { retryable: true, message: 'internal error' },
} as const satisfies Record<string, { retryable: boolean; message: string }>;

export type StationReplyCode = keyof typeof STATION_REPLY_CODES;
export const STATION_REPLY_CODE_LIST = Object.keys(STATION_REPLY_CODES) as StationReplyCode[];

/** What registering one device did. */
export const REGISTER_OUTCOMES = ['registered', 'unchanged', 'updated'] as const;
export type RegisterOutcome = (typeof REGISTER_OUTCOMES)[number];

const message = str({ max: 200 });
const deviceAccepted = object({ deviceId: str({ max: 64, pattern: DEVICE_ID_PATTERN }), ok: literal(true), outcome: oneOf(REGISTER_OUTCOMES) });
const deviceRefused = object({
  deviceId: str({ max: 64, pattern: DEVICE_ID_PATTERN }),
  ok: literal(false),
  code: oneOf(STATION_REPLY_CODE_LIST),
  message,
  retryable: bool,
});

export const stationRefusal = object({
  v: literal(1),
  /** Absent when the command failed the schema. */
  requestId: optional(requestId),
  ok: literal(false),
  code: oneOf(STATION_REPLY_CODE_LIST),
  message,
  retryable: bool,
});

/** A reply or a result is one of two closed shapes, told apart by `ok`. */
function okOr<A, R>(accepted: Schema<A>, refused: Schema<R>): Schema<A | R> {
  return {
    parse(v, path) {
      const ok = typeof v === 'object' && v !== null && (v as { ok?: unknown }).ok === true;
      return ok ? accepted.parse(v, path) : refused.parse(v, path);
    },
  };
}

export const stationRegisterAccepted = object({
  v: literal(1),
  requestId,
  ok: literal(true),
  /** One per requested device, in request order. */
  results: array(okOr(deviceAccepted, deviceRefused), { min: 1, max: REGISTER_MAX_DEVICES }),
});

export type StationDevice = Infer<typeof stationDevice>;
export type StationRegisterRequest = Infer<typeof stationRegisterRequest>;
export type StationRefusal = Infer<typeof stationRefusal>;
export type StationRegisterAccepted = Infer<typeof stationRegisterAccepted>;
export type StationDeviceResult = StationRegisterAccepted['results'][number];
export type StationRegisterReply = StationRegisterAccepted | StationRefusal;

export const STATION_MESSAGES = {
  register: { request: stationRegisterRequest, reply: okOr(stationRegisterAccepted, stationRefusal), maxBytes: REGISTER_MAX_BYTES, replyMaxBytes: REGISTER_REPLY_MAX_BYTES },
} as const satisfies Record<StationCommand, { request: Schema<unknown>; reply: Schema<unknown>; maxBytes: number; replyMaxBytes: number }>;

/** Validates a register command (size, JSON, schema). Throws SchemaError. */
export function decodeStationRegister(payload: Buffer | string): StationRegisterRequest {
  return parseMessage(payload, stationRegisterRequest, REGISTER_MAX_BYTES);
}

/** Validates a register reply (the station's side). Throws SchemaError. */
export function decodeStationRegisterReply(payload: Buffer | string): StationRegisterReply {
  return parseMessage(payload, STATION_MESSAGES.register.reply, REGISTER_REPLY_MAX_BYTES);
}

/** A register command; binary fields base64. Throws SchemaError when it exceeds REGISTER_MAX_BYTES. */
export function encodeStationRegister(requestIdValue: string, devices: readonly StationDevice[]): Buffer {
  const out = Buffer.from(
    JSON.stringify({
      v: 1,
      requestId: requestIdValue,
      devices: devices.map((d) => ({
        deviceId: d.deviceId,
        ekKind: d.ekKind,
        ...(d.ekCertificate ? { ekCertificate: d.ekCertificate.toString('base64') } : {}),
        ...(d.ekTrust ? { ekTrust: d.ekTrust } : {}),
        ...(d.ekPublic ? { ekPublic: d.ekPublic.toString('base64') } : {}),
        ekPublicHash: d.ekPublicHash,
        metadata: d.metadata,
        tokenHash: d.tokenHash,
        tokenCreatedAt: d.tokenCreatedAt,
        tokenExpiresAt: d.tokenExpiresAt,
      })),
    }),
  );
  if (out.length > REGISTER_MAX_BYTES) throw new SchemaError('SCHEMA_TOO_LARGE', '', `register command of ${out.length} bytes exceeds ${REGISTER_MAX_BYTES}`);
  return out;
}

/** A per-device refusal; `message` defaults to the code's own and is cut to 200 characters. */
export function deviceRefusal(deviceId: string, code: StationReplyCode, messageText?: string): StationDeviceResult {
  return { deviceId, ok: false, code, message: (messageText ?? STATION_REPLY_CODES[code].message).slice(0, 200), retryable: STATION_REPLY_CODES[code].retryable };
}

export function encodeStationRegisterAccepted(requestIdValue: string, results: readonly StationDeviceResult[]): Buffer {
  return Buffer.from(
    JSON.stringify({
      v: 1,
      requestId: requestIdValue,
      ok: true,
      results: results.map((r) => (r.ok ? { deviceId: r.deviceId, ok: true, outcome: r.outcome } : { deviceId: r.deviceId, ok: false, code: r.code, message: r.message, retryable: r.retryable })),
    }),
  );
}

/** A refusal of the whole request; `message` defaults to the code's own and is cut to 200 characters. */
export function encodeStationRefusal(requestIdValue: string | undefined, code: StationReplyCode, messageText?: string): Buffer {
  return Buffer.from(
    JSON.stringify({
      v: 1,
      ...(requestIdValue === undefined ? {} : { requestId: requestIdValue }),
      ok: false,
      code,
      message: (messageText ?? STATION_REPLY_CODES[code].message).slice(0, 200),
      retryable: STATION_REPLY_CODES[code].retryable,
    }),
  );
}
