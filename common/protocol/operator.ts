import { CodedError } from '../coded-error.js';
import { MAX_MESSAGE_BYTES } from './messages.js';
import { array, bool, literal, object, oneOf, optional, parseMessage, str, type Infer, type Schema } from './schema.js';
import { DEVICE_ID_PATTERN, type Topics } from './topics.js';

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
export const OPERATOR_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

export function isOperatorId(id: string): boolean {
  return OPERATOR_ID_PATTERN.test(id);
}

/** Commands an operator can send (the topic's last segment). */
export const OPERATOR_COMMANDS = ['revoke'] as const;
export type OperatorCommand = (typeof OPERATOR_COMMANDS)[number];

const isOperatorCommand = (c: string): c is OperatorCommand => (OPERATOR_COMMANDS as readonly string[]).includes(c);

export type OperatorTopicErrorCode = 'TOPIC_INVALID_OPERATOR_ID';

/** The command topic of `operatorId` and its reply topic. Throws TOPIC_INVALID_OPERATOR_ID. */
export function operatorTopics(topics: Topics, operatorId: string, command: OperatorCommand): { command: string; reply: string } {
  if (!isOperatorId(operatorId)) throw new CodedError<OperatorTopicErrorCode>('TOPIC_INVALID_OPERATOR_ID', `invalid operator id ${JSON.stringify(operatorId)}`);
  const topic = `${topics.base}/operators/${operatorId}/commands/${command}`;
  return { command: topic, reply: `${topic}/reply` };
}

/** Subscription filter matching `command` from every operator (the bridge's side). */
export function allOperatorCommands(topics: Topics, command: OperatorCommand): string {
  return `${topics.base}/operators/+/commands/${command}`;
}

/** Splits an incoming command topic into operator id and command; undefined for anything else (replies included). */
export function parseOperatorCommand(topics: Topics, topic: string): { operatorId: string; command: OperatorCommand } | undefined {
  const prefix = `${topics.base}/operators/`;
  if (!topic.startsWith(prefix)) return undefined;
  const parts = topic.slice(prefix.length).split('/');
  if (parts.length !== 3 || parts[1] !== 'commands') return undefined;
  const [operatorId, , command] = parts as [string, string, string];
  if (!isOperatorId(operatorId) || !isOperatorCommand(command)) return undefined;
  return { operatorId, command };
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
  /** The CA backend (HSM) is failing or busy. */
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

/** The typed command → request/reply map, with the limits enforced before JSON parsing. */
export const OPERATOR_MESSAGES = {
  revoke: { request: operatorRevokeRequest, reply: okOr(operatorRevokeAccepted, operatorRefusal), maxBytes: 1024, replyMaxBytes: MAX_MESSAGE_BYTES },
} as const satisfies Record<OperatorCommand, { request: Schema<unknown>; reply: Schema<unknown>; maxBytes: number; replyMaxBytes: number }>;

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
