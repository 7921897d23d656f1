import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../common/clock.js';
import type { CrlResponse } from '../../broker-bridge/src/ca/crl.js';
import type { CertificateRecord, DeviceRecord } from '../../broker-bridge/src/inventory/inventory.js';
import type { CampaignView } from '../../broker-bridge/src/campaign/campaign-service.js';
import { CAMPAIGN_METRICS_FINISHED, FLEET_METRIC_NAMES, FleetMetrics } from '../../broker-bridge/src/metrics/fleet-metrics.js';
import { parseExposition, sample } from './exposition.js';

/**
 * The collectors on hand-made inventory records and a ManualClock: every gauge is computed from the
 * inventory at scrape time, so moving the clock (without touching the inventory) changes what they say.
 */
const T0 = Date.UTC(2026, 0, 1);
const H = 3_600_000;
const D = 24 * H;

function device(deviceId: string, extra: Partial<DeviceRecord> = {}): DeviceRecord {
  return { deviceId, ekPublicHash: 'e', ekCertificate: 'AAAA', ekKind: 'ecc', metadata: {}, registeredAt: T0 - 10 * D, enrolledAt: T0 - 9 * D, ...extra };
}
function cert(serial: string, deviceId: string, notBefore: number, notAfter: number, extra: Partial<CertificateRecord> = {}): CertificateRecord {
  return { serial, deviceId, notBefore, notAfter, issuedAt: notBefore, pem: 'PEM', keySpkiHash: 'k', ...extra };
}

const devices: DeviceRecord[] = [
  device('d1', { online: true, lastSeenAt: T0 - 30_000 }),
  device('d2', { online: false, lastSeenAt: T0 - 2 * H }),
  device('d3'), // enrolled, never heard from, its certificate expired
  device('d4', { online: true, lastSeenAt: T0 - 1000, revokedAt: T0 - H }),
  device('d5', { enrolledAt: undefined }), // registered, waiting to enroll
  device('d6', { lastSeenAt: T0 - 3 * D }),
];
const certificates: CertificateRecord[] = [
  cert('a1', 'd1', T0 - 9 * D, T0 + 12 * H),
  cert('a0', 'd1', T0 - 20 * D, T0 + 5 * D, { supersededAt: T0 - 9 * D }),
  cert('b1', 'd2', T0 - 5 * D, T0 + 10 * D),
  cert('c1', 'd3', T0 - 30 * D, T0 - 1000),
  cert('e1', 'd4', T0 - 5 * D, T0 + 20 * D, { revokedAt: T0 - H }),
  cert('f1', 'd6', T0 + H, T0 + 40 * D), // not yet valid (a CA clock ahead)
];

/** A campaign as CampaignService shows it, with what the metrics read. */
function campaign(campaignId: string, state: CampaignView['state'], waves: Partial<CampaignView['waves'][number]>[], createdAt: number): CampaignView {
  const ws = waves.map((w, index) => ({ index, percent: 100, size: 0, sent: 0, succeeded: 0, failed: 0, skipped: 0, pending: 0, codes: {}, gate: 'pending' as const, ...w }));
  return {
    campaignId, kind: 'rotate', state, wave: ws.findLastIndex((w) => w.dispatchedAt !== undefined), devices: ws.reduce((n, w) => n + w.size, 0), excluded: 0, selector: {},
    gates: { minSuccessRate: 0.95, maxFailures: 0, minHeardFrom: 0.9, windowSec: 600 }, jitterSec: 0, commandTtlSec: 600,
    waves: ws, succeeded: ws.reduce((n, w) => n + w.succeeded, 0), failed: ws.reduce((n, w) => n + w.failed, 0), failureCodes: {}, createdAt, createdBy: 'ops', updatedAt: createdAt,
  };
}

function setup(crl?: CrlResponse, campaigns: CampaignView[] = []) {
  const clock = new ManualClock(T0);
  const m = new FleetMetrics({
    inventory: { listDevices: () => devices, listCertificates: (id?: string) => certificates.filter((c) => id === undefined || c.deviceId === id) },
    clock,
    crl: { current: crl },
    campaigns: { list: () => campaigns },
  });
  const scrape = async () => parseExposition(await m.metrics());
  return { clock, m, scrape };
}

