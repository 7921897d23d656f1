import { randomBytes } from 'node:crypto';
import type { Clock } from '../../../common/clock.js';
import { toPem } from '../../../common/der.js';
import { decode, encode, type RotateRequest } from '../../../common/protocol/messages.js';
import { SchemaError } from '../../../common/protocol/schema.js';
import type { Topics } from '../../../common/protocol/topics.js';
import type { CertificateIssuer } from '../ca/issuer.js';
import { peekRequestId, type EnrollmentLogger } from '../enrollment/enrollment-service.js';
import { enforceRateLimit, InFlight, rejectionReply, type Reply } from '../enrollment/request-handling.js';
import {
  EnrollmentRejection,
  checkAk,
  checkAkMatches,
  checkCertify,
  checkCsr,
  checkCurrentCertificate,
  checkDeviceActive,
  checkKeyIsNew,
  parseWirePublic,
  reject,
  sha256Hex,
} from '../enrollment/evidence.js';
import type { EnrollmentPolicy } from '../enrollment/policy.js';
import type { RateLimiter } from '../enrollment/rate-limiter.js';
import { InventoryError, type CertificateRecord, type DeviceRecord, type Inventory } from '../inventory/inventory.js';
import type { RequestMetrics } from '../metrics/request-metrics.js';

/**
 * The bridge's rotation handler: an enrolled device, over its own mutual-TLS session, gets a new
 * certificate for a new TPM key that the AK recorded at enrollment certified over a fresh nonce. The
 * device id is the topic's, which the broker authenticated by the certificate CN.
 *
 * rotate/begin → rotate/challenge | rotate/rejected. Checks, first failure wins: schema and body
 * deviceId = topic id (BAD_REQUEST); rate limit (RATE_LIMITED); device registered (DEVICE_UNKNOWN),
 * enrolled (NOT_ENROLLED), not revoked (DEVICE_REVOKED); currentSerial is a certificate of this device
 * (IDENTITY_UNKNOWN), not revoked (DEVICE_REVOKED), not superseded (IDENTITY_UNKNOWN), unexpired by the
 * bridge clock (IDENTITY_EXPIRED). Then a fresh 32-byte nonce under a new rotationId; one live rotation
 * per device (a new begin replaces the old).
 *
 * rotate/request → rotate/accepted | rotate/rejected: schema; rotation known and this device's
 * (CHALLENGE_UNKNOWN), unexpired (CHALLENGE_EXPIRED); the rotation is burned by its first answer,
 * whatever it is; device and current certificate still active (as at begin); AK parses (AK_INVALID),
 * is the enrollment AK by Name (AK_MISMATCH) and acceptable (AK_INVALID); TPM2_Certify of the new key by
 * that AK over the nonce (CERTIFY_INVALID); CSR signed by that key for this device (CSR_INVALID,
 * CSR_KEY_MISMATCH); the key differs from every key this device was ever certified for (CSR_INVALID);
 * policy (POLICY_DENIED) → issue, and record it atomically with the cached answer and audit.
 *
 * rotate/confirm → rotate/confirmed | rotate/rejected: schema; device registered and not revoked;
 * `serial` is this device's, not revoked, not superseded, unexpired → its other certificates are
 * superseded. Idempotent (a repeat supersedes nothing more).
 *
 * Idempotent by (device, requestId) for every kind: a repeated requestId gets the first answer —
 * begin from the live rotation, request from the inventory's response cache (certificates) or the
 * burned rotation (rejections), confirm from the response cache. Nothing is written to the inventory
 * unless a certificate is issued or a confirm retires one. Handler failures become coded rejections;
 * internals go to the log only (INTERNAL, retryable after retryAfterSec).
 */
export interface RotationServiceOptions {
  readonly inventory: Inventory;
  readonly issuer: CertificateIssuer;
  readonly policy: EnrollmentPolicy;
  readonly clock: Clock;
  readonly topics: Topics;
  /** Issuing chain sent with each certificate (issuer first). */
  readonly chainPems: readonly string[];
  /** Roots devices should trust. */
  readonly trustBundlePems: readonly string[];
  readonly limiter?: RateLimiter;
  /** How long a rotation nonce may be answered; default 120 000 ms. */
  readonly rotationTtlMs?: number;
  readonly logger?: EnrollmentLogger;
  /** Outcomes (by code) and issuance latency of rotations; a refused confirm is not counted (the rotation already ended). */
  readonly metrics?: RequestMetrics;
}

