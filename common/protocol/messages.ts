import { REJECTION_CODE_LIST, REJECTION_CODES, type RejectionCode } from './errors.js';
import {
  array,
  base64,
  bool,
  int,
  literal,
  object,
  oneOf,
  optional,
  parseMessage,
  str,
  type Infer,
  type Schema,
} from './schema.js';
import { DEVICE_ID_PATTERN, type DeviceTopic, type RejectionTopic } from './topics.js';

/**
 * The protocol contract: one typed map from topic to payload, with the runtime schema and size limit
 * each message is validated against before use. Version 1. See docs/protocol.md.
 *
 * Every message is a JSON envelope `{ v, requestId, sentAt, body }`; a rejection replaces `body` with
 * `error`. `requestId` identifies one logical request across QoS1 redelivery and retries: the bridge
 * answers a repeated requestId with the answer it gave the first time (never a second certificate).
 * Requesters subscribe to their response topics before publishing.
 */
export const PROTOCOL_VERSION = 1;

/** Hard ceiling for any message on any topic; per-topic limits below are tighter. */
export const MAX_MESSAGE_BYTES = 64 * 1024;

const requestId = str({ min: 8, max: 64, pattern: /^[A-Za-z0-9_-]+$/ });
const deviceId = str({ max: 64, pattern: DEVICE_ID_PATTERN });
const pem = str({ max: 8192, pattern: /^-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\s*$/ });
const timestamp = int({ min: 0, max: 8_640_000_000_000_000 });

function envelope<B>(body: Schema<B>) {
  return object({ v: literal(PROTOCOL_VERSION), requestId, sentAt: timestamp, body });
}

const serial = str({ min: 2, max: 64, pattern: /^[0-9a-f]+$/ });

/**
 * Device → bridge: start enrollment. Everything the bridge verifies before it issues a challenge.
 * `mode: 'reattest'` (no token) is for a registered, enrolled device whose identity expired while it
 * was offline or became unusable: the same EK/AK credential activation and key certification, with EK
 * and AK required to match what the inventory recorded at enrollment.
 */
export const enrollRequestBody = object({
  deviceId,
  /** Default 'token'. */
  mode: optional(oneOf(['token', 'reattest'] as const)),
  /** The one-time enrollment token from the bootstrap config (the bridge stores only its hash). Required in mode 'token', absent in 'reattest'. */
  token: optional(str({ min: 16, max: 128, pattern: /^[A-Za-z0-9_-]+$/ })),
  ekKind: oneOf(['rsa', 'ecc'] as const),
  /**
   * DER EK certificate as read from the TPM's NV index. Absent only for a TPM without one, which the
   * bridge accepts when the device was registered under the factory-trusted EK policy.
   */
  ekCertificate: optional(base64({ maxBytes: 4096, minBytes: 64 })),
  /** Marshalled TPM2B_PUBLIC of the EK (the bridge checks it against the certificate). */
  ekPublic: base64({ maxBytes: 1024, minBytes: 16 }),
  /** Marshalled TPM2B_PUBLIC of the attestation key. */
  akPublic: base64({ maxBytes: 512, minBytes: 16 }),
  /** Marshalled TPM2B_PUBLIC of the new identity key. */
  keyPublic: base64({ maxBytes: 512, minBytes: 16 }),
  /** DER PKCS#10 request signed by the identity key inside the TPM. */
  csr: base64({ maxBytes: 2048, minBytes: 64 }),
});

/** Bridge → device: prove EK possession (credential activation) and certify the key bound to `nonce`. */
export const enrollChallengeBody = object({
  challengeId: str({ min: 16, max: 64, pattern: /^[A-Za-z0-9_-]+$/ }),
  /** Marshalled TPM2B_ID_OBJECT from MakeCredential(EK, Name(AK), secret). */
  credentialBlob: base64({ maxBytes: 1024, minBytes: 8 }),
  /** Marshalled TPM2B_ENCRYPTED_SECRET. */
  encryptedSecret: base64({ maxBytes: 1024, minBytes: 8 }),
  /** Qualifying data the device must pass to TPM2_Certify of its identity key. */
  nonce: base64({ maxBytes: 32, minBytes: 32 }),
  expiresAt: timestamp,
});

