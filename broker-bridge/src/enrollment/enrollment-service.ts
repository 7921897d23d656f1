import { randomBytes } from 'node:crypto';
import type { Clock } from '../../../common/clock.js';
import { hashEnrollmentToken } from '../../../common/enrollment-token.js';
import { decode, encode, type EnrollProof, type EnrollRequest } from '../../../common/protocol/messages.js';
import { enforceRateLimit, InFlight, rejectionReply, type Reply } from './request-handling.js';
import { SchemaError } from '../../../common/protocol/schema.js';
import type { Topics } from '../../../common/protocol/topics.js';
import type { EkTrustStore } from '../../../native/lib/ek-certificate.js';
import { makeCredential } from '../../../native/lib/wire/make-credential.js';
import { objectName, publicToSpki, type TpmPublic } from '../../../native/lib/wire/public.js';
import { toPem } from '../../../common/der.js';
import type { CertificateIssuer } from '../ca/issuer.js';
import {
  InventoryError,
  type CachedResponse,
  type CertificateRecord,
  type DeviceRecord,
  type Inventory,
  type TokenRecord,
} from '../inventory/inventory.js';
import type { EnrollmentPolicy, IssuanceConstraints } from './policy.js';
import type { CertificateOperation, RequestMetrics } from '../metrics/request-metrics.js';
import type { RateLimiter } from './rate-limiter.js';
import {
  EnrollmentRejection,
  checkActivation,
  checkAk,
  checkAkMatches,
  checkCertify,
  checkCsr,
  checkDeviceActive,
  checkEk,
  checkEkAttributes,
  checkEkKind,
  parseWirePublic,
  reject,
  sha256Hex,
} from './evidence.js';

/**
 * The bridge's enrollment handler: turns `enroll` and `enroll/proof` messages into a challenge, a
 * certificate or a rejection. Verification order (first failure wins, with its code): schema, and a
 * token present exactly in mode 'token' (BAD_REQUEST); device id matches the authenticated topic;
 * rate limit; then
 *  - mode 'token' (default): token (exists by hash, unused, unexpired, bound to this device and EK);
 *    EK certificate chain and EK key; AK attributes → challenge;
 *  - mode 'reattest' (no token; a device whose identity expired offline or became unusable): device
 *    registered (DEVICE_UNKNOWN), enrolled (NOT_ENROLLED), not revoked (DEVICE_REVOKED); EK public key
 *    is the one registered (EK_MISMATCH); EK certificate chain and EK key; AK Name is the one recorded
 *    at enrollment (AK_MISMATCH); AK attributes → challenge.
 * Then for the proof (both modes): challenge (known, this device's, unexpired); activation secret;
 * TPM2_Certify of the identity key; CSR signature and key; for 'token' the token still unused, for
 * 'reattest' the device still active; policy → issue, and atomically record everything (consuming the
 * token, or recording the re-attestation).
 *
 * Nothing is written to the inventory unless a certificate is issued. Idempotent by (device,
 * requestId): a redelivered enroll gets the same challenge, a redelivered proof the same certificate;
 * another device's ids never change this device's answers.
 */
export type { Reply };

export interface EnrollmentLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface EnrollmentServiceOptions {
  readonly inventory: Inventory;
  readonly issuer: CertificateIssuer;
  readonly policy: EnrollmentPolicy;
  readonly ekTrust: EkTrustStore;
  readonly clock: Clock;
  readonly topics: Topics;
  /** Issuing chain sent with each certificate (issuer first). */
  readonly chainPems: readonly string[];
  /** Roots devices should trust (fleet root; the broker's server certificate chains to it). */
  readonly trustBundlePems: readonly string[];
  readonly limiter?: RateLimiter;
  readonly challengeTtlMs?: number;
  readonly logger?: EnrollmentLogger;
  /** Outcomes (by code) and issuance latency of enrollments and re-attestations. */
  readonly metrics?: RequestMetrics;
}

interface PendingChallenge {
  readonly challengeId: string;
  /** The attempt's `enr-…` client id: only it may answer, and the answers go to it. */
  readonly clientId: string;
  readonly deviceId: string;
  readonly enrollRequestId: string;
  readonly mode: 'token' | 'reattest';
  /** The token to consume (mode 'token' only). */
  readonly tokenHash: string | undefined;
  readonly secret: Buffer;
  readonly nonce: Buffer;
  readonly expiresAt: number;
  readonly ak: TpmPublic;
  readonly key: TpmPublic;
  readonly csr: Buffer;
  readonly manufacturer: string;
  /** The exact challenge payload, resent for a redelivered enroll. */
  readonly payload: Buffer;
}

