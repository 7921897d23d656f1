import { DEVICE_COMMANDS, DEVICE_STATES, MAX_MESSAGE_BYTES, deviceStatusBody, type DeviceStatus } from './messages.js';
import { array, bool, int, literal, object, oneOf, optional, parseMessage, record, SchemaError, str, type Infer, type Schema } from './schema.js';
import { DEVICE_ID_PATTERN, type Topics } from './topics.js';
import { ROLE_MEMBER_ID_PATTERN, commandTopicFamily } from './command-topics.js';
import { campaignCreateFields, campaignIdFields, campaignListFields, campaignReplyFields } from './operator-campaigns.js';

/**
 * Operator commands: request/reply over MQTT on the mutual-TLS listener, version 1.
 *   `<base>/operators/<operator id>/commands/<command>`        operator → bridge, QoS1, not retained
 *   `<base>/operators/<operator id>/commands/<command>/reply`  bridge → operator
 * `<operator id>` is the operator certificate's CN without `role:operator:`. The broker's ACL lets
 * `role:operator:<id>` write only `<base>/operators/<id>/commands/+` and read only
 * `<base>/operators/<id>/commands/+/reply`, so the topic names an authenticated operator and no
 * operator reads another's replies.
 *
 * Rules every command follows:
 * - The bridge validates the payload (size limit first, then JSON, then the closed schema) before using
 *   any field. A retained message is never taken as a command.
 * - `requestId` names one logical request of one operator: a repeat (QoS1 redelivery, a retry) gets
 *   the answer the first successful one got, byte for byte, and changes nothing. Refusals are not
 *   remembered: a refused request may be sent again, corrected, under the same id.
 * - Every command is answered exactly once on its reply topic, with `ok: true` and the command's
 *   result, or `ok: false` with a code from OPERATOR_REPLY_CODES. A refusal of a payload that failed
 *   the schema carries no `requestId` (nothing of it is trusted).
 */

/** Operator ids go into topics and ACL lines: no MQTT wildcards, no '/'. */
export const OPERATOR_ID_PATTERN = ROLE_MEMBER_ID_PATTERN;

export function isOperatorId(id: string): boolean {
  return OPERATOR_ID_PATTERN.test(id);
}

/**
 * Commands an operator can send (the topic's last segment). Queries (`devices`, `device`,
 * `certificates`, `history`, `campaign-status`, `campaigns`) change nothing; `token-reissue`,
 * `rotate-now`, `reattest`, `revoke` and the other campaign commands do.
 */
export const OPERATOR_COMMANDS = [
  'revoke',
  'devices',
  'device',
  'certificates',
  'history',
  'token-reissue',
  'rotate-now',
  'reattest',
  'campaign-create',
  'campaign-start',
  'campaign-pause',
  'campaign-resume',
  'campaign-abort',
  'campaign-status',
  'campaigns',
] as const;
export type OperatorCommand = (typeof OPERATOR_COMMANDS)[number];

export type OperatorTopicErrorCode = 'TOPIC_INVALID_OPERATOR_ID';

const family = commandTopicFamily('operators', OPERATOR_COMMANDS, 'TOPIC_INVALID_OPERATOR_ID' satisfies OperatorTopicErrorCode, 'operator');

/** The command topic of `operatorId` and its reply topic. Throws TOPIC_INVALID_OPERATOR_ID. */
export function operatorTopics(topics: Topics, operatorId: string, command: OperatorCommand): { command: string; reply: string } {
  return family.topics(topics, operatorId, command);
}

/** Subscription filter matching `command` from every operator (the bridge's side). */
export function allOperatorCommands(topics: Topics, command: OperatorCommand): string {
  return family.all(topics, command);
}

/** Splits an incoming command topic into operator id and command; undefined for anything else (replies included). */
export function parseOperatorCommand(topics: Topics, topic: string): { operatorId: string; command: OperatorCommand } | undefined {
  const p = family.parse(topics, topic);
  return p && { operatorId: p.id, command: p.command };
}

/** Operator request ids: shorter ones than the device protocol's are allowed (a person may type them). */
export const OPERATOR_REQUEST_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;
const requestId = str({ min: 1, max: 64, pattern: OPERATOR_REQUEST_ID_PATTERN });

