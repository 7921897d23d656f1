import type { AgentState } from '../../../../agent/src/agent.js';
import { invariant, type Scenario } from '../scenario.js';
import { activeCertificates, bringOnline } from './common.js';

const CAMPAIGN = 'canary';
/** The CA's clock jumps this far ahead for the canary wave: its certificates are not valid yet at the broker. */
const FAULT_SKEW_MS = 2 * 3_600_000;
/**
 * States a device may pass through without losing service: a rotation trial (`rotating`) and, after a
 * refused certificate, the one reconnect on the old identity (`connecting`), which must stay short.
 */
const IN_SERVICE: ReadonlySet<AgentState> = new Set(['online', 'rotating', 'connecting']);
/**
 * Longest time a device may spend disconnected in all: outside `online` and `rotating` (a rotation
 * prepares its key and certificate while still connected on the old identity), i.e. a rollback's reconnect.
 */
const MAX_AWAY_MS = 5_000;

/**
 * A rotation campaign (waves 10% → 100%, no failure allowed) whose canary wave fails: while it rotates
 * the CA's clock is two hours ahead, so the broker refuses the canary's new certificates and their
 * agents roll back to the old identity (rotation_failed). Proves: the gate trips on the canary and the
 * campaign pauses itself; no device loses service; the other 90% get no command and keep their
 * certificates. Then the fault is fixed and the operator resumes: every device ends on a new,
 * TPM-certified key. Latency: command sent → the device's outcome recorded.
 */
