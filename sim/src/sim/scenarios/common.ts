import type { CertificateRecord } from '../../../../broker-bridge/src/inventory/inventory.js';
import type { AgentState } from '../../../../agent/src/agent.js';
import { hashEnrollmentToken } from '../../../../common/enrollment-token.js';
import type { SimFleet } from '../sim-fleet.js';

/** States a device does not leave by itself: it reached its end (online is the good one). */
const SETTLED: ReadonlySet<AgentState> = new Set(['online', 'error', 'revoked']);

/** Time allowed for a wave of enrollments: generous, so a slow machine reports latency, not a timeout. */
export function enrollTimeoutMs(devices: number): number {
  return 60_000 + devices * 300;
}

/** Waits until every device in `ids` is online, or parked in error/revoked (the invariants say which is wrong). */
export async function settleOnline(sim: SimFleet, ids: readonly string[], timeoutMs: number): Promise<void> {
  await sim.until(() => ids.every((id) => SETTLED.has(sim.state(id) ?? 'stopped')), timeoutMs, `${ids.length} devices to settle`).catch(() => undefined);
}

/** Powers every device on and waits until all are online: the set-up of scenarios that start from a live fleet. */
export async function bringOnline(sim: SimFleet): Promise<string[]> {
  const ids = [...sim.devices.keys()];
  sim.powerOn(ids);
  await sim.until(() => ids.every((id) => sim.state(id) === 'online'), enrollTimeoutMs(ids.length), 'every device online (set-up)');
  return ids;
}

/** A device's certificates that are neither revoked nor superseded. */
export function activeCertificates(sim: SimFleet, id: string): CertificateRecord[] {
  return sim.fleet.inventory.listCertificates(id).filter((c) => c.revokedAt === undefined && c.supersededAt === undefined);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Each device's one-time token was consumed exactly once and by its single enrollment: one
 * `token.consumed` audit event, the token record used, one certificate of kind `enroll`. Failing lines.
 */
export async function tokensUsedOnce(sim: SimFleet, ids: readonly string[]): Promise<string[]> {
  const inv = sim.fleet.inventory;
  const consumed = new Map<string, number>();
  for (const a of await inv.listAudit({ type: 'token.consumed' })) if (a.deviceId) consumed.set(a.deviceId, (consumed.get(a.deviceId) ?? 0) + 1);
  return ids.flatMap((id) => {
    const token = sim.devices.get(id)!.bootstrap.token;
    const record = token === undefined ? undefined : inv.getToken(hashEnrollmentToken(token));
    const enrollCerts = inv.listCertificates(id).filter((c) => (c.kind ?? 'enroll') === 'enroll').length;
    const n = consumed.get(id) ?? 0;
    return n === 1 && record?.usedAt !== undefined && enrollCerts === 1 ? [] : [`${id}: token consumed ${n}×, used ${record?.usedAt !== undefined}, ${enrollCerts} enrollment certificates`];
  });
}

/** How many events of `type` the inventory holds for the device (as ingested from its outbox). */
export async function eventCount(sim: SimFleet, id: string, type: string): Promise<number> {
  return (await sim.fleet.inventory.listDeviceEvents(id)).filter((e) => e.type === type).length;
}
