import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webcrypto } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import mqtt from 'mqtt';
import { systemClock } from '../../../common/clock.js';
import { Topics } from '../../../common/protocol/topics.js';
import { EmbeddedBroker } from './embedded-broker.js';
import { issueServiceCertificate } from './service-cert.js';

/**
 * The generated mosquitto config and ACLs, enforced by a real mosquitto: devices are confined to their
 * own topics, enrollment clients to their own enroll topics, the bridge role sees everything.
 */
describe('generated broker config (real mosquitto)', () => {
  const topics = new Topics('fleet/v1');
  let dir: string;
  let broker: EmbeddedBroker;
  let rootPem: string;
  let rootKeyPem: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'broker-test-'));
    x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);
    const alg = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
    const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const root = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: '01',
      name: 'CN=Test Fleet Root',
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 86_400_000),
      keys,
      signingAlgorithm: alg,
      extensions: [new x509.BasicConstraintsExtension(true, 1, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
    });
    rootPem = root.toString('pem');
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
    rootKeyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString('base64')}\n-----END PRIVATE KEY-----\n`;
    const server = await issueServiceCertificate({ rootCertPem: rootPem, rootKeyPem, commonName: 'broker', usage: 'server', hosts: ['127.0.0.1'], clock: systemClock });
    broker = await EmbeddedBroker.start({ dir, baseTopic: 'fleet/v1', serverCertPem: server.certPem, serverKeyPem: server.keyPem, clientCaPem: rootPem });
  });
  afterAll(async () => {
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const client = async (cn: string | undefined, port: number, clientId: string) => {
    const tls = cn ? await issueServiceCertificate({ rootCertPem: rootPem, rootKeyPem, commonName: cn, usage: 'client', clock: systemClock }) : undefined;
    return mqtt.connectAsync(`mqtts://127.0.0.1:${port}`, {
      ca: rootPem,
      ...(tls ? { cert: tls.certPem, key: tls.keyPem } : {}),
      clientId,
      protocolVersion: 5,
      reconnectPeriod: 0,
      connectTimeout: 5000,
    });
  };
  const reason = (p: Promise<unknown>) =>
    p.then(
      (a) => (a as { reasonCode?: number } | undefined)?.reasonCode ?? 0,
      (e: { code?: number }) => e.code ?? -1,
    );

  it('lets a device publish only its own status, and the bridge see it', async () => {
    const bridge = await client('role:bridge', broker.devicePort, 'bridge-1');
    const devA = await client('dev-a', broker.devicePort, 'dev-a');
    try {
      const seen: string[] = [];
      bridge.on('message', (t) => seen.push(t));
      await bridge.subscribeAsync('fleet/v1/devices/+/status', { qos: 1 });
      expect(await reason(devA.publishAsync(topics.device('dev-a', 'status'), '{}', { qos: 1 }))).toBe(0);
      expect(await reason(devA.publishAsync(topics.device('dev-b', 'status'), '{}', { qos: 1 }))).toBe(0x87);
      expect(await reason(devA.publishAsync(topics.device('dev-a', 'enroll'), '{}', { qos: 1 }))).toBe(0x87);
      expect(await reason(devA.publishAsync('fleet/v1/trust-bundle', '{}', { qos: 1 }))).toBe(0x87);
      await new Promise((r) => setTimeout(r, 200));
      expect(seen).toEqual([topics.device('dev-a', 'status')]);
    } finally {
      await Promise.all([bridge.endAsync(), devA.endAsync()]);
    }
  });

  it('confines anonymous enrollment clients to their own enroll topics', async () => {
    const enrolling = await client(undefined, broker.enrollPort, 'dev-c');
    try {
      expect(await reason(enrolling.publishAsync(topics.device('dev-c', 'enroll'), '{}', { qos: 1 }))).toBe(0);
      expect(await reason(enrolling.publishAsync(topics.device('dev-c', 'enrollProof'), '{}', { qos: 1 }))).toBe(0);
      expect(await reason(enrolling.publishAsync(topics.device('dev-d', 'enroll'), '{}', { qos: 1 }))).toBe(0x87);
      expect(await reason(enrolling.publishAsync(topics.device('dev-c', 'status'), '{}', { qos: 1 }))).toBe(0x87);
      expect(await reason(enrolling.publishAsync(topics.device('dev-c', 'enrollAccepted'), '{}', { qos: 1 }))).toBe(0x87);
    } finally {
      await enrolling.endAsync();
    }
  });

  it('refuses clients without a certificate on the device listener', async () => {
    await expect(client(undefined, broker.devicePort, 'anon')).rejects.toThrow();
  });
});
