import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { decode } from '../../common/protocol/messages.js';
import { DEFAULT_AUDITOR } from '../../broker-bridge/src/embedded-fleet.js';
import { eventually, startFleetFixture, type FleetFixture } from './fleet-fixture.js';

const run = promisify(execFile);

/**
 * Store-and-forward: events queued while the broker is down survive an agent restart and reach the
 * fleet exactly once, in order, when the broker is back. And after a broker restart the device's
 * status and the trust bundle are retained again (read by mosquitto_sub, not by our code).
 */
describe('outbox and retained state across outages (real swtpm, mosquitto, bridge)', () => {
  let fx: FleetFixture;

  beforeAll(async () => {
    fx = await startFleetFixture();
  });
  afterAll(async () => {
    await fx?.stop();
  });

  it('1,000 events queued with the broker down, agent restarted, broker back: each delivered once, in order', async () => {
    const d = await fx.device('outbox-1');
    const id = d.bootstrap.deviceId;
    const first = fx.agent(d);
    await first.start();
    await eventually(async () => (await fx.fleet.inventory.listDeviceEvents(id)).length === 1, 10_000, 'the enrolled event');

    await fx.fleet.stopBroker();
    await eventually(() => first.state === 'connecting', 10_000, 'offline');
    for (let i = 1; i <= 1000; i++) {
      expect(await first.emitEvent({ type: 'clock_skew', count: i })).toBe(true);
    }
    expect(first.status().outbox.pending).toBe(1000);
    await first.stop();

    const second = fx.agent(d);
    const started = second.start();
    await new Promise((r) => setTimeout(r, 500));
    expect(second.status().outbox.pending).toBe(1000);
    await fx.fleet.startBroker();
    await started;
    // The inventory keeps each device's latest 1,000 events: the enrolled event has made room.
    await eventually(async () => (await fx.fleet.inventory.listDeviceEvents(id)).at(-1)?.details['count'] === 1000, 30_000, 'all events ingested');
    await eventually(() => second.status().outbox.pending === 0, 10_000, 'outbox empty');

    const events = await fx.fleet.inventory.listDeviceEvents(id);
    expect(events.map((e) => e.details['count'])).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1));
    expect(new Set(events.map((e) => e.id)).size).toBe(1000);
    const seqs = events.map((e) => e.seq);
    expect(seqs.every((s, i) => i === 0 || s > seqs[i - 1]!)).toBe(true);
    // Nothing more arrives later (no duplicate resend after the outbox emptied).
    await new Promise((r) => setTimeout(r, 500));
    expect((await fx.fleet.inventory.listDeviceEvents(id)).map((e) => e.id)).toEqual(events.map((e) => e.id));
  }, 90_000);

  it('after a broker restart the device status and the trust bundle are retained again (mosquitto_sub)', async () => {
    const d = await fx.device('retained-1');
    const id = d.bootstrap.deviceId;
    const a = fx.agent(d);
    await a.start();
    await fx.fleet.restartBroker();
    await eventually(() => a.state === 'online', 30_000, 'online again');

    // A read-only auditor with its own certificate, through Debian's mosquitto_sub (client ids must start with enr-).
    const role = await fx.fleet.clientCertificate(DEFAULT_AUDITOR);
    const files = { ca: join(fx.dir, 'sub-ca.pem'), cert: join(fx.dir, 'sub-cert.pem'), key: join(fx.dir, 'sub-key.pem') };
    writeFileSync(files.ca, fx.fleet.ca.rootCertificatePem);
    writeFileSync(files.cert, role.certPem);
    writeFileSync(files.key, role.keyPem, { mode: 0o600 });
    const sub = (topic: string) =>
      run('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(fx.fleet.broker.devicePort), '--cafile', files.ca, '--cert', files.cert, '--key', files.key, '-i', `enr-reader-${Date.now()}`, '-t', topic, '-C', '1', '-W', '5', '-V', 'mqttv5']);
    await eventually(async () => {
      const { stdout } = await sub(fx.fleet.topics.device(id, 'status')).catch(() => ({ stdout: '' }));
      return stdout.trim() !== '' && decode('status', stdout.trim()).body.online === true;
    }, 15_000, 'retained online status');
    const { stdout: bundle } = await sub(fx.fleet.topics.fleet('trustBundle'));
    expect(JSON.parse(bundle)).toMatchObject({ roots: fx.fleet.trustBundle });
  });
});
