import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { webcrypto } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
 * own topics, enrollment clients to their own enroll topics, the bridge role sees everything; retained
 * messages survive a restart (persistence), checked with an independent client (mosquitto-clients).
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
    writeFileSync(join(dir, 'root-takeover.crt'), rootPem);
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
    rootKeyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString('base64')}\n-----END PRIVATE KEY-----\n`;
    const server = await issueServiceCertificate({ rootCertPem: rootPem, rootKeyPem, commonName: 'broker', usage: 'server', hosts: ['127.0.0.1'], clock: systemClock });
    broker = await EmbeddedBroker.start({
      dir,
      baseTopic: 'fleet/v1',
      serverCertPem: server.certPem,
      serverKeyPem: server.keyPem,
      clientCaPem: rootPem,
      operatorIdentities: ['role:operator:ops'],
      // Only restarts save (SIGTERM), so what a SIGKILL loses is known exactly.
      autosaveIntervalSec: 3600,
    });
  });
  const ENROLLER = `enr-${'A'.repeat(22)}`;
  const OTHER_ENROLLER = `enr-${'B'.repeat(22)}`;
  afterAll(async () => {
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** `clientId` gets the `enr-` prefix every client needs unless `raw` (to prove the broker refuses others). */
  const client = async (cn: string | undefined, port: number, clientId: string, raw = false) => {
    const tls = cn ? await issueServiceCertificate({ rootCertPem: rootPem, rootKeyPem, commonName: cn, usage: 'client', clock: systemClock }) : undefined;
    return mqtt.connectAsync(`mqtts://127.0.0.1:${port}`, {
      ca: rootPem,
      ...(tls ? { cert: tls.certPem, key: tls.keyPem } : {}),
      clientId: raw ? clientId : `enr-${clientId}`,
      protocolVersion: 5,
      reconnectPeriod: 0,
      connectTimeout: 5000,
    });
  };
  const run = (cmd: string, args: string[]) =>
    new Promise<string>((resolve, reject) =>
      execFile(cmd, args, { timeout: 10_000 }, (err, stdout, stderr) => (err ? reject(new Error(`${cmd} failed: ${stderr || err.message}`)) : resolve(stdout))),
    );
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
      expect(await reason(devA.publishAsync(topics.enrollment(ENROLLER, 'enroll'), '{}', { qos: 1 }))).toBe(0x87);
      expect(await reason(devA.publishAsync('fleet/v1/trust-bundle', '{}', { qos: 1 }))).toBe(0x87);
      await new Promise((r) => setTimeout(r, 200));
      expect(seen).toEqual([topics.device('dev-a', 'status')]);
    } finally {
      await Promise.all([bridge.endAsync(), devA.endAsync()]);
    }
  });

  it('confines anonymous enrollment clients to the enroll topics of their own client id', async () => {
    const enrolling = await client(undefined, broker.enrollPort, ENROLLER, true);
    try {
      expect(await reason(enrolling.publishAsync(topics.enrollment(ENROLLER, 'enroll'), '{}', { qos: 1 }))).toBe(0);
      expect(await reason(enrolling.publishAsync(topics.enrollment(ENROLLER, 'enrollProof'), '{}', { qos: 1 }))).toBe(0);
      expect(await reason(enrolling.publishAsync(topics.enrollment(OTHER_ENROLLER, 'enroll'), '{}', { qos: 1 }))).toBe(0x87);
      expect(await reason(enrolling.publishAsync(topics.device('dev-c', 'status'), '{}', { qos: 1 }))).toBe(0x87);
      expect(await reason(enrolling.publishAsync(topics.enrollment(ENROLLER, 'enrollAccepted'), '{}', { qos: 1 }))).toBe(0x87);
    } finally {
      await enrolling.endAsync();
    }
  });

  it('lets no client take over another\'s session on either listener (mqtt.js and mosquitto_pub as the intruders)', async () => {
    const devA = await client('dev-a', broker.devicePort, 'whatever-a');
    const bridge = await client('role:bridge', broker.devicePort, 'bridge-t');
    let kicked = 0;
    devA.on('close', () => kicked++);
    bridge.on('close', () => kicked++);
    try {
      // Ids without the enr- prefix are refused outright, anonymous or not: the device's and the bridge's names.
      for (const [cn, port, id] of [
        [undefined, broker.enrollPort, 'dev-a'],
        [undefined, broker.enrollPort, 'role:bridge'],
        ['dev-b', broker.devicePort, 'dev-a'],
      ] as const) {
        await expect(client(cn, port, id, true), `${cn ?? 'anonymous'} as ${id}`).rejects.toThrow(/Not authorized|Client Identifier not valid|Identifier rejected/);
      }
      // With the prefix, an anonymous client is its own enr- session, and a certificate is renamed to its
      // own CN: dev-b asking for enr-dev-a becomes dev-b. Nobody is kicked.
      const anon = await client(undefined, broker.enrollPort, 'enr-dev-a', true);
      const devB = await client('dev-b', broker.devicePort, 'enr-dev-a', true);
      await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(broker.enrollPort), '--cafile', join(dir, 'root-takeover.crt'), '-i', 'dev-a', '-t', 'x', '-m', '1']).then(
        () => {
          throw new Error('mosquitto_pub as dev-a was accepted');
        },
        (e: Error) => expect(e.message).toMatch(/not authori[sz]ed|identifier/i),
      );
      await new Promise((r) => setTimeout(r, 300));
      expect(kicked).toBe(0);
      expect(devA.connected && bridge.connected).toBe(true);
      await Promise.all([anon.endAsync(), devB.endAsync()]);
    } finally {
      await Promise.all([devA.endAsync(), bridge.endAsync()]);
    }
  });

  it('lets a device use its own rotation and events topics, and no other device\'s', async () => {
    const bridge = await client('role:bridge', broker.devicePort, 'bridge-2');
    const devA = await client('dev-a', broker.devicePort, 'dev-a');
    const devB = await client('dev-b', broker.devicePort, 'dev-b');
    try {
      const bridgeSeen: string[] = [];
      bridge.on('message', (t) => bridgeSeen.push(t));
      await bridge.subscribeAsync(['fleet/v1/devices/+/rotate/+', 'fleet/v1/devices/+/events'], { qos: 1 });
      for (const t of ['rotateBegin', 'rotateRequest', 'rotateConfirm', 'events'] as const) {
        expect(await reason(devA.publishAsync(topics.device('dev-a', t), '{}', { qos: 1 })), t).toBe(0);
        expect(await reason(devA.publishAsync(topics.device('dev-b', t), '{}', { qos: 1 })), `dev-b ${t}`).toBe(0x87);
      }
      // Answers are the bridge's to write: a device cannot forge them, not even on its own topics.
      for (const t of ['rotateChallenge', 'rotateAccepted', 'rotateConfirmed', 'rotateRejected'] as const) {
        expect(await reason(devA.publishAsync(topics.device('dev-a', t), '{}', { qos: 1 })), t).toBe(0x87);
      }
      // Each device reads its own answers only (mosquitto grants the SUBSCRIBE and filters on delivery).
      const seenA: string[] = [];
      const seenB: string[] = [];
      devA.on('message', (t) => seenA.push(t));
      devB.on('message', (t) => seenB.push(t));
      await devA.subscribeAsync('fleet/v1/devices/+/rotate/+', { qos: 1 });
      await devB.subscribeAsync('fleet/v1/devices/dev-b/rotate/+', { qos: 1 });
      const answers = ['rotateChallenge', 'rotateAccepted', 'rotateConfirmed', 'rotateRejected'] as const;
      for (const t of answers) {
        await bridge.publishAsync(topics.device('dev-a', t), '{}', { qos: 1 });
        await bridge.publishAsync(topics.device('dev-b', t), '{}', { qos: 1 });
      }
      await new Promise((r) => setTimeout(r, 200));
      expect(seenA.sort()).toEqual(answers.map((t) => topics.device('dev-a', t)).sort());
      expect(seenB.sort()).toEqual(answers.map((t) => topics.device('dev-b', t)).sort());
      expect(bridgeSeen.sort()).toEqual(
        [...['rotateBegin', 'rotateRequest', 'rotateConfirm', 'events'].map((t) => topics.device('dev-a', t as 'events')), ...answers.flatMap((t) => [topics.device('dev-a', t), topics.device('dev-b', t)])].sort(),
      );
    } finally {
      await Promise.all([bridge.endAsync(), devA.endAsync(), devB.endAsync()]);
    }
  });

  it('keeps retained status and trust bundle across a restart (checked with mosquitto_sub)', async () => {
    const pem = async (cn: string) => {
      const c = await issueServiceCertificate({ rootCertPem: rootPem, rootKeyPem, commonName: cn, usage: 'client', clock: systemClock });
      const safe = cn.replace(/[^A-Za-z0-9-]/g, '_');
      writeFileSync(join(dir, `${safe}.crt`), c.certPem);
      writeFileSync(join(dir, `${safe}.key`), c.keyPem, { mode: 0o600 });
      return ['--cafile', join(dir, 'root.crt'), '--cert', join(dir, `${safe}.crt`), '--key', join(dir, `${safe}.key`)];
    };
    writeFileSync(join(dir, 'root.crt'), rootPem);
    const [devTls, bridgeTls, operatorTls] = await Promise.all([pem('dev-r'), pem('role:bridge'), pem('role:operator:ops')]);
    const statusTopic = topics.device('dev-r', 'status');
    const bundleTopic = topics.fleet('trustBundle');
    const target = ['-h', '127.0.0.1', '-p', String(broker.devicePort), '-V', 'mqttv5', '-q', '1'];
    await run('mosquitto_pub', [...target, ...devTls, '-i', 'enr-dev-r', '-t', statusTopic, '-r', '-m', '{"status":"before restart"}']);
    await run('mosquitto_pub', [...target, ...bridgeTls, '-i', 'enr-pub-bridge', '-t', bundleTopic, '-r', '-m', '{"bundle":"before restart"}']);

    const pidBefore = broker.pid;
    await broker.restart();
    expect(broker.pid).not.toBe(pidBefore);
    expect(readFileSync(join(broker.persistenceDir, 'mosquitto.db')).length).toBeGreaterThan(0);

    // -C 1: exit after one message; -W: give up (non-zero exit) if nothing is retained.
    const sub = (tls: string[], id: string, topic: string) => run('mosquitto_sub', [...target, ...tls, '-i', id, '-t', topic, '-C', '1', '-W', '5', '-v']);
    expect((await sub(operatorTls, 'enr-sub-ops', statusTopic)).trim()).toBe(`${statusTopic} {"status":"before restart"}`);
    expect((await sub(devTls, 'enr-dev-r', bundleTopic)).trim()).toBe(`${bundleTopic} {"bundle":"before restart"}`);
  });

  it('a SIGKILL loses what was not saved yet; a start again serves on the same ports', async () => {
    const dev = await client('dev-k', broker.devicePort, 'dev-k');
    await dev.publishAsync(topics.device('dev-k', 'status'), 'unsaved', { qos: 1, retain: true });
    await dev.endAsync();
    const ports = [broker.enrollPort, broker.devicePort];
    await broker.kill();
    expect(broker.running).toBe(false);
    await expect(client('dev-k', broker.devicePort, 'dev-k')).rejects.toThrow();
    await broker.startAgain();
    expect([broker.enrollPort, broker.devicePort]).toEqual(ports);
    const reader = await client('role:bridge', broker.devicePort, 'bridge-k');
    try {
      const got: string[] = [];
      reader.on('message', (_t, p) => got.push(p.toString()));
      await reader.subscribeAsync(topics.device('dev-k', 'status'), { qos: 1 });
      await new Promise((r) => setTimeout(r, 200));
      // No autosave came between publish and kill: the status never reached the disk.
      expect(got).toEqual([]);
    } finally {
      await reader.endAsync();
    }
  });

  it('refuses clients without a certificate on the device listener', async () => {
    await expect(client(undefined, broker.devicePort, 'anon')).rejects.toThrow();
  });
});