/**
 * RFC 5280 5.3.1 CRLReason names an operator may give (removeFromCRL belongs to delta CRLs only). The
 * fleet CA's CRL signer uses the same list (broker-bridge/src/ca/crl.ts; a test keeps them equal).
 */
export const OPERATOR_REVOKE_REASONS = [
  'unspecified',
  'keyCompromise',
  'cACompromise',
  'affiliationChanged',
  'superseded',
  'cessationOfOperation',
  'certificateHold',
  'privilegeWithdrawn',
  'aACompromise',
] as const;
export type OperatorRevokeReason = (typeof OPERATOR_REVOKE_REASONS)[number];

/**
 * `revoke`: revoke a device (all its certificates) or one certificate by serial, with a reason. Exactly
 * one of `deviceId` and `serial` (else REVOCATION_BAD_REQUEST). A serial of a device certificate
 * revokes its device; any other serial of the issuing CA is listed in the CRL.
 */
export const operatorRevokeRequest = object({
  v: literal(1),
  requestId,
  deviceId: optional(str({ max: 64, pattern: DEVICE_ID_PATTERN })),
  /** Hex, either case, leading zeros allowed (the bridge normalizes it). */
  serial: optional(str({ max: 40, pattern: /^[0-9A-Fa-f]{1,40}$/ })),
  reason: oneOf(OPERATOR_REVOKE_REASONS),
});

/**
 * Codes of a refusal (`ok: false`). `retryable`: the same request may succeed later unchanged.
 * The message next to each is what a refusal says when the code's own message would reveal internals.
 */
export const OPERATOR_REPLY_CODES = {
  SCHEMA_TOO_LARGE: { retryable: false, message: 'command exceeds its size limit' },
  SCHEMA_NOT_JSON: { retryable: false, message: 'command is not JSON' },
  SCHEMA_INVALID: { retryable: false, message: 'command failed schema validation' },
  /** Well-formed but contradictory: both or neither of deviceId and serial, a zero serial. */
  REVOCATION_BAD_REQUEST: { retryable: false, message: 'invalid revocation request' },
  /** No such device. */
  REVOCATION_NOT_FOUND: { retryable: false, message: 'no such device' },
  /** The bridge's CRL state file is unreadable: operator action on the bridge host. */
  REVOCATION_STATE_INVALID: { retryable: false, message: 'revocation state is unreadable' },
  /** The bridge is shutting down. */
  REVOCATION_STOPPED: { retryable: true, message: 'revocation service stopped' },
  /** The device named is not registered. */
  DEVICE_NOT_FOUND: { retryable: false, message: 'no such device' },
  /** `rotate-now`/`reattest` for a device that never enrolled (it has no identity to renew). */
  DEVICE_NOT_ENROLLED: { retryable: false, message: 'device has not enrolled' },
  /** `token-reissue` for a device that enrolled already (a token would let a second TPM-less claim start). */
  DEVICE_ALREADY_ENROLLED: { retryable: false, message: 'device has enrolled already' },
  /** The device is revoked: no commands, no tokens. */
  DEVICE_REVOKED: { retryable: false, message: 'device is revoked' },
  /** No campaign with that id. */
  CAMPAIGN_NOT_FOUND: { retryable: false, message: 'no such campaign' },
  /** `campaign-create` with an id in use. */
  CAMPAIGN_EXISTS: { retryable: false, message: 'campaign exists' },
  /** The campaign is not in a state the command applies to (e.g. resume of a running one). */
  CAMPAIGN_STATE: { retryable: false, message: 'campaign is not in a state for this command' },
  /** The selector picks no enrolled, unrevoked device. */
  CAMPAIGN_EMPTY: { retryable: false, message: 'campaign selects no device' },
  /** Waves or gates out of bounds (waves must rise to 100%). */
  CAMPAIGN_INVALID: { retryable: false, message: 'invalid campaign plan' },
  /** A campaign kind this bridge does not run yet. */
  CAMPAIGN_KIND_UNSUPPORTED: { retryable: false, message: 'campaign kind not supported' },
  /** The CA backend (HSM) is failing or busy, or the bridge cannot reach the broker to publish. */
  UNAVAILABLE: { retryable: true, message: 'fleet service temporarily unavailable' },
  INTERNAL: { retryable: true, message: 'internal error' },
} as const satisfies Record<string, { retryable: boolean; message: string }>;