interface LiveRotation {
  readonly rotationId: string;
  readonly deviceId: string;
  readonly beginRequestId: string;
  readonly currentSerial: string;
  readonly nonce: Buffer;
  readonly expiresAt: number;
  /** The exact challenge payload, resent for a repeated begin. */
  readonly payload: Buffer;
  /** Set by the first answer: the nonce is spent; a repeat of that answer gets the same reply. */
  answered?: { readonly requestId: string; readonly reply: Promise<Reply> };
}

type Kind = 'rotateBegin' | 'rotateRequest' | 'rotateConfirm';

const MAX_LIVE = 50_000;
const DEFAULT_TTL_MS = 120_000;
const INTERNAL_RETRY_SEC = 5;
const noopLogger: EnrollmentLogger = { info() {}, warn() {}, error() {} };

export class RotationService {
  readonly #o: RotationServiceOptions;
  readonly #log: EnrollmentLogger;
  /**
   * rotationId → rotation, in creation order (a constant TTL makes that expiry order, so sweeping
   * stops at the first live one); at most one per device.
   */
  readonly #rotations = new Map<string, LiveRotation>();
  readonly #byDevice = new Map<string, string>();
  readonly #inFlight = new InFlight();

  constructor(options: RotationServiceOptions) {
    this.#o = options;
    this.#log = options.logger ?? noopLogger;
  }

  /** Subscription filters this service needs. */
  filters(): string[] {
    return [this.#o.topics.allDevices('rotateBegin'), this.#o.topics.allDevices('rotateRequest'), this.#o.topics.allDevices('rotateConfirm')];
  }

  /** Live rotations held in memory (bounded by MAX_LIVE; expired ones are swept). */
  get liveRotations(): number {
    return this.#rotations.size;
  }

  /** Handles one incoming message; undefined when the topic is not ours (nothing to answer). */
  async handle(topic: string, payload: Buffer): Promise<Reply | undefined> {
    const parsed = this.#o.topics.parseDevice(topic);
    if (!parsed || (parsed.topic !== 'rotateBegin' && parsed.topic !== 'rotateRequest' && parsed.topic !== 'rotateConfirm')) return undefined;
    const { deviceId } = parsed;
    const requestId = peekRequestId(payload);
    const kind = parsed.topic;
    return this.#inFlight.run(`${deviceId}\x00${kind}\x00${requestId}`, () => this.#run(kind, deviceId, requestId, payload));
  }

  async #run(kind: Kind, deviceId: string, requestId: string, payload: Buffer): Promise<Reply> {
    const now = this.#o.clock.now();
    try {
      if (kind === 'rotateBegin') return this.#begin(deviceId, payload, now);
      if (kind === 'rotateRequest') return await this.#request(deviceId, payload, now);
      return await this.#confirm(deviceId, payload, now);
    } catch (e) {
      const r = this.#asRejection(e, { deviceId, kind, requestId });
      if (kind !== 'rotateConfirm') this.#o.metrics?.result('rotate', r.code);
      return this.#rejection(deviceId, requestId, now, r);
    }
  }

  #rejection(deviceId: string, requestId: string, now: number, r: EnrollmentRejection): Reply {
    return rejectionReply(this.#o.topics.device(deviceId, 'rotateRejected'), requestId, now, r);
  }

