import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../common/clock.js';
import { DEFAULT_AUDITOR, DEFAULT_OPERATOR, EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { eventually } from '../agent/fleet-fixture.js';

const run = promisify(execFile);
const CUT = 'role:auditor:cut';

/**
 * Revoking a role certificate (not a device) by serial: the broker refuses it at connect (CRL) and cuts
 * its open session (the CN denied in the ACL), as long as the role has no newer valid certificate; a
 * renewed certificate for the same role lifts the denial. Serials the CA never issued are refused.
 */
describe('revoking a role certificate (real mosquitto, issued registry)', () => {
  let dir: string;
  let fleet: EmbeddedFleet;
  const clients: MqttClient[] = [];

  const connect = (tls: { certPem: string; keyPem: string }) =>
    new Promise<MqttClient>((resolve, reject) => {
      const c = mqtt.connect(fleet.broker.deviceUrl, { clientId: `enr-${Math.random().toString(36).slice(2)}`, protocolVersion: 5, ca: fleet.ca.rootCertificatePem, cert: tls.certPem, key: tls.keyPem, reconnectPeriod: 0, connectTimeout: 5_000 });
      clients.push(c);
      c.once('connect', () => resolve(c));
      c.once('error', reject);
      c.once('close', () => reject(new Error('closed before CONNACK')));
    });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'role-revocation-'));
    fleet = await EmbeddedFleet.start({ dir: join(dir, 'fleet'), clock: systemClock, trustDomain: 'test.fleet', ekTrust: { roots: [] }, auditorIdentities: [DEFAULT_AUDITOR, CUT] });
    writeFileSync(join(dir, 'root.pem'), fleet.ca.rootCertificatePem);
  });
  afterAll(async () => {
    for (const c of clients) c.end(true);
    await fleet?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('cuts the open session of a revoked role within 2 s, refuses its reconnect, and a renewed certificate works again', async () => {
    const old = await fleet.clientCertificate(CUT);
    const auditor = await connect(old);
    const seen: number[] = [];
    auditor.on('message', () => seen.push(Date.now()));
    await auditor.subscribeAsync('fleet/v1/operators/#', { qos: 0 });
    const operator = await connect(await fleet.clientCertificate(DEFAULT_OPERATOR));
    let ticks = 0;
    const pump = setInterval(() => void operator.publishAsync('fleet/v1/operators/ops/commands/ping', `t${ticks++}`, { qos: 0 }).catch(() => undefined), 25);
    try {
      await eventually(() => seen.length > 3, 5_000, 'auditor receives');
      const t0 = Date.now();
      const r = await fleet.revocation.revokeSerial(old.serialNumber, 'keyCompromise');
      expect(r.serials).toEqual([old.serialNumber]);
      expect(r.enforced).toBe(true);
      // The cut: no more deliveries to the open session. Deliveries stop at the broker's reload.
      await eventually(() => seen.length > 0 && Date.now() - seen[seen.length - 1]! > 500, 5_000, 'deliveries stop');
      const cutMs = seen[seen.length - 1]! - t0;
      console.log(`role revocation: open session cut after ${Math.max(0, cutMs)} ms`);
      expect(cutMs).toBeLessThan(2_000);
    } finally {
      clearInterval(pump);
    }

    // Reconnecting with the revoked certificate fails the TLS handshake: mqtt.js and mosquitto_sub.
    await expect(connect(old)).rejects.toThrow(/certificate revoked/i);
    writeFileSync(join(dir, 'old.pem'), old.certPem);
    writeFileSync(join(dir, 'old-key.pem'), old.keyPem, { mode: 0o600 });
    const sub = await run('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(fleet.broker.devicePort), '--cafile', join(dir, 'root.pem'), '--cert', join(dir, 'old.pem'), '--key', join(dir, 'old-key.pem'),
      '-i', 'enr-cli-cut', '-t', 'fleet/v1/#', '-C', '1', '-W', '3', '-d']).catch((e: { code: number; stdout: string; stderr: string }) => e);
    expect('code' in sub ? sub.code : 0).not.toBe(0);
    expect(sub.stdout + sub.stderr).not.toMatch(/CONNACK/);

    // A renewed certificate for the role: the next tick lifts the CN's denial; the old one stays refused.
    const renewed = await fleet.clientCertificate(CUT);
    await fleet.revocation.tick();
    const back = await connect(renewed);
    const got = new Promise<string>((resolve) => back.once('message', (_t, p) => resolve(p.toString())));
    await back.subscribeAsync('fleet/v1/operators/#', { qos: 1 });
    await operator.publishAsync('fleet/v1/operators/ops/commands/ping', 'after-renewal', { qos: 1 });
    await expect(got).resolves.toBe('after-renewal');
    await expect(connect(old)).rejects.toThrow(/certificate revoked/i);
  }, 60_000);

  it('refuses a serial the CA never issued, and keeps the CRL as it was', async () => {
    const before = fleet.revocation.current!.crlNumber;
    await expect(fleet.revocation.revokeSerial('7eadbeef', 'keyCompromise')).rejects.toMatchObject({ code: 'REVOCATION_NOT_FOUND' });
    expect(fleet.revocation.current!.crlNumber).toBe(before);
  });
});