export type OperatorReplyCode = keyof typeof OPERATOR_REPLY_CODES;
export const OPERATOR_REPLY_CODE_LIST = Object.keys(OPERATOR_REPLY_CODES) as OperatorReplyCode[];

export const operatorRefusal = object({
  v: literal(1),
  /** Absent when the command failed the schema. */
  requestId: optional(requestId),
  ok: literal(false),
  code: oneOf(OPERATOR_REPLY_CODE_LIST),
  message: str({ max: 200 }),
  retryable: bool,
});

/**
 * `revoke` succeeded: `serials` newly revoked (empty when everything was revoked already), the number
 * of the CRL now in force (decimal), and whether the broker files were rewritten and the broker told
 * to reload (false: the bridge retries; the CRL is still published to devices).
 */
export const operatorRevokeAccepted = object({
  v: literal(1),
  requestId,
  ok: literal(true),
  serials: array(str({ min: 1, max: 40, pattern: /^[0-9a-f]+$/ }), { max: 1024 }),
  crlNumber: str({ min: 1, max: 48, pattern: /^\d+$/ }),
  enforced: bool,
});

export type OperatorRevokeRequest = Infer<typeof operatorRevokeRequest>;
export type OperatorRefusal = Infer<typeof operatorRefusal>;
export type OperatorRevokeAccepted = Infer<typeof operatorRevokeAccepted>;
export type OperatorRevokeReply = OperatorRevokeAccepted | OperatorRefusal;

/** A reply is one of two closed shapes, told apart by `ok`. */
function okOr<A, R>(accepted: Schema<A>, refused: Schema<R>): Schema<A | R> {
  return {
    parse(v, path) {
      const ok = typeof v === 'object' && v !== null && (v as { ok?: unknown }).ok === true;
      return ok ? accepted.parse(v, path) : refused.parse(v, path);
    },
  };
}

// ---- Queries and device commands ------------------------------------------------------------------

const timestamp = int({ min: 0, max: 8_640_000_000_000_000 });
const deviceIdField = str({ max: 64, pattern: DEVICE_ID_PATTERN });
/** Certificate serials as the inventory keeps them: lowercase hex. */
const serialField = str({ min: 1, max: 64, pattern: /^[0-9a-f]+$/ });
/** Free text that came from a device or a factory line (metadata values, event details): bounded. */
export const OPERATOR_TEXT_MAX = 256;
const text = str({ max: OPERATOR_TEXT_MAX });
const shortName = str({ min: 1, max: 64, pattern: /^[A-Za-z0-9._:-]+$/ });

const scalar: Schema<string | number | boolean> = {
  parse(v, path) {
    if (typeof v === 'boolean') return v;
    if (typeof v === 'number' && Number.isFinite(v)) return v;
    return text.parse(v, path);
  },
};

/** At most this many keys in a metadata or details map (the station's metadata has the same bound). */
export const OPERATOR_MAP_MAX_KEYS = 32;
const metadataMap = record(text, { maxKeys: OPERATOR_MAP_MAX_KEYS });
const detailsMap = record(scalar, { maxKeys: OPERATOR_MAP_MAX_KEYS });

/**
 * Where a device is in its life, from the inventory: registered (a token, no certificate yet),
 * enrolled (has had a certificate; it may have expired), revoked.
 */
export const OPERATOR_DEVICE_STATES = ['registered', 'enrolled', 'revoked'] as const;
export type OperatorDeviceState = (typeof OPERATOR_DEVICE_STATES)[number];
/** `devices --state`: an inventory state, or a state the device's agent last reported (its status). */
export const OPERATOR_STATE_FILTERS = [...new Set([...OPERATOR_DEVICE_STATES, ...DEVICE_STATES])] as ('registered' | 'enrolled' | (typeof DEVICE_STATES)[number])[];

