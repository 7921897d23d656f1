import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { X509Certificate } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { DEFAULT_OFFLINE_BUDGET } from '../../agent/src/policy.js';
import { TEST_AGENT_CONFIG, eventually, startFleetFixture, type FleetFixture } from './fleet-fixture.js';

/**
 * Recovery without a new token: a device whose certificate expired while it was offline re-attests
 * through the enrollment listener (full EK/AK credential activation and key certification, no token),
 * and the bridge allows that only for a registered, non-revoked device whose EK and AK it knows.
 */
describe('re-attestation after expiry (real swtpm, mosquitto, bridge)', () => {
  let fx: FleetFixture;
  // Validity counts from the bridge's notBefore, backdated 300 s: these certificates expire 12 s after issue.
  const LIFETIME_SEC = 312;
  // Renew late (99.5% of the validity window) so the agent does not rotate before the test takes it offline.
  const config = { ...TEST_AGENT_CONFIG, offlineBudget: { ...DEFAULT_OFFLINE_BUDGET, renewAtFraction: 0.995, jitterFraction: 0.001, graceSec: 60 } };

  beforeAll(async () => {
    fx = await startFleetFixture({ certificateLifetimeSec: LIFETIME_SEC });
  });
  afterAll(async () => {
    await fx?.stop();
  });

  it('a certificate that expired while the device was offline is replaced by re-attestation, without a token', async () => {
    const d = await fx.device('re-expired');
    const id = d.bootstrap.deviceId;
    const first = fx.agent(d, { config });
    await first.start();
    const old = first.status().certSerial!;
    const notAfter = Date.parse(new X509Certificate(fx.fleet.inventory.getCertificate(old)!.pem).validTo);
    await first.stop();
    // Offline until the certificate has really expired (mosquitto would refuse it now).
    await new Promise((r) => setTimeout(r, Math.max(0, notAfter - Date.now()) + 1_000));

    // The bootstrap token is used up: the device must not need it.
    const again = fx.agent({ ...d, bootstrap: { ...d.bootstrap, token: 'used-token-that-no-longer-works' } }, { config });
    const states: string[] = [];
    again.onStateChange((s) => states.push(s));
    await again.start();
    expect(states).toContain('reattesting');
    const s = again.status();
    expect(s.certSerial).not.toBe(old);
    expect(fx.fleet.inventory.getCertificate(s.certSerial!)).toMatchObject({ deviceId: id, kind: 'reattest' });
    expect(fx.fleet.inventory.getDevice(id)?.reattestedAt).toBeDefined();
    expect(await fx.fleet.inventory.listAudit({ deviceId: id, type: 'device.reattested' })).toHaveLength(1);
    expect(await fx.fleet.inventory.listAudit({ deviceId: id, type: 'token.consumed' })).toHaveLength(1);
    await eventually(async () => (await fx.fleet.inventory.listDeviceEvents(id)).some((e) => e.type === 'reattested'), 10_000, 'reattested event');
    await again.stop();
  }, 60_000);

  it('a revoked device asking to re-attest is refused and reports revoked', async () => {
    const d = await fx.device('re-revoked');
    const id = d.bootstrap.deviceId;
    const first = fx.agent(d, { config });
    await first.start();
    await first.stop();
    await fx.fleet.inventory.revokeDevice(id, 'keyCompromise', Date.now());
    // Its clock says the certificate expired (it was offline for long): it re-attests, and is refused.
    const later: Clock = { now: () => Date.now() + 3_600_000 };
    const again = fx.agent(d, { config, clock: later });
    await expect(again.start()).rejects.toMatchObject({ code: 'AGENT_ENROLLMENT_REJECTED', rejection: 'DEVICE_REVOKED' });
    expect(again.state).toBe('revoked');
    expect(again.status().error).toMatchObject({ rejection: 'DEVICE_REVOKED' });
    const certs = fx.fleet.inventory.listCertificates(id);
    expect(certs).toHaveLength(1);
    expect(certs[0]!.revokedAt).toBeDefined();
    await again.stop();
    expect(again.state).toBe('stopped');
  });

  it('a system clock behind the newest trusted time is reported (status, clock_skew event) and validity is judged by that time', async () => {
    const d = await fx.device('re-skew');
    const id = d.bootstrap.deviceId;
    const behind: Clock = { now: () => Date.now() - 2 * 86_400_000 };
    const a = fx.agent(d, { config, clock: behind });
    await a.start();
    // The floor is the newest trusted time: the certificate's notBefore (real now minus the bridge's
    // 300 s backdate), then the thisUpdate of the CRL the agent receives once online (real now).
    await eventually(() => a.status().crl !== undefined, 10_000, 'the fleet CRL');
    const skew = a.status().clockSkewMs;
    expect(skew).toBeLessThan(-2 * 86_400_000 + 120_000);
    expect(skew).toBeGreaterThanOrEqual(-2 * 86_400_000 - 1_000);
    expect(a.state).toBe('online');
    await eventually(async () => (await fx.fleet.inventory.listDeviceEvents(id)).some((e) => e.type === 'clock_skew' && Number(e.details['skewMs']) < 0), 10_000, 'clock_skew event');
    await eventually(() => (fx.fleet.inventory.getDevice(id)?.status?.clockSkewMs ?? 0) < 0, 10_000, 'skew in the ingested status');
    await a.stop();
  });
});
