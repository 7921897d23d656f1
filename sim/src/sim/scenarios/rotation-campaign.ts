import type { AgentState } from '../../../../agent/src/agent.js';
import type { SimFleet } from '../sim-fleet.js';
import { countCodes, invariant, type Invariant, type Scenario } from '../scenario.js';
import { activeCertificates, bringOnline } from './common.js';

/** States a device may pass through while it rotates without losing service. */
const IN_SERVICE: ReadonlySet<AgentState> = new Set(['online', 'rotating']);

/**
 * The operator sends `rotate-now` to every device over MQTT (the operator protocol through the bridge,
 * a retained device command). Proves: every device ends on a new certificate for a new key, issued
 * only after the bridge verified TPM2_Certify by the device's enrollment AK (kind `rotate`), with its
 * old certificate retired and no device leaving service (only `online` → `rotating` → `online`).
 */
export const rotationCampaign: Scenario = {
  name: 'rotation-campaign',
  summary: 'the operator makes the whole fleet rotate; no device loses service; every new key TPM-proven',
  measures: 'rotate-now sent → online with the new certificate',
  async run(sim, ctx) {
    const ids = await bringOnline(sim);
    const r = await rotateAll(sim, ids, ctx.log);
    return { ...r, figures: { commands: ids.length } };
  },
};

/** Sends rotate-now to every device and waits for the wave to finish; the outcome and invariants of it. */
export async function rotateAll(sim: SimFleet, ids: readonly string[], log: (l: string) => void, during?: (progress: () => number) => Promise<void>) {
  const before = new Map([...(await sim.statuses())].map(([id, s]) => [id, s.certSerial!]));
  const sentAt = new Map<string, number>();
  const op = await sim.operator();
  try {
    for (const id of ids) {
      sentAt.set(id, Date.now());
      await op.call('rotate-now', { deviceId: id });
    }
  } finally {
    await op.close();
  }
  log(`rotate-now sent to ${ids.length} devices`);
  const rotated = (id: string) => {
    const cert = activeCertificates(sim, id);
    return cert.length === 1 && cert[0]!.serial !== before.get(id) && sim.state(id) === 'online';
  };
  const progress = () => ids.filter(rotated).length;
  if (during) await during(progress);
  await sim.until(() => ids.every(rotated), 60_000 + ids.length * 200, 'every device rotated').catch(() => undefined);

  const latenciesMs: number[] = [];
  const lostService: string[] = [];
  for (const id of ids) {
    const d = sim.devices.get(id)!;
    const t0 = sentAt.get(id)!;
    const after = d.timeline.filter((t) => t.at >= t0);
    const rotating = after.find((t) => t.state === 'rotating');
    const back = rotating && after.find((t) => t.state === 'online' && t.at >= rotating.at);
    if (back) latenciesMs.push(back.at - t0);
    const outside = after.filter((t) => !IN_SERVICE.has(t.state));
    if (outside.length) lostService.push(`${id}: ${outside.map((t) => t.state).join(' → ')}`);
  }
  const inv = sim.fleet.inventory;
  const notProven = ids.filter((id) => {
    const [c] = activeCertificates(sim, id);
    const old = inv.getCertificate(before.get(id)!);
    return !c || c.kind !== 'rotate' || !old || c.keySpkiHash === old.keySpkiHash || old.supersededAt === undefined;
  });
  const invariants: Invariant[] = [
    invariant('every device rotated', ids.filter((id) => !rotated(id)).map((id) => `${id} is ${sim.state(id)} on ${activeCertificates(sim, id).map((c) => c.serial).join(',')}`), `${progress()}/${ids.length} on a new certificate`),
    invariant('no device lost service', lostService, 'only online → rotating → online'),
    invariant('every new key TPM-proven, old certificate retired', notProven, 'kind rotate (TPM2_Certify by the enrollment AK verified), new key, old superseded'),
  ];
  return {
    succeeded: ids.filter(rotated).length,
    failures: countCodes(sim.logs.filter((l) => l.code && (l.level === 'error' || l.msg.includes('rotation'))).map((l) => l.code!)),
    lost: ids.filter((id) => activeCertificates(sim, id).length !== 1).length,
    latenciesMs,
    invariants,
  };
}
