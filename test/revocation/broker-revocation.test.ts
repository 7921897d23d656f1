import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../common/clock.js';
import { DEFAULT_AUDITOR, DEFAULT_OPERATOR, EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { operatorRevokeTopics } from '../../broker-bridge/src/revocation/operator-handler.js';
import { CRL_PART_BYTES, decodeCrlDelta, decodeCrlPart, sha256Hex } from '../../common/protocol/crl.js';
import { recordEnrolledDevice } from '../../broker-bridge/src/inventory/test-records.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);

/**
 * Revocation as the broker enforces it, seen only through independent clients (mqtt.js directly,
 * mosquitto_pub/sub, openssl), never through the project's transport. Devices here hold software keys
 * with certificates from the fleet's issuing CA, recorded in the inventory as enrolled, so that the
 * independent clients can use them; the broker cannot tell them from TPM-held ones.
 */
const run = promisify(execFile);
const BASE = 'fleet/v1';
const DELTA = `${BASE}/crl/delta`;
/** Revoked service serials the fleet starts with: its devices' base CRL needs more than one part. */
const PRESET_SERIALS = 1_400;

interface Dev {
  id: string;
  certPem: string;
  keyPem: string;
  serial: string;
  certFile: string;
  keyFile: string;
}

describe('revocation enforced by mosquitto', () => {
  let dir: string;
  let fleet: EmbeddedFleet;
  const clients: MqttClient[] = [];

  async function device(id: string): Promise<Dev> {
    const c = await fleet.clientCertificate(id);
    const now = Date.now();
    await recordEnrolledDevice(fleet.inventory, { deviceId: id, serial: c.serialNumber, at: now, pem: c.certPem, notBefore: now - 300_000 });
    const certFile = join(dir, `${id}.pem`);
    const keyFile = join(dir, `${id}-key.pem`);
    writeFileSync(certFile, c.certPem);
    writeFileSync(keyFile, c.keyPem, { mode: 0o600 });
    return { id, certPem: c.certPem, keyPem: c.keyPem, serial: c.serialNumber, certFile, keyFile };
  }

  function connect(tls: { certPem: string; keyPem: string }, clientId = `enr-${Math.random().toString(36).slice(2)}`): Promise<MqttClient> {
    return new Promise((resolve, reject) => {
      const c = mqtt.connect(fleet.broker.deviceUrl, {
        clientId,
        protocolVersion: 5,
        ca: fleet.ca.rootCertificatePem,
        cert: tls.certPem,
        key: tls.keyPem,
        reconnectPeriod: 0,
        connectTimeout: 5_000,
      });
      clients.push(c);
      c.once('connect', () => resolve(c));
      c.once('error', (e) => reject(e));
      c.once('close', () => reject(new Error('closed before CONNACK')));
    });
  }

  /** PUBACK reason code of a QoS1 publish (0 = accepted, 0x87 = not authorized). */
  function pubackCode(c: MqttClient, topic: string, payload: string): Promise<number> {
    return new Promise((resolve, reject) => {
      c.publish(topic, payload, { qos: 1 }, (err) => {
        if (!err) return resolve(0);
        const code = (err as { code?: unknown }).code;
        if (typeof code === 'number') resolve(code);
        else reject(err);
      });
    });
  }

  function subscribe(c: MqttClient, topic: string): Promise<void> {
    return new Promise((resolve, reject) => c.subscribe(topic, { qos: 1 }, (err) => (err ? reject(err) : resolve())));
  }

  const openssl = async (args: string[]) => {
    try {
      const r = await run('openssl', args);
      return { code: 0, out: r.stdout + r.stderr };
    } catch (e) {
      const x = e as { code: number; stdout: string; stderr: string };
      return { code: x.code, out: x.stdout + x.stderr };
    }
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'revocation-'));
    mkdirSync(join(dir, 'fleet', 'ca'), { recursive: true });
    const extra = Array.from({ length: PRESET_SERIALS }, (_, i) => ({ serial: (0x7e00000000000000n + BigInt(i)).toString(16), at: Date.now() - 60_000, reason: 'superseded' }));
    writeFileSync(join(dir, 'fleet', 'ca', 'crl-state.json'), JSON.stringify({ v: 1, crlNumber: '0', extra }));
    fleet = await EmbeddedFleet.start({ dir: join(dir, 'fleet'), clock: systemClock, trustDomain: 'test.fleet', ekTrust: { roots: [] } });
    writeFileSync(join(dir, 'root.pem'), fleet.ca.rootCertificatePem);
    writeFileSync(join(dir, 'issuing.pem'), fleet.ca.issuingCertificatePem);
  });
  afterAll(async () => {
    for (const c of clients) c.end(true);
    await fleet?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('cuts a connected device within 2 s, refuses its reconnect and leaves everyone else working', async () => {
    const a = await device('gw-a');
    const b = await device('gw-b');
    const ca = await connect(a);
    const cb = await connect(b);
    const auditor = await connect(await fleet.clientCertificate(DEFAULT_AUDITOR));
    const seen: { client: string; topic: string; payload: string }[] = [];
    for (const [name, c] of [['a', ca], ['b', cb], ['auditor', auditor]] as const) {
      c.on('message', (topic, payload) => seen.push({ client: name, topic, payload: payload.toString() }));
    }
    await subscribe(ca, `${BASE}/devices/gw-a/status`);
    await subscribe(ca, `${BASE}/crl/#`);
    await subscribe(cb, `${BASE}/crl/#`);
    await subscribe(auditor, `${BASE}/devices/+/status`);

    // Before: the device publishes and receives on its own topics; both hold the retained parts of the base.
    const parts = fleet.revocation.devices!.partPayloads.length;
    expect(parts).toBeGreaterThan(1);
    expect(await pubackCode(ca, `${BASE}/devices/gw-a/status`, 'before')).toBe(0);
    await expect.poll(() => seen.some((m) => m.client === 'a' && m.payload === 'before')).toBe(true);
    await expect.poll(() => seen.filter((m) => m.topic.startsWith(`${BASE}/crl/full/`)).length).toBe(2 * parts);
    const crlBefore = fleet.revocation.current!.crlNumber;

    const t0 = performance.now();
    const result = await fleet.revokeDevice('gw-a', 'keyCompromise');
    expect(result.serials).toEqual([a.serial]);
    expect(result.enforced).toBe(true);
    expect(result.crlNumber).toBeGreaterThan(crlBefore);
    // Poll the open session's rights through the broker itself: the first 0x87 is the cut.
    let code = 0;
    let cutMs = 0;
    let denied = -1;
    for (let i = 0; i < 40 && code === 0; i++) {
      denied = i;
      code = await pubackCode(ca, `${BASE}/devices/gw-a/status`, `after-${i}`);
      cutMs = performance.now() - t0;
      if (code === 0) await new Promise((r) => setTimeout(r, 50));
    }
    console.log(`revocation: session cut after ${cutMs.toFixed(0)} ms`);
    expect(code).toBe(0x87);
    expect(cutMs).toBeLessThan(2_000);

    // The revoked device receives nothing more: not its own topic (b's and the auditor's traffic flows),
    // not the new CRL that gw-b receives.
    expect(await pubackCode(cb, `${BASE}/devices/gw-b/status`, 'b-after')).toBe(0);
    await expect.poll(() => seen.some((m) => m.client === 'auditor' && m.payload === 'b-after')).toBe(true);
    await expect
      .poll(() => seen.some((m) => m.client === 'b' && m.topic === DELTA && m.payload !== '' && JSON.parse(m.payload).crlNumber === result.crlNumber.toString()))
      .toBe(true);
    const cutAt = seen.length;
    expect(await pubackCode(cb, `${BASE}/devices/gw-a/status`, 'x').catch(() => -1)).toBe(0x87); // b never had rights there
    await new Promise((r) => setTimeout(r, 300)); // a real external process: give mosquitto time to (not) deliver
    expect(seen.slice(cutAt).filter((m) => m.client === 'a')).toEqual([]);
    // The CRL is published before the broker reloads, on purpose: the device may still learn that it is
    // revoked (the CRL that revokes it); nothing newer reaches it.
    // (An empty payload is the delta topic cleared when the fleet started with a new base.)
    const crlsForA = seen.filter((m) => m.client === 'a' && m.topic === DELTA && m.payload !== '').map((m) => BigInt(JSON.parse(m.payload).crlNumber));
    expect(crlsForA.filter((n) => n !== result.crlNumber)).toEqual([]);
    // The refused publish went nowhere, nor does a later one.
    expect(await pubackCode(ca, `${BASE}/devices/gw-a/status`, 'later')).toBe(0x87);
    await new Promise((r) => setTimeout(r, 200));
    expect(seen.filter((m) => m.payload === `after-${denied}` || m.payload === 'later')).toEqual([]);

    // Reconnect: the TLS handshake fails with the revoked alert, no CONNACK (mqtt.js and mosquitto_sub).
    await expect(connect(a)).rejects.toThrow(/certificate revoked/i);
    const sub = await run('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(fleet.broker.devicePort), '--cafile', join(dir, 'root.pem'),
      '--cert', a.certFile, '--key', a.keyFile, '-i', 'enr-cli-a', '-t', `${BASE}/crl/#`, '-C', '1', '-W', '3', '-d']).catch((e: { code: number; stdout: string; stderr: string }) => e);
    expect('code' in sub ? sub.code : 0).not.toBe(0);
    expect(sub.stdout + sub.stderr).not.toMatch(/CONNACK/);
    // Another device still connects (and gets the retained delta), with mosquitto_sub too.
    const subB = await run('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(fleet.broker.devicePort), '--cafile', join(dir, 'root.pem'),
      '--cert', b.certFile, '--key', b.keyFile, '-i', 'enr-cli-b', '-t', DELTA, '-C', '1', '-W', '5']);
    expect(JSON.parse(subB.stdout).crlNumber).toBe(result.crlNumber.toString());

    // openssl with the broker's CRL file: the revoked certificate fails with error 23, the other passes.
    const verify = (cert: string) =>
      openssl(['verify', '-crl_check', '-CRLfile', fleet.broker.crlFile!, '-CAfile', join(dir, 'root.pem'), '-untrusted', join(dir, 'issuing.pem'), cert]);
    const bad = await verify(a.certFile);
    expect(bad.code).not.toBe(0);
    expect(bad.out).toMatch(/error 23 at 0 depth lookup: certificate revoked/);
    const good = await verify(b.certFile);
    expect(good.code, good.out).toBe(0);
    const text = await openssl(['crl', '-in', fleet.broker.crlFile!, '-noout', '-text']);
    expect(text.out).toMatch(/Key Compromise/);
    expect(text.out).toMatch(new RegExp(`X509v3 CRL Number:\\s*\\n\\s*${result.crlNumber}`));

    // The inventory refuses the device from now on.
    expect(fleet.inventory.getDevice('gw-a')?.revokedAt).toBeDefined();
    expect(fleet.inventory.getCertificate(a.serial)?.revocationReason).toBe('keyCompromise');
  });

  it('takes revoke commands from an operator over MQTT; the bridge and the broker keep working with crlfile set', async () => {
    const c = await device('gw-c');
    const op = await connect(await fleet.clientCertificate(DEFAULT_OPERATOR));
    const t = operatorRevokeTopics(fleet.topics, 'ops');
    const replies: Record<string, unknown>[] = [];
    op.on('message', (_topic, payload) => replies.push(JSON.parse(payload.toString())));
    await subscribe(op, t.reply);
    const before = fleet.revocation.current!.crlNumber;
    expect(await pubackCode(op, t.command, JSON.stringify({ v: 1, requestId: 'r1', deviceId: 'gw-c', reason: 'cessationOfOperation' }))).toBe(0);
    await expect.poll(() => replies.find((r) => r.requestId === 'r1')).toMatchObject({ ok: true, serials: [c.serial], enforced: true });
    expect(fleet.revocation.current!.crlNumber).toBe(before + 1n);
    // A redelivery gets the same answer and revokes nothing more.
    expect(await pubackCode(op, t.command, JSON.stringify({ v: 1, requestId: 'r1', deviceId: 'gw-c', reason: 'cessationOfOperation' }))).toBe(0);
    await expect.poll(() => replies.filter((r) => r.requestId === 'r1').length).toBe(2);
    expect(fleet.revocation.current!.crlNumber).toBe(before + 1n);
    // Refusals carry the code of the check.
    await pubackCode(op, t.command, JSON.stringify({ v: 1, requestId: 'r2', deviceId: 'gw-nobody', reason: 'superseded' }));
    await expect.poll(() => replies.find((r) => r.requestId === 'r2')).toMatchObject({ ok: false, code: 'REVOCATION_NOT_FOUND' });
    await pubackCode(op, t.command, JSON.stringify({ v: 1, requestId: 'r3', deviceId: 'gw-c', serial: 'ab', reason: 'superseded' }));
    await expect.poll(() => replies.find((r) => r.requestId === 'r3')).toMatchObject({ ok: false, code: 'REVOCATION_BAD_REQUEST' });
    await pubackCode(op, t.command, JSON.stringify({ v: 1, requestId: 'r4', deviceId: 'gw-c', reason: 'because' }));
    // A request that fails the schema is answered without a requestId (nothing of it is trusted).
    await expect.poll(() => replies.find((r) => r.requestId === undefined)).toMatchObject({ ok: false, code: 'SCHEMA_INVALID' });
    // An operator cannot write another operator's command topic.
    expect(await pubackCode(op, operatorRevokeTopics(fleet.topics, 'other').command, '{}')).toBe(0x87);
    // A device cannot send operator commands.
    const d = await device('gw-d');
    const cd = await connect(d);
    expect(await pubackCode(cd, t.command, JSON.stringify({ v: 1, requestId: 'r5', deviceId: 'gw-b', reason: 'superseded' }))).toBe(0x87);
    expect(fleet.inventory.getDevice('gw-b')?.revokedAt).toBeUndefined();
  });

  it('an independent client reads the retained base parts and the delta listing a new revocation; a device may not write them', async () => {
    const d = await device('gw-e');
    await fleet.revokeDevice('gw-e', 'keyCompromise');
    const state = fleet.revocation.devices!;
    const parts = state.partPayloads.length;
    const auditor = await fleet.clientCertificate('role:auditor:crl');
    writeFileSync(join(dir, 'auditor.pem'), auditor.certPem);
    writeFileSync(join(dir, 'auditor-key.pem'), auditor.keyPem, { mode: 0o600 });
    // mosquitto_sub with the auditor's certificate: every retained CRL message, one per line (`-v`: topic payload).
    const out = await run('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(fleet.broker.devicePort), '--cafile', join(dir, 'root.pem'),
      '--cert', join(dir, 'auditor.pem'), '--key', join(dir, 'auditor-key.pem'), '-i', 'enr-cli-auditor', '-t', `${BASE}/crl/#`,
      '-v', '-C', String(parts + 1), '-W', '10'], { maxBuffer: 16 << 20 });
    const messages = new Map(out.stdout.trim().split('\n').map((line) => [line.slice(0, line.indexOf(' ')), Buffer.from(line.slice(line.indexOf(' ') + 1))] as const));

    // The delta: the new serial, against the base the parts carry, signed by the issuing CA (openssl).
    const delta = decodeCrlDelta(messages.get(DELTA)!);
    expect(delta.crlNumber).toBe(fleet.revocation.current!.crlNumber.toString());
    expect(delta.crlNumber).toBe(state.delta!.crlNumber.toString());
    writeFileSync(join(dir, 'delta.der'), delta.crl);
    const text = await openssl(['crl', '-inform', 'DER', '-in', join(dir, 'delta.der'), '-noout', '-text']);
    expect(text.out).toMatch(new RegExp(`X509v3 Delta CRL Indicator: critical\\s*\\n\\s*${delta.baseCrlNumber}\\s*\\n`));
    expect(new x509.X509Crl(delta.crl).entries.map((e) => e.serialNumber)).toContain(d.serial);
    writeFileSync(join(dir, 'issuing-chain.pem'), fleet.ca.issuingCertificatePem + fleet.ca.rootCertificatePem);
    expect((await openssl(['crl', '-inform', 'DER', '-in', join(dir, 'delta.der'), '-CAfile', join(dir, 'issuing-chain.pem'), '-verify', '-noout'])).out).toMatch(/verify OK/);

    // The parts: each under the packet limit, one set (number, digest), joined = the base, which openssl verifies.
    const decoded = Array.from({ length: parts }, (_, i) => decodeCrlPart(messages.get(`${BASE}/crl/full/${i}`)!));
    for (const [i, m] of decoded.entries()) {
      expect(m).toMatchObject({ part: i, parts, crlNumber: delta.baseCrlNumber, sha256: decoded[0]!.sha256 });
      expect(messages.get(`${BASE}/crl/full/${i}`)!.length).toBeLessThan(CRL_PART_BYTES * 1.4);
    }
    const base = Buffer.concat(decoded.map((m) => m.data));
    expect(sha256Hex(base)).toBe(decoded[0]!.sha256);
    expect(base.equals(state.base.der)).toBe(true);
    writeFileSync(join(dir, 'base.der'), base);
    expect((await openssl(['crl', '-inform', 'DER', '-in', join(dir, 'base.der'), '-CAfile', join(dir, 'issuing-chain.pem'), '-verify', '-noout'])).out).toMatch(/verify OK/);
    expect(state.base.size).toBeGreaterThanOrEqual(PRESET_SERIALS);

    // Only the bridge writes CRL topics: a device's publish there is refused.
    const other = await connect(await device('gw-f'));
    expect(await pubackCode(other, DELTA, 'forged')).toBe(0x87);
    expect(await pubackCode(other, `${BASE}/crl/full/0`, 'forged')).toBe(0x87);

    // The broker's crlfile holds the complete CRL (all serials), the same number as the delta.
    expect(readFileSync(fleet.broker.crlFile!, 'utf8')).toBe(fleet.revocation.currentPem);
  });
  it('a bridge restart resends no base part the broker still holds; after a broker crash the bridge makes sure every part is retained again', async () => {
    // topic → SHA-256 of the payload (short failure messages); a cleared delta is no retained message.
    const digest = (p: string | Buffer) => sha256Hex(Buffer.from(p));
    const expected = () => {
      const st = fleet.revocation.devices!;
      const delta: [string, string][] = st.deltaPayload.length > 0 ? [[DELTA, digest(st.deltaPayload)]] : [];
      return Object.fromEntries([...st.partPayloads.map((p, i) => [`${BASE}/crl/full/${i}`, digest(p)] as [string, string]), ...delta]);
    };
    await fleet.revocation.republish(); // anything still in flight from earlier is done after this
    const watcher = await connect(await fleet.clientCertificate('role:auditor:crl-watch'));
    const live: string[] = [];
    watcher.on('message', (topic, _payload, packet) => {
      if (!packet.retain) live.push(topic);
    });
    await subscribe(watcher, `${BASE}/crl/#`);
    await fleet.stopBridge();
    await fleet.startBridge();
    await fleet.revocation.republish(); // queued behind the start's own republish
    expect(live.filter((t) => t.startsWith(`${BASE}/crl/full/`))).toEqual([]);
    expect(live.filter((t) => t === DELTA).length).toBeGreaterThanOrEqual(1);
    expect(fleet.revocation.devices!.published).toBe(true);

    // SIGKILL: mosquitto keeps only what its last autosave wrote. Whatever that was, the bridge, back
    // on the reconnect, leaves every part and the delta retained.
    const poller = await fleet.clientCertificate('role:auditor:crl-poll');
    writeFileSync(join(dir, 'poller.pem'), poller.certPem);
    writeFileSync(join(dir, 'poller-key.pem'), poller.keyPem, { mode: 0o600 });
    await fleet.killBroker();
    await fleet.startBroker();
    const retainedNow = async () => {
      const r = await run('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(fleet.broker.devicePort), '--cafile', join(dir, 'root.pem'),
        '--cert', join(dir, 'poller.pem'), '--key', join(dir, 'poller-key.pem'), '-i', 'enr-cli-poller', '-t', `${BASE}/crl/#`,
        '-v', '--retained-only', '-W', '1'], { maxBuffer: 16 << 20 }).catch((e: { stdout: string }) => e);
      return Object.fromEntries(r.stdout.trim().split('\n').filter(Boolean).map((line) => [line.slice(0, line.indexOf(' ')), digest(line.slice(line.indexOf(' ') + 1))]));
    };
    await expect.poll(retainedNow, { timeout: 20_000, interval: 500 }).toEqual(expected());
  });
});
