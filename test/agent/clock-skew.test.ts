import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Clock } from '../../common/clock.js';
import { TEST_AGENT_CONFIG, eventually, startFleetFixture, type FleetFixture } from './fleet-fixture.js';

const HOUR_MS = 3_600_000;
/** Half a loopback round trip on a loaded CI box, generously. */
const SLACK_MS = 5_000;

/**
 * The clock against the fleet's (agent/src/fleet-clock.ts): an online agent asks the bridge's time
 * service on each new connection and every `clockCheckSec`. A clock ahead cannot show against the clock
 * floor (the newest fleet-signed time is behind it), so this is how it is seen at all.
 */
describe('clock measured against the fleet (real swtpm, mosquitto, bridge)', () => {
  let fx: FleetFixture;

  beforeAll(async () => {
    fx = await startFleetFixture();
  });
  afterAll(async () => {
    await fx?.stop();
  });

  const skewEvents = async (id: string) => (await fx.fleet.inventory.listDeviceEvents(id)).filter((e) => e.type === 'clock_skew');

  it('a clock hours ahead is reported: status, one clock_skew event (CLOCK_SKEW_FLEET), the inventory; back in tolerance it reads 0, a new jump is reported again', async () => {
    const d = await fx.device('skew-ahead');
    const id = d.bootstrap.deviceId;
    let offsetMs = 3 * HOUR_MS;
    const clock: Clock = { now: () => Date.now() + offsetMs };
    const a = fx.agent(d, { config: { ...TEST_AGENT_CONFIG, clockCheckSec: 1 }, clock });
    await a.start();
    await eventually(() => a.status().clockSkewMs > 0, 10_000, 'the skew measured');
    expect(Math.abs(a.status().clockSkewMs - 3 * HOUR_MS)).toBeLessThan(SLACK_MS);
    expect(a.state).toBe('online');
    await eventually(async () => (await skewEvents(id)).length === 1, 10_000, 'the clock_skew event');
    const [event] = await skewEvents(id);
    expect(event!.details['code']).toBe('CLOCK_SKEW_FLEET');
    expect(Math.abs(Number(event!.details['skewMs']) - 3 * HOUR_MS)).toBeLessThan(SLACK_MS);
    await eventually(() => Math.abs((fx.fleet.inventory.getDevice(id)?.status?.clockSkewMs ?? 0) - 3 * HOUR_MS) < SLACK_MS, 10_000, 'the skew in the ingested status');

    // NTP fixes the clock: the next measurement finds it right; status 0, no new event.
    offsetMs = 0;
    await eventually(() => a.status().clockSkewMs === 0, 15_000, 'the skew gone from the status');
    await eventually(() => fx.fleet.inventory.getDevice(id)?.status?.clockSkewMs === 0, 10_000, 'the inventory told');
    expect(await skewEvents(id)).toHaveLength(1);

    // A new jump (two minutes ahead this time) is a new episode: a second event, measured again.
    offsetMs = 120_000;
    await eventually(async () => (await skewEvents(id)).length >= 2, 15_000, 'a second clock_skew event');
    const later = (await skewEvents(id)).slice(1);
    expect(later).toHaveLength(1);
    expect(later[0]!.details['code']).toBe('CLOCK_SKEW_FLEET');
    expect(Math.abs(Number(later[0]!.details['skewMs']) - 120_000)).toBeLessThan(SLACK_MS);
    expect(Math.abs(a.status().clockSkewMs - 120_000)).toBeLessThan(SLACK_MS);
    await a.stop();
  }, 60_000);

  it('a right clock reports no skew and sends no clock_skew event', async () => {
    const d = await fx.device('skew-right');
    const id = d.bootstrap.deviceId;
    const a = fx.agent(d, { config: { ...TEST_AGENT_CONFIG, clockCheckSec: 1 } });
    await a.start();
    // Several measurements happen (one per connection, then one a second).
    await new Promise((r) => setTimeout(r, 3_000));
    expect(a.status().clockSkewMs).toBe(0);
    expect(await skewEvents(id)).toHaveLength(0);
    expect(fx.fleet.inventory.getDevice(id)?.status?.clockSkewMs ?? 0).toBe(0);
    await a.stop();
  }, 30_000);
});
