import type { SimFleet } from '../sim-fleet.js';
import { countCodes, invariant, type Scenario } from '../scenario.js';
import { activeCertificates, bringOnline, eventCount, sleep, tokensUsedOnce } from './common.js';

/**
 * Certificates for this run live LIFETIME_SEC from a notBefore backdated BACKDATE_SEC: they expire
 * 15 s after issue, so the agents (default offline budget, its grace scaled to the certificate's
 * lifetime) reach their renewal point (2/3 ± 0.1 of the lifetime) and expiry within the outage.
 */
const LIFETIME_SEC = 16;
const BACKDATE_SEC = 1;
/** The bridge stays down until every certificate has been expired this long. */
const PAST_EXPIRY_MS = 1_500;

/**
 * The fleet enrolls on short-lived certificates; then the bridge (the whole fleet side the devices
 * talk to: enrollment, rotation, ingestion) stops, and stays down until every device's certificate
 * has expired. The agents start renewing at their renewal point and wait for an answer; the bridge
 * returns with the normal policy (30-day certificates), the expired identities can only re-attest
 * (the bridge refuses their rotation with IDENTITY_EXPIRED; an agent that judges its identity expired
 * between two steps re-attests by itself). The figures count what the agents did during the outage.
 * Proves: every device ends online on a certificate of kind `reattest` (EK and AK proven again, no
 * token) as its only identity; no token consumed again (one `token.consumed` each, at enrollment);
 * no device judged validity by a clock behind its floor (skew 0, no `clock_skew` event); nothing
 * lost (each device's `enrolled` and `reattested` events in the inventory exactly once).
 */
export const bridgeOutagePastExpiry: Scenario = {
  name: 'bridge-outage-past-expiry',
  summary: 'the bridge is down longer than a certificate lifetime; devices re-attest when it returns, without tokens',
  measures: 'bridge back → online on the re-attestation certificate',
  async run(sim, ctx) {
    const normal = sim.certificatePolicy;
    sim.setCertificatePolicy({ lifetimeSec: LIFETIME_SEC, backdateSec: BACKDATE_SEC });
    const ids = await bringOnline(sim);
    const before = new Map(ids.map((id) => [id, activeCertificates(sim, id)[0]!]));

    await sim.fleet.stopBridge();
    const downAt = Date.now();
    const lastExpiry = Math.max(...[...before.values()].map((c) => c.notAfter));
    ctx.log(`bridge stopped; every ${LIFETIME_SEC - BACKDATE_SEC} s certificate expired by ${new Date(lastExpiry).toISOString()}`);
    await sleep(Math.max(0, lastExpiry + PAST_EXPIRY_MS - Date.now()));
    sim.setCertificatePolicy(normal);
    await sim.fleet.startBridge();
    const upAt = Date.now();
    ctx.log(`bridge back after ${upAt - downAt} ms`);

    const inv = sim.fleet.inventory;
    const reattested = (id: string) => {
      const active = activeCertificates(sim, id);
      return sim.state(id) === 'online' && active.length === 1 && active[0]!.kind === 'reattest';
    };
    await sim.until(() => ids.every(reattested), 60_000 + ids.length * 300, 'every device re-attested').catch(() => undefined);
    const delivered = async (id: string) => (await eventCount(sim, id, 'reattested')) >= 1 && (await eventCount(sim, id, 'enrolled')) >= 1;
    await sim.until(async () => (await Promise.all(ids.map(delivered))).every(Boolean), 30_000, 'every event delivered').catch(() => undefined);

    const statuses = await sim.statuses();
    const notReattested = ids.filter((id) => !reattested(id) || statuses.get(id)?.certSerial !== activeCertificates(sim, id)[0]?.serial);
    const notExpired = ids.filter((id) => before.get(id)!.notAfter > upAt).map((id) => `${id}: certificate valid until ${before.get(id)!.notAfter}, bridge back at ${upAt}`);
    const skewed = ids.filter((id) => (statuses.get(id)?.clockSkewMs ?? 0) !== 0).map((id) => `${id}: clockSkewMs ${statuses.get(id)?.clockSkewMs}`);
    const wrongEvents: string[] = [];
    for (const id of ids) {
      const counts = { enrolled: await eventCount(sim, id, 'enrolled'), reattested: await eventCount(sim, id, 'reattested'), clock_skew: await eventCount(sim, id, 'clock_skew') };
      if (counts.enrolled !== 1 || counts.reattested !== 1 || counts.clock_skew !== 0) wrongEvents.push(`${id}: ${JSON.stringify(counts)}`);
    }
    // What the agents did while the bridge was away (their own judgement, not the bridge's refusals).
    const during = (state: string) => ids.filter((id) => sim.devices.get(id)!.timeline.some((t) => t.state === state && t.at >= downAt && t.at < upAt)).length;
    const latenciesMs = ids.flatMap((id) => {
      const at = sim.reached(id, 'online', upAt);
      return at === undefined ? [] : [at - upAt];
    });
    return {
      succeeded: ids.length - notReattested.length,
      failures: countCodes(sim.logs.filter((l) => l.code).map((l) => l.code!)),
      lost: notReattested.length + wrongEvents.length,
      latenciesMs,
      invariants: [
        invariant('outage longer than the certificates', notExpired, `bridge down ${((upAt - downAt) / 1000).toFixed(1)} s; every certificate expired before it returned`),
        invariant(
          'every device online on a re-attestation certificate',
          notReattested.map((id) => `${id} is ${sim.state(id)} on ${activeCertificates(sim, id).map((c) => `${c.serial}/${c.kind}`).join(',') || 'nothing'}`),
          `${ids.length - notReattested.length}/${ids.length} online, only identity of kind reattest, the one the agent uses`,
        ),
        invariant('no token used twice', await tokensUsedOnce(sim, ids), 'one token.consumed each, at enrollment; re-attestation without tokens'),
        invariant('no device judged validity by a clock behind its floor', skewed, 'every agent reports clock skew 0'),
        invariant('nothing lost', wrongEvents, "each device's enrolled and reattested events in the inventory exactly once, no clock_skew"),
        invariant('re-attestation audited', ids.filter((id) => inv.getDevice(id)?.reattestedAt === undefined || inv.getDevice(id)!.reattestedAt! < upAt), 'every device record has reattestedAt after the bridge returned'),
      ],
      figures: { expiresAfterIssueSec: LIFETIME_SEC - BACKDATE_SEC, outageSec: Number(((upAt - downAt) / 1000).toFixed(1)), rotatingDuringOutage: during('rotating'), reattestingDuringOutage: during('reattesting') },
    };
  },
};