/** Largest page of a list reply (`devices`, `certificates`); the bridge also keeps each reply under OPERATOR_REPLY_BUDGET_BYTES. */
export const OPERATOR_PAGE_MAX = 100;
/** Largest `history` reply, in audit events plus device events. */
export const OPERATOR_HISTORY_MAX = 200;
/**
 * The bridge keeps every reply under this many bytes (half the broker's 64 KiB packet limit) by
 * cutting a page short: a list reply then carries `nextCursor`, a history reply `truncated`.
 */
export const OPERATOR_REPLY_BUDGET_BYTES = 32 * 1024;

/** An accepted reply: the envelope and the command's fields. */
function accepted<S extends Record<string, Schema<unknown>>>(fields: S) {
  return object({ v: literal(1), requestId, ok: literal(true), ...fields });
}

/** The agent's own state as its status last said (common/protocol/messages.ts DEVICE_STATES). */
const agentState = oneOf(DEVICE_STATES);

/**
 * `devices`: registered devices, ordered by id, filtered (all filters must hold):
 * - `owner`, `model`: equal to the device's `owner` / `model` metadata (what the station records);
 * - `state`: the inventory state (OPERATOR_DEVICE_STATES) or the agent's last reported state;
 * - `expiringWithinDays`: enrolled, not revoked, current certificate's notAfter before now + N days
 *   (expired ones included);
 * - `staleSec`: enrolled, not revoked, not heard from (status or event; the enrollment counts) for N s.
 * Paginated: at most `limit` (default and max OPERATOR_PAGE_MAX) devices with ids after `cursor`;
 * `nextCursor` in the reply is the cursor of the next page, absent on the last one.
 */
export const operatorDevicesRequest = object({
  v: literal(1),
  requestId,
  owner: optional(str({ min: 1, max: OPERATOR_TEXT_MAX })),
  model: optional(str({ min: 1, max: OPERATOR_TEXT_MAX })),
  state: optional(oneOf(OPERATOR_STATE_FILTERS)),
  expiringWithinDays: optional(int({ min: 0, max: 3650 })),
  staleSec: optional(int({ min: 1, max: 10 * 366 * 86_400 })),
  limit: optional(int({ min: 1, max: OPERATOR_PAGE_MAX })),
  cursor: optional(deviceIdField),
});

export const operatorDeviceRow = object({
  deviceId: deviceIdField,
  state: oneOf(OPERATOR_DEVICE_STATES),
  owner: optional(text),
  model: optional(text),
  certSerial: optional(serialField),
  certNotAfter: optional(timestamp),
  lastSeenAt: optional(timestamp),
  online: optional(bool),
  agentState: optional(agentState),
});

export const operatorDevicesAccepted = accepted({
  devices: array(operatorDeviceRow, { max: OPERATOR_PAGE_MAX }),
  nextCursor: optional(deviceIdField),
});

/** A device command (`device`, `certificates`, `history`, `token-reissue`) names one device. */
const oneDevice = { v: literal(1), requestId, deviceId: deviceIdField };

/** `device`: one device's record, its last status and its current certificate (with PEM). */
export const operatorDeviceRequest = object(oneDevice);

/**
 * A device's last status as ingested: messages.ts deviceStatusBody without the device id (the same
 * schema, so the two cannot drift apart).
 */
export const operatorStatusSnapshot: Schema<Omit<DeviceStatus, 'deviceId'>> = {
  parse(v, path) {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new SchemaError('SCHEMA_INVALID', path, 'expected an object');
    if (Object.hasOwn(v, 'deviceId')) throw new SchemaError('SCHEMA_INVALID', path ? `${path}.deviceId` : 'deviceId', 'unknown property');
    const { deviceId: _, ...status } = deviceStatusBody.parse({ ...v, deviceId: 'status' }, path);
    return status;
  },
};

export const operatorDeviceDetail = object({
  deviceId: deviceIdField,
  state: oneOf(OPERATOR_DEVICE_STATES),
  metadata: metadataMap,
  ekKind: oneOf(['rsa', 'ecc'] as const),
  ekPublicHash: str({ max: 128 }),
  registeredAt: timestamp,
  enrolledAt: optional(timestamp),
  reattestedAt: optional(timestamp),
  lastRotationAt: optional(timestamp),
  revokedAt: optional(timestamp),
  revocationReason: optional(str({ max: 64 })),
  certSerial: optional(serialField),
  certNotAfter: optional(timestamp),
  lastSeenAt: optional(timestamp),
  online: optional(bool),
  status: optional(operatorStatusSnapshot),
});