/** Device → bridge: the activated secret and the TPM's certification of the identity key. */
export const enrollProofBody = object({
  challengeId: str({ min: 16, max: 64, pattern: /^[A-Za-z0-9_-]+$/ }),
  secret: base64({ maxBytes: 64, minBytes: 16 }),
  /** TPMS_ATTEST from TPM2_Certify(identity key, AK, nonce). */
  certifyInfo: base64({ maxBytes: 1024, minBytes: 16 }),
  /** Marshalled TPMT_SIGNATURE of the AK over certifyInfo. */
  certifySignature: base64({ maxBytes: 600, minBytes: 8 }),
});

/** Bridge → device: the issued certificate. */
export const enrollAcceptedBody = object({
  deviceId,
  certificate: pem,
  /** Issuing CA chain, leaf's issuer first. */
  chain: array(pem, { min: 1, max: 4 }),
  /** Roots the device trusts for the fleet (broker server certs chain to these too). */
  trustBundle: array(pem, { min: 1, max: 8 }),
  serial,
  notAfter: timestamp,
});

/** What a device reports as its state (the agent's state machine, see agent/README.md). */
export const DEVICE_STATES = ['enrolling', 'online', 'offline', 'rotating', 'reattesting', 'revoked', 'error'] as const;

/**
 * Device → fleet (retained): availability and identity state; the last will sets `online: false`,
 * `state: 'offline'`. Republished on every (re)connect and on every change.
 */
export const deviceStatusBody = object({
  deviceId,
  online: bool,
  state: oneOf(DEVICE_STATES),
  certSerial: optional(serial),
  certNotAfter: optional(timestamp),
  /** A/B key slot the identity lives in. */
  slot: optional(oneOf(['A', 'B'] as const)),
  lastRotationAt: optional(timestamp),
  /** 'ok' or the code of the last failed rotation. */
  lastRotationResult: optional(str({ max: 64, pattern: /^[A-Za-z0-9_]+$/ })),
  /**
   * Device clock minus fleet clock where the agent knows it to be off by more than 30 s (behind its
   * clock floor, or measured against the fleet's time service either way), else 0.
   */
  clockSkewMs: optional(int({ min: -8_640_000_000_000_000, max: 8_640_000_000_000_000 })),
  /** The code that stopped progress, in state 'error' or 'revoked'. */
  errorCode: optional(str({ max: 64, pattern: /^[A-Za-z0-9_]+$/ })),
  agentVersion: optional(str({ max: 32 })),
  tpmManufacturer: optional(str({ max: 16 })),
  tpmFirmware: optional(str({ max: 32 })),
  /** The EK the device attests with: its template and certificate index, e.g. 'H-3 ECC P-384 0x01c00016'. */
  tpmEk: optional(str({ max: 48, pattern: /^[A-Za-z0-9 .\-]+$/ })),
  /** Outbox events waiting for delivery, and non-security events dropped because it was full. */
  outboxPending: optional(int({ min: 0, max: 1_000_000_000 })),
  outboxDropped: optional(int({ min: 0, max: 1_000_000_000 })),
  /** Number of the newest fleet CRL the device holds (decimal), and the signed trust bundle version it uses. */
  crlNumber: optional(str({ min: 1, max: 49, pattern: /^[0-9]+$/ })),
  trustBundleVersion: optional(int({ min: 1, max: Number.MAX_SAFE_INTEGER })),
});

/** Device → bridge (rotation, over mTLS): ask for a nonce to certify the next key over. */
export const rotateBeginBody = object({
  deviceId,
  /** The certificate the device uses now; the bridge refuses one that is expired, superseded or revoked. */
  currentSerial: serial,
});

/** Bridge → device: qualifying data for TPM2_Certify of the new key by the enrollment AK. */
export const rotateChallengeBody = object({
  rotationId: str({ min: 16, max: 64, pattern: /^[A-Za-z0-9_-]+$/ }),
  nonce: base64({ maxBytes: 32, minBytes: 32 }),
  expiresAt: timestamp,
});

/** Device → bridge: the new key, its certification by the AK over the nonce, and its CSR. */
export const rotateRequestBody = object({
  rotationId: str({ min: 16, max: 64, pattern: /^[A-Za-z0-9_-]+$/ }),
  /** TPM2B_PUBLIC of the AK; its Name must be the one recorded at enrollment. */
  akPublic: base64({ maxBytes: 512, minBytes: 16 }),
  /** TPM2B_PUBLIC of the new identity key. */
  keyPublic: base64({ maxBytes: 512, minBytes: 16 }),
  /** TPMS_ATTEST from TPM2_Certify(new key, AK, nonce) and the AK's TPMT_SIGNATURE over it. */
  certifyInfo: base64({ maxBytes: 1024, minBytes: 16 }),
  certifySignature: base64({ maxBytes: 600, minBytes: 8 }),
  /** DER PKCS#10 signed by the new key inside the TPM. */
  csr: base64({ maxBytes: 2048, minBytes: 64 }),
});

