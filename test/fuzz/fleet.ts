import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../common/clock.js';
import { mintEnrollmentToken } from '../../common/enrollment-token.js';
import { decode, encode, type MessageOf } from '../../common/protocol/messages.js';
import { Topics } from '../../common/protocol/topics.js';
import { createCa, type CaMaterial } from '../../broker-bridge/src/ca/ca-setup.js';
import { CertificateIssuer } from '../../broker-bridge/src/ca/issuer.js';
import { EnrollmentService, type EnrollmentLogger } from '../../broker-bridge/src/enrollment/enrollment-service.js';
import { DefaultEnrollmentPolicy } from '../../broker-bridge/src/enrollment/policy.js';
import { LevelInventory } from '../../broker-bridge/src/inventory/level-inventory.js';
import { RotationService } from '../../broker-bridge/src/rotation/rotation-service.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { startTpm, type TestTpm } from '../harness/index.js';
import { ScriptedTpm, newRequestId, type StoredKey } from '../enrollment/scripted-device.js';

/**
 * The fleet side the fuzz suites hammer: one swtpm making real evidence, the real CA, a real
 * LevelInventory in a temp dir, and EnrollmentService / RotationService called directly (no broker:
 * `handle(topic, payload)` is what the Bridge calls for each message). No rate limiter is configured,
 * so every input reaches the checks behind it rather than RATE_LIMITED.
 *
 * Devices (all on the one TPM's EK, each with its own CSR):
 *  - dev-tok: registered with an unused token (the captured token enroll is its);
 *  - dev-re: enrolled; re-attests (the captured re-attest enroll and the real proofs are its);
 *  - dev-rot: enrolled; rotates (captured begin and request);
 *  - dev-conf: enrolled; confirms (captured confirm);
 *  - dev-reg: registered, never enrolled; dev-rev: enrolled, then revoked.
 */
export interface LoggedError {
  readonly obj: Record<string, unknown>;
  readonly msg: string;
}

export class CapturingLogger implements EnrollmentLogger {
  readonly errors: LoggedError[] = [];
  readonly warnings: LoggedError[] = [];
  info(): void {}
  warn(obj: object, msg: string): void {
    this.warnings.push({ obj: obj as Record<string, unknown>, msg });
  }
  error(obj: object, msg: string): void {
    this.errors.push({ obj: obj as Record<string, unknown>, msg });
  }
  clear(): void {
    this.errors.length = 0;
    this.warnings.length = 0;
  }
}

/** A digest of everything the inventory holds that a handler could change. */
export async function inventoryDigest(inventory: LevelInventory): Promise<string> {
  const devices = inventory.listDevices().sort((x, y) => x.deviceId.localeCompare(y.deviceId));
  const certs = inventory.listCertificates().sort((x, y) => x.serial.localeCompare(y.serial));
  const audit = await inventory.listAudit();
  const events = await Promise.all(devices.map((d) => inventory.listDeviceEvents(d.deviceId)));
  return createHash('sha256').update(JSON.stringify({ devices, certs, audit, events })).digest('hex');
}

export type Wire = { [k: string]: unknown };
/** The wire (JSON) form of an encoded message. */
export const wire = (payload: Buffer): Wire => JSON.parse(payload.toString('utf8')) as Wire;

export const enrollClientId = (label: string) => `enr-${createHash('sha256').update(label).digest('base64url').slice(0, 22)}`;

export interface Fleet {
  readonly dir: string;
  readonly clock: ManualClock;
  readonly topics: Topics;
  readonly ca: CaMaterial;
  readonly inventory: LevelInventory;
  readonly logger: CapturingLogger;
  readonly enrollment: EnrollmentService;
  readonly rotation: RotationService;
  readonly tpm: ScriptedTpm;
  readonly ak: StoredKey;
  readonly key: StoredKey;
  readonly serials: Record<'dev-re' | 'dev-rot' | 'dev-conf' | 'dev-rev', string>;
  /** Captured valid messages (wire form), each accepted once during setup or valid to send. */
  readonly captured: {
    readonly tokenEnroll: Wire;
    readonly reattestEnroll: Wire;
    readonly proof: Wire;
    readonly begin: Wire;
    readonly request: Wire;
    readonly confirm: Wire;
  };
  /** The honest answer to a live challenge of dev-re, from the TPM. */
  answer(challenge: MessageOf<'enrollChallenge'>['body']): Promise<MessageOf<'enrollProof'>['body']>;
  close(): Promise<void>;
}