const MAX_PENDING = 50_000;
/**
 * Request ids are the requester's own: every idempotency key includes the requester, which on the
 * enrollment listener is the attempt's `enr-…` client id (the only identity the broker vouches for
 * there: nobody can claim another client's id, and the device id in the payload is only believed
 * once token and EK have been checked).
 */
const requestKey = (requester: string, requestId: string) => `${requester}\x00${requestId}`;
const noopLogger: EnrollmentLogger = { info() {}, warn() {}, error() {} };

export class EnrollmentService {
  readonly #o: EnrollmentServiceOptions;
  readonly #log: EnrollmentLogger;
  readonly #challenges = new Map<string, PendingChallenge>();
  /** `<client id>\x00<enroll requestId>` → challengeId. */
  readonly #byEnrollRequest = new Map<string, string>();
  readonly #inFlight = new InFlight();

  constructor(options: EnrollmentServiceOptions) {
    this.#o = options;
    this.#log = options.logger ?? noopLogger;
  }

  /** Subscription filters this service needs. */
  filters(): string[] {
    return [this.#o.topics.allEnrollments('enroll'), this.#o.topics.allEnrollments('enrollProof')];
  }

  /** Handles one incoming message; undefined when the topic is not ours (nothing to answer). */
  async handle(topic: string, payload: Buffer): Promise<Reply | undefined> {
    const parsed = this.#o.topics.parseEnrollment(topic);
    if (!parsed || (parsed.topic !== 'enroll' && parsed.topic !== 'enrollProof')) return undefined;
    const { clientId } = parsed;
    const requestId = peekRequestId(payload);
    const kind = parsed.topic;
    return this.#inFlight.run(`${requestKey(clientId, requestId)}\x00${kind}`, () => this.#run(kind, clientId, requestId, payload));
  }

  async #run(kind: 'enroll' | 'enrollProof', clientId: string, requestId: string, payload: Buffer): Promise<Reply> {
    const now = this.#o.clock.now();
    // Which operation a refusal counts against, once the message tells (enroll until then).
    const attempt: Attempt = { operation: 'enroll' };
    try {
      return kind === 'enroll' ? await this.#enroll(clientId, payload, now, attempt) : await this.#proof(clientId, payload, now, attempt);
    } catch (e) {
      const r = this.#asRejection(e, { clientId, kind, requestId });
      this.#o.metrics?.result(attempt.operation, r.code);
      return rejectionReply(this.#o.topics.enrollment(clientId, 'enrollRejected'), requestId, now, r);
    }
  }

  #asRejection(e: unknown, ctx: Record<string, string>): EnrollmentRejection {
    if (e instanceof EnrollmentRejection) {
      this.#log.warn({ ...ctx, code: e.code, reason: e.message }, 'enrollment request rejected');
      return e;
    }
    if (e instanceof SchemaError) {
      this.#log.warn({ ...ctx, code: 'BAD_REQUEST', schemaCode: e.code, path: e.path }, 'malformed enrollment message');
      return new EnrollmentRejection('BAD_REQUEST', e.message);
    }
    if (e instanceof InventoryError && e.code === 'INVENTORY_TOKEN_USED') {
      this.#log.warn(ctx, 'token consumed concurrently');
      return new EnrollmentRejection('TOKEN_USED', 'token already used');
    }
    if (e instanceof InventoryError && e.code === 'INVENTORY_REVOKED') {
      this.#log.warn(ctx, 'device revoked concurrently');
      return new EnrollmentRejection('DEVICE_REVOKED', 'device is revoked');
    }
    // Internals go to the log, never to the wire.
    this.#log.error({ ...ctx, err: e }, 'enrollment handler failed');
    return new EnrollmentRejection('INTERNAL', 'internal error', { retryAfterSec: 5 });
  }