/** Device → bridge: the device is connected with `serial`; retire its other certificates. */
export const rotateConfirmBody = object({
  serial,
  previousSerial: serial,
});

/** Bridge → device: the serials now marked superseded (none when already confirmed). */
export const rotateConfirmedBody = object({
  serial,
  superseded: array(serial, { max: 16 }),
});

/**
 * Outbox event kinds. Security events are never dropped by the device outbox; the others may be,
 * counted, when it is full (see agent/README.md).
 */
export const EVENT_TYPES = ['enrolled', 'rotated', 'rotation_failed', 'reattested', 'revoked', 'clock_skew', 'events_dropped'] as const;
export type EventType = (typeof EVENT_TYPES)[number];
export const SECURITY_EVENTS: ReadonlySet<EventType> = new Set(['enrolled', 'rotated', 'rotation_failed', 'reattested', 'revoked']);

/** Device → bridge: one event. The envelope's requestId is the event id (the bridge deduplicates by it). */
export const deviceEventBody = object({
  type: oneOf(EVENT_TYPES),
  /** Device clock when the event happened. */
  at: timestamp,
  /** Per-device sequence number, increasing in outbox order. */
  seq: int({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  serial: optional(serial),
  previousSerial: optional(serial),
  slot: optional(oneOf(['A', 'B'] as const)),
  code: optional(str({ max: 64, pattern: /^[A-Za-z0-9_]+$/ })),
  message: optional(str({ max: 256 })),
  skewMs: optional(int({ min: -8_640_000_000_000_000, max: 8_640_000_000_000_000 })),
  count: optional(int({ min: 0, max: 1_000_000_000 })),
});

/**
 * Bridge → device: the event whose id is the envelope's requestId is recorded in the inventory (`new`
 * false: it was there already, a resend). Only then does the device's outbox delete it: a broker that
 * acknowledged the publish (PUBACK) may still lose it (SIGKILL before it saved or forwarded it).
 */
export const eventsAckBody = object({ new: bool });

/** Commands the fleet may send a device (`command` topic). */
export const DEVICE_COMMANDS = ['rotate-now', 'reattest'] as const;
export type DeviceCommandName = (typeof DEVICE_COMMANDS)[number];

/**
 * Bridge → device (retained): one command. The envelope's requestId is the command id: the device runs
 * each id once (it remembers the ids it ran) and ignores a command whose `expiresAt` has passed on its
 * judged clock. `notBefore` spreads a wave of commands: the device acts at a random point between
 * receipt and `notBefore + jitterSec`.
 */
export const deviceCommandBody = object({
  command: oneOf(DEVICE_COMMANDS),
  issuedAt: timestamp,
  expiresAt: timestamp,
  jitterSec: int({ min: 0, max: 86_400 }),
  /** Who asked (an operator id), for the device's log and events. */
  by: str({ max: 64, pattern: /^[A-Za-z0-9._:-]+$/ }),
});

/** Device → bridge: what time is it? `sentAt` (envelope) is the device clock at sending. */
export const timeRequestBody = object({});

/** Bridge → device: the bridge clock when it answered, echoing the request's device time. */
export const timeReplyBody = object({
  deviceSentAt: timestamp,
  serverTime: timestamp,
});

export const rejectionError = object({
  code: oneOf(REJECTION_CODE_LIST),
  message: str({ max: 512 }),
  retryable: bool,
  retryAfterSec: optional(int({ min: 0, max: 86_400 })),
});

export const rejectionSchema = object({ v: literal(PROTOCOL_VERSION), requestId, sentAt: timestamp, error: rejectionError });

/** The typed topic → payload map. `maxBytes` is enforced before JSON parsing. */
export const MESSAGES = {
  enroll: { schema: envelope(enrollRequestBody), maxBytes: 16 * 1024 },
  enrollChallenge: { schema: envelope(enrollChallengeBody), maxBytes: 8 * 1024 },
  enrollProof: { schema: envelope(enrollProofBody), maxBytes: 8 * 1024 },
  enrollAccepted: { schema: envelope(enrollAcceptedBody), maxBytes: 48 * 1024 },
  enrollRejected: { schema: rejectionSchema, maxBytes: 2 * 1024 },
  status: { schema: envelope(deviceStatusBody), maxBytes: 4 * 1024 },
  rotateBegin: { schema: envelope(rotateBeginBody), maxBytes: 1024 },
  rotateChallenge: { schema: envelope(rotateChallengeBody), maxBytes: 1024 },
  rotateRequest: { schema: envelope(rotateRequestBody), maxBytes: 8 * 1024 },
  rotateAccepted: { schema: envelope(enrollAcceptedBody), maxBytes: 48 * 1024 },
  rotateConfirm: { schema: envelope(rotateConfirmBody), maxBytes: 1024 },
  rotateConfirmed: { schema: envelope(rotateConfirmedBody), maxBytes: 2 * 1024 },
  rotateRejected: { schema: rejectionSchema, maxBytes: 2 * 1024 },
  events: { schema: envelope(deviceEventBody), maxBytes: 2 * 1024 },
  eventsAck: { schema: envelope(eventsAckBody), maxBytes: 512 },
  command: { schema: envelope(deviceCommandBody), maxBytes: 1024 },
  timeRequest: { schema: envelope(timeRequestBody), maxBytes: 512 },
  timeReply: { schema: envelope(timeReplyBody), maxBytes: 512 },
} as const satisfies Record<DeviceTopic, { schema: Schema<unknown>; maxBytes: number }>;

export type MessageOf<T extends DeviceTopic> = Infer<(typeof MESSAGES)[T]['schema']>;
export type BodyOf<T extends Exclude<DeviceTopic, RejectionTopic>> = MessageOf<T>['body'];
export type Rejection = Infer<typeof rejectionSchema>;
export type EnrollRequest = Infer<typeof enrollRequestBody>;
export type EnrollChallenge = Infer<typeof enrollChallengeBody>;
export type EnrollProof = Infer<typeof enrollProofBody>;
export type EnrollAccepted = Infer<typeof enrollAcceptedBody>;
export type DeviceStatus = Infer<typeof deviceStatusBody>;
export type DeviceState = (typeof DEVICE_STATES)[number];
export type RotateBegin = Infer<typeof rotateBeginBody>;
export type RotateChallenge = Infer<typeof rotateChallengeBody>;
export type RotateRequest = Infer<typeof rotateRequestBody>;
export type RotateConfirm = Infer<typeof rotateConfirmBody>;
export type RotateConfirmed = Infer<typeof rotateConfirmedBody>;
export type DeviceEvent = Infer<typeof deviceEventBody>;
export type DeviceCommand = Infer<typeof deviceCommandBody>;
export type TimeReply = Infer<typeof timeReplyBody>;

/** Validates an incoming payload for `topic` (size, JSON, schema). Throws SchemaError. */
export function decode<T extends DeviceTopic>(topic: T, payload: Buffer | string): MessageOf<T> {
  const { schema, maxBytes } = MESSAGES[topic];
  return parseMessage(payload, schema as Schema<MessageOf<T>>, Math.min(maxBytes, MAX_MESSAGE_BYTES));
}

/** Binary fields travel as base64; everything else as is. */
function toWire(value: unknown): unknown {
  if (Buffer.isBuffer(value)) return value.toString('base64');
  if (Array.isArray(value)) return value.map(toWire);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined).map(([k, v]) => [k, toWire(v)]));
  }
  return value;
}

/** Serializes a request/response envelope; the result always passes `decode` for the same topic. */
export function encode<T extends Exclude<DeviceTopic, RejectionTopic>>(
  _topic: T,
  requestIdValue: string,
  sentAt: number,
  body: BodyOf<T>,
): Buffer {
  return Buffer.from(JSON.stringify({ v: PROTOCOL_VERSION, requestId: requestIdValue, sentAt, body: toWire(body) }));
}

export function encodeRejection(
  requestIdValue: string,
  sentAt: number,
  code: RejectionCode,
  opts?: { message?: string; retryAfterSec?: number },
): Buffer {
  const error = {
    code,
    message: opts?.message ?? REJECTION_CODES[code].message,
    retryable: REJECTION_CODES[code].retryable,
    ...(opts?.retryAfterSec === undefined ? {} : { retryAfterSec: opts.retryAfterSec }),
  };
  return Buffer.from(JSON.stringify({ v: PROTOCOL_VERSION, requestId: requestIdValue, sentAt, error }));
}
