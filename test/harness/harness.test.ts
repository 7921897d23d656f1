import { afterAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { promisify } from 'node:util';
import mqtt from 'mqtt';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { verifyEkCertificate } from '../../native/lib/ek-certificate.js';
import { selectedBackend, startBroker, startSoftHsm, startTpm, type TestTpm } from './index.js';

const run = promisify(execFile);

/** The harness itself, against the real programs: what every integration suite relies on. */
describe('test harness', () => {
  const tpms: TestTpm[] = [];
  afterAll(async () => {
    await Promise.all(tpms.map((t) => t.stop()));
  });

  it('runs the backend the environment asked for', async () => {
    const expected = process.env['TPMFLEET_TEST_IMAGE'] && process.env['TEST_BACKEND'] !== 'process' ? 'container' : 'process';
    expect(await selectedBackend()).toBe(expected);
    if (expected === 'container') {
      const tpm = await startTpm();
      tpms.push(tpm);
      // The TPM's port is published by a swtpm container (other workers may run their own meanwhile).
      const { stdout } = await run('docker', ['ps', '-q', '--filter', 'label=tpmfleet.service=swtpm', '--filter', `publish=${tpm.port}`]);
      expect(stdout.split(/\s+/).filter(Boolean)).toHaveLength(1);
    }
  });

  it('manufactures distinct TPMs whose EK certificates chain to the run\'s manufacturer, and keeps state across restart', async () => {
    const [a, b] = await Promise.all([startTpm(), startTpm()]);
    tpms.push(a!, b!);
    const certOf = async (t: TestTpm) => {
      const tpm = await NativeTpm.open(t.tcti);
      try {
        return (await tpm.readEkCertificate('ecc'))!;
      } finally {
        await tpm.close();
      }
    };
    const [ca, cb] = [await certOf(a!), await certOf(b!)];
    expect(ca.equals(cb)).toBe(false);
    for (const c of [ca, cb]) {
      expect(() => verifyEkCertificate(c, { roots: [a!.manufacturerRootPem], intermediates: [a!.manufacturerIntermediatePem] }, Date.now())).not.toThrow();
    }
    expect(new X509Certificate(a!.manufacturerRootPem).ca).toBe(true);
    await a!.restart();
    expect((await certOf(a!)).equals(ca)).toBe(true);
  });

  it('starts mosquitto with an mTLS listener that refuses clients without a certificate and an anonymous TLS listener', async () => {
    const broker = await startBroker();
    try {
      const client = await broker.clientCa.issue({ cn: 'harness-client', clientAuth: true });
      const ok = await mqtt.connectAsync(`mqtts://127.0.0.1:${broker.tlsPort}`, { ca: broker.caPem, cert: client.certPem, key: client.keyPem!, reconnectPeriod: 0, protocolVersion: 5 });
      const got = new Promise<string>((r) => ok.on('message', (_t, p) => r(p.toString())));
      await ok.subscribeAsync('h/t', { qos: 1 });
      await ok.publishAsync('h/t', 'round trip', { qos: 1 });
      expect(await got).toBe('round trip');
      await ok.endAsync();
      await expect(mqtt.connectAsync(`mqtts://127.0.0.1:${broker.tlsPort}`, { ca: broker.caPem, reconnectPeriod: 0, connectTimeout: 3000 })).rejects.toThrow();
      const anon = await mqtt.connectAsync(`mqtts://127.0.0.1:${broker.enrollPort}`, { ca: broker.caPem, reconnectPeriod: 0 });
      await anon.endAsync();
    } finally {
      await broker.stop();
    }
  });

  it('prepares a fresh SoftHSM2 token', async () => {
    const hsm = await startSoftHsm({ tokenLabel: 'harness' });
    try {
      const { stdout } = await run('softhsm2-util', ['--show-slots'], { env: { ...process.env, ...hsm.env } });
      expect(stdout).toContain(`Slot ${hsm.slot}`);
      expect(stdout).toContain('harness');
    } finally {
      await hsm.stop();
    }
  });
});