  async #enroll(clientId: string, payload: Buffer, now: number, attempt: Attempt): Promise<Reply> {
    const msg = decode('enroll', payload);
    const body: EnrollRequest = msg.body;
    // Believed only once the token (or, re-attesting, the registered EK and AK) confirms it.
    const deviceId = body.deviceId;
    const mode = body.mode ?? 'token';
    attempt.operation = operationOf(mode);
    if (mode === 'token' && body.token === undefined) reject('BAD_REQUEST', 'enrollment needs a token');
    if (mode === 'reattest' && body.token !== undefined) reject('BAD_REQUEST', 'a re-attestation carries no token');

    const existing = this.#challenges.get(this.#byEnrollRequest.get(requestKey(clientId, msg.requestId)) ?? '');
    if (existing && existing.clientId === clientId && existing.expiresAt > now) {
      return { topic: this.#o.topics.enrollment(clientId, 'enrollChallenge'), payload: existing.payload };
    }
    // Keyed by what only the device has, never by what others can know: its token; re-attesting, its
    // EK together with its AK. The EK alone is not enough: anyone can rebuild the EK public from the
    // EK certificate and would drain that device's bucket (found by the simulator's attacks scenario);
    // the AK public appears in no certificate. Junk requests under a device's id or EK cost that device
    // nothing: they land in their own buckets and the global one.
    enforceRateLimit(
      this.#o.limiter,
      body.token !== undefined ? `token:${hashEnrollmentToken(body.token)}` : `ek:${sha256Hex(body.ekPublic)}:ak:${sha256Hex(body.akPublic)}`,
    );

    let tokenHash: string | undefined;
    let token: TokenRecord | undefined;
    let device: (DeviceRecord & { akName: string }) | undefined;
    if (mode === 'token') {
      tokenHash = hashEnrollmentToken(body.token!);
      token = this.#o.inventory.getToken(tokenHash);
      if (!token) return reject('TOKEN_UNKNOWN', 'unknown token');
      if (token.usedAt !== undefined) reject('TOKEN_USED', 'token already used');
      if (token.expiresAt <= now) reject('TOKEN_EXPIRED', 'token expired');
      if (token.deviceId !== deviceId) reject('TOKEN_MISMATCH', 'token belongs to another device');
    } else {
      const found = this.#o.inventory.getDevice(deviceId);
      checkDeviceActive(found);
      device = found;
    }

    const ek = parseWirePublic(body.ekPublic, 'EK_MISMATCH', 'EK public');
    checkEkKind(body.ekKind, ek);
    let ekSpki: Buffer;
    try {
      ekSpki = publicToSpki(ek);
    } catch (e) {
      return reject('EK_MISMATCH', 'EK public area holds no valid key', e);
    }
    if (token && sha256Hex(ekSpki) !== token.ekPublicHash) reject('TOKEN_MISMATCH', 'token is bound to another EK');
    // Re-attestation has no token to blame: an EK other than the registered one is an EK mismatch.
    if (device && sha256Hex(ekSpki) !== device.ekPublicHash) reject('EK_MISMATCH', 'EK is not the one registered for this device');
    const root = this.#ekTrustedAs(body.ekCertificate, ek, device ?? this.#o.inventory.getDevice(deviceId), now);

    const ak = parseWirePublic(body.akPublic, 'AK_INVALID', 'AK public');
    if (device) checkAkMatches(ak, device.akName);
    checkAk(ak);
    const key = parseWirePublic(body.keyPublic, 'CERTIFY_INVALID', 'identity key public');

    const secret = randomBytes(32);
    const nonce = randomBytes(32);
    let credential;
    try {
      credential = makeCredential({ ekPublic: ek, objectName: objectName(ak), credential: secret });
    } catch (e) {
      return reject('EK_MISMATCH', 'cannot make a credential for this EK', e);
    }
    const challengeId = randomBytes(18).toString('base64url');
    const expiresAt = now + (this.#o.challengeTtlMs ?? 120_000);
    const reply = encode('enrollChallenge', msg.requestId, now, {
      challengeId,
      credentialBlob: credential.credentialBlob,
      encryptedSecret: credential.encryptedSecret,
      nonce,
      expiresAt,
    });
    this.#remember({
      challengeId,
      clientId,
      deviceId,
      enrollRequestId: msg.requestId,
      mode,
      tokenHash,
      secret,
      nonce,
      expiresAt,
      ak,
      key,
      csr: body.csr,
      manufacturer: root,
      payload: reply,
    }, now);
    this.#log.info({ deviceId, requestId: msg.requestId, challengeId, mode }, 'enrollment challenge issued');
    return { topic: this.#o.topics.enrollment(clientId, 'enrollChallenge'), payload: reply };
  }