/** Where a certificate is in its life: active (usable), superseded (retired by a newer one), revoked, expired. */
export const OPERATOR_CERTIFICATE_STATES = ['active', 'superseded', 'revoked', 'expired'] as const;

const certificateFields = {
  serial: serialField,
  kind: oneOf(['enroll', 'rotate', 'reattest'] as const),
  state: oneOf(OPERATOR_CERTIFICATE_STATES),
  /** The device's current certificate (the inventory's certSerial). */
  current: bool,
  notBefore: timestamp,
  notAfter: timestamp,
  issuedAt: timestamp,
  confirmedAt: optional(timestamp),
  supersededAt: optional(timestamp),
  revokedAt: optional(timestamp),
  revocationReason: optional(str({ max: 64 })),
};
export const operatorCertificateRow = object(certificateFields);

export const operatorDeviceAccepted = accepted({
  device: operatorDeviceDetail,
  certificate: optional(object({ ...certificateFields, pem: str({ max: 8192 }) })),
});

/** `certificates`: the device's certificates, newest issued first, at most `limit` (default and max OPERATOR_PAGE_MAX); `total` counts all. */
export const operatorCertificatesRequest = object({ ...oneDevice, limit: optional(int({ min: 1, max: OPERATOR_PAGE_MAX })) });

export const operatorCertificatesAccepted = accepted({
  deviceId: deviceIdField,
  certificates: array(operatorCertificateRow, { max: OPERATOR_PAGE_MAX }),
  total: int({ min: 0, max: Number.MAX_SAFE_INTEGER }),
});

/**
 * `history`: the device's newest audit events (fleet side: registration, enrollment, rotations,
 * revocation, operator commands) and device events (what the agent reported), each oldest first, at
 * most `limit` (default and max OPERATOR_HISTORY_MAX) together. `truncated`: older entries exist.
 * String details are cut to OPERATOR_TEXT_MAX characters.
 */
export const operatorHistoryRequest = object({ ...oneDevice, limit: optional(int({ min: 1, max: OPERATOR_HISTORY_MAX })) });

export const operatorAuditRow = object({ seq: int({ min: 0, max: Number.MAX_SAFE_INTEGER }), at: timestamp, type: str({ max: 64 }), details: optional(detailsMap) });
export const operatorEventRow = object({
  id: str({ max: 64 }),
  type: str({ max: 64 }),
  /** Device clock. */
  at: timestamp,
  /** Bridge clock. */
  receivedAt: timestamp,
  seq: int({ min: 0, max: Number.MAX_SAFE_INTEGER }),
  details: detailsMap,
});

export const operatorHistoryAccepted = accepted({
  deviceId: deviceIdField,
  audit: array(operatorAuditRow, { max: OPERATOR_HISTORY_MAX }),
  events: array(operatorEventRow, { max: OPERATOR_HISTORY_MAX }),
  truncated: bool,
});

/** Token lifetimes an operator may ask for; the bridge's default is its configured one (7 days). */
export const OPERATOR_TOKEN_TTL = { minSec: 300, maxSec: 30 * 86_400 } as const;

/**
 * `token-reissue`: a fresh one-time enrollment token for a registered device that has not enrolled
 * (its token expired or was lost). The bridge stores only the token's hash (superseding the device's
 * unused tokens) and returns the token in this one reply (and its repeats). Refused DEVICE_NOT_FOUND,
 * DEVICE_ALREADY_ENROLLED, DEVICE_REVOKED.
 */
export const operatorTokenReissueRequest = object({ ...oneDevice, ttlSec: optional(int({ min: OPERATOR_TOKEN_TTL.minSec, max: OPERATOR_TOKEN_TTL.maxSec })) });