describe('fleet metrics collectors (ManualClock, hand-made inventory)', () => {
  it('certificates by state, expiring windows, devices, online, valid ratio and freshness from the inventory at scrape time', async () => {
    const { clock, scrape } = setup();
    let s = await scrape();
    const states = (x: typeof s) => Object.fromEntries(['valid', 'expired', 'revoked', 'superseded', 'not_yet_valid'].map((state) => [state, sample(x, 'fleet_certificates', { state })]));
    expect(states(s)).toEqual({ valid: 2, expired: 1, revoked: 1, superseded: 1, not_yet_valid: 1 });
    expect(['1d', '7d', '30d'].map((window) => sample(s, 'fleet_certificates_expiring', { window }))).toEqual([1, 1, 2]);
    expect(['registered', 'active', 'revoked'].map((state) => sample(s, 'fleet_devices', { state }))).toEqual([1, 4, 1]);
    // d4 says online but is revoked: not counted.
    expect(sample(s, 'fleet_devices_online')).toBe(1);
    expect(sample(s, 'fleet_devices_never_seen')).toBe(1);
    // Active: d1, d2, d3, d6; with a valid certificate: d1, d2.
    expect(sample(s, 'fleet_devices_valid_certificate_ratio')).toBe(0.5);
    // Seen: d1 30 s, d2 2 h, d6 3 days ago.
    const bucket = (x: typeof s, le: string) => sample(x, 'fleet_inventory_freshness_seconds_bucket', { le });
    expect(['60', '3600', '21600', '86400', '604800', '+Inf'].map((le) => bucket(s, le))).toEqual([1, 1, 2, 2, 3, 3]);
    expect(sample(s, 'fleet_inventory_freshness_seconds_count')).toBe(3);
    expect(sample(s, 'fleet_inventory_freshness_seconds_sum')).toBe(30 + 7200 + 3 * 86_400);

    // 13 hours later, same inventory: a1 expired, f1 became valid, everyone is older.
    clock.advance(13 * H);
    s = await scrape();
    expect(states(s)).toEqual({ valid: 2, expired: 2, revoked: 1, superseded: 1, not_yet_valid: 0 });
    expect(['1d', '7d', '30d'].map((window) => sample(s, 'fleet_certificates_expiring', { window }))).toEqual([0, 0, 1]);
    expect(sample(s, 'fleet_devices_valid_certificate_ratio')).toBe(0.5); // d2 and d6 now
    expect(['60', '3600', '86400', '604800'].map((le) => bucket(s, le))).toEqual([0, 0, 2, 3]);
    expect(sample(s, 'fleet_inventory_freshness_seconds_count')).toBe(3);
  });

  it('request outcomes by code, issuance latency, and the renewal success ratio from the rotation outcomes', async () => {
    const { m, scrape } = setup();
    let s = await scrape();
    // Present before anything happened (rate() needs the zero); no rotation yet: ratio NaN.
    for (const operation of ['enroll', 'rotate', 'reattest']) {
      expect(sample(s, 'fleet_certificate_requests_total', { operation, code: 'ok' })).toBe(0);
      expect(sample(s, 'fleet_certificate_issuance_duration_seconds_count', { operation })).toBe(0);
    }
    expect(sample(s, 'fleet_renewal_success_ratio')).toBeNaN();

    m.result('enroll', 'ok');
    m.result('enroll', 'TOKEN_USED');
    m.issued('enroll', 0.02);
    for (let i = 0; i < 3; i++) m.result('rotate', 'ok');
    m.result('rotate', 'RATE_LIMITED');
    m.issued('rotate', 0.3);
    m.result('reattest', 'DEVICE_REVOKED');
    s = await scrape();
    expect(sample(s, 'fleet_certificate_requests_total', { operation: 'enroll', code: 'ok' })).toBe(1);
    expect(sample(s, 'fleet_certificate_requests_total', { operation: 'enroll', code: 'TOKEN_USED' })).toBe(1);
    expect(sample(s, 'fleet_certificate_requests_total', { operation: 'rotate', code: 'ok' })).toBe(3);
    expect(sample(s, 'fleet_certificate_requests_total', { operation: 'rotate', code: 'RATE_LIMITED' })).toBe(1);
    expect(sample(s, 'fleet_certificate_requests_total', { operation: 'reattest', code: 'DEVICE_REVOKED' })).toBe(1);
    expect(sample(s, 'fleet_renewal_success_ratio')).toBe(0.75);
    expect(sample(s, 'fleet_certificate_issuance_duration_seconds_bucket', { operation: 'enroll', le: '0.01' })).toBe(0);
    expect(sample(s, 'fleet_certificate_issuance_duration_seconds_bucket', { operation: 'enroll', le: '0.025' })).toBe(1);
    expect(sample(s, 'fleet_certificate_issuance_duration_seconds_bucket', { operation: 'rotate', le: '0.25' })).toBe(0);
    expect(sample(s, 'fleet_certificate_issuance_duration_seconds_bucket', { operation: 'rotate', le: '0.5' })).toBe(1);
    expect(sample(s, 'fleet_certificate_issuance_duration_seconds_sum', { operation: 'rotate' })).toBe(0.3);
  });

  it('CRL number, age and time to nextUpdate from the CRL in force; NaN without one', async () => {
    const crl: CrlResponse = { crlDer: Buffer.alloc(0), crlNumber: 7n, thisUpdate: new Date(T0 - 600_000), nextUpdate: new Date(T0 + D - 600_000) };
    const { clock, scrape } = setup(crl);
    let s = await scrape();
    expect(sample(s, 'fleet_crl_number')).toBe(7);
    expect(sample(s, 'fleet_crl_age_seconds')).toBe(600);
    expect(sample(s, 'fleet_crl_next_update_seconds')).toBe(86_400 - 600);
    clock.advance(D);
    s = await scrape();
    expect(sample(s, 'fleet_crl_age_seconds')).toBe(86_400 + 600);
    expect(sample(s, 'fleet_crl_next_update_seconds')).toBe(-600); // overdue

    const none = await setup(undefined).scrape();
    expect(sample(none, 'fleet_crl_number')).toBeNaN();
    expect(sample(none, 'fleet_crl_age_seconds')).toBeNaN();
  });

  it('revocations: counted when something was revoked; propagation observed when the broker enforced it', async () => {
    const { m, scrape } = setup();
    m.revoked('device', 2, 0.3, true);
    m.revoked('device', 0, 0.1, true); // a repeat revoked nothing
    m.revoked('serial', 1, 4, false); // broker update failed: no propagation time
    const s = await scrape();
    expect(sample(s, 'fleet_revocations_total', { target: 'device' })).toBe(1);
    expect(sample(s, 'fleet_revocations_total', { target: 'serial' })).toBe(1);
    expect(sample(s, 'fleet_revoked_certificates_total')).toBe(3);
    expect(sample(s, 'fleet_revocation_propagation_seconds_count')).toBe(1);
    expect(sample(s, 'fleet_revocation_propagation_seconds_bucket', { le: '0.5' })).toBe(1);
  });

  it('campaigns: devices by outcome, state and gate, wave; every active campaign and the newest finished ones', async () => {
    const finished = Array.from({ length: CAMPAIGN_METRICS_FINISHED + 2 }, (_, i) => campaign(`old-${i}`, 'completed', [{ size: 1, succeeded: 1, dispatchedAt: T0 - D, gate: 'passed' }], T0 - (i + 2) * D));
    const canary = campaign('canary', 'paused', [{ size: 2, sent: 2, succeeded: 1, failed: 1, dispatchedAt: T0 - H, gate: 'tripped' }, { size: 18 }], T0 - H);
    const rolling = campaign('rolling', 'running', [{ size: 1, sent: 1, succeeded: 1, dispatchedAt: T0 - 2 * H, gate: 'passed' }, { size: 9, sent: 9, succeeded: 3, skipped: 1, pending: 5, dispatchedAt: T0 - H }], T0 - 2 * H);
    const s = await setup(undefined, [canary, rolling, ...finished]).scrape();
    const outcomes = (c: string) => Object.fromEntries(['succeeded', 'failed', 'skipped', 'pending', 'waiting'].map((outcome) => [outcome, sample(s, 'fleet_campaign_devices', { campaign: c, kind: 'rotate', outcome })]));
    expect(outcomes('canary')).toEqual({ succeeded: 1, failed: 1, skipped: 0, pending: 0, waiting: 18 });
    expect(outcomes('rolling')).toEqual({ succeeded: 4, failed: 0, skipped: 1, pending: 5, waiting: 0 });
    expect(sample(s, 'fleet_campaign_info', { campaign: 'canary', kind: 'rotate', state: 'paused', gate: 'tripped' })).toBe(1);
    expect(sample(s, 'fleet_campaign_info', { campaign: 'rolling', kind: 'rotate', state: 'running', gate: 'pending' })).toBe(1);
    expect(sample(s, 'fleet_campaign_wave', { campaign: 'rolling', of: '2' })).toBe(2);
    // Finished campaigns: only the newest few keep their series.
    const shown = [...s.values.keys()].filter((k) => k.startsWith('fleet_campaign_info')).map((k) => /campaign="([^"]+)"/.exec(k)![1]);
    expect(shown.sort()).toEqual(['canary', 'rolling', ...finished.slice(0, CAMPAIGN_METRICS_FINISHED).map((c) => c.campaignId)].sort());
  });

  it('each instance has its own registry (two fleets in one process), and every documented name is exposed', async () => {
    const a = setup();
    const b = setup();
    a.m.result('enroll', 'ok');
    const [sa, sb] = [await a.scrape(), await b.scrape()];
    expect(sample(sa, 'fleet_certificate_requests_total', { operation: 'enroll', code: 'ok' })).toBe(1);
    expect(sample(sb, 'fleet_certificate_requests_total', { operation: 'enroll', code: 'ok' })).toBe(0);
    expect([...sa.types.keys()].sort()).toEqual([...FLEET_METRIC_NAMES].sort());
    // No process metrics unless asked for.
    expect([...sa.types.keys()].every((n) => n.startsWith('fleet_'))).toBe(true);
  });

  it('a scrape of 10,000 devices with 20,000 certificates reads the inventory once (timing belongs in a benchmark)', async () => {
    const many: DeviceRecord[] = [];
    const certs: CertificateRecord[] = [];
    for (let i = 0; i < 10_000; i++) {
      many.push(device(`dev-${i}`, { online: i % 3 === 0, lastSeenAt: T0 - i * 1000 }));
      certs.push(cert(`s${i}a`, `dev-${i}`, T0 - 10 * D, T0 + (i % 40) * D, { supersededAt: T0 - D }));
      certs.push(cert(`s${i}b`, `dev-${i}`, T0 - D, T0 + ((i % 60) + 1) * H));
    }
    let reads = 0;
    const m = new FleetMetrics({
      inventory: { listDevices: () => (reads++, many), listCertificates: () => certs },
      clock: new ManualClock(T0),
    });
    const s = parseExposition(await m.metrics());
    expect(reads).toBe(1);
    expect(sample(s, 'fleet_devices', { state: 'active' })).toBe(10_000);
    expect(sample(s, 'fleet_certificates', { state: 'superseded' })).toBe(10_000);
    expect(sample(s, 'fleet_certificates_expiring', { window: '1d' })).toBe(certs.filter((c) => c.supersededAt === undefined && c.notAfter - T0 <= D).length);
    expect(sample(s, 'fleet_certificates_expiring', { window: '1d' })).toBe(4008); // (i % 60) + 1 ≤ 24 hours
    expect(sample(s, 'fleet_devices_online')).toBe(3334);
    expect(sample(s, 'fleet_inventory_freshness_seconds_count')).toBe(10_000);
  });
});