  /**
   * Why this EK is trusted, as recorded with the enrollment (`manufacturer`): the root its certificate
   * chains to. A device that sends no certificate (none in its TPM's NV) is judged by its registration:
   * the certificate the station registered for it (supplied per device), verified again now; or, under
   * the factory-trusted EK policy, the station that recorded its EK, whose hash the token or the device
   * record already pinned. A certificate that is sent is always verified. Nothing to judge by: EK_UNTRUSTED.
   */
  #ekTrustedAs(ekCertificate: Buffer | undefined, ek: TpmPublic, registered: DeviceRecord | undefined, now: number): string {
    if (ekCertificate) return checkEk(ekCertificate, ek, this.#o.ekTrust, now).root;
    if (registered?.ekCertificate !== undefined) return checkEk(Buffer.from(registered.ekCertificate, 'base64'), ek, this.#o.ekTrust, now).root;
    if (registered?.ekTrust !== 'factory') return reject('EK_UNTRUSTED', 'no EK certificate, and none registered for this device');
    checkEkAttributes(ek);
    return `factory-trusted EK (station ${registered.ekTrustedBy ?? 'unknown'})`;
  }

  /** One live challenge per device; expired ones are swept so memory stays bounded. */
  #remember(c: PendingChallenge, now: number): void {
    for (const [id, old] of this.#challenges) {
      if (old.deviceId === c.deviceId || old.expiresAt <= now) this.#forget(id);
    }
    if (this.#challenges.size >= MAX_PENDING) reject('UNAVAILABLE', 'too many enrollments in progress');
    this.#challenges.set(c.challengeId, c);
    this.#byEnrollRequest.set(requestKey(c.clientId, c.enrollRequestId), c.challengeId);
  }

  #forget(challengeId: string): void {
    const c = this.#challenges.get(challengeId);
    if (!c) return;
    this.#challenges.delete(challengeId);
    this.#byEnrollRequest.delete(requestKey(c.clientId, c.enrollRequestId));
  }

  async #proof(clientId: string, payload: Buffer, now: number, attempt: Attempt): Promise<Reply> {
    const msg = decode('enrollProof', payload);
    const body: EnrollProof = msg.body;
    const cached = this.#o.inventory.getResponse(clientId, msg.requestId);
    if (cached) return { topic: cached.topic, payload: Buffer.from(cached.payload, 'base64') };
    // Not rate limited: only enroll is. A proof needs a live challenge from a (limited) enroll and burns
    // it; limiting both steps out of one bucket can starve an honest enrollment.

