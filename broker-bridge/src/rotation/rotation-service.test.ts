import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../common/clock.js';
import { decode, encode, type BodyOf } from '../../../common/protocol/messages.js';
import { Topics, type DeviceTopic } from '../../../common/protocol/topics.js';
import { createCa, type CaMaterial } from '../ca/ca-setup.js';
import { CertificateIssuer } from '../ca/issuer.js';
import { DefaultEnrollmentPolicy } from '../enrollment/policy.js';
import { RateLimiter } from '../enrollment/rate-limiter.js';
import { LevelInventory } from '../inventory/level-inventory.js';
import { RotationService, type RotationServiceOptions } from './rotation-service.js';

/**
 * RotationService's bookkeeping, without TPM evidence: begin checks against the inventory,
 * idempotency per (device, requestId), one live rotation per device and bounded memory, nonce
 * burning, rate limiting, and internal failures as coded retryable rejections. The evidence checks
 * run against real swtpm evidence in test/rotation/rotation-bridge.test.ts.
 */
describe('RotationService', () => {
  const topics = new Topics('fleet/v1');
  const T0 = Date.UTC(2026, 0, 1);
  let dir: string;
  let ca: CaMaterial;
  let issuer: CertificateIssuer;
  let clock: ManualClock;
  let inventory: LevelInventory;
  let n = 0;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'rotsvc-'));
    const caClock = new ManualClock(T0);
    ca = await createCa({
      outDir: join(dir, 'ca'),
      clock: caClock,
      trustDomain: 'unit.fleet',
      root: { commonName: 'unit root' },
      issuing: { commonName: 'unit issuing' },
      backend: { kind: 'file', keyPath: join(dir, 'ca', 'issuing-key.pem') },
    });
    issuer = new CertificateIssuer({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock: caClock, trustDomain: 'unit.fleet' });
  });
  afterAll(async () => {
    await ca?.backend.close();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(async () => {
    clock = new ManualClock(T0);
    await inventory?.close();
    inventory = new LevelInventory(join(dir, `inventory-${n++}`));
    await inventory.open();
  });

  const service = (o?: Partial<RotationServiceOptions>) =>
    new RotationService({
      inventory,
      issuer,
      policy: new DefaultEnrollmentPolicy({ trustDomain: 'unit.fleet', lifetimeSec: 3600, backdateSec: 0 }),
      clock,
      topics,
      chainPems: [ca.issuingCertificatePem],
      trustBundlePems: [ca.rootCertificatePem],
      rotationTtlMs: 60_000,
      ...o,
    });
  /** A registered device enrolled with certificate `serial` (records only: begin never sees TPM evidence). */
  const enrolled = async (deviceId: string, serial: string, notAfter = T0 + 3_600_000) => {
    await inventory.registerDevice(
      { deviceId, ekPublicHash: 'ek-' + deviceId, ekCertificate: 'AAAA', ekKind: 'ecc', metadata: {}, registeredAt: T0 },
      { tokenHash: 'tok-' + deviceId, deviceId, ekPublicHash: 'ek-' + deviceId, createdAt: T0, expiresAt: T0 + 1000 },
    );
    await inventory.completeEnrollment({
      tokenHash: 'tok-' + deviceId,
      requestId: 'enroll-' + deviceId,
      deviceId,
      akName: '000b' + '11'.repeat(32),
      certificate: { serial, deviceId, notBefore: T0, notAfter, issuedAt: T0, pem: 'PEM', keySpkiHash: 'k-' + serial },
      response: { requestId: 'enroll-' + deviceId, deviceId, topic: 't', payload: 'AA==', storedAt: T0 },
      audit: [],
      at: T0,
    });
  };
  type Answer = { topic: DeviceTopic; payload: Buffer };
  const send = async (s: RotationService, deviceId: string, topic: DeviceTopic, payload: Buffer): Promise<Answer> => {
    const reply = await s.handle(topics.device(deviceId, topic), payload);
    if (!reply) throw new Error('no reply');
    return { topic: topics.parseDevice(reply.topic)!.topic, payload: reply.payload };
  };
  const begin = (s: RotationService, deviceId: string, currentSerial: string, requestId = `begin-${n++}-req`) =>
    send(s, deviceId, 'rotateBegin', encode('rotateBegin', requestId, clock.now(), { deviceId, currentSerial }));
  const rejection = (a: Answer) => (a.topic === 'rotateRejected' ? decode('rotateRejected', a.payload).error : undefined);
  const codeOf = (a: Answer) => rejection(a)?.code ?? `not rejected: ${a.topic}`;
  const challenge = (a: Answer) => decode('rotateChallenge', a.payload).body;
  const junkRequest = (rotationId: string): BodyOf<'rotateRequest'> => ({
    rotationId,
    akPublic: Buffer.alloc(40, 7),
    keyPublic: Buffer.alloc(40, 7),
    certifyInfo: Buffer.alloc(40, 7),
    certifySignature: Buffer.alloc(40, 7),
    csr: Buffer.alloc(80, 7),
  });

  it('subscribes to the three rotation requests and ignores every other topic', async () => {
    const s = service();
    expect(s.filters()).toEqual(['fleet/v1/devices/+/rotate/begin', 'fleet/v1/devices/+/rotate/request', 'fleet/v1/devices/+/rotate/confirm']);
    expect(await s.handle(topics.enrollment(`enr-${'A'.repeat(22)}`, 'enroll'), Buffer.from('{}'))).toBeUndefined();
    expect(await s.handle('elsewhere/devices/d1/rotate/begin', Buffer.from('{}'))).toBeUndefined();
  });

  it('checks the device and its current certificate before issuing a nonce', async () => {
    const s = service();
    await enrolled('d1', 'aa01');
    await enrolled('d2', 'aa02', T0 + 1000);
    expect(codeOf(await begin(s, 'ghost', 'aa01'))).toBe('DEVICE_UNKNOWN');
    await inventory.registerDevice({ deviceId: 'd3', ekPublicHash: 'x', ekCertificate: 'AAAA', ekKind: 'ecc', metadata: {}, registeredAt: T0 });
    expect(codeOf(await begin(s, 'd3', 'aa01'))).toBe('NOT_ENROLLED');
    expect(codeOf(await begin(s, 'd1', 'ffff'))).toBe('IDENTITY_UNKNOWN');
    expect(codeOf(await begin(s, 'd1', 'aa02'))).toBe('IDENTITY_UNKNOWN');
    clock.set(T0 + 1000);
    expect(codeOf(await begin(s, 'd2', 'aa02'))).toBe('IDENTITY_EXPIRED');
    const c = challenge(await begin(s, 'd1', 'aa01'));
    expect(c.nonce).toHaveLength(32);
    expect(c.expiresAt).toBe(T0 + 1000 + 60_000);
    await inventory.revokeDevice('d1', 'test', T0);
    expect(codeOf(await begin(s, 'd1', 'aa01'))).toBe('DEVICE_REVOKED');
    expect(codeOf(await send(s, 'd1', 'rotateBegin', encode('rotateBegin', 'someid-01', T0, { deviceId: 'd2', currentSerial: 'aa01' })))).toBe('BAD_REQUEST');
  });

  it('answers a repeated begin with the same challenge, per requester, and keeps one live rotation per device', async () => {
    const s = service();
    await enrolled('d1', 'aa01');
    await enrolled('d2', 'aa02');
    const first = await begin(s, 'd1', 'aa01', 'shared-req-1');
    expect((await begin(s, 'd1', 'aa01', 'shared-req-1')).payload.equals(first.payload)).toBe(true);
    // The same requestId from another device is another request.
    const other = await begin(s, 'd2', 'aa02', 'shared-req-1');
    expect(challenge(other).rotationId).not.toBe(challenge(first).rotationId);
    expect(s.liveRotations).toBe(2);
    // A new begin replaces the device's rotation: the old one can no longer be answered.
    const second = await begin(s, 'd1', 'aa01');
    expect(s.liveRotations).toBe(2);
    expect(codeOf(await send(s, 'd1', 'rotateRequest', encode('rotateRequest', 'req-old-1', T0, junkRequest(challenge(first).rotationId))))).toBe('CHALLENGE_UNKNOWN');
    expect(codeOf(await send(s, 'd1', 'rotateRequest', encode('rotateRequest', 'req-new-1', T0, junkRequest(challenge(second).rotationId))))).toBe('AK_INVALID');
  });

  it('sweeps expired rotations so memory stays bounded by devices rotating now', async () => {
    const s = service();
    for (let i = 0; i < 50; i++) await enrolled(`m${i}`, `bb${String(i).padStart(2, '0')}`);
    for (let i = 0; i < 50; i++) await begin(s, `m${i}`, `bb${String(i).padStart(2, '0')}`);
    expect(s.liveRotations).toBe(50);
    clock.advance(60_000);
    await begin(s, 'm0', 'bb00');
    expect(s.liveRotations).toBe(1);
  });

  it('burns a rotation with its first answer; a repeat of that answer gets the same reply', async () => {
    const s = service();
    await enrolled('d1', 'aa01');
    const { rotationId } = challenge(await begin(s, 'd1', 'aa01'));
    const payload = encode('rotateRequest', 'answer-one', T0, junkRequest(rotationId));
    // Concurrent duplicates (QoS1 redelivery) share the one answer.
    const [x, y] = await Promise.all([send(s, 'd1', 'rotateRequest', payload), send(s, 'd1', 'rotateRequest', payload)]);
    expect(codeOf(x)).toBe('AK_INVALID');
    expect(y.payload.equals(x.payload)).toBe(true);
    expect((await send(s, 'd1', 'rotateRequest', payload)).payload.equals(x.payload)).toBe(true);
    expect(codeOf(await send(s, 'd1', 'rotateRequest', encode('rotateRequest', 'answer-two', T0, junkRequest(rotationId))))).toBe('CHALLENGE_UNKNOWN');
  });

  it('does not let another device burn a rotation, and refuses an expired one', async () => {
    const s = service();
    await enrolled('d1', 'aa01');
    await enrolled('d2', 'aa02');
    const { rotationId } = challenge(await begin(s, 'd1', 'aa01'));
    expect(codeOf(await send(s, 'd2', 'rotateRequest', encode('rotateRequest', 'thief-req-1', T0, junkRequest(rotationId))))).toBe('CHALLENGE_UNKNOWN');
    expect(codeOf(await send(s, 'd1', 'rotateRequest', encode('rotateRequest', 'owner-req-1', T0, junkRequest(rotationId))))).toBe('AK_INVALID');
    const late = challenge(await begin(s, 'd1', 'aa01'));
    clock.advance(60_000);
    expect(codeOf(await send(s, 'd1', 'rotateRequest', encode('rotateRequest', 'late-req-1', T0, junkRequest(late.rotationId))))).toBe('CHALLENGE_EXPIRED');
  });

  it('rate-limits begin per device with retryAfterSec; the request answering a live nonce is never limited', async () => {
    const s = service({ limiter: new RateLimiter({ perKey: { ratePerSec: 1, burst: 2 }, global: { ratePerSec: 100, burst: 100 }, clock }) });
    await enrolled('d1', 'aa01');
    await enrolled('d2', 'aa02');
    await begin(s, 'd1', 'aa01');
    const { rotationId } = challenge(await begin(s, 'd1', 'aa01'));
    expect(rejection(await begin(s, 'd1', 'aa01'))).toMatchObject({ code: 'RATE_LIMITED', retryable: true, retryAfterSec: 1 });
    // Another device is not affected.
    expect(codeOf(await begin(s, 'd2', 'aa02'))).toBe('not rejected: rotateChallenge');
    // The live nonce is still answerable with the bucket empty (limiting both steps could starve the exchange).
    expect(codeOf(await send(s, 'd1', 'rotateRequest', encode('rotateRequest', 'limited-2', T0, junkRequest(rotationId))))).toBe('AK_INVALID');
  });

  it('confirms idempotently by requestId and refuses what is not the device\'s active certificate', async () => {
    const s = service();
    await enrolled('d1', 'aa01');
    await enrolled('d2', 'aa02');
    const confirm = (deviceId: string, serial: string, requestId: string) =>
      send(s, deviceId, 'rotateConfirm', encode('rotateConfirm', requestId, clock.now(), { serial, previousSerial: 'aa01' }));
    const first = await confirm('d1', 'aa01', 'confirm-1');
    expect(decode('rotateConfirmed', first.payload).body).toEqual({ serial: 'aa01', superseded: [] });
    expect((await confirm('d1', 'aa01', 'confirm-1')).payload.equals(first.payload)).toBe(true);
    expect(codeOf(await confirm('d1', 'aa02', 'confirm-2'))).toBe('IDENTITY_UNKNOWN');
    expect(codeOf(await confirm('ghost', 'aa02', 'confirm-3'))).toBe('DEVICE_UNKNOWN');
    await inventory.revokeDevice('d2', 'test', T0);
    expect(codeOf(await confirm('d2', 'aa02', 'confirm-4'))).toBe('DEVICE_REVOKED');
  });

  it('turns an internal failure into a retryable INTERNAL with retryAfterSec and nothing internal on the wire', async () => {
    const errors: object[] = [];
    const s = service({ logger: { info() {}, warn() {}, error: (o) => errors.push(o) } });
    await enrolled('d1', 'aa01');
    await inventory.close(); // reads still answer from memory; the write fails
    const a = await send(s, 'd1', 'rotateConfirm', encode('rotateConfirm', 'confirm-x1', T0, { serial: 'aa01', previousSerial: 'aa01' }));
    expect(rejection(a)).toEqual({ code: 'INTERNAL', message: 'internal error', retryable: true, retryAfterSec: 5 });
    expect(errors).toHaveLength(1);
  });
});
