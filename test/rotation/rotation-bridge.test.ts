import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ManualClock } from '../../common/clock.js';
import { mintEnrollmentToken } from '../../common/enrollment-token.js';
import { decode, encode, type BodyOf, type MessageOf } from '../../common/protocol/messages.js';
import { Topics, type DeviceTopic } from '../../common/protocol/topics.js';
import { createCa, type CaMaterial } from '../../broker-bridge/src/ca/ca-setup.js';
import { parseAndVerifyCsr } from '../../broker-bridge/src/ca/csr.js';
import { CertificateIssuer } from '../../broker-bridge/src/ca/issuer.js';
import { EnrollmentService } from '../../broker-bridge/src/enrollment/enrollment-service.js';
import { DefaultEnrollmentPolicy } from '../../broker-bridge/src/enrollment/policy.js';
import { LevelInventory } from '../../broker-bridge/src/inventory/level-inventory.js';
import { RotationService } from '../../broker-bridge/src/rotation/rotation-service.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { startTpm, type TestTpm } from '../harness/index.js';
import { ScriptedTpm, newRequestId, softwareKeyPosingAsTpmKey, type EnrollBody, type StoredKey } from '../enrollment/scripted-device.js';

const run = promisify(execFile);

/**
 * Rotation and re-attestation verification on the fleet side, with real parts: swtpm TPMs making every
 * piece of evidence, the real CA issuing, the real LevelInventory, and the bridge's EnrollmentService
 * and RotationService handling the exact payloads a device publishes (called directly: the MQTT path
 * is the Bridge's, tested with it). Devices enroll through the normal path first. Every attack is
 * built valid in every respect but the one it names, refused with that code, and leaves the inventory
 * exactly as it was.
 */
