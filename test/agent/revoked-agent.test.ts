import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MqttTransport } from '../../common/transport/mqtt-transport.js';
import type { Transport } from '../../common/transport/transport.js';
import { eventually, recordingLogger, startFleetFixture, type FleetFixture } from './fleet-fixture.js';

/**
 * A device revoked while connected: the broker strips its session of every right (crlfile + ACL deny).
 * The agent takes a refused publish on its own topics as "this identity is unusable", re-attests, is
 * refused DEVICE_REVOKED, and ends in `revoked`, no longer using the identity. Real swtpm, mosquitto, bridge.
 * The agent here never gets the fleet CRL (its CRL subscriptions are dropped), as a device that missed
 * it would: usually the CRL tells it first (test/revocation/device-crl.test.ts).
 */
describe('a revoked agent (real swtpm, mosquitto, bridge)', () => {
  let fx: FleetFixture;

  beforeAll(async () => {
    fx = await startFleetFixture();
  });
  afterAll(async () => {
    await fx?.stop();
  });

  it('sees its rights gone, re-attests, is refused, and parks in revoked while another device carries on', async () => {
    const revoked = await fx.device('rvk-a');
    const other = await fx.device('rvk-b');
    const log = recordingLogger();
    const a = fx.agent(revoked, {
      logger: log,
      transportFactory: (opts) => {
        const t: Transport = new MqttTransport(opts);
        const subscribe = t.subscribe.bind(t);
        t.subscribe = (filter, handler, o) => (filter.includes('/crl/') ? Promise.resolve({ unsubscribe: async () => {} }) : subscribe(filter, handler, o));
        return t;
      },
    });
    const b = fx.agent(other);
    await Promise.all([a.start(), b.start()]);

    await fx.fleet.revokeDevice('rvk-a', 'keyCompromise');
    // Anything it publishes on its own topics now is refused: here, the rotation it is asked for.
    a.rotateNow();
    await eventually(() => a.state === 'revoked', 30_000, 'rvk-a revoked');
    expect(a.status().error).toMatchObject({ rejection: 'DEVICE_REVOKED' });
    await eventually(() => !a.status().online, 5_000, 'rvk-a session closed');
    expect(log.lines.some((l) => l.msg === 'the broker refused a publish on our own topics; re-attesting')).toBe(true);
    // No new certificate for the revoked device; the other one still rotates.
    expect(fx.fleet.inventory.listCertificates('rvk-a')).toHaveLength(1);
    b.rotateNow();
    await eventually(() => b.status().rotations === 1 && b.state === 'online', 20_000, 'rvk-b rotated');
    await a.stop();
    expect(a.state).toBe('stopped');
  });
});
