import type { SimFleet } from '../sim-fleet.js';
import { invariant, type Scenario } from '../scenario.js';
import { enrollTimeoutMs, settleOnline, sleep } from './common.js';
import { enrollOutcome } from './enroll-storm.js';
import { rotateAll } from './rotation-campaign.js';

/** How long mosquitto stays dead each time. */
const OUTAGE_MS = 2_000;

/**
 * mosquitto is killed (SIGKILL, no final save) and restarted on the same ports twice: once when about
 * half the fleet has enrolled, once when about half of a rotation wave is done. Proves: every device
 * ends online with exactly one identity, every token used once, every device's `enrolled` and `rotated`
 * events reach the inventory exactly once (the outbox and the bridge's persistent session lose nothing).
 */
export const brokerOutage: Scenario = {
  name: 'broker-outage',
  summary: 'mosquitto killed and restarted mid-enrollment and mid-rotation; nothing is lost',
  measures: 'power-on → online (through the first outage)',
  async run(sim, ctx) {
    const ids = [...sim.devices.keys()];
    const half = Math.ceil(ids.length / 2);
    sim.powerOn(ids);
    await sim.until(() => ids.filter((id) => sim.state(id) === 'online').length >= half, enrollTimeoutMs(ids.length), 'half the fleet online');
    await outage(sim, ctx.log, 'mid-enrollment');
    await settleOnline(sim, ids, enrollTimeoutMs(ids.length));
    const enrolled = enrollOutcome(sim, ids);

    const rotation = await rotateAll(sim, ids, ctx.log, async (progress) => {
      await sim.until(() => progress() >= half, 60_000, 'half the fleet rotated').catch(() => undefined);
      await outage(sim, ctx.log, 'mid-rotation');
    });

    // The outboxes drain after the outages: each event arrives once.
    const events = async (id: string) => (await sim.fleet.inventory.listDeviceEvents(id)).map((e) => e.type);
    const once = async (id: string) => {
      const types = await events(id);
      return types.filter((t) => t === 'enrolled').length === 1 && types.filter((t) => t === 'rotated').length === 1;
    };
    await sim.until(async () => (await Promise.all(ids.map(once))).every(Boolean), 30_000, 'every event delivered').catch(() => undefined);
    const wrong: string[] = [];
    for (const id of ids) if (!(await once(id))) wrong.push(`${id}: ${(await events(id)).join(',')}`);
    return {
      succeeded: Math.min(enrolled.succeeded, rotation.succeeded),
      failures: { ...enrolled.failures, ...rotation.failures },
      lost: enrolled.lost + rotation.lost + wrong.length,
      latenciesMs: enrolled.latenciesMs,
      // A device cannot stay in service while its broker is dead: that rotation invariant is not this scenario's.
      invariants: [...enrolled.invariants, ...rotation.invariants.filter((i) => i.name !== 'no device lost service'), invariant('every event delivered once', wrong, "each device's enrolled and rotated events in the inventory exactly once")],
      figures: { outages: 2, outageMs: OUTAGE_MS },
    };
  },
};

async function outage(sim: SimFleet, log: (l: string) => void, when: string): Promise<void> {
  log(`killing mosquitto (${when})`);
  await sim.fleet.killBroker();
  await sleep(OUTAGE_MS);
  await sim.fleet.startBroker();
  log('mosquitto back');
}
