import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { systemClock } from '../../common/clock.js';
import { mintEnrollmentToken } from '../../common/enrollment-token.js';
import type { Transport } from '../../common/transport/transport.js';
import { EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import type { Tpm } from '../../native/lib/tpm.js';
import { parseAndVerifyCsr } from '../../broker-bridge/src/ca/csr.js';
import { newManufacturer, startTpm, type TestTpm } from '../harness/index.js';
import {
  answerChallenge,
  buildCsr,
  connectEnrollment,
  enrollClientIdOf,
  csrForFreshKey,
  enrollBody,
  enrollPayload,
  exchange,
  newRequestId,
  prepareDevice,
  proofPayload,
  softwareKeyPosingAsTpmKey,
  type Answer,
  type DeviceMaterial,
} from './scripted-device.js';

const run = promisify(execFile);

/**
 * The bridge's enrollment verification end to end: real swtpm TPMs, real mosquitto with the fleet's
 * generated config, the real bridge and CA. Every attack must be refused with its code and leave the
 * inventory exactly as it was.
 */
describe('enrollment through the bridge', () => {
  let dir: string;
  let fleet: EmbeddedFleet;
  let tpmA: TestTpm;
  let tpmB: TestTpm;
  let tpmRogue: TestTpm;
  let a: Tpm;
  let b: Tpm;
  let rogue: Tpm;
  let devA: DeviceMaterial;
  let devB: DeviceMaterial;
  let devRogue: DeviceMaterial;
  let otherKeyCsrB: Buffer;
  let tA: Transport;
  const transports: Transport[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'enroll-'));
    [tpmA, tpmB, tpmRogue] = await Promise.all([startTpm(), startTpm(), startTpm({ manufacturer: newManufacturer() })]);
    fleet = await EmbeddedFleet.start({
      dir,
      clock: systemClock,
      trustDomain: 'test.fleet',
      ekTrust: { roots: [tpmA.manufacturerRootPem], intermediates: [tpmA.manufacturerIntermediatePem] },
    });
    [a, b, rogue] = await Promise.all([NativeTpm.open(tpmA.tcti), NativeTpm.open(tpmB.tcti), NativeTpm.open(tpmRogue.tcti)]);
    otherKeyCsrB = await csrForFreshKey(b, 'dev-b7');
    [devA, devB, devRogue] = await Promise.all([prepareDevice(a, 'dev-a'), prepareDevice(b, 'dev-b'), prepareDevice(rogue, 'dev-rogue')]);
  });
  afterAll(async () => {
    await Promise.all(transports.map((t) => t.close()));
    await Promise.all([a, b, rogue].map((t) => t?.close()));
    await fleet?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const ekHash = (m: DeviceMaterial) => createHash('sha256').update(m.ek.spki).digest('hex');
  const register = async (deviceId: string, m: DeviceMaterial, opts?: { expiresAt?: number; ekOf?: DeviceMaterial }) => {
    const { token, tokenHash } = mintEnrollmentToken();
    const owner = opts?.ekOf ?? m;
    const now = Date.now();
    await fleet.inventory.registerDevice(
      { deviceId, ekPublicHash: ekHash(owner), ekCertificate: owner.ekCertificate.toString('base64'), ekKind: owner.ekKind, metadata: { model: 'test' }, registeredAt: now },
      { tokenHash, deviceId, ekPublicHash: ekHash(owner), createdAt: now, expiresAt: opts?.expiresAt ?? now + 3_600_000 },
    );
    return token;
  };
  const client = async (id: string) => {
    const t = await connectEnrollment(fleet.broker.enrollUrl, fleet.trustBundle[0]!, id);
    transports.push(t);
    return t;
  };
  const snapshot = async () =>
    JSON.stringify({
      devices: fleet.inventory.listDevices(),
      certs: fleet.inventory.listCertificates(),
      audit: (await fleet.inventory.listAudit()).length,
    });
  const enroll = async (t: Transport, id: string, body: ReturnType<typeof enrollBody>, requestId = newRequestId()) =>
    exchange(t, fleet.topics, id, 'enroll', enrollPayload(requestId, body), requestId);
  const proof = async (t: Transport, id: string, body: Parameters<typeof proofPayload>[1], requestId = newRequestId()) =>
    exchange(t, fleet.topics, id, 'enrollProof', proofPayload(requestId, body), requestId);
  const rejectedWith = (ans: Answer) => (ans.kind === 'rejected' ? ans.msg.error.code : `not rejected: ${ans.kind}`);
  /** Runs `attack` and checks it was refused with `code` and changed nothing in the inventory. */
  const expectRefused = async (code: string, attack: () => Promise<Answer>) => {
    const before = await snapshot();
    expect(rejectedWith(await attack())).toBe(code);
    expect(await snapshot()).toBe(before);
  };

  it('enrolls an honest device: challenge, proof, certificate for the TPM key that openssl verifies', async () => {
    const token = await register('dev-a', devA);
    const t = await client('dev-a');
    const challenge = await enroll(t, 'dev-a', enrollBody(devA, token));
    expect(challenge.kind).toBe('challenge');
    if (challenge.kind !== 'challenge') return;
    const proofRequestId = newRequestId();
    const accepted = await proof(t, 'dev-a', await answerChallenge(a, devA, challenge.msg.body), proofRequestId);
    expect(accepted.kind).toBe('accepted');
    if (accepted.kind !== 'accepted') return;
    const cert = new X509Certificate(accepted.msg.body.certificate);
    expect(cert.publicKey.export({ type: 'spki', format: 'der' }).equals(devA.key.spki)).toBe(true);
    expect(cert.subject).toContain('CN=dev-a');
    writeFileSync(join(dir, 'leaf.pem'), accepted.msg.body.certificate);
    writeFileSync(join(dir, 'chain.pem'), accepted.msg.body.chain.join(''));
    writeFileSync(join(dir, 'root.pem'), accepted.msg.body.trustBundle.join(''));
    const { stdout } = await run('openssl', ['verify', '-CAfile', join(dir, 'root.pem'), '-untrusted', join(dir, 'chain.pem'), join(dir, 'leaf.pem')]);
    expect(stdout).toContain('OK');
    const device = fleet.inventory.getDevice('dev-a')!;
    expect(device.certSerial).toBe(accepted.msg.body.serial);
    expect(device.akName).toBe(devA.ak.name.toString('hex'));

    // A redelivered proof (same requestId) gets the same certificate, never a second one.
    const again = await exchange(t, fleet.topics, 'dev-a', 'enrollProof', proofPayload(proofRequestId, await answerChallenge(a, devA, challenge.msg.body)), proofRequestId);
    expect(again.kind === 'accepted' && again.msg.body.serial).toBe(accepted.msg.body.serial);
    expect(fleet.inventory.listCertificates('dev-a')).toHaveLength(1);

    // Replaying the used token is refused and changes nothing.
    await expectRefused('TOKEN_USED', () => enroll(t, 'dev-a', enrollBody(devA, token)));
    tA = t;
  });

  it('re-attests an enrolled device without a token, and refuses another TPM\'s EK or a token in that mode', async () => {
    const { token: _unused, ...withoutToken } = enrollBody(devA, 'x'.repeat(16));
    const reattest = { ...withoutToken, mode: 'reattest' as const };
    // Another genuine TPM's trusted EK claiming dev-a, with dev-a's AK: only the EK is wrong.
    await expectRefused('EK_MISMATCH', () => enroll(tA, 'dev-a', { ...reattest, ekCertificate: devB.ekCertificate, ekPublic: devB.ek.publicArea, ekKind: devB.ekKind }));
    await expectRefused('BAD_REQUEST', () => enroll(tA, 'dev-a', { ...reattest, token: mintEnrollmentToken().token }));
    const before = fleet.inventory.getDevice('dev-a')!;
    const ch = await enroll(tA, 'dev-a', reattest);
    if (ch.kind !== 'challenge') throw new Error(`expected a challenge, got ${rejectedWith(ch)}`);
    const done = await proof(tA, 'dev-a', await answerChallenge(a, devA, ch.msg.body));
    if (done.kind !== 'accepted') throw new Error(`expected a certificate, got ${rejectedWith(done)}`);
    expect(fleet.inventory.getCertificate(done.msg.body.serial)).toMatchObject({ kind: 'reattest', deviceId: 'dev-a' });
    expect(fleet.inventory.getCertificate(before.certSerial!)?.supersededAt).toBeDefined();
    expect(fleet.inventory.getDevice('dev-a')).toMatchObject({ certSerial: done.msg.body.serial, akName: before.akName });
    expect(await fleet.inventory.listAudit({ deviceId: 'dev-a', type: 'device.reattested' })).toHaveLength(1);
  });

  it('refuses a token of another device, a token bound to another EK, and an expired token', async () => {
    const tokenOfB = await register('dev-b1', devB);
    const tb = await client('dev-b2');
    await register('dev-b2', devB);
    await expectRefused('TOKEN_MISMATCH', () => enroll(tb, 'dev-b2', { ...enrollBody(devB, tokenOfB), deviceId: 'dev-b2' }));
    // dev-b3's token is bound to A's EK; B presents its own EK with it.
    const tokenBoundToA = await register('dev-b3', devB, { ekOf: devA });
    const tb3 = await client('dev-b3');
    await expectRefused('TOKEN_MISMATCH', () => enroll(tb3, 'dev-b3', { ...enrollBody(devB, tokenBoundToA), deviceId: 'dev-b3' }));
    const expired = await register('dev-b4', devB, { expiresAt: Date.now() - 1000 });
    const tb4 = await client('dev-b4');
    await expectRefused('TOKEN_EXPIRED', () => enroll(tb4, 'dev-b4', { ...enrollBody(devB, expired), deviceId: 'dev-b4' }));
    await expectRefused('TOKEN_UNKNOWN', () => enroll(tb4, 'dev-b4', { ...enrollBody(devB, mintEnrollmentToken().token), deviceId: 'dev-b4' }));
  });

  it('refuses an EK from an untrusted manufacturer', async () => {
    const token = await register('dev-rogue', devRogue);
    const t = await client('dev-rogue');
    await expectRefused('EK_UNTRUSTED', () => enroll(t, 'dev-rogue', enrollBody(devRogue, token)));
  });

  it('refuses an activation answered by a TPM other than the EK\'s', async () => {
    // B claims A's EK (certificate and public key are public) with B's own AK and key.
    const token = await register('dev-b5', devB, { ekOf: devA });
    const t = await client('dev-b5');
    const body = { ...enrollBody(devB, token), deviceId: 'dev-b5', ekCertificate: devA.ekCertificate, ekPublic: devA.ek.publicArea, ekKind: devA.ekKind };
    const ch = await enroll(t, 'dev-b5', body);
    expect(ch.kind).toBe('challenge');
    if (ch.kind !== 'challenge') return;
    // B's TPM cannot open a credential sealed to A's EK...
    await expect(b.activateCredential(devB.ak, devB.ek, ch.msg.body.credentialBlob, ch.msg.body.encryptedSecret)).rejects.toMatchObject({ code: expect.stringMatching(/^TPM_RC_/) });
    // ...so whatever it answers is wrong.
    const att = await b.certify(devB.key, devB.ak, ch.msg.body.nonce);
    await expectRefused('ACTIVATION_FAILED', () =>
      proof(t, 'dev-b5', { challengeId: ch.msg.body.challengeId, secret: Buffer.alloc(32, 1), certifyInfo: att.attest, certifySignature: att.signature }),
    );
  });

  it('refuses a key certified outside the TPM and a CSR for another key', async () => {
    // A software key dressed up as a TPM key: its public area claims fixedTPM, and its CSR is valid on
    // its own (checked here, so only the certification can be what refuses it).
    const soft = softwareKeyPosingAsTpmKey('dev-b6');
    expect(parseAndVerifyCsr(soft.csr).publicKeySpki.equals(soft.spki)).toBe(true);
    const token6 = await register('dev-b6', devB);
    const t6 = await client('dev-b6');
    const ch = await enroll(t6, 'dev-b6', { ...enrollBody(devB, token6), deviceId: 'dev-b6', keyPublic: soft.keyPublic, csr: soft.csr });
    if (ch.kind !== 'challenge') throw new Error(`expected a challenge, got ${rejectedWith(ch)}`);
    // The TPM can only certify keys it holds: the best an attacker has is a certification of the real key.
    await expectRefused('CERTIFY_INVALID', async () => proof(t6, 'dev-b6', await answerChallenge(b, devB, ch.msg.body)));

    // The certified key is the TPM's, but the CSR carries a different (TPM) key.
    const token7 = await register('dev-b7', devB);
    const t7 = await client('dev-b7');
    const ch7 = await enroll(t7, 'dev-b7', { ...enrollBody(devB, token7), deviceId: 'dev-b7', csr: otherKeyCsrB });
    if (ch7.kind !== 'challenge') throw new Error(`expected a challenge, got ${rejectedWith(ch7)}`);
    await expectRefused('CSR_KEY_MISMATCH', async () => proof(t7, 'dev-b7', await answerChallenge(b, devB, ch7.msg.body)));
  });

  it('refuses malformed and oversize payloads, and a device id its token does not belong to', async () => {
    const t = await client('dev-b8');
    const token = await register('dev-b8', devB);
    const ask = (payload: Buffer, requestId = newRequestId()) => exchange(t, fleet.topics, 'dev-b8', 'enroll', payload, requestId);
    // Unparseable: the bridge cannot read a requestId and answers under the placeholder `unknown0`.
    await expectRefused('BAD_REQUEST', () => ask(Buffer.from('{"v":1,"requestId":"abcdefgh1", nope'), 'unknown0'));
    const huge = Buffer.from(JSON.stringify({ v: 1, requestId: 'abcdefgh2', sentAt: 1, body: { pad: 'x'.repeat(20_000) } }));
    await expectRefused('BAD_REQUEST', () => ask(huge, 'abcdefgh2'));
    const extra = JSON.parse(enrollPayload('abcdefgh3', { ...enrollBody(devB, token), deviceId: 'dev-b8' }).toString());
    extra.body.admin = true;
    await expectRefused('BAD_REQUEST', () => ask(Buffer.from(JSON.stringify(extra)), 'abcdefgh3'));
    // The device id is only what the payload claims: the token (bound to dev-b8) decides.
    await expectRefused('TOKEN_MISMATCH', () => ask(enrollPayload('abcdefgh4', { ...enrollBody(devB, token), deviceId: 'dev-a' }), 'abcdefgh4'));
  });

  it('rate-limits a client that floods enroll requests with one token, telling it when to retry', async () => {
    const t = await client('dev-flood');
    const codes: string[] = [];
    let retryAfter: number | undefined;
    const junk = mintEnrollmentToken().token;
    for (let i = 0; i < 12; i++) {
      const ans = await enroll(t, 'dev-flood', { ...enrollBody(devB, junk), deviceId: 'dev-flood' });
      codes.push(rejectedWith(ans));
      if (ans.kind === 'rejected' && ans.msg.error.code === 'RATE_LIMITED') retryAfter = ans.msg.error.retryAfterSec;
    }
    expect(codes.slice(0, 10)).toEqual(Array(10).fill('TOKEN_UNKNOWN'));
    expect(codes.slice(10)).toEqual(['RATE_LIMITED', 'RATE_LIMITED']);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
  });

  it('junk enrolls under a device\'s id, with tokens it does not have, cost that device nothing', async () => {
    const token = await register('dev-junked', devB);
    const attacker = await client('attacker');
    for (let i = 0; i < 15; i++) {
      const ans = await enroll(attacker, 'dev-junked', { ...enrollBody(devB, mintEnrollmentToken().token), deviceId: 'dev-junked' });
      expect(rejectedWith(ans)).toBe('TOKEN_UNKNOWN');
    }
    // The honest device enrolls at once: its bucket is its token's, which the attacker never had.
    const honest = await client('dev-junked');
    const ch = await enroll(honest, 'dev-junked', { ...enrollBody(devB, token), deviceId: 'dev-junked' });
    expect(ch.kind).toBe('challenge');
  });

  it('lets the broker deny a client publishing on another enrollment client\'s topics', async () => {
    const t = await client('dev-b9');
    const other = await client('dev-b9-other');
    await expect(t.publish(fleet.topics.enrollment(enrollClientIdOf(other), 'enroll'), Buffer.from('{}'), { qos: 1 })).rejects.toMatchObject({
      code: 'TRANSPORT_PUBLISH_REFUSED',
    });
    await expect(t.publish(fleet.topics.enrollment(enrollClientIdOf(other), 'enrollProof'), Buffer.from('{}'), { qos: 1 })).rejects.toMatchObject({
      code: 'TRANSPORT_PUBLISH_REFUSED',
    });
  });

  it('finishes an enrollment interrupted by a bridge restart, using the token exactly once', async () => {
    const token = await register('dev-b10', devB);
    const t = await client('dev-b10');
    const csr = await buildCsr('dev-b10', devB.key.spki, async (d) => (await b.sign(devB.key, d)).der);
    const body = { ...enrollBody(devB, token), deviceId: 'dev-b10', csr };
    const ch = await enroll(t, 'dev-b10', body);
    if (ch.kind !== 'challenge') throw new Error(`expected a challenge, got ${rejectedWith(ch)}`);
    await fleet.stopBridge();
    await fleet.startBridge();
    // The restarted bridge never saw that challenge: the device is told so and starts over.
    expect(rejectedWith(await proof(t, 'dev-b10', await answerChallenge(b, devB, ch.msg.body)))).toBe('CHALLENGE_UNKNOWN');
    const ch2 = await enroll(t, 'dev-b10', body);
    if (ch2.kind !== 'challenge') throw new Error(`expected a challenge, got ${rejectedWith(ch2)}`);
    const done = await proof(t, 'dev-b10', await answerChallenge(b, devB, ch2.msg.body));
    expect(done.kind === 'rejected' ? done.msg.error.code : done.kind).toBe('accepted');
    expect(fleet.inventory.listCertificates('dev-b10')).toHaveLength(1);
    const tokenEvents = (await fleet.inventory.listAudit({ deviceId: 'dev-b10', type: 'token.consumed' })).length;
    expect(tokenEvents).toBe(1);
  });
});
