import type { CertificateRecord } from '../../../../broker-bridge/src/inventory/inventory.js';
import type { AgentState } from '../../../../agent/src/agent.js';
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
