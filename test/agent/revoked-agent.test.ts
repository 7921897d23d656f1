import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, recordingLogger, startFleetFixture, type FleetFixture } from './fleet-fixture.js';

/**
 * A device revoked while connected: the broker strips its session of every right (crlfile + ACL deny).
 * The agent takes a refused publish on its own topics as "this identity is unusable", re-attests, is
 * refused DEVICE_REVOKED, and ends in `revoked`, no longer using the identity. Real swtpm, mosquitto, bridge.
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
    const a = fx.agent(revoked, { logger: log });
    const b = fx.agent(other);
    await Promise.all([a.start(), b.start()]);

    await fx.fleet.revokeDevice('rvk-a', 'keyCompromise');
    // Anything it publishes on its own topics now is refused: here, the rotation it is asked for.
    a.rotateNow();
    await eventually(() => a.state === 'revoked', 30_000, 'rvk-a revoked');
    expect(a.status().error).toMatchObject({ rejection: 'DEVICE_REVOKED' });
    expect(a.status().online).toBe(false);
    expect(log.lines.some((l) => l.msg === 'the broker refused a publish on our own topics; re-attesting')).toBe(true);
    // No new certificate for the revoked device; the other one still rotates.
    expect(fx.fleet.inventory.listCertificates('rvk-a')).toHaveLength(1);
    b.rotateNow();
    await eventually(() => b.status().rotations === 1 && b.state === 'online', 20_000, 'rvk-b rotated');
    await a.stop();
    expect(a.state).toBe('stopped');
  });
});
