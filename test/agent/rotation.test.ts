import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Level } from 'level';
import type { Clock } from '../../common/clock.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { rotationTime } from '../../agent/src/policy.js';
import { DEFAULT_OFFLINE_BUDGET } from '../../agent/src/policy.js';
import { eventually, recordingLogger, startFleetFixture, type FleetFixture } from './fleet-fixture.js';

const run = promisify(execFile);

const spkiHash = (pem: string) => createHash('sha256').update(new X509Certificate(pem).publicKey.export({ type: 'spki', format: 'der' })).digest('hex');

/**
 * Attested rotation end to end: real agent, real swtpm, mosquitto with the generated config, the bridge
 * and the CA. Every new key is created in the TPM, certified by the enrollment AK over a fresh nonce
 * from the bridge, and verified by the bridge before it issues.
 */
describe('attested rotation with A/B slots (real swtpm, mosquitto, bridge)', () => {
  let fx: FleetFixture;
  /** The fleet's clock runs `skewMs` ahead of real time (a CA with a wrong clock). */
  let skewMs = 0;
  const fleetClock: Clock = { now: () => Date.now() + skewMs };

  beforeAll(async () => {
    fx = await startFleetFixture({ clock: fleetClock });
    writeFileSync(join(fx.dir, 'chain.pem'), fx.fleet.ca.issuingCertificatePem);
    writeFileSync(join(fx.dir, 'root.pem'), fx.fleet.ca.rootCertificatePem);
  });
  afterAll(async () => {
    await fx?.stop();
  });

  it('rotates five times in a row: a new TPM key each time, proven to the bridge, at most 3 TPM signatures each; old keys gone', async () => {
    const d = await fx.device('rot-five');
    const id = d.bootstrap.deviceId;
    // The device clock: real time, except that it jumps past the renewal point until a rotation starts.
    let jumpTo: number | undefined;
    const clock: Clock = { now: () => jumpTo ?? Date.now() };
    const a = fx.agent(d, { clock });
    a.onStateChange((s) => {
      if (s === 'rotating') jumpTo = undefined;
    });
    await a.start();
    const serials = [a.status().certSerial!];

    for (let i = 1; i <= 5; i++) {
      // Each one is due by time: the device clock reaches the jittered renewal point of the current
      // certificate (and falls back to real time once the rotation starts).
      const current = serials.at(-1)!;
      const cert = new X509Certificate(fx.fleet.inventory.getCertificate(current)!.pem);
      const due = rotationTime({ serial: current, notBefore: Date.parse(cert.validFrom), notAfter: Date.parse(cert.validTo) }, DEFAULT_OFFLINE_BUDGET, id);
      expect(due - Date.parse(cert.validFrom)).toBeGreaterThan(0.56 * (Date.parse(cert.validTo) - Date.parse(cert.validFrom)));
      if (i === 1) {
        // A minute before the renewal point nothing happens (the agent checks every 200 ms tick).
        jumpTo = due - 60_000;
        await new Promise((r) => setTimeout(r, 700));
        expect(a.status().rotations).toBe(0);
        expect(a.state).toBe('online');
      }
      jumpTo = due + 1;
      await eventually(() => a.status().rotations === i && a.state === 'online', 20_000, `rotation ${i}`);
      const s = a.status();
      expect(s.certSerial).not.toBe(serials.at(-1));
      expect(s.lastRotationSignatures).toBe(3); // certify + CSR + the new mTLS handshake
      expect(s.lastRotation).toMatchObject({ result: 'ok' });
      serials.push(s.certSerial!);
      const record = fx.fleet.inventory.getCertificate(s.certSerial!)!;
      expect(record).toMatchObject({ deviceId: id, kind: 'rotate' });
      // The previous certificate was retired once the device confirmed the new one works.
      await eventually(() => fx.fleet.inventory.getCertificate(serials.at(-2)!)?.supersededAt !== undefined, 5_000, 'old certificate superseded');
      // An independent verifier accepts the new certificate against the fleet chain.
      writeFileSync(join(fx.dir, `leaf-${i}.pem`), record.pem);
      const { stdout } = await run('openssl', ['verify', '-CAfile', join(fx.dir, 'root.pem'), '-untrusted', join(fx.dir, 'chain.pem'), join(fx.dir, `leaf-${i}.pem`)]);
      expect(stdout).toContain('OK');
    }

    // Six certificates, six different keys; exactly one still active in the inventory.
    const certs = fx.fleet.inventory.listCertificates(id);
    expect(certs).toHaveLength(6);
    expect(new Set(certs.map((c) => spkiHash(c.pem))).size).toBe(6);
    expect(certs.filter((c) => c.supersededAt === undefined && c.revokedAt === undefined).map((c) => c.serial)).toEqual([serials.at(-1)]);
    expect(fx.fleet.inventory.getDevice(id)?.certSerial).toBe(serials.at(-1));
    // Its events reached the inventory in order: enrolled, then five rotations.
    await eventually(async () => (await fx.fleet.inventory.listDeviceEvents(id)).filter((e) => e.type !== 'clock_skew').length >= 6, 10_000, 'events ingested');
    // (The device clock was moved ahead to reach each renewal time, so the fleet clock check may
    // legitimately report clock_skew on the way; those are not part of the rotation sequence.)
    const types = (await fx.fleet.inventory.listDeviceEvents(id)).map((e) => e.type).filter((t) => t !== 'clock_skew');
    expect(types).toEqual(['enrolled', 'rotated', 'rotated', 'rotated', 'rotated', 'rotated']);
    // The retained status the bridge ingested names the current certificate.
    await eventually(() => fx.fleet.inventory.getDevice(id)?.status?.certSerial === serials.at(-1), 10_000, 'status ingested');

    await a.stop();
    // The store holds one identity: the old key blobs are gone, so no old key can ever be loaded again.
    const db = new Level<string, unknown>(join(d.dataDir, 'state'), { valueEncoding: 'json' });
    const keys = (await db.keys().all()).filter((k) => !k.startsWith('!'));
    const active = (await db.get('active')) as string;
    await db.close();
    expect(keys.filter((k) => k.startsWith('slot:'))).toEqual([`slot:${active}`]);
    expect(keys).not.toContain('pending');
    // And the TPM holds no transient object of the agent's (tpm2-tools, not our addon, looks).
    const { stdout } = await run('tpm2_getcap', ['-T', d.bootstrap.tcti, 'handles-transient']);
    expect(stdout.trim()).toBe('');
    const tpm = await NativeTpm.open(d.bootstrap.tcti);
    expect(await tpm.reclaimSlots()).toBe(0);
    await tpm.close();
  });

  it('rolls back to the old identity when the broker refuses the new certificate, then rotates once the fault is gone', async () => {
    const d = await fx.device('rot-rollback');
    const id = d.bootstrap.deviceId;
    const a = fx.agent(d);
    await a.start();
    const old = a.status().certSerial!;
    // The CA's clock jumps two hours ahead: the next certificate is not valid yet, so mosquitto
    // (OpenSSL, real time) refuses the handshake with it while the old certificate still works.
    skewMs = 2 * 3_600_000;
    a.rotateNow();
    await eventually(() => a.status().lastRotation?.result !== undefined && a.status().lastRotation?.result !== 'ok' && a.state === 'online', 20_000, 'rollback');
    skewMs = 0;
    const s = a.status();
    expect(s.certSerial).toBe(old);
    expect(s.lastRotation!.result).toMatch(/^TRANSPORT_/);
    expect(s.rotations).toBe(0);
    // Back on the old identity, the agent had the bridge retire the certificate the broker refused.
    await eventually(() => {
      const active = fx.fleet.inventory.listCertificates(id).filter((c) => c.supersededAt === undefined && c.revokedAt === undefined);
      return active.length === 1 && active[0]!.serial === old;
    }, 10_000, 'the refused certificate retired');
    await eventually(async () => (await fx.fleet.inventory.listDeviceEvents(id)).some((e) => e.type === 'rotation_failed'), 10_000, 'rotation_failed event');
    const failed = (await fx.fleet.inventory.listDeviceEvents(id)).find((e) => e.type === 'rotation_failed')!;
    expect(failed.details).toMatchObject({ serial: old });
    // With the CA clock fixed, the retry (after its backoff) succeeds.
    await eventually(() => a.status().rotations === 1 && a.state === 'online', 20_000, 'rotation after the fault');
    const now = a.status().certSerial!;
    expect(now).not.toBe(old);
    // The refused certificate and the old one are both retired; only the new one is active.
    const active = fx.fleet.inventory.listCertificates(id).filter((c) => c.supersededAt === undefined && c.revokedAt === undefined);
    expect(active.map((c) => c.serial)).toEqual([now]);
  });

  it('honours the bridge retryAfterSec when a rotation is rate limited, then rotates with the same key', async () => {
    // Its own fleet with a tight per-device rotation budget (1 begin, then 1/s): the second rotation
    // right after the first is refused with retryAfterSec.
    const tight = await startFleetFixture({ rateLimit: { perDevice: { ratePerSec: 1, burst: 1 }, global: { ratePerSec: 100, burst: 100 } } });
    try {
      const d = await tight.device('rot-limited');
      const log = recordingLogger();
      const a = tight.agent(d, { logger: log });
      await a.start();
      a.rotateNow();
      await eventually(() => a.status().rotations === 1 && a.state === 'online', 30_000, 'first rotation');
      a.rotateNow();
      await eventually(() => a.status().rotations === 2 && a.state === 'online', 30_000, 'rotation after the limit');
      const refused = log.lines.filter((l) => l.msg === 'rotation refused by the fleet; keeping the current identity');
      expect(refused.length).toBeGreaterThan(0);
      expect(refused.every((l) => l.fields['code'] === 'RATE_LIMITED' && Number(l.fields['retryInMs']) >= 1000)).toBe(true);
      // A retryable refusal keeps the new key: one TPM key per rotation.
      expect(log.lines.filter((l) => l.msg === 'rotation key created')).toHaveLength(2);
      expect(a.status().lastRotation).toMatchObject({ result: 'ok' });
    } finally {
      await tight.stop();
    }
  });
});
