import type { SimFleet } from '../sim-fleet.js';
import { invariant, pick, type Invariant, type Scenario } from '../scenario.js';
import { activeCertificates, enrollTimeoutMs, eventCount, settleOnline } from './common.js';
import { enrollOutcome } from './enroll-storm.js';
import { rotateAll } from './rotation-campaign.js';

const HOUR_MS = 3_600_000;
/** Offsets: 1–12 hours, either way (under the operator command's default 1-day lifetime). */
const MAX_OFFSET_HOURS = 12;
/**
 * A clock behind reads at most its offset behind the floor, and less by the floor's age: the floor is
 * the newest trusted time seen (a certificate's notBefore, backdated 300 s by the bridge, or a CRL's
 * thisUpdate), never newer than real time.
 */
const FLOOR_AGE_MAX_MS = 300_000 + 60_000;

/** A measurement against the fleet clock is off by at most half its round trip: generous for a loaded box. */
const ROUND_TRIP_SLACK_MS = 10_000;

/**
 * Devices power on with clocks hours behind (a third), hours ahead (a third) or right; the seed picks
 * which and by how much. They enroll, then an operator rotation wave runs. What the agent documents
 * (agent/README.md, "Offline budget and time"): it keeps a floor, the newest fleet-signed time it has
 * seen, and judges validity with max(clock, floor); online, it also measures its clock against the
 * fleet's (`time/request`, on every new connection and every `clockCheckSec`). A skew beyond 30 s either
 * way is reported: status `clockSkewMs` (device − fleet), a `clock_skew` event (CLOCK_BEHIND_FLOOR from
 * the floor, CLOCK_SKEW_FLEET from a measurement), and the inventory's ingested status. Hours ahead stay
 * far inside the 30-day certificate's renewal point and the rotate-now command's 1-day lifetime, so they
 * change nothing else.
 * Proves: every device enrolls and rotates (new TPM-proven key, no loss of service) whatever its
 * clock; every device behind or ahead reports its skew (status, event, inventory) close to its offset
 * (behind: never less than the offset less the floor's age, so it judged with the floor); devices with
 * a right clock report none; no clock makes a certificate look expired (no re-attestation, no renewal
 * before the wave).
 */
export const clockSkew: Scenario = {
  name: 'clock-skew',
  summary: 'clocks hours behind or ahead; none judges validity with a clock behind its floor; skew is reported',
  measures: 'power-on → online (skewed clocks)',
  async run(sim, ctx) {
    const ids = [...sim.devices.keys()];
    const order = pick(ids, ids.length, ctx.random);
    const third = Math.max(1, Math.round(ids.length / 3));
    const offsets = new Map<string, number>();
    order.forEach((id, i) => {
      const sign = i < third ? -1 : i < 2 * third ? 1 : 0;
      const hours = 1 + ctx.random() * (MAX_OFFSET_HOURS - 1);
      offsets.set(id, sign * Math.round(hours * HOUR_MS));
    });
    const behind = ids.filter((id) => offsets.get(id)! < 0);
    const ahead = ids.filter((id) => offsets.get(id)! > 0);
    const right = ids.filter((id) => offsets.get(id) === 0);
    ctx.log(`${behind.length} clocks behind, ${ahead.length} ahead, ${right.length} right`);
    for (const id of ids) sim.powerOn([id], { clockOffsetMs: offsets.get(id)! });
    await settleOnline(sim, ids, enrollTimeoutMs(ids.length));
    const enrolled = enrollOutcome(sim, ids);
    const earlyRenewal = ids.filter((id) => sim.fleet.inventory.listCertificates(id).some((c) => c.kind !== 'enroll')).map((id) => `${id} (${hours(offsets.get(id)!)}) renewed or re-attested before the wave`);
    const rotation = await rotateAll(sim, ids, ctx.log);

    // The skew reaches the inventory through the outbox (event) and the retained status.
    const reported = async (id: string) => {
      const ingested = sim.fleet.inventory.getDevice(id)?.status?.clockSkewMs ?? 0;
      return (await eventCount(sim, id, 'clock_skew')) >= 1 && Math.sign(ingested) === Math.sign(offsets.get(id)!);
    };
    const skewed = [...behind, ...ahead];
    await sim.until(async () => (await Promise.all(skewed.map(reported))).every(Boolean), 30_000, 'the skew of every clock off reported').catch(() => undefined);

    const statuses = await sim.statuses();
    const skewOf = (id: string) => statuses.get(id)?.clockSkewMs;
    const wrongBehind: string[] = [];
    const wrongAhead: string[] = [];
    for (const id of skewed) {
      const off = offsets.get(id)!;
      const skew = skewOf(id);
      const events = (await sim.fleet.inventory.listDeviceEvents(id)).filter((e) => e.type === 'clock_skew');
      const ingested = sim.fleet.inventory.getDevice(id)?.status?.clockSkewMs;
      // Behind: the measurement (≈ the offset) or at least the floor's bound (the offset less the floor's age).
      const fits = (s: number | undefined) =>
        s !== undefined && s >= off - ROUND_TRIP_SLACK_MS && s <= off + (off < 0 ? FLOOR_AGE_MAX_MS : ROUND_TRIP_SLACK_MS);
      if (!fits(skew) || !events.some((e) => fits(Number(e.details['skewMs']))) || !fits(ingested)) {
        (off < 0 ? wrongBehind : wrongAhead).push(
          `${id} (${hours(off)}): status ${skew}, events ${events.map((e) => `${e.details['skewMs']} ${e.details['code'] ?? ''}`.trim()).join(',') || 'none'}, inventory ${ingested}`,
        );
      }
    }
    const wrongOthers: string[] = [];
    for (const id of right) {
      const n = await eventCount(sim, id, 'clock_skew');
      if (skewOf(id) !== 0 || n !== 0) wrongOthers.push(`${id} (${hours(offsets.get(id)!)}): skew ${skewOf(id)}, ${n} clock_skew events`);
    }
    const reattested = ids.filter((id) => sim.fleet.inventory.listCertificates(id).some((c) => c.kind === 'reattest')).map((id) => `${id} (${hours(offsets.get(id)!)})`);
    const invariants: Invariant[] = [
      ...enrolled.invariants,
      ...rotation.invariants,
      invariant('every clock behind reported, validity judged with the floor', wrongBehind, `${behind.length} devices behind report their offset (status, clock_skew event, inventory)`),
      invariant('every clock ahead reported', wrongAhead, `${ahead.length} devices ahead report their offset, measured against the fleet clock (status, clock_skew event, inventory)`),
      invariant('no skew reported for right clocks', wrongOthers, `${right.length} right: skew 0, no clock_skew event`),
      invariant('no clock made a certificate look expired', [...earlyRenewal, ...reattested], 'no re-attestation, no renewal before the operator wave'),
    ];
    const active = (id: string) => activeCertificates(sim, id).length === 1;
    return {
      succeeded: ids.filter((id) => sim.state(id) === 'online' && active(id)).length,
      failures: { ...enrolled.failures, ...rotation.failures },
      lost: enrolled.lost + rotation.lost,
      latenciesMs: enrolled.latenciesMs,
      invariants,
      figures: {
        behind: behind.length,
        ahead: ahead.length,
        right: right.length,
        offsets: `${hours(Math.min(...offsets.values()))}…${hours(Math.max(...offsets.values()))}`,
        skewReported: skewed.length - wrongBehind.length - wrongAhead.length,
      },
    };
  },
};

function hours(ms: number): string {
  return `${ms > 0 ? '+' : ''}${(ms / HOUR_MS).toFixed(1)} h`;
}
