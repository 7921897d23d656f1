import { x509FromPem } from '../../common/x509-cache.js';
import type { DeviceState, DeviceStatus } from '../../common/protocol/messages.js';
import type { CertificateWindow } from './policy.js';
import type { IdentitySlot, LastRotation, SlotName } from './store.js';

/**
 * The agent's states. `connecting` is the agent without a connection (published as `offline` by the
 * last will); the others map one to one onto the protocol's status states.
 *
 *   starting → enrolling | reattesting | connecting
 *   enrolling / reattesting → connecting            (identity stored)
 *   connecting ⇄ online                             (connection lost / back, forever)
 *   online → rotating → online                      (rotated, or rolled back)
 *   online / connecting → reattesting               (identity expired or unusable)
 *   any → revoked                                   (the fleet says this device is revoked)
 *   any → error                                     (non-retryable rejection, corrupt local state)
 *   any → stopping → stopped                        (stop())
 */
export type AgentState =
  | 'stopped'
  | 'starting'
  | 'enrolling'
  | 'reattesting'
  | 'connecting'
  | 'online'
  | 'rotating'
  | 'revoked'
  | 'error'
  | 'stopping';

export function publishedState(s: AgentState): DeviceState {
  switch (s) {
    case 'enrolling':
    case 'reattesting':
    case 'online':
    case 'rotating':
    case 'revoked':
    case 'error':
      return s;
    default:
      return 'offline';
  }
}

export interface StatusInput {
  readonly deviceId: string;
  readonly state: AgentState;
  readonly online: boolean;
  readonly identity?: { readonly name: SlotName; readonly slot: IdentitySlot };
  readonly lastRotation?: LastRotation;
  readonly clockSkewMs: number;
  readonly errorCode?: string;
  readonly agentVersion: string;
  readonly tpm?: { readonly manufacturer: string; readonly firmwareVersion: string; readonly ek?: string };
  readonly outbox?: { readonly pending: number; readonly dropped: number };
  readonly crlNumber?: string;
  readonly trustBundleVersion?: number;
}

/** The retained status body (protocol `status`). */
export function statusBody(i: StatusInput): DeviceStatus {
  const id = i.identity;
  return {
    deviceId: i.deviceId,
    online: i.online,
    state: stateFor(i.state, i.online),
    ...(id ? { certSerial: id.slot.serial, certNotAfter: id.slot.notAfter, slot: id.name } : {}),
    ...(i.lastRotation ? { lastRotationAt: i.lastRotation.at, lastRotationResult: i.lastRotation.result } : {}),
    clockSkewMs: i.clockSkewMs,
    ...(i.errorCode ? { errorCode: i.errorCode } : {}),
    agentVersion: i.agentVersion.slice(0, 32),
    ...(i.tpm ? { tpmManufacturer: i.tpm.manufacturer.slice(0, 16), tpmFirmware: i.tpm.firmwareVersion.slice(0, 32) } : {}),
    ...(i.tpm?.ek ? { tpmEk: i.tpm.ek } : {}),
    ...(i.outbox ? { outboxPending: i.outbox.pending, outboxDropped: i.outbox.dropped } : {}),
    ...(i.crlNumber === undefined ? {} : { crlNumber: i.crlNumber }),
    ...(i.trustBundleVersion === undefined ? {} : { trustBundleVersion: i.trustBundleVersion }),
  };
}

/**
 * Connected while the state machine still says connecting/starting: online. Not connected: offline,
 * unless the state says why (enrolling, reattesting on the other listener; revoked, error parked).
 */
function stateFor(s: AgentState, online: boolean): DeviceState {
  if (online) return s === 'connecting' || s === 'starting' ? 'online' : publishedState(s);
  const p = publishedState(s);
  return p === 'enrolling' || p === 'reattesting' || p === 'revoked' || p === 'error' ? p : 'offline';
}

const windows = new WeakMap<IdentitySlot, CertificateWindow>();

/** Validity window of a stored identity (notBefore read from its certificate once). */
export function windowOf(slot: IdentitySlot): CertificateWindow {
  let w = windows.get(slot);
  if (!w) {
    const notBefore = slot.notBefore ?? Date.parse(x509FromPem(slot.certificate).validFrom);
    w = { serial: slot.serial, notBefore, notAfter: slot.notAfter };
    windows.set(slot, w);
  }
  return w;
}