  #asRejection(e: unknown, ctx: Record<string, string>): EnrollmentRejection {
    if (e instanceof EnrollmentRejection) {
      this.#log.warn({ ...ctx, code: e.code, reason: e.message }, 'rotation request rejected');
      return e;
    }
    if (e instanceof SchemaError) {
      this.#log.warn({ ...ctx, code: 'BAD_REQUEST', schemaCode: e.code, path: e.path }, 'malformed rotation message');
      return new EnrollmentRejection('BAD_REQUEST', e.message);
    }
    // The inventory re-checks under its write lock: a revocation or a newer rotation can win the race.
    if (e instanceof InventoryError && e.code === 'INVENTORY_REVOKED') return new EnrollmentRejection('DEVICE_REVOKED', 'device is revoked');
    if (e instanceof InventoryError && e.code === 'INVENTORY_CONFLICT' && ctx.kind === 'rotateConfirm') {
      return new EnrollmentRejection('IDENTITY_UNKNOWN', 'certificate was superseded');
    }
    this.#log.error({ ...ctx, err: e }, 'rotation handler failed');
    return new EnrollmentRejection('INTERNAL', 'internal error', { retryAfterSec: INTERNAL_RETRY_SEC });
  }

  /** The device and the certificate it rotates from are still in good standing. */
  #active(deviceId: string, serial: string, now: number): { device: DeviceRecord & { akName: string }; current: CertificateRecord } {
    const device = this.#o.inventory.getDevice(deviceId);
    checkDeviceActive(device);
    const current = checkCurrentCertificate(this.#o.inventory.getCertificate(serial), deviceId, now);
    return { device, current };
  }

  #begin(deviceId: string, payload: Buffer, now: number): Reply {
    const msg = decode('rotateBegin', payload);
    if (msg.body.deviceId !== deviceId) reject('BAD_REQUEST', 'deviceId differs from the topic the broker authenticated');
    const topic = this.#o.topics.device(deviceId, 'rotateChallenge');
    const live = this.#rotations.get(this.#byDevice.get(deviceId) ?? '');
    if (live && live.beginRequestId === msg.requestId && live.expiresAt > now) return { topic, payload: live.payload };
    enforceRateLimit(this.#o.limiter, deviceId);
    this.#active(deviceId, msg.body.currentSerial, now);

    const rotationId = randomBytes(18).toString('base64url');
    const nonce = randomBytes(32);
    const expiresAt = now + (this.#o.rotationTtlMs ?? DEFAULT_TTL_MS);
    const reply = encode('rotateChallenge', msg.requestId, now, { rotationId, nonce, expiresAt });
    this.#remember(
      { rotationId, deviceId, beginRequestId: msg.requestId, currentSerial: msg.body.currentSerial, nonce, expiresAt, payload: reply },
      now,
    );
    this.#log.info({ deviceId, requestId: msg.requestId, rotationId, currentSerial: msg.body.currentSerial }, 'rotation challenge issued');
    return { topic, payload: reply };
  }

  #remember(r: LiveRotation, now: number): void {
    this.#forget(this.#byDevice.get(r.deviceId));
    for (const [id, old] of this.#rotations) {
      if (old.expiresAt > now) break;
      this.#forget(id);
    }
    if (this.#rotations.size >= MAX_LIVE) reject('UNAVAILABLE', 'too many rotations in progress');
    this.#rotations.set(r.rotationId, r);
    this.#byDevice.set(r.deviceId, r.rotationId);
  }

  #forget(rotationId: string | undefined): void {
    const r = rotationId === undefined ? undefined : this.#rotations.get(rotationId);
    if (!r) return;
    this.#rotations.delete(r.rotationId);
    if (this.#byDevice.get(r.deviceId) === r.rotationId) this.#byDevice.delete(r.deviceId);
  }

  async #request(deviceId: string, payload: Buffer, now: number): Promise<Reply> {
    const msg = decode('rotateRequest', payload);
    const body = msg.body;
    const cached = this.#o.inventory.getResponse(deviceId, msg.requestId);
    if (cached) return { topic: cached.topic, payload: Buffer.from(cached.payload, 'base64') };
    const r = this.#rotations.get(body.rotationId);
    // Another device's rotation is unknown to this one (and is not burned by it).
    if (!r || r.deviceId !== deviceId) return reject('CHALLENGE_UNKNOWN', 'no such rotation for this device');
    if (r.answered) {
      if (r.answered.requestId === msg.requestId) return r.answered.reply;
      return reject('CHALLENGE_UNKNOWN', 'rotation nonce already answered');
    }
    // Not rate limited: only begin is. A request needs a live nonce from a (limited) begin and burns it,
    // and limiting both steps out of one bucket can starve the exchange (begin takes the last token,
    // request is refused, the retry begins again...).
    if (r.expiresAt <= now) {
      this.#forget(r.rotationId);
      return reject('CHALLENGE_EXPIRED', 'rotation expired');
    }
    // One answer per nonce, whatever it is: marked before the first await, so a concurrent answer under
    // another requestId finds it spent, and a repeat of this one gets the same reply.
    const reply = this.#verified(deviceId, r, msg.requestId, body, now).catch((e: unknown) => {
      const rejection = this.#asRejection(e, { deviceId, kind: 'rotateRequest', requestId: msg.requestId });
      this.#o.metrics?.result('rotate', rejection.code);
      return this.#rejection(deviceId, msg.requestId, now, rejection);
    });
    r.answered = { requestId: msg.requestId, reply };
    return reply;
  }

  async #verified(deviceId: string, r: LiveRotation, requestId: string, body: RotateRequest, now: number): Promise<Reply> {
    const { device, current } = this.#active(deviceId, r.currentSerial, now);
    const ak = parseWirePublic(body.akPublic, 'AK_INVALID', 'AK public');
    checkAkMatches(ak, device.akName);
    checkAk(ak);
    const key = parseWirePublic(body.keyPublic, 'CERTIFY_INVALID', 'new key public');
    checkCertify({ certifyInfo: body.certifyInfo, signature: body.certifySignature, ak, key, nonce: r.nonce });
    const keySpki = checkCsr(body.csr, deviceId, key);
    checkKeyIsNew(keySpki, this.#o.inventory.listCertificates(deviceId));
    const decision = this.#o.policy.decide({ kind: 'rotate', device, current, now });
    if (!decision.allow) return reject('POLICY_DENIED', decision.reason);

    const issued = await this.#o.issuer.issue({
      deviceId,
      publicKeySpki: keySpki,
      lifetimeSec: decision.constraints.lifetimeSec,
      backdateSec: decision.constraints.backdateSec,
      trustDomain: decision.constraints.trustDomain,
    });
    this.#o.metrics?.issued('rotate', (this.#o.clock.now() - now) / 1000);
    const pem = toPem(issued.certificateDer, 'CERTIFICATE');
    const topic = this.#o.topics.device(deviceId, 'rotateAccepted');
    const payload = encode('rotateAccepted', requestId, now, {
      deviceId,
      certificate: pem,
      chain: [...this.#o.chainPems],
      trustBundle: [...this.#o.trustBundlePems],
      serial: issued.serialNumber,
      notAfter: issued.notAfter.getTime(),
    });
    await this.#o.inventory.completeRotation({
      deviceId,
      requestId,
      previousSerial: current.serial,
      certificate: {
        serial: issued.serialNumber,
        deviceId,
        notBefore: issued.notBefore.getTime(),
        notAfter: issued.notAfter.getTime(),
        issuedAt: now,
        pem,
        keySpkiHash: sha256Hex(keySpki),
        kind: 'rotate',
      },
      response: { requestId, deviceId, topic, payload: payload.toString('base64'), storedAt: now },
      audit: [
        {
          at: now,
          type: 'rotation.issued',
          deviceId,
          details: { serial: issued.serialNumber, previousSerial: current.serial, rotationId: r.rotationId },
        },
      ],
      at: now,
    });
    this.#o.metrics?.result('rotate', 'ok');
    this.#log.info({ deviceId, serial: issued.serialNumber, previousSerial: current.serial, notAfter: issued.notAfter.toISOString() }, 'rotation certificate issued');
    return { topic, payload };
  }

  async #confirm(deviceId: string, payload: Buffer, now: number): Promise<Reply> {
    const msg = decode('rotateConfirm', payload);
    const cached = this.#o.inventory.getResponse(deviceId, msg.requestId);
    if (cached) return { topic: cached.topic, payload: Buffer.from(cached.payload, 'base64') };
    // Not rate limited (see #request): idempotent, and it writes only when it retires a certificate.
    const device = this.#o.inventory.getDevice(deviceId);
    if (!device) return reject('DEVICE_UNKNOWN', 'device is not registered');
    if (device.revokedAt !== undefined) reject('DEVICE_REVOKED', 'device is revoked');
    checkCurrentCertificate(this.#o.inventory.getCertificate(msg.body.serial), deviceId, now);

    const superseded = await this.#o.inventory.confirmRotation(deviceId, msg.body.serial, now);
    const topic = this.#o.topics.device(deviceId, 'rotateConfirmed');
    // A device has at most a handful of active certificates; the schema caps the list at 16.
    const reply = encode('rotateConfirmed', msg.requestId, now, { serial: msg.body.serial, superseded: superseded.slice(0, 16) });
    await this.#o.inventory.putResponse({ requestId: msg.requestId, deviceId, topic, payload: reply.toString('base64'), storedAt: now });
    this.#log.info({ deviceId, serial: msg.body.serial, previousSerial: msg.body.previousSerial, superseded }, 'rotation confirmed');
    return { topic, payload: reply };
  }
}