export async function startFleet(): Promise<Fleet> {
  const dir = mkdtempSync(join(tmpdir(), 'fuzz-'));
  const clock = new ManualClock(Date.now());
  const topics = new Topics('fleet/v1');
  const testTpm: TestTpm = await startTpm();
  // The EK certificates were just made (notBefore = now, whole seconds): judge them from now on.
  clock.set(Date.now() + 1000);
  const ca = await createCa({
    outDir: join(dir, 'ca'),
    clock,
    trustDomain: 'fuzz.fleet',
    root: { commonName: 'fuzz root' },
    issuing: { commonName: 'fuzz issuing CA' },
    backend: { kind: 'file', keyPath: join(dir, 'ca', 'issuing-key.pem') },
  });
  const inventory = new LevelInventory(join(dir, 'inventory'));
  await inventory.open();
  const logger = new CapturingLogger();
  const issuer = new CertificateIssuer({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock, trustDomain: 'fuzz.fleet' });
  const policy = new DefaultEnrollmentPolicy({ trustDomain: 'fuzz.fleet', lifetimeSec: 86_400, backdateSec: 60 });
  const common = { inventory, issuer, policy, clock, topics, logger, chainPems: [issuer.issuingCertificatePem], trustBundlePems: [ca.rootCertificatePem] };
  const enrollment = new EnrollmentService({
    ...common,
    ekTrust: { roots: [testTpm.manufacturerRootPem], intermediates: [testTpm.manufacturerIntermediatePem] },
  });
  const rotation = new RotationService({ ...common, rotationTtlMs: 600_000 });
  const tpm = new ScriptedTpm(await NativeTpm.open(testTpm.tcti));
  const ak = await tpm.createAk();
  const key = await tpm.createKey();
  const { ekSpki, ekCertificate, ekKind } = await tpm.ek();
  const ekPublicHash = createHash('sha256').update(ekSpki).digest('hex');

  const register = async (deviceId: string) => {
    const { token, tokenHash } = mintEnrollmentToken();
    const now = clock.now();
    await inventory.registerDevice(
      { deviceId, ekPublicHash, ekCertificate: ekCertificate.toString('base64'), ekKind, metadata: {}, registeredAt: now },
      { tokenHash, deviceId, ekPublicHash, createdAt: now, expiresAt: now + 30 * 86_400_000 },
    );
    return token;
  };
  const enrollReply = async (deviceId: string, topic: 'enroll' | 'enrollProof', payload: Buffer) => {
    const reply = await enrollment.handle(topics.enrollment(enrollClientId(deviceId), topic), payload);
    if (!reply) throw new Error(`no reply to ${topic}`);
    return reply.payload;
  };
  const challengeFor = async (deviceId: string, enrollPayload: Buffer) => decode('enrollChallenge', await enrollReply(deviceId, 'enroll', enrollPayload)).body;
  const enroll = async (deviceId: string) => {
    const token = await register(deviceId);
    const ch = await challengeFor(deviceId, encode('enroll', newRequestId(), clock.now(), await tpm.enrollBody(deviceId, ak, key, { token })));
    return decode('enrollAccepted', await enrollReply(deviceId, 'enrollProof', encode('enrollProof', newRequestId(), clock.now(), await tpm.answer(ak, key, ch)))).body.serial;
  };

  const tokenTok = await register('dev-tok');
  await register('dev-reg');
  const serials = {
    'dev-re': await enroll('dev-re'),
    'dev-rot': await enroll('dev-rot'),
    'dev-conf': await enroll('dev-conf'),
    'dev-rev': await enroll('dev-rev'),
  };
  await inventory.revokeDevice('dev-rev', 'fuzz fixture', clock.now());

  const tokenEnroll = encode('enroll', newRequestId(), clock.now(), await tpm.enrollBody('dev-tok', ak, key, { token: tokenTok }));
  const reattestBody = await tpm.enrollBody('dev-re', ak, key, { mode: 'reattest' });
  const reattestEnroll = encode('enroll', newRequestId(), clock.now(), reattestBody);
  // A captured valid proof: the honest answer to a re-attestation challenge, accepted once here.
  const ch = await challengeFor('dev-re', reattestEnroll);
  const proof = encode('enrollProof', newRequestId(), clock.now(), await tpm.answer(ak, key, ch));
  serials['dev-re'] = decode('enrollAccepted', await enrollReply('dev-re', 'enrollProof', proof)).body.serial;

  // A captured valid rotation: begin, a request certified over its nonce (accepted once), confirm.
  const rotReply = async (deviceId: string, topic: 'rotateBegin' | 'rotateRequest' | 'rotateConfirm', payload: Buffer) => {
    const reply = await rotation.handle(topics.device(deviceId, topic), payload);
    if (!reply) throw new Error(`no reply to ${topic}`);
    return reply.payload;
  };
  const begin = encode('rotateBegin', newRequestId(), clock.now(), { deviceId: 'dev-rot', currentSerial: serials['dev-rot'] });
  const rc = decode('rotateChallenge', await rotReply('dev-rot', 'rotateBegin', begin)).body;
  const rotKey = await tpm.createKey();
  const request = encode('rotateRequest', newRequestId(), clock.now(), {
    rotationId: rc.rotationId,
    akPublic: ak.publicArea,
    keyPublic: rotKey.publicArea,
    ...(await tpm.certify(rotKey, ak, rc.nonce)),
    csr: await tpm.csr(rotKey, 'dev-rot'),
  });
  decode('rotateAccepted', await rotReply('dev-rot', 'rotateRequest', request));
  const confirm = encode('rotateConfirm', newRequestId(), clock.now(), { serial: serials['dev-conf'], previousSerial: serials['dev-conf'] });
  decode('rotateConfirmed', await rotReply('dev-conf', 'rotateConfirm', confirm));
  logger.clear();

  return {
    dir,
    clock,
    topics,
    ca,
    inventory,
    logger,
    enrollment,
    rotation,
    tpm,
    ak,
    key,
    serials,
    captured: {
      tokenEnroll: wire(tokenEnroll),
      reattestEnroll: wire(reattestEnroll),
      proof: wire(proof),
      begin: wire(begin),
      request: wire(request),
      confirm: wire(confirm),
    },
    answer: (c) => tpm.answer(ak, key, c),
    async close() {
      await tpm.tpm.close();
      await inventory.close();
      await ca.backend.close();
      await testTpm.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
