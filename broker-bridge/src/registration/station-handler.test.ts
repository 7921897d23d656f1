import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../common/clock.js';
import { decodeStationRegisterReply, encodeStationRegister, stationTopics, type StationDevice, type StationRegisterAccepted } from '../../../common/protocol/station.js';
import { Topics } from '../../../common/protocol/topics.js';
import { NativeTpm } from '../../../native/lib/native-tpm.js';
import { startTpm, type TestTpm } from '../../../test/harness/index.js';
import { InventoryError } from '../inventory/inventory.js';
import { LevelInventory } from '../inventory/level-inventory.js';
import { StationRegistrationHandler } from './station-handler.js';

const DAY = 86_400_000;

/** The bridge side of station registration against a real EK chain (swtpm) and a real LevelDB inventory. */
describe('StationRegistrationHandler', () => {
  let tpm: TestTpm;
  let dir: string;
  let inventory: LevelInventory;
  let handler: StationRegistrationHandler;
  const clock = new ManualClock(Date.now());
  const topics = new Topics('fleet/v1');
  const topic = stationTopics(topics, 'line1', 'register');
  let ecc: { cert: Buffer; hash: string };
  let rsa: { cert: Buffer; hash: string };
  let n = 0;

  beforeAll(async () => {
    tpm = await startTpm();
    const t = await NativeTpm.open(tpm.tcti);
    const hashOf = (cert: Buffer) => createHash('sha256').update(new X509Certificate(cert).publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
    try {
      const e = (await t.readEkCertificate('ecc'))!;
      const r = (await t.readEkCertificate('rsa'))!;
      ecc = { cert: e, hash: hashOf(e) };
      rsa = { cert: r, hash: hashOf(r) };
    } finally {
      await t.close();
    }
    dir = mkdtempSync(join(tmpdir(), 'station-handler-'));
    inventory = new LevelInventory(join(dir, 'inventory'));
    await inventory.open();
    handler = new StationRegistrationHandler({ topics, inventory, clock, ekTrust: { roots: [tpm.manufacturerRootPem], intermediates: [tpm.manufacturerIntermediatePem] } });
  });
  afterAll(async () => {
    await inventory?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const device = (over: Partial<StationDevice> = {}): StationDevice => ({
    deviceId: 'gw-1',
    ekKind: 'ecc',
    ekCertificate: ecc.cert,
    ekPublicHash: ecc.hash,
    metadata: { model: 'gw' },
    tokenHash: createHash('sha256').update(`token-${n++}`).digest('hex'),
    tokenCreatedAt: clock.now(),
    tokenExpiresAt: clock.now() + 7 * DAY,
    ...over,
  });
  const send = async (devices: StationDevice[], requestId = `r-${n++}`) => {
    const reply = await handler.handle(topic.command, encodeStationRegister(requestId, devices));
    expect(reply?.topic).toBe(topic.reply);
    return decodeStationRegisterReply(reply!.payload);
  };
  const results = async (devices: StationDevice[]) => ((await send(devices)) as StationRegisterAccepted).results;

  it('registers, repeats unchanged, updates with a new token (superseding the old) and refuses inconsistent input per device', async () => {
    const first = device();
    expect(await results([first])).toEqual([{ deviceId: 'gw-1', ok: true, outcome: 'registered' }]);
    expect(inventory.getToken(first.tokenHash)).toMatchObject({ deviceId: 'gw-1', createdAt: first.tokenCreatedAt, expiresAt: first.tokenExpiresAt });
    expect(await results([{ ...first, metadata: { model: 'gw' } }])).toEqual([{ deviceId: 'gw-1', ok: true, outcome: 'unchanged' }]);
    const second = device();
    expect(await results([second])).toEqual([{ deviceId: 'gw-1', ok: true, outcome: 'updated' }]);
    expect(inventory.getToken(first.tokenHash)).toBeUndefined();

    const refused = await results([
      device({ deviceId: 'gw-2', ekPublicHash: rsa.hash }),
      device({ deviceId: 'gw-3', ekKind: 'ecc', ekCertificate: rsa.cert, ekPublicHash: rsa.hash }),
      device({ deviceId: 'gw-4', ekCertificate: rsa.cert, ekKind: 'rsa', ekPublicHash: rsa.hash, tokenExpiresAt: clock.now() }),
      device({ deviceId: 'gw-4', ekCertificate: rsa.cert, ekKind: 'rsa', ekPublicHash: rsa.hash, tokenExpiresAt: clock.now() + 400 * DAY }),
      device({ deviceId: 'gw-5', ekCertificate: Buffer.from('not a certificate') }),
      device({ deviceId: 'gw-1', ekCertificate: rsa.cert, ekKind: 'rsa', ekPublicHash: rsa.hash }),
    ]);
    expect(refused.map((r) => [r.deviceId, r.ok ? r.outcome : r.code])).toEqual([
      ['gw-2', 'REGISTRATION_INVALID'],
      ['gw-3', 'REGISTRATION_INVALID'],
      ['gw-4', 'REGISTRATION_INVALID'],
      ['gw-4', 'REGISTRATION_INVALID'], // twice in one request
      ['gw-5', 'EK_UNTRUSTED'],
      ['gw-1', 'REGISTRATION_CONFLICT'],
    ]);
    expect(inventory.listDevices().map((d) => d.deviceId)).toEqual(['gw-1']);
  });

  it('refuses a stale token of an enrolled device (SUPERSEDED) and any token for a revoked one (REVOKED)', async () => {
    const live = device();
    expect(await results([live])).toMatchObject([{ outcome: 'updated' }]);
    clock.advance(1000);
    await inventory.completeEnrollment({
      tokenHash: live.tokenHash,
      requestId: 'enroll-1',
      deviceId: 'gw-1',
      akName: '00'.repeat(34),
      certificate: { serial: '01', deviceId: 'gw-1', notBefore: clock.now(), notAfter: clock.now() + DAY, issuedAt: clock.now(), pem: 'unused here', keySpkiHash: 'ef'.repeat(32) },
      response: { requestId: 'enroll-1', deviceId: 'gw-1', topic: 't', payload: '', storedAt: clock.now() },
      audit: [],
      at: clock.now(),
    });
    // An export line minted before that enrollment must not revive a way in; the used token itself is unchanged.
    expect(await results([device({ tokenCreatedAt: clock.now() - DAY })])).toMatchObject([{ ok: false, code: 'REGISTRATION_SUPERSEDED', retryable: false }]);
    expect(await results([live])).toEqual([{ deviceId: 'gw-1', ok: true, outcome: 'unchanged' }]);
    // A token for another device's hash is a conflict.
    expect(await results([device({ deviceId: 'gw-8', ekCertificate: rsa.cert, ekKind: 'rsa', ekPublicHash: rsa.hash, tokenHash: live.tokenHash })])).toMatchObject([
      { ok: false, code: 'REGISTRATION_CONFLICT' },
    ]);
    await inventory.revokeDevice('gw-1', 'keyCompromise', clock.now());
    expect(await results([device()])).toMatchObject([{ ok: false, code: 'REGISTRATION_REVOKED', retryable: false }]);
  });

  it('factory-trusted EKs: only from the stations the policy names, with exactly the evidence the policy needs', async () => {
    const spkiOf = (cert: Buffer) => new X509Certificate(cert).publicKey.export({ type: 'spki', format: 'der' });
    // A TPM of its own: the other tests hold this one's EKs.
    const other = await startTpm();
    let own: { cert: Buffer; hash: string };
    try {
      const t = await NativeTpm.open(other.tcti);
      const cert = (await t.readEkCertificate('rsa'))!;
      await t.close();
      own = { cert, hash: createHash('sha256').update(spkiOf(cert)).digest('hex') };
    } finally {
      await other.stop();
    }
    const factory = (over: Partial<StationDevice> = {}) => device({ deviceId: 'fw-1', ekCertificate: undefined, ekTrust: 'factory', ekPublic: spkiOf(ecc.cert), ekPublicHash: ecc.hash, ...over });
    // This handler's policy names no station: refused whatever the evidence.
    expect(await results([factory()])).toMatchObject([{ ok: false, code: 'EK_UNTRUSTED', message: expect.stringMatching(/station line1 may not register factory-trusted EKs/) }]);
    const trust = { roots: [tpm.manufacturerRootPem], intermediates: [tpm.manufacturerIntermediatePem] };
    const trusting = new StationRegistrationHandler({ topics, inventory, clock, ekTrust: trust, factoryTrustedEkStations: ['line1'] });
    const ask = async (devices: StationDevice[]) => (decodeStationRegisterReply((await trusting.handle(topic.command, encodeStationRegister(`f-${n++}`, devices)))!.payload) as StationRegisterAccepted).results;
    const refused = await ask([
      factory({ deviceId: 'fw-2', ekPublic: undefined }),
      factory({ deviceId: 'fw-3', ekCertificate: ecc.cert }),
      factory({ deviceId: 'fw-4', ekPublicHash: rsa.hash }),
      factory({ deviceId: 'fw-5', ekKind: 'rsa' }),
      factory({ deviceId: 'fw-6', ekPublic: Buffer.from('not a key') }),
      device({ deviceId: 'fw-7', ekCertificate: undefined }),
      device({ deviceId: 'fw-8', ekPublic: spkiOf(ecc.cert) }),
    ]);
    expect(refused.map((r) => [r.deviceId, r.ok ? r.outcome : r.code])).toEqual([
      ['fw-2', 'REGISTRATION_INVALID'],
      ['fw-3', 'REGISTRATION_INVALID'],
      ['fw-4', 'REGISTRATION_INVALID'],
      ['fw-5', 'REGISTRATION_INVALID'],
      ['fw-6', 'REGISTRATION_INVALID'],
      ['fw-7', 'REGISTRATION_INVALID'],
      ['fw-8', 'REGISTRATION_INVALID'],
    ]);
    // Registered from line1 with the station recorded; the same again is unchanged.
    const ok = factory({ deviceId: 'fw-1', ekPublic: spkiOf(own.cert), ekPublicHash: own.hash, ekKind: 'rsa' });
    expect(await ask([ok])).toEqual([{ deviceId: 'fw-1', ok: true, outcome: 'registered' }]);
    expect(inventory.getDevice('fw-1')).toMatchObject({ ekTrust: 'factory', ekTrustedBy: 'line1', ekPublic: spkiOf(own.cert).toString('base64'), ekKind: 'rsa' });
    expect(inventory.getDevice('fw-1')?.ekCertificate).toBeUndefined();
    expect(await ask([ok])).toEqual([{ deviceId: 'fw-1', ok: true, outcome: 'unchanged' }]);
    // Later registered with its certificate (one supplied for it): the certificate replaces the factory evidence.
    expect(await ask([device({ deviceId: 'fw-1', ekCertificate: own.cert, ekKind: 'rsa', ekPublicHash: own.hash })])).toEqual([{ deviceId: 'fw-1', ok: true, outcome: 'updated' }]);
    expect(inventory.getDevice('fw-1')).toMatchObject({ ekCertificate: own.cert.toString('base64') });
    expect(inventory.getDevice('fw-1')?.ekTrust).toBeUndefined();
    expect(inventory.getDevice('fw-1')?.ekPublic).toBeUndefined();
  });

  it('ignores retained messages and other topics; answers a repeat byte for byte; an outage is retryable and not remembered', async () => {
    const payload = encodeStationRegister('same', [device({ deviceId: 'gw-9', ekCertificate: rsa.cert, ekKind: 'rsa', ekPublicHash: rsa.hash })]);
    expect(await handler.handle(topic.command, payload, { retain: true })).toBeUndefined();
    expect(await handler.handle(topic.reply, payload)).toBeUndefined();
    // The inventory refusing writes (a bridge shutting down) for a while.
    let down = true;
    const flaky = new Proxy(inventory, {
      get(target, key) {
        if (key === 'registerDevice' && down) return () => Promise.reject(new InventoryError('INVENTORY_CLOSED', 'inventory is closed'));
        const v = Reflect.get(target, key) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const h = new StationRegistrationHandler({ topics, inventory: flaky, clock, ekTrust: { roots: [tpm.manufacturerRootPem], intermediates: [tpm.manufacturerIntermediatePem] } });
    const outage = decodeStationRegisterReply((await h.handle(topic.command, payload))!.payload);
    expect(outage).toMatchObject({ ok: true, results: [{ deviceId: 'gw-9', ok: false, code: 'UNAVAILABLE', retryable: true }] });
    down = false;
    const [a, b] = [await h.handle(topic.command, payload), await h.handle(topic.command, payload)];
    expect(decodeStationRegisterReply(a!.payload)).toMatchObject({ ok: true, results: [{ deviceId: 'gw-9', ok: true, outcome: 'registered' }] });
    expect(b!.payload.equals(a!.payload)).toBe(true);
  });
});