export const operatorTokenReissueAccepted = accepted({
  deviceId: deviceIdField,
  token: str({ min: 16, max: 128, pattern: /^[A-Za-z0-9_-]+$/ }),
  tokenExpiresAt: timestamp,
});

/** Bounds of a device command's lifetime (`ttlSec`, default 1 day) and spread (`jitterSec`, default 0). */
export const OPERATOR_DEVICE_COMMAND = { defaultTtlSec: 86_400, minTtlSec: 60, maxTtlSec: 30 * 86_400, maxJitterSec: 86_400 } as const;

/**
 * `rotate-now` / `reattest`: the bridge publishes a retained device command (messages.ts
 * deviceCommandBody on the device's `commands` topic) with a fresh command id, `expiresAt` = now +
 * ttlSec and `jitterSec`; the device runs it once when it sees it (online now, or when it comes back
 * before it expires). A newer command replaces an older one not yet run. Refused DEVICE_NOT_FOUND,
 * DEVICE_NOT_ENROLLED, DEVICE_REVOKED; UNAVAILABLE when the bridge cannot publish.
 */
export const operatorDeviceCommandRequest = object({
  ...oneDevice,
  jitterSec: optional(int({ min: 0, max: OPERATOR_DEVICE_COMMAND.maxJitterSec })),
  ttlSec: optional(int({ min: OPERATOR_DEVICE_COMMAND.minTtlSec, max: OPERATOR_DEVICE_COMMAND.maxTtlSec })),
});

export const operatorDeviceCommandAccepted = accepted({
  deviceId: deviceIdField,
  command: oneOf(DEVICE_COMMANDS),
  /** The device command's id (its envelope requestId). */
  commandId: str({ min: 8, max: 64, pattern: /^[A-Za-z0-9_-]+$/ }),
  issuedAt: timestamp,
  expiresAt: timestamp,
  jitterSec: int({ min: 0, max: OPERATOR_DEVICE_COMMAND.maxJitterSec }),
  /** Who the device is told asked. */
  by: shortName,
});

// ---- Campaigns (fields: operator-campaigns.ts) -----------------------------------------------------

export const operatorCampaignCreateRequest = object({ v: literal(1), requestId, ...campaignCreateFields });
/** start, pause, resume, abort, status: one campaign. */
export const operatorCampaignRequest = object({ v: literal(1), requestId, ...campaignIdFields });
export const operatorCampaignsRequest = object({ v: literal(1), requestId });
export const operatorCampaignAccepted = accepted(campaignReplyFields);
export const operatorCampaignsAccepted = accepted(campaignListFields);

const reply = <A>(accepted: Schema<A>) => okOr(accepted, operatorRefusal);

