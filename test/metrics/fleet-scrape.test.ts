import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Agent } from '../../agent/src/agent.js';
import { eventually, startFleetFixture, type FleetFixture } from '../agent/fleet-fixture.js';
import { parseExposition, sample, type Samples } from './exposition.js';
import { enrollWithUnknownToken } from './unknown-token.js';

/**
 * The metrics of a real fleet (mosquitto, bridge, CA, LevelDB inventory) after a known sequence, read
 * the way Prometheus reads them: over HTTP from the bridge's metrics port. Three real agents on swtpm
 * enroll, one rotates, one enrollment with an unknown token is refused, one device is revoked.
 */
describe('fleet metrics scraped over HTTP after enrollments, a rotation, a refusal and a revocation', () => {
  let fx: FleetFixture;
  const agents: Agent[] = [];
  const ids = ['met-1', 'met-2', 'met-3'];
  let firstSerial: string;

  const scrape = async (): Promise<Samples> => {
    const res = await fetch(fx.fleet.metricsUrl!);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    return parseExposition(await res.text());
  };

  beforeAll(async () => {
    fx = await startFleetFixture({ metrics: { port: 0 } });
    const devices = [];
    for (const id of ids) devices.push(await fx.device(id));
    for (const d of devices) agents.push(fx.agent(d));
    await Promise.all(agents.map((a) => a.start()));
    firstSerial = agents[0]!.status().certSerial!;
    // Their retained status reached the inventory.
    await eventually(() => ids.every((id) => fx.fleet.inventory.getDevice(id)?.online === true), 10_000, 'devices online in the inventory');
  });
  afterAll(async () => {
    await fx?.stop();
  });

  it('serves on loopback at a port it picked, GET /metrics only', async () => {
    expect(fx.fleet.metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const base = fx.fleet.metricsUrl!.replace(/\/metrics$/, '');
    expect((await fetch(`${base}/`)).status).toBe(404);
    expect((await fetch(`${base}/metrics/x`)).status).toBe(404);
    expect((await fetch(fx.fleet.metricsUrl!, { method: 'POST', body: 'x' })).status).toBe(404);
  });

  it('counts three enrollments, then a refused one, a rotation and a revocation, with the exact values', async () => {
    let s = await scrape();
    expect(sample(s, 'fleet_certificate_requests_total', { operation: 'enroll', code: 'ok' })).toBe(3);
    expect(sample(s, 'fleet_certificate_issuance_duration_seconds_count', { operation: 'enroll' })).toBe(3);
    expect(sample(s, 'fleet_certificates', { state: 'valid' })).toBe(3);
    expect(sample(s, 'fleet_devices_online')).toBe(3);
    expect(sample(s, 'fleet_devices', { state: 'active' })).toBe(3);
    expect(sample(s, 'fleet_devices_valid_certificate_ratio')).toBe(1);
    expect(sample(s, 'fleet_crl_number')).toBe(1);

    // An enrollment with a token the fleet never issued: refused TOKEN_UNKNOWN, counted under its code.
    const answer = await enrollWithUnknownToken(fx.fleet, 'met-x');
    expect(answer.kind === 'rejected' && answer.msg.error.code).toBe('TOKEN_UNKNOWN');

    // met-1 rotates and confirms: its first certificate is superseded.
    agents[0]!.rotateNow();
    await eventually(() => agents[0]!.status().rotations === 1 && fx.fleet.inventory.getCertificate(firstSerial)?.supersededAt !== undefined, 20_000, 'rotation confirmed');

    // met-3 is revoked.
    const revoked = await fx.fleet.revokeDevice('met-3', 'keyCompromise');
    expect(revoked.enforced).toBe(true);

    s = await scrape();
    const requests = [...s.values].filter(([k, v]) => k.startsWith('fleet_certificate_requests_total') && v !== 0);
    expect(Object.fromEntries(requests)).toEqual({
      'fleet_certificate_requests_total{code="ok",operation="enroll"}': 3,
      'fleet_certificate_requests_total{code="TOKEN_UNKNOWN",operation="enroll"}': 1,
      'fleet_certificate_requests_total{code="ok",operation="rotate"}': 1,
    });
    expect(sample(s, 'fleet_certificate_issuance_duration_seconds_count', { operation: 'rotate' })).toBe(1);
    expect(sample(s, 'fleet_certificate_issuance_duration_seconds_count', { operation: 'reattest' })).toBe(0);
    expect(sample(s, 'fleet_renewal_success_ratio')).toBe(1);
    // Four certificates: met-1's first (superseded) and rotated one, met-2's, met-3's (revoked).
    expect(Object.fromEntries(['valid', 'expired', 'revoked', 'superseded', 'not_yet_valid'].map((state) => [state, sample(s, 'fleet_certificates', { state })]))).toEqual({
      valid: 2,
      expired: 0,
      revoked: 1,
      superseded: 1,
      not_yet_valid: 0,
    });
    // 30-day certificates: none within 1 or 7 days, both valid ones within 30.
    expect(['1d', '7d', '30d'].map((window) => sample(s, 'fleet_certificates_expiring', { window }))).toEqual([0, 0, 2]);
    expect(['registered', 'active', 'revoked'].map((state) => sample(s, 'fleet_devices', { state }))).toEqual([0, 2, 1]);
    expect(sample(s, 'fleet_devices_online')).toBe(2);
    expect(sample(s, 'fleet_devices_valid_certificate_ratio')).toBe(1);
    expect(sample(s, 'fleet_devices_never_seen')).toBe(0);
    expect(sample(s, 'fleet_inventory_freshness_seconds_count')).toBe(2);
    // The revocation signed CRL 2, now in force.
    expect(sample(s, 'fleet_crl_number')).toBe(2);
    expect(Number(fx.fleet.revocation.current!.crlNumber)).toBe(2);
    expect(sample(s, 'fleet_crl_age_seconds')).toBeGreaterThanOrEqual(0);
    expect(sample(s, 'fleet_crl_age_seconds')).toBeLessThan(30);
    expect(sample(s, 'fleet_crl_next_update_seconds')).toBeGreaterThan(86_400 - 30);
    expect(sample(s, 'fleet_revocations_total', { target: 'device' })).toBe(1);
    expect(sample(s, 'fleet_revoked_certificates_total')).toBe(1);
    expect(sample(s, 'fleet_revocation_propagation_seconds_count')).toBe(1);
  });

  it('stops serving when the fleet stops (the port is closed)', async () => {
    const url = fx.fleet.metricsUrl!;
    await fx.stop();
    expect(fx.fleet.metricsUrl).toBeUndefined();
    await expect(fetch(url)).rejects.toThrow();
    fx = undefined as unknown as FleetFixture;
  });
});
