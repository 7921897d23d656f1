import { randomBytes } from 'node:crypto';
import type { Clock } from '../../../common/clock.js';
import { CodedError } from '../../../common/coded-error.js';
import { mintEnrollmentToken } from '../../../common/enrollment-token.js';
import { encode, type DeviceCommandName } from '../../../common/protocol/messages.js';
import { OPERATOR_DEVICE_COMMAND, type OperatorReplyCode, type OperatorRequestOf, type OperatorResultOf } from '../../../common/protocol/operator.js';
import type { Topics } from '../../../common/protocol/topics.js';
import { ekEvidenceOf, type DeviceRecord, type Inventory } from '../inventory/inventory.js';
import { requireDevice } from './queries.js';

/**
 * The operator commands that act on one device: `token-reissue` (a fresh one-time enrollment token for
 * a device that has not enrolled) and `rotate-now` / `reattest` (a retained device command). Each
 * checks the device's state first and refuses with a code; each leaves an `operator.<command>` audit
 * event naming the operator.
 */
export type ActionInventory = Pick<Inventory, 'getDevice' | 'registerDevice' | 'appendAudit'>;

/** Publishes through the bridge's broker connection (rejects BRIDGE_STOPPED / TRANSPORT_* while it is down). */
export type Publish = (topic: string, payload: Buffer, opts: { qos: 0 | 1; retain: boolean }) => Promise<void>;

/** Default lifetime of a re-issued token: the station's default (provisioning DEFAULT_TOKEN_TTL_SEC). */
export const DEFAULT_REISSUED_TOKEN_TTL_SEC = 7 * 86_400;

const refuse = (code: OperatorReplyCode, message: string) => new CodedError<OperatorReplyCode>(code, message);

function requireNotRevoked(d: DeviceRecord): void {
  if (d.revokedAt !== undefined) throw refuse('DEVICE_REVOKED', `device ${d.deviceId} is revoked`);
}

/**
 * Mints a token as the station does (common/enrollment-token.ts), stores only its hash through
 * registerDevice with the device's own EK (which supersedes its unused tokens), and returns the token.
 */
export async function reissueToken(
  o: { inventory: ActionInventory; clock: Clock; defaultTtlSec?: number },
  req: OperatorRequestOf<'token-reissue'>,
  operatorId: string,
): Promise<OperatorResultOf<'token-reissue'>> {
  const d = requireDevice(o.inventory, req.deviceId);
  requireNotRevoked(d);
  if (d.enrolledAt !== undefined) throw refuse('DEVICE_ALREADY_ENROLLED', `device ${d.deviceId} enrolled already; it renews by rotation or re-attestation`);
  const now = o.clock.now();
  const tokenExpiresAt = now + (req.ttlSec ?? o.defaultTtlSec ?? DEFAULT_REISSUED_TOKEN_TTL_SEC) * 1000;
  const { token, tokenHash } = mintEnrollmentToken();
  await o.inventory.registerDevice(
    { deviceId: d.deviceId, ekPublicHash: d.ekPublicHash, ...ekEvidenceOf(d), ekKind: d.ekKind, metadata: d.metadata, registeredAt: now },
    { tokenHash, deviceId: d.deviceId, ekPublicHash: d.ekPublicHash, createdAt: now, expiresAt: tokenExpiresAt },
  );
  await o.inventory.appendAudit([{ at: now, type: 'operator.token-reissue', deviceId: d.deviceId, details: { operator: operatorId, expiresAt: tokenExpiresAt } }]);
  return { deviceId: d.deviceId, token, tokenExpiresAt };
}

/** A device command as the device receives it (messages.ts deviceCommandBody), with its id. */
export interface DeviceCommand {
  readonly deviceId: string;
  readonly command: DeviceCommandName;
  /** The command's id (its envelope requestId): the device runs each id once. */
  readonly commandId: string;
  readonly issuedAt: number;
  readonly expiresAt: number;
  readonly jitterSec: number;
  readonly by: string;
}

export const newCommandId = (): string => randomBytes(16).toString('base64url');

/**
 * Publishes a device command retained (QoS 1) on the device's command topic. Publishing the same
 * command again (same id) is harmless: the device runs each id once.
 */
export function publishDeviceCommand(o: { topics: Topics; publish: Publish }, c: DeviceCommand): Promise<void> {
  const body = { command: c.command, issuedAt: c.issuedAt, expiresAt: c.expiresAt, jitterSec: c.jitterSec, by: c.by };
  return o.publish(o.topics.device(c.deviceId, 'command'), encode('command', c.commandId, c.issuedAt, body), { qos: 1, retain: true });
}

/**
 * Clears the retained command of a device (an empty retained message): a device that connects later
 * gets nothing. One that received the command already keeps it.
 */
export function withdrawDeviceCommand(o: { topics: Topics; publish: Publish }, deviceId: string): Promise<void> {
  return o.publish(o.topics.device(deviceId, 'command'), Buffer.alloc(0), { qos: 1, retain: true });
}

/**
 * Publishes `command` retained on the device's command topic with a fresh command id (the device runs
 * each id once, drops it after `expiresAt`, and acts within `jitterSec`).
 */
export async function sendDeviceCommand(
  o: { inventory: ActionInventory; clock: Clock; topics: Topics; publish: Publish },
  command: DeviceCommandName,
  req: OperatorRequestOf<'rotate-now'>,
  operatorId: string,
): Promise<OperatorResultOf<'rotate-now'>> {
  const d = requireDevice(o.inventory, req.deviceId);
  requireNotRevoked(d);
  if (d.enrolledAt === undefined) throw refuse('DEVICE_NOT_ENROLLED', `device ${d.deviceId} has not enrolled; re-issue its token instead`);
  const issuedAt = o.clock.now();
  const expiresAt = issuedAt + (req.ttlSec ?? OPERATOR_DEVICE_COMMAND.defaultTtlSec) * 1000;
  const jitterSec = req.jitterSec ?? 0;
  const commandId = newCommandId();
  const body = { command, issuedAt, expiresAt, jitterSec, by: operatorId };
  await publishDeviceCommand(o, { deviceId: d.deviceId, commandId, ...body });
  await o.inventory.appendAudit([{ at: issuedAt, type: `operator.${command}`, deviceId: d.deviceId, details: { operator: operatorId, commandId, expiresAt, jitterSec } }]);
  return { deviceId: d.deviceId, commandId, ...body };
}