/** The typed command → request/reply map, with the limits enforced before JSON parsing. */
export const OPERATOR_MESSAGES = {
  revoke: { request: operatorRevokeRequest, reply: reply(operatorRevokeAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  devices: { request: operatorDevicesRequest, reply: reply(operatorDevicesAccepted), maxBytes: 2048, replyMaxBytes: MAX_MESSAGE_BYTES },
  device: { request: operatorDeviceRequest, reply: reply(operatorDeviceAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  certificates: { request: operatorCertificatesRequest, reply: reply(operatorCertificatesAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  history: { request: operatorHistoryRequest, reply: reply(operatorHistoryAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  'token-reissue': { request: operatorTokenReissueRequest, reply: reply(operatorTokenReissueAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  'rotate-now': { request: operatorDeviceCommandRequest, reply: reply(operatorDeviceCommandAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  reattest: { request: operatorDeviceCommandRequest, reply: reply(operatorDeviceCommandAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  'campaign-create': { request: operatorCampaignCreateRequest, reply: reply(operatorCampaignAccepted), maxBytes: 40 * 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  'campaign-start': { request: operatorCampaignRequest, reply: reply(operatorCampaignAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  'campaign-pause': { request: operatorCampaignRequest, reply: reply(operatorCampaignAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  'campaign-resume': { request: operatorCampaignRequest, reply: reply(operatorCampaignAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  'campaign-abort': { request: operatorCampaignRequest, reply: reply(operatorCampaignAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  'campaign-status': { request: operatorCampaignRequest, reply: reply(operatorCampaignAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
  campaigns: { request: operatorCampaignsRequest, reply: reply(operatorCampaignsAccepted), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
} as const satisfies Record<OperatorCommand, { request: Schema<unknown>; reply: Schema<unknown>; maxBytes: number; replyMaxBytes: number }>;

export type OperatorRequestOf<C extends OperatorCommand> = Infer<(typeof OPERATOR_MESSAGES)[C]['request']>;
export type OperatorReplyOf<C extends OperatorCommand> = Infer<(typeof OPERATOR_MESSAGES)[C]['reply']>;
export type OperatorAcceptedOf<C extends OperatorCommand> = Extract<OperatorReplyOf<C>, { ok: true }>;
/** What a command's handler produces: the accepted reply without its envelope fields. */
export type OperatorResultOf<C extends OperatorCommand> = Omit<OperatorAcceptedOf<C>, 'v' | 'ok' | 'requestId'>;
export type OperatorDeviceRow = Infer<typeof operatorDeviceRow>;
export type OperatorCertificateRow = Infer<typeof operatorCertificateRow>;

/** Validates a command of any kind (size, JSON, schema). Throws SchemaError. */
export function decodeOperatorRequest<C extends OperatorCommand>(command: C, payload: Buffer | string): OperatorRequestOf<C> {
  const m = OPERATOR_MESSAGES[command];
  return parseMessage(payload, m.request as Schema<OperatorRequestOf<C>>, m.maxBytes);
}

/** Validates a reply of any kind (the operator's side). Throws SchemaError. */
export function decodeOperatorReply<C extends OperatorCommand>(command: C, payload: Buffer | string): OperatorReplyOf<C> {
  const m = OPERATOR_MESSAGES[command];
  return parseMessage(payload, m.reply as Schema<OperatorReplyOf<C>>, m.replyMaxBytes);
}

/** Serializes a command (`v` added; undefined fields are left out). Passes decodeOperatorRequest when the fields are in bounds. */
export function encodeOperatorRequest<C extends OperatorCommand>(_command: C, req: Omit<OperatorRequestOf<C>, 'v'>): Buffer {
  return Buffer.from(JSON.stringify({ v: 1, ...req }));
}

/** Serializes an accepted reply. */
export function encodeOperatorAccepted<C extends OperatorCommand>(_command: C, requestIdValue: string, result: OperatorResultOf<C>): Buffer {
  return Buffer.from(JSON.stringify({ v: 1, requestId: requestIdValue, ok: true, ...result }));
}

/** Size limit of a revoke command. */
export const OPERATOR_REVOKE_MAX_BYTES = OPERATOR_MESSAGES.revoke.maxBytes;

/** Validates a revoke command (size, JSON, schema). Throws SchemaError. */
export function decodeOperatorRevoke(payload: Buffer | string): OperatorRevokeRequest {
  return parseMessage(payload, operatorRevokeRequest, OPERATOR_MESSAGES.revoke.maxBytes);
}

/** Validates a revoke reply (the operator's side). Throws SchemaError. */
export function decodeOperatorRevokeReply(payload: Buffer | string): OperatorRevokeReply {
  return parseMessage(payload, OPERATOR_MESSAGES.revoke.reply, OPERATOR_MESSAGES.revoke.replyMaxBytes);
}

export function encodeOperatorRevokeAccepted(r: Omit<OperatorRevokeAccepted, 'v' | 'ok'>): Buffer {
  return Buffer.from(JSON.stringify({ v: 1, requestId: r.requestId, ok: true, serials: r.serials, crlNumber: r.crlNumber, enforced: r.enforced }));
}

/** A refusal; `message` defaults to the code's own and is cut to the schema's 200 characters. */
export function encodeOperatorRefusal(requestIdValue: string | undefined, code: OperatorReplyCode, message?: string): Buffer {
  return Buffer.from(
    JSON.stringify({
      v: 1,
      ...(requestIdValue === undefined ? {} : { requestId: requestIdValue }),
      ok: false,
      code,
      message: (message ?? OPERATOR_REPLY_CODES[code].message).slice(0, 200),
      retryable: OPERATOR_REPLY_CODES[code].retryable,
    }),
  );
}