export const rotationCanary: Scenario = {
  name: 'rotation-canary',
  summary: 'a rotation campaign whose 10% canary wave the broker refuses pauses itself; no device loses service, the other 90% are untouched; resumed once fixed, it completes',
  measures: "a device's campaign command → its outcome recorded",
  async run(sim, ctx) {
    const ids = await bringOnline(sim);
    const inv = sim.fleet.inventory;
    const campaigns = sim.fleet.campaigns();
    if (!campaigns) throw new Error('the fleet runs no campaign service');
    const before = new Map(ids.map((id) => [id, activeCertificates(sim, id)[0]!.serial]));

    await campaigns.create({ campaignId: CAMPAIGN, kind: 'rotate', selector: {}, waves: [10, 100], gates: { windowSec: 120, maxFailures: 0 }, jitterSec: 0 }, 'sim');
    sim.setIssuerClockSkew(FAULT_SKEW_MS);
    const t0 = Date.now();
    await campaigns.startCampaign(CAMPAIGN, 'sim');
    ctx.log('campaign started with the CA clock 2 h ahead');
    await sim.until(() => campaigns.status(CAMPAIGN).state === 'paused', 60_000, 'the canary gate trips').catch(() => undefined);
    const tripped = campaigns.status(CAMPAIGN);
    const tripMs = Date.now() - t0;
    ctx.log(`campaign ${tripped.state}: ${tripped.paused?.reason ?? 'no pause'}`);
    const canary = inv.listCampaignDevices(CAMPAIGN).filter((d) => d.wave === 0).map((d) => d.deviceId);
    const rest = ids.filter((id) => !canary.includes(id));
    // The canary agents roll back, come back online on their old certificate, and have the bridge
    // retire the refused one.
    const onOld = (id: string) => sim.state(id) === 'online' && activeCertificates(sim, id).map((c) => c.serial).join() === before.get(id);
    await sim.until(() => canary.every(onOld), 30_000, 'the canary back on its old identity').catch(() => undefined);
    const atTrip = {
      rolledBack: canary.filter((id) => !onOld(id)).map((id) => `${id} is ${sim.state(id)} on ${activeCertificates(sim, id).map((c) => c.serial).join(',')}`),
      touched: rest.filter((id) => inv.getCampaignDevice(CAMPAIGN, id)?.sentAt !== undefined || activeCertificates(sim, id).map((c) => c.serial).join() !== before.get(id) || sim.devices.get(id)!.timeline.some((t) => t.at >= t0 && t.state === 'rotating')),
    };

    sim.setIssuerClockSkew(0);
    if (tripped.state === 'paused') await campaigns.resume(CAMPAIGN, 'sim');
    ctx.log('fault fixed, campaign resumed');
    const rotated = (id: string) => {
      const [c] = activeCertificates(sim, id);
      return activeCertificates(sim, id).length === 1 && c!.serial !== before.get(id) && sim.state(id) === 'online';
    };
    await sim.until(() => campaigns.status(CAMPAIGN).state === 'completed' && ids.every(rotated), 60_000 + ids.length * 300, 'the campaign completes').catch(() => undefined);
    const done = campaigns.status(CAMPAIGN);

    const end = Date.now();
    let maxAwayMs = 0;
    const lostService = ids.flatMap((id) => {
      const timeline = sim.devices.get(id)!.timeline;
      const outside = timeline.filter((t) => t.at >= t0 && !IN_SERVICE.has(t.state));
      const awayMs = timeAway(timeline, t0, end);
      maxAwayMs = Math.max(maxAwayMs, awayMs);
      if (outside.length) return [`${id}: ${outside.map((t) => t.state).join(' → ')}`];
      return awayMs > MAX_AWAY_MS ? [`${id}: away from online for ${awayMs} ms`] : [];
    });
    const notProven = ids.filter((id) => {
      const [c] = activeCertificates(sim, id);
      return !c || c.kind !== 'rotate' || c.keySpkiHash === inv.getCertificate(before.get(id)!)?.keySpkiHash;
    });
    const records = inv.listCampaignDevices(CAMPAIGN);
    const latenciesMs = records.flatMap((d) => (d.sentAt !== undefined && d.outcomeAt !== undefined ? [d.outcomeAt - d.sentAt] : []));
    return {
      succeeded: ids.filter(rotated).length,
      failures: { ...tripped.failureCodes },
      lost: ids.filter((id) => activeCertificates(sim, id).length !== 1).length,
      latenciesMs,
      invariants: [
        invariant('the canary gate tripped and paused the campaign', tripped.state === 'paused' && tripped.paused?.by === 'gate' && tripped.waves[0]?.gate === 'tripped' ? [] : [`campaign ${tripped.state}, wave 1 gate ${tripped.waves[0]?.gate}`], `after ${tripMs} ms: ${tripped.paused?.reason ?? ''}`),
        invariant('the canary kept its old identity', atTrip.rolledBack, `${canary.length} canary devices rolled back, online on their old certificate`),
        invariant('the other 90% untouched', atTrip.touched, `${rest.length} devices got no command and kept their certificate while the campaign was paused`),
        invariant('no device lost service', lostService, `only online, rotating, and a rollback's reconnect; at most ${maxAwayMs} ms disconnected`),
        invariant('resumed, the campaign completed', done.state === 'completed' && done.waves.map((w) => w.gate).join() === 'accepted,passed' ? [] : [`campaign ${done.state}, gates ${done.waves.map((w) => w.gate).join(',')}`], `gates ${done.waves.map((w) => w.gate).join(' → ')}`),
        invariant('every device on a new TPM-certified key', [...ids.filter((id) => !rotated(id)), ...notProven], 'kind rotate (TPM2_Certify by the enrollment AK verified), a new key, one active certificate'),
      ],
      figures: { canary: canary.length, untouched: rest.length, tripMs, maxAwayMs },
    };
  },
};

const CONNECTED: ReadonlySet<AgentState> = new Set(['online', 'rotating']);

/** Milliseconds the device spent disconnected (states other than `online` and `rotating`) between `from` and `to`. */
function timeAway(timeline: readonly { at: number; state: AgentState }[], from: number, to: number): number {
  let away = 0;
  let state: AgentState | undefined = [...timeline].reverse().find((t) => t.at < from)?.state;
  let since = from;
  for (const t of timeline) {
    if (t.at < from) continue;
    if (state !== undefined && !CONNECTED.has(state)) away += t.at - since;
    state = t.state;
    since = t.at;
  }
  if (state !== undefined && !CONNECTED.has(state)) away += to - since;
  return away;
}
