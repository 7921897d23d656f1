import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_AUDITOR } from '../../broker-bridge/src/embedded-fleet.js';
import { eventually, startFleetFixture, type FleetFixture } from '../agent/fleet-fixture.js';

const run = promisify(execFile);

/**
 * Revocation with real agents (keys in swtpm) on the whole fleet side: the revoked agent's open session
 * loses every right (seen by an independent auditor client), while another agent and the bridge keep
 * working with `crlfile` set, including a rotation whose new certificate the broker must accept.
 */
describe('revoking a connected agent (real swtpm, mosquitto, bridge)', () => {
  let fx: FleetFixture;
  let watcher: mqtt.MqttClient;
  const seen: { topic: string; at: number }[] = [];

  beforeAll(async () => {
    fx = await startFleetFixture();
    const role = await fx.fleet.clientCertificate(DEFAULT_AUDITOR);
    watcher = await mqtt.connectAsync(fx.fleet.broker.deviceUrl, { ca: fx.fleet.ca.rootCertificatePem, cert: role.certPem, key: role.keyPem, reconnectPeriod: 0, clientId: 'enr-rev-watcher' });
    watcher.on('message', (topic) => seen.push({ topic, at: Date.now() }));
    await watcher.subscribeAsync('fleet/v1/devices/#', { qos: 1 });
    writeFileSync(join(fx.dir, 'root.pem'), fx.fleet.ca.rootCertificatePem);
    writeFileSync(join(fx.dir, 'issuing.pem'), fx.fleet.ca.issuingCertificatePem);
  });
  afterAll(async () => {
    await watcher?.endAsync();
    await fx?.stop();
  });

  it('cuts the revoked agent, and another agent still rotates through the bridge', async () => {
    const da = await fx.device('rev-a');
    const db = await fx.device('rev-b');
    const a = fx.agent(da);
    const b = fx.agent(db);
    await Promise.all([a.start(), b.start()]);
    const serialA = a.status().certSerial!;
    const serialB = b.status().certSerial!;

    const r = await fx.fleet.revokeDevice('rev-a', 'keyCompromise');
    expect(r.serials).toEqual([serialA]);
    const cutAt = Date.now();

    // The other agent rotates: bridge, CA and broker (new certificate, crlfile set) all still work.
    b.rotateNow();
    const newB = await eventually(() => (b.status().certSerial !== serialB && b.state === 'online' ? b.status().certSerial : undefined), 20_000, 'rev-b rotated');
    expect(fx.fleet.inventory.getCertificate(newB!)?.deviceId).toBe('rev-b');
    expect(seen.some((m) => m.at > cutAt && m.topic === 'fleet/v1/devices/rev-b/rotate/begin')).toBe(true);

    // The revoked agent learns it from the CRL (published before the broker strips its session) and
    // parks in `revoked`. 2 s after the revocation it is stopped: nothing it publishes from then on
    // reaches anyone (the auditor sees nothing from it), while the other agent's offline status arrives.
    await eventually(() => a.state === 'revoked', 10_000, 'rev-a revoked');
    await new Promise((r) => setTimeout(r, Math.max(0, cutAt + 2_000 - Date.now())));
    const stoppedAt = Date.now();
    await a.stop();
    await b.stop();
    await eventually(() => seen.some((m) => m.at >= stoppedAt && m.topic === 'fleet/v1/devices/rev-b/status'), 5_000, 'rev-b offline status');
    await new Promise((r) => setTimeout(r, 300)); // real processes: give a delivery time to (not) happen
    expect(seen.filter((m) => m.at >= cutAt + 2_000 && m.topic.startsWith('fleet/v1/devices/rev-a/'))).toEqual([]);
    expect(fx.fleet.inventory.listCertificates('rev-a').map((c) => c.serial)).toEqual([serialA]);

    // openssl with the fleet's CRL: the revoked agent's certificate fails with 23, the other's new one passes.
    const verify = async (serial: string) => {
      const file = join(fx.dir, `${serial}.pem`);
      writeFileSync(file, fx.fleet.inventory.getCertificate(serial)!.pem);
      return run('openssl', ['verify', '-crl_check', '-CRLfile', fx.fleet.broker.crlFile!, '-CAfile', join(fx.dir, 'root.pem'), '-untrusted', join(fx.dir, 'issuing.pem'), file]).then(
        (x) => ({ code: 0, out: x.stdout + x.stderr }),
        (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }),
      );
    };
    const bad = await verify(serialA);
    expect(bad.code).not.toBe(0);
    expect(bad.out).toMatch(/error 23 at 0 depth lookup: certificate revoked/);
    const good = await verify(newB!);
    expect(good.code, good.out).toBe(0);
  }, 90_000);
});