describe('rotation and re-attestation through the bridge services', () => {
  const clock = new ManualClock(Date.now());
  const topics = new Topics('fleet/v1');
  const LIFETIME_SEC = 86_400;
  const TTL_MS = 60_000;
  let dir: string;
  let ca: CaMaterial;
  let inventory: LevelInventory;
  let enrollment: EnrollmentService;
  let rotation: RotationService;
  let tpmA: TestTpm;
  let tpmB: TestTpm;
  let a: ScriptedTpm;
  let b: ScriptedTpm;
  let akA: StoredKey;
  let akB: StoredKey;
  /** dev-a's current (in-use) key and serial, advanced by the honest rotation. */
  let keyA: StoredKey;
  let serialA: string;
  let enrolledSerialA: string;
  let enrolledKeyA: StoredKey;
  let serialB: string;
  let keyB: StoredKey;
  /** dev-a's first accepted rotation request, replayed later to check per-device idempotency. */
  let firstRotation: { requestId: string; body: BodyOf<'rotateRequest'>; answer: Buffer };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rotate-'));
    [tpmA, tpmB] = await Promise.all([startTpm(), startTpm()]);
    // The EK certificates were just made (notBefore = now, whole seconds): judge them from now on.
    clock.set(Date.now() + 1000);
    ca = await createCa({
      outDir: join(dir, 'ca'),
      clock,
      trustDomain: 'test.fleet',
      root: { commonName: 'test.fleet root' },
      issuing: { commonName: 'test.fleet issuing CA' },
      backend: { kind: 'file', keyPath: join(dir, 'ca', 'issuing-key.pem') },
    });
    inventory = new LevelInventory(join(dir, 'inventory'));
    await inventory.open();
    const issuer = new CertificateIssuer({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock, trustDomain: 'test.fleet' });
    const policy = new DefaultEnrollmentPolicy({ trustDomain: 'test.fleet', lifetimeSec: LIFETIME_SEC, backdateSec: 60 });
    const common = { inventory, issuer, policy, clock, topics, chainPems: [issuer.issuingCertificatePem], trustBundlePems: [ca.rootCertificatePem] };
    enrollment = new EnrollmentService({ ...common, ekTrust: { roots: [tpmA.manufacturerRootPem], intermediates: [tpmA.manufacturerIntermediatePem] } });
    rotation = new RotationService({ ...common, rotationTtlMs: TTL_MS });
    [a, b] = await Promise.all([NativeTpm.open(tpmA.tcti), NativeTpm.open(tpmB.tcti)]).then((t) => t.map((x) => new ScriptedTpm(x)));
    [akA, akB] = [await a.createAk(), await b.createAk()];
    [keyA, keyB] = [await a.createKey(), await b.createKey()];
    enrolledKeyA = keyA;
    serialA = enrolledSerialA = await enroll(a, 'dev-a', akA, keyA);
    serialB = await enroll(b, 'dev-b', akB, keyB);
  });
  afterAll(async () => {
    await Promise.all([a, b].map((t) => t?.tpm.close()));
    await inventory?.close();
    await ca?.backend.close();
    await Promise.all([tpmA, tpmB].map((t) => t?.stop()));
    rmSync(dir, { recursive: true, force: true });
  });

  type Answer = { topic: DeviceTopic; payload: Buffer };
  /** Each device enrolls under its own (stable, for these tests) `enr-…` client id; rotation is by device id. */
  const enrollClient = (deviceId: string) => `enr-${createHash('sha256').update(deviceId).digest('base64url').slice(0, 22)}`;
  const send = async (service: EnrollmentService | RotationService, deviceId: string, topic: DeviceTopic, payload: Buffer): Promise<Answer> => {
    const enrolling = topic === 'enroll' || topic === 'enrollProof';
    const reply = await service.handle(enrolling ? topics.enrollment(enrollClient(deviceId), topic) : topics.device(deviceId, topic), payload);
    if (!reply) throw new Error(`no reply on ${topic}`);
    return { topic: (topics.parseEnrollment(reply.topic) ?? topics.parseDevice(reply.topic))!.topic, payload: reply.payload };
  };
  const codeOf = (ans: Answer) => {
    if (ans.topic !== 'rotateRejected' && ans.topic !== 'enrollRejected') return `not rejected: ${ans.topic}`;
    return decode(ans.topic, ans.payload).error.code;
  };
  function body<T extends 'rotateChallenge' | 'rotateAccepted' | 'rotateConfirmed' | 'enrollChallenge' | 'enrollAccepted'>(ans: Answer, t: T): MessageOf<T>['body'] {
    if (ans.topic !== t) throw new Error(`expected ${t}, got ${ans.topic} ${ans.topic.endsWith('Rejected') ? codeOf(ans) : ''}`);
    return (decode(t, ans.payload) as MessageOf<T>).body;
  }
  const begin = (deviceId: string, currentSerial: string, requestId = newRequestId()) =>
    send(rotation, deviceId, 'rotateBegin', encode('rotateBegin', requestId, clock.now(), { deviceId, currentSerial }));
  const request = (deviceId: string, b: BodyOf<'rotateRequest'>, requestId = newRequestId()) =>
    send(rotation, deviceId, 'rotateRequest', encode('rotateRequest', requestId, clock.now(), b));
  const confirm = (deviceId: string, serial: string, previousSerial: string, requestId = newRequestId()) =>
    send(rotation, deviceId, 'rotateConfirm', encode('rotateConfirm', requestId, clock.now(), { serial, previousSerial }));
  const enrollMsg = (deviceId: string, b: EnrollBody, requestId = newRequestId()) => send(enrollment, deviceId, 'enroll', encode('enroll', requestId, clock.now(), b));
  const proofMsg = (deviceId: string, b: BodyOf<'enrollProof'>, requestId = newRequestId()) =>
    send(enrollment, deviceId, 'enrollProof', encode('enrollProof', requestId, clock.now(), b));

  /** Registers and enrolls through the normal token path; returns the serial. */
  async function enroll(t: ScriptedTpm, deviceId: string, ak: StoredKey, key: StoredKey): Promise<string> {
    const { token, tokenHash } = mintEnrollmentToken();
    const { ekSpki, ekCertificate, ekKind } = await t.ek();
    const ekPublicHash = createHash('sha256').update(ekSpki).digest('hex');
    const now = clock.now();
    await inventory.registerDevice(
      { deviceId, ekPublicHash, ekCertificate: ekCertificate.toString('base64'), ekKind, metadata: {}, registeredAt: now },
      { tokenHash, deviceId, ekPublicHash, createdAt: now, expiresAt: now + 3_600_000 },
    );
    const ch = body(await enrollMsg(deviceId, await t.enrollBody(deviceId, ak, key, { token })), 'enrollChallenge');
    return body(await proofMsg(deviceId, await t.answer(ak, key, ch)), 'enrollAccepted').serial;
  }

  /** Honest rotation evidence for `key` over `nonce`, each part replaceable by a test. */
  const evidence = async (t: ScriptedTpm, deviceId: string, rotationId: string, nonce: Buffer, key: StoredKey, ak: StoredKey): Promise<BodyOf<'rotateRequest'>> => ({
    rotationId,
    akPublic: ak.publicArea,
    keyPublic: key.publicArea,
    ...(await t.certify(key, ak, nonce)),
    csr: await t.csr(key, deviceId),
  });

  /** Everything the inventory holds, for before/after comparisons. */
  const snapshot = async () =>
    JSON.stringify({
      devices: inventory.listDevices().sort((x, y) => x.deviceId.localeCompare(y.deviceId)),
      certs: inventory.listCertificates().sort((x, y) => x.serial.localeCompare(y.serial)),
      audit: await inventory.listAudit(),
    });
  const expectRefused = async (code: string, attack: () => Promise<Answer>) => {
    const before = await snapshot();
    expect(codeOf(await attack())).toBe(code);
    expect(await snapshot()).toBe(before);
  };
  const activeSerials = (deviceId: string) =>
    inventory
      .listCertificates(deviceId)
      .filter((c) => c.supersededAt === undefined && c.revokedAt === undefined)
      .map((c) => c.serial)
      .sort();

  it('rotates an enrolled device to a new TPM key: certified by the enrollment AK, verified by openssl, old certificate retired on confirm', async () => {
    const beginId = newRequestId();
    const chAnswer = await begin('dev-a', serialA, beginId);
    const ch = body(chAnswer, 'rotateChallenge');
    expect(ch.nonce).toHaveLength(32);
    // A repeated begin gets the same challenge.
    expect((await begin('dev-a', serialA, beginId)).payload.equals(chAnswer.payload)).toBe(true);

    const key2 = await a.createKey();
    const requestId = newRequestId();
    const accepted = await request('dev-a', await evidence(a, 'dev-a', ch.rotationId, ch.nonce, key2, akA), requestId);
    const issued = body(accepted, 'rotateAccepted');
    const cert = new X509Certificate(issued.certificate);
    expect(cert.publicKey.export({ type: 'spki', format: 'der' }).equals(key2.spki)).toBe(true);
    expect(cert.subject).toContain('CN=dev-a');
    writeFileSync(join(dir, 'leaf.pem'), issued.certificate);
    writeFileSync(join(dir, 'chain.pem'), issued.chain.join(''));
    writeFileSync(join(dir, 'root.pem'), issued.trustBundle.join(''));
    const { stdout } = await run('openssl', ['verify', '-CAfile', join(dir, 'root.pem'), '-untrusted', join(dir, 'chain.pem'), join(dir, 'leaf.pem')]);
    expect(stdout).toContain('OK');
    expect(inventory.getCertificate(issued.serial)).toMatchObject({ kind: 'rotate', deviceId: 'dev-a' });
    // Within the confirm window the in-use and the new certificate are both active.
    expect(activeSerials('dev-a')).toEqual([serialA, issued.serial].sort());

    // A redelivered request gets the same certificate; the spent nonce cannot be answered again.
    const again = await request('dev-a', await evidence(a, 'dev-a', ch.rotationId, ch.nonce, key2, akA), requestId);
    expect(again.payload.equals(accepted.payload)).toBe(true);
    const replay = await evidence(a, 'dev-a', ch.rotationId, ch.nonce, await a.createKey(), akA);
    await expectRefused('CHALLENGE_UNKNOWN', () => request('dev-a', replay));
    expect(inventory.listCertificates('dev-a')).toHaveLength(2);

    const confirmId = newRequestId();
    const confirmed = await confirm('dev-a', issued.serial, serialA, confirmId);
    expect(body(confirmed, 'rotateConfirmed')).toEqual({ serial: issued.serial, superseded: [serialA] });
    expect((await confirm('dev-a', issued.serial, serialA, confirmId)).payload.equals(confirmed.payload)).toBe(true);
    expect(body(await confirm('dev-a', issued.serial, serialA), 'rotateConfirmed')).toEqual({ serial: issued.serial, superseded: [] });
    expect(activeSerials('dev-a')).toEqual([issued.serial]);
    expect(inventory.getCertificate(serialA)?.supersededAt).toBeDefined();
    expect(inventory.getDevice('dev-a')).toMatchObject({ certSerial: issued.serial });
    expect((await inventory.listAudit({ deviceId: 'dev-a' })).map((e) => e.type)).toEqual(
      expect.arrayContaining(['rotation.issued', 'rotation.confirmed', 'certificate.superseded']),
    );
    serialA = issued.serial;
    keyA = key2;
    firstRotation = { requestId, body: await evidence(a, 'dev-a', ch.rotationId, ch.nonce, key2, akA), answer: accepted.payload };
  });

  it('refuses a stale nonce: an expired rotation, and a certification over an earlier nonce', async () => {
    const old = body(await begin('dev-a', serialA), 'rotateChallenge');
    const ch = body(await begin('dev-a', serialA), 'rotateChallenge');
    // The newer begin replaced the older rotation.
    await expectRefused('CHALLENGE_UNKNOWN', async () => request('dev-a', await evidence(a, 'dev-a', old.rotationId, old.nonce, await a.createKey(), akA)));
    await expectRefused('CERTIFY_INVALID', async () => request('dev-a', await evidence(a, 'dev-a', ch.rotationId, old.nonce, await a.createKey(), akA)));

    const late = body(await begin('dev-a', serialA), 'rotateChallenge');
    const honest = await evidence(a, 'dev-a', late.rotationId, late.nonce, await a.createKey(), akA);
    clock.advance(TTL_MS + 1);
    try {
      await expectRefused('CHALLENGE_EXPIRED', () => request('dev-a', honest));
    } finally {
      clock.advance(-(TTL_MS + 1));
    }
  });

  it('refuses an AK other than the one bound at enrollment: another TPM\'s, and a second AK of the same TPM', async () => {
    const ch = body(await begin('dev-a', serialA), 'rotateChallenge');
    // TPM B's AK certifies a B key over the right nonce; the CSR is that key's, for dev-a.
    await expectRefused('AK_MISMATCH', async () => request('dev-a', await evidence(b, 'dev-a', ch.rotationId, ch.nonce, await b.createKey(), akB)));
    const ch2 = body(await begin('dev-a', serialA), 'rotateChallenge');
    const secondAk = await a.createAk();
    await expectRefused('AK_MISMATCH', async () => request('dev-a', await evidence(a, 'dev-a', ch2.rotationId, ch2.nonce, await a.createKey(), secondAk)));
  });

  it('refuses a key the AK did not certify: a software key posing as a TPM key with a valid CSR', async () => {
    const ch = body(await begin('dev-a', serialA), 'rotateChallenge');
    const soft = softwareKeyPosingAsTpmKey('dev-a');
    // Its CSR is valid on its own: the certification is the only thing wrong.
    expect(parseAndVerifyCsr(soft.csr).publicKeySpki.equals(soft.spki)).toBe(true);
    // The best the attacker has: a genuine certification, by the right AK over the right nonce, of a TPM key.
    const genuine = await evidence(a, 'dev-a', ch.rotationId, ch.nonce, await a.createKey(), akA);
    await expectRefused('CERTIFY_INVALID', () => request('dev-a', { ...genuine, keyPublic: soft.keyPublic, csr: soft.csr }));
  });

  it('refuses a CSR for a key other than the certified one', async () => {
    const ch = body(await begin('dev-a', serialA), 'rotateChallenge');
    const honest = await evidence(a, 'dev-a', ch.rotationId, ch.nonce, await a.createKey(), akA);
    const otherCsr = await a.csr(await a.createKey(), 'dev-a');
    await expectRefused('CSR_KEY_MISMATCH', () => request('dev-a', { ...honest, csr: otherCsr }));
  });

  it('refuses a key this device was certified for before (the current one and a retired one)', async () => {
    const ch = body(await begin('dev-a', serialA), 'rotateChallenge');
    await expectRefused('CSR_INVALID', async () => request('dev-a', await evidence(a, 'dev-a', ch.rotationId, ch.nonce, keyA, akA)));
    const ch2 = body(await begin('dev-a', serialA), 'rotateChallenge');
    await expectRefused('CSR_INVALID', async () => request('dev-a', await evidence(a, 'dev-a', ch2.rotationId, ch2.nonce, enrolledKeyA, akA)));
  });

  it('refuses to begin from a superseded, unknown, foreign or expired certificate, or for an unknown or unenrolled device', async () => {
    await expectRefused('IDENTITY_UNKNOWN', () => begin('dev-a', enrolledSerialA));
    await expectRefused('IDENTITY_UNKNOWN', () => begin('dev-a', 'abcdef0123'));
    await expectRefused('IDENTITY_UNKNOWN', () => begin('dev-a', serialB));
    await expectRefused('DEVICE_UNKNOWN', () => begin('dev-ghost', serialA));
    const now = clock.now();
    await inventory.registerDevice({ deviceId: 'dev-new', ekPublicHash: 'ab', ekCertificate: 'AAAA', ekKind: 'ecc', metadata: {}, registeredAt: now });
    await expectRefused('NOT_ENROLLED', () => begin('dev-new', serialA));

    // The current certificate expires (bridge clock) while a rotation is pending: begin and request both refuse.
    const toExpiry = inventory.getCertificate(serialA)!.notAfter - clock.now();
    clock.advance(toExpiry - 1000);
    try {
      const ch = body(await begin('dev-a', serialA), 'rotateChallenge');
      const honest = await evidence(a, 'dev-a', ch.rotationId, ch.nonce, await a.createKey(), akA);
      clock.advance(1000);
      await expectRefused('IDENTITY_EXPIRED', () => request('dev-a', honest));
      await expectRefused('IDENTITY_EXPIRED', () => begin('dev-a', serialA));
    } finally {
      clock.advance(-toExpiry);
    }
  });

  it('does not let one device answer, or burn, another device\'s rotation', async () => {
    const ch = body(await begin('dev-a', serialA), 'rotateChallenge');
    const honest = await evidence(a, 'dev-a', ch.rotationId, ch.nonce, await a.createKey(), akA);
    await expectRefused('CHALLENGE_UNKNOWN', () => request('dev-b', honest));
    await expectRefused('IDENTITY_UNKNOWN', () => confirm('dev-b', serialA, serialB));
    const issued = body(await request('dev-a', honest), 'rotateAccepted');
    expect(body(await confirm('dev-a', issued.serial, serialA), 'rotateConfirmed').superseded).toEqual([serialA]);
    serialA = issued.serial;

    // Request ids are per device: dev-b rotating under dev-a's first requestId gets its own certificate,
    // and dev-a's redelivery of that request still gets dev-a's.
    const chB = body(await begin('dev-b', serialB), 'rotateChallenge');
    const keyB2 = await b.createKey();
    const issuedB = body(await request('dev-b', await evidence(b, 'dev-b', chB.rotationId, chB.nonce, keyB2, akB), firstRotation.requestId), 'rotateAccepted');
    expect(new X509Certificate(issuedB.certificate).publicKey.export({ type: 'spki', format: 'der' }).equals(keyB2.spki)).toBe(true);
    expect((await request('dev-a', firstRotation.body, firstRotation.requestId)).payload.equals(firstRotation.answer)).toBe(true);
  });

  it('refuses malformed payloads on every rotation topic', async () => {
    const ch = body(await begin('dev-a', serialA), 'rotateChallenge');
    const junk = Buffer.from('{"v":1,"requestId":"abcdefgh1", nope');
    const huge = Buffer.from(JSON.stringify({ v: 1, requestId: 'abcdefgh2', sentAt: 1, body: { pad: 'x'.repeat(20_000) } }));
    const withExtra = (p: Buffer) => {
      const m = JSON.parse(p.toString());
      m.body.admin = true;
      return Buffer.from(JSON.stringify(m));
    };
    for (const topic of ['rotateBegin', 'rotateRequest', 'rotateConfirm'] as const) {
      await expectRefused('BAD_REQUEST', () => send(rotation, 'dev-a', topic, junk));
      await expectRefused('BAD_REQUEST', () => send(rotation, 'dev-a', topic, huge));
    }
    const beginPayload = encode('rotateBegin', newRequestId(), clock.now(), { deviceId: 'dev-a', currentSerial: serialA });
    await expectRefused('BAD_REQUEST', () => send(rotation, 'dev-a', 'rotateBegin', withExtra(beginPayload)));
    // The body names another device than the one the broker authenticated.
    await expectRefused('BAD_REQUEST', () => send(rotation, 'dev-b', 'rotateBegin', encode('rotateBegin', newRequestId(), clock.now(), { deviceId: 'dev-a', currentSerial: serialA })));
    const honest = await evidence(a, 'dev-a', ch.rotationId, ch.nonce, await a.createKey(), akA);
    await expectRefused('BAD_REQUEST', () => send(rotation, 'dev-a', 'rotateRequest', withExtra(encode('rotateRequest', newRequestId(), clock.now(), honest))));
    // Parseable base64 that is no TPM structure fails the check it belongs to.
    await expectRefused('AK_INVALID', () => request('dev-a', { ...honest, akPublic: Buffer.alloc(40, 7) }));
    // The rotation was burned by that answer.
    await expectRefused('CHALLENGE_UNKNOWN', () => request('dev-a', honest));
    const ch2 = body(await begin('dev-a', serialA), 'rotateChallenge');
    const honest2 = await evidence(a, 'dev-a', ch2.rotationId, ch2.nonce, await a.createKey(), akA);
    await expectRefused('CERTIFY_INVALID', () => request('dev-a', { ...honest2, keyPublic: Buffer.alloc(40, 7) }));
    const ch3 = body(await begin('dev-a', serialA), 'rotateChallenge');
    const honest3 = await evidence(a, 'dev-a', ch3.rotationId, ch3.nonce, await a.createKey(), akA);
    await expectRefused('CERTIFY_INVALID', () => request('dev-a', { ...honest3, certifySignature: Buffer.alloc(40, 7) }));
  });

  describe('re-attestation (no token)', () => {
    const reattest = async (t: ScriptedTpm, deviceId: string, ak: StoredKey, key: StoredKey, patch?: Partial<EnrollBody>) =>
      enrollMsg(deviceId, { ...(await t.enrollBody(deviceId, ak, key, { mode: 'reattest' })), ...patch });

    it('re-attests a registered device with its own EK and AK, issuing a reattest certificate', async () => {
      const key = await a.createKey();
      const enrollId = newRequestId();
      const first = await enrollMsg('dev-a', await a.enrollBody('dev-a', akA, key, { mode: 'reattest' }), enrollId);
      const ch = body(first, 'enrollChallenge');
      // Another device using the same enroll requestId gets its own challenge, and dev-a's redelivery its own.
      const other = body(await enrollMsg('dev-b', await b.enrollBody('dev-b', akB, keyB, { mode: 'reattest' }), enrollId), 'enrollChallenge');
      expect(other.challengeId).not.toBe(ch.challengeId);
      expect((await enrollMsg('dev-a', await a.enrollBody('dev-a', akA, key, { mode: 'reattest' }), enrollId)).payload.equals(first.payload)).toBe(true);
      const proofId = newRequestId();
      const accepted = await proofMsg('dev-a', await a.answer(akA, key, ch), proofId);
      const issued = body(accepted, 'enrollAccepted');
      expect(new X509Certificate(issued.certificate).publicKey.export({ type: 'spki', format: 'der' }).equals(key.spki)).toBe(true);
      expect(inventory.getCertificate(issued.serial)).toMatchObject({ kind: 'reattest' });
      expect(inventory.getDevice('dev-a')).toMatchObject({ certSerial: issued.serial, reattestedAt: clock.now() });
      expect(activeSerials('dev-a')).toEqual([issued.serial]);
      expect((await inventory.listAudit({ deviceId: 'dev-a', type: 'device.reattested' })).map((e) => e.details?.serial)).toEqual([issued.serial]);
      // A redelivered proof gets the same certificate.
      expect((await proofMsg('dev-a', await a.answer(akA, key, ch), proofId)).payload.equals(accepted.payload)).toBe(true);
      serialA = issued.serial;
      keyA = key;
      // And the re-attested identity rotates like any other.
      const rch = body(await begin('dev-a', serialA), 'rotateChallenge');
      body(await request('dev-a', await evidence(a, 'dev-a', rch.rotationId, rch.nonce, await a.createKey(), akA)), 'rotateAccepted');
    });

    it('refuses an EK that is not the device\'s (another genuine TPM claiming dev-a)', async () => {
      // TPM B's genuine, trusted EK; dev-a's AK public (so only the EK is wrong); B's own key and CSR.
      await expectRefused('EK_MISMATCH', () => reattest(b, 'dev-a', akB, keyB, { akPublic: akA.publicArea }));
    });

    it('refuses an AK other than the one recorded at enrollment', async () => {
      const secondAk = await a.createAk();
      await expectRefused('AK_MISMATCH', async () => reattest(a, 'dev-a', secondAk, await a.createKey()));
    });

    it('refuses unknown and unenrolled devices, and a token where none belongs', async () => {
      await expectRefused('DEVICE_UNKNOWN', async () => reattest(a, 'dev-ghost', akA, keyA));
      await expectRefused('NOT_ENROLLED', async () => reattest(a, 'dev-new', akA, keyA));
      const { token } = mintEnrollmentToken();
      await expectRefused('BAD_REQUEST', async () => reattest(a, 'dev-a', akA, keyA, { token }));
      const withoutToken = await a.enrollBody('dev-a', akA, keyA, { mode: 'reattest' });
      delete (withoutToken as { mode?: string }).mode;
      await expectRefused('BAD_REQUEST', () => enrollMsg('dev-a', withoutToken));
    });
  });

  it('refuses a revoked device everywhere: begin, a pending request, confirm and re-attestation', async () => {
    const ch = body(await begin('dev-b', serialB), 'rotateChallenge');
    const honest = await evidence(b, 'dev-b', ch.rotationId, ch.nonce, await b.createKey(), akB);
    const reattestCh = body(await enrollMsg('dev-b', await b.enrollBody('dev-b', akB, keyB, { mode: 'reattest' })), 'enrollChallenge');
    const reattestProof = await b.answer(akB, keyB, reattestCh);
    const unrevoked = inventory.listCertificates('dev-b').map((c) => c.serial);
    expect((await inventory.revokeDevice('dev-b', 'stolen', clock.now())).sort()).toEqual(unrevoked.sort());
    await expectRefused('DEVICE_REVOKED', () => request('dev-b', honest));
    await expectRefused('DEVICE_REVOKED', () => begin('dev-b', serialB));
    await expectRefused('DEVICE_REVOKED', () => confirm('dev-b', serialB, serialB));
    // A re-attestation challenged before the revocation cannot finish, and a new one cannot start.
    await expectRefused('DEVICE_REVOKED', () => proofMsg('dev-b', reattestProof));
    await expectRefused('DEVICE_REVOKED', async () => enrollMsg('dev-b', await b.enrollBody('dev-b', akB, keyB, { mode: 'reattest' })));
  });
});