    // Another client's challenge is unknown to this one (and is not burned by it).
    const c = this.#challenges.get(body.challengeId);
    if (!c || c.clientId !== clientId) return reject('CHALLENGE_UNKNOWN', 'no such challenge for this client');
    const { deviceId } = c;
    attempt.operation = operationOf(c.mode);
    if (c.expiresAt <= now) {
      this.#forget(c.challengeId);
      reject('CHALLENGE_EXPIRED', 'challenge expired');
    }
    // One answer per challenge: a wrong one burns it, so activation cannot be brute-forced.
    this.#forget(c.challengeId);
    checkActivation(c.secret, body.secret);
    checkCertify({ certifyInfo: body.certifyInfo, signature: body.certifySignature, ak: c.ak, key: c.key, nonce: c.nonce });
    const keySpki = checkCsr(c.csr, deviceId, c.key);
    return c.mode === 'token' ? this.#completeEnrollment(c, keySpki, msg.requestId, now) : this.#completeReattestation(c, keySpki, msg.requestId, now);
  }

  async #completeEnrollment(c: PendingChallenge, keySpki: Buffer, requestId: string, now: number): Promise<Reply> {
    const { deviceId } = c;
    const token = this.#o.inventory.getToken(c.tokenHash!);
    if (!token || token.usedAt !== undefined) reject('TOKEN_USED', 'token already used');
    const device = this.#o.inventory.getDevice(deviceId);
    if (!device) return reject('TOKEN_UNKNOWN', 'device is not registered');
    const decision = this.#o.policy.decide({ kind: 'enroll', device, manufacturer: c.manufacturer, now });
    if (!decision.allow) return reject('POLICY_DENIED', decision.reason);

    const out = await this.#issue(c, keySpki, decision.constraints, requestId, now);
    const akName = objectName(c.ak).toString('hex');
    await this.#o.inventory.completeEnrollment({
      tokenHash: c.tokenHash!,
      requestId,
      deviceId,
      akName,
      certificate: { ...out.certificate, kind: 'enroll' },
      response: out.response,
      audit: [
        { at: now, type: 'enrollment.accepted', deviceId, details: { serial: out.certificate.serial, akName, manufacturer: c.manufacturer } },
        { at: now, type: 'token.consumed', deviceId },
      ],
      at: now,
    });
    this.#o.metrics?.result('enroll', 'ok');
    this.#log.info({ deviceId, serial: out.certificate.serial, notAfter: new Date(out.certificate.notAfter).toISOString() }, 'device enrolled');
    return out.reply;
  }

  async #completeReattestation(c: PendingChallenge, keySpki: Buffer, requestId: string, now: number): Promise<Reply> {
    const { deviceId } = c;
    // The device may have been revoked while it answered the challenge.
    const device = this.#o.inventory.getDevice(deviceId);
    checkDeviceActive(device);
    const decision = this.#o.policy.decide({ kind: 'reattest', device, manufacturer: c.manufacturer, now });
    if (!decision.allow) return reject('POLICY_DENIED', decision.reason);

    const out = await this.#issue(c, keySpki, decision.constraints, requestId, now);
    await this.#o.inventory.completeReattestation({
      requestId,
      deviceId,
      certificate: { ...out.certificate, kind: 'reattest' },
      response: out.response,
      audit: [
        {
          at: now,
          type: 'device.reattested',
          deviceId,
          details: { serial: out.certificate.serial, akName: device.akName, manufacturer: c.manufacturer, previousSerial: device.certSerial ?? '' },
        },
      ],
      at: now,
    });
    this.#o.metrics?.result('reattest', 'ok');
    this.#log.info({ deviceId, serial: out.certificate.serial, notAfter: new Date(out.certificate.notAfter).toISOString() }, 'device re-attested');
    return out.reply;
  }

  /** Issues the certificate and builds the accepted reply and its inventory records (not yet written). */
  async #issue(c: PendingChallenge, keySpki: Buffer, constraints: IssuanceConstraints, requestId: string, now: number) {
    const { deviceId } = c;
    const issued = await this.#o.issuer.issue({
      deviceId,
      publicKeySpki: keySpki,
      lifetimeSec: constraints.lifetimeSec,
      backdateSec: constraints.backdateSec,
      trustDomain: constraints.trustDomain,
    });
    this.#o.metrics?.issued(operationOf(c.mode), (this.#o.clock.now() - now) / 1000);
    const pem = toPem(issued.certificateDer, 'CERTIFICATE');
    const topic = this.#o.topics.enrollment(c.clientId, 'enrollAccepted');
    const payload = encode('enrollAccepted', requestId, now, {
      deviceId,
      certificate: pem,
      chain: [...this.#o.chainPems],
      trustBundle: [...this.#o.trustBundlePems],
      serial: issued.serialNumber,
      notAfter: issued.notAfter.getTime(),
    });
    const certificate: CertificateRecord = {
      serial: issued.serialNumber,
      deviceId,
      notBefore: issued.notBefore.getTime(),
      notAfter: issued.notAfter.getTime(),
      issuedAt: now,
      pem,
      keySpkiHash: sha256Hex(keySpki),
    };
    const response: CachedResponse = { requestId, deviceId, requester: c.clientId, topic, payload: payload.toString('base64'), storedAt: now };
    return { certificate, response, reply: { topic, payload } satisfies Reply };
  }
}

interface Attempt {
  operation: CertificateOperation;
}

const operationOf = (mode: 'token' | 'reattest'): CertificateOperation => (mode === 'reattest' ? 'reattest' : 'enroll');

/** The requestId of a payload we may not be able to validate, for addressing the rejection. */
export function peekRequestId(payload: Buffer): string {
  if (payload.length <= 64 * 1024) {
    try {
      const v = (JSON.parse(payload.toString('utf8')) as { requestId?: unknown }).requestId;
      if (typeof v === 'string' && /^[A-Za-z0-9_-]{8,64}$/.test(v)) return v;
    } catch {
      // not JSON: answered with BAD_REQUEST under a placeholder id
    }
  }
  return 'unknown0';
}

