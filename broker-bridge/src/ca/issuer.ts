import { createHash, randomFillSync } from 'node:crypto';
import type { Clock } from '../../../common/clock.js';
import { samePublicKey, type CaBackend } from './ca-backend.js';
import { parseIssuingCa, type IssuingCaInfo } from './ca-cert.js';
import { toPem } from '../../../common/der.js';
import {
  DEVICE_ID_PATTERN,
  DeviceProfile,
  SERIAL_BYTES,
  TRUST_DOMAIN_PATTERN,
  assembleSigned,
  spiffeIdFor,
} from './device-profile.js';
import { CaError } from './errors.js';
import { classifyEcSpki, isOnCurve } from './spki.js';

/**
 * A request that has already been verified (CSR signature, or TPM key certification) and whose
 * constraints (lifetime, backdate, trust domain) were decided by the enrollment policy.
 */
export interface IssueRequest {
  readonly deviceId: string;
  /** DER SubjectPublicKeyInfo of the device key: EC P-256 or P-384, uncompressed point. */
  readonly publicKeySpki: Buffer;
  /** Explicit start of validity; when absent, now - backdateSec. */
  readonly notBefore?: Date;
  readonly lifetimeSec: number;
  readonly backdateSec: number;
  readonly trustDomain: string;
}

export interface IssueResponse {
  readonly certificateDer: Buffer;
  /** Lowercase hex of the serial number's magnitude (32 digits, 128 bits). */
  readonly serialNumber: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly spiffeId: string;
}

export interface CertificateIssuerOptions {
  readonly backend: CaBackend;
  /** The issuing CA certificate (DER or PEM); its key must be the backend's key. */
  readonly issuingCertificate: Buffer | string;
  readonly clock: Clock;
  /** The one trust domain this CA issues for. */
  readonly trustDomain: string;
  /** Hard ceilings, whatever the policy asks for. */
  readonly maxLifetimeSec?: number;
  readonly maxBackdateSec?: number;
}

const DEFAULT_MAX_LIFETIME_SEC = 366 * 86_400;
const DEFAULT_MAX_BACKDATE_SEC = 3_600;

/** Serials come from a pooled CSPRNG buffer; each 16-byte slice is handed out once. */
const SERIAL_POOL_BYTES = SERIAL_BYTES * 256;

export class CertificateIssuer {
  readonly issuingCa: IssuingCaInfo;
  /** PEM of the issuing CA certificate, for building chains sent to devices. */
  readonly issuingCertificatePem: string;
  readonly #backend: CaBackend;
  readonly #clock: Clock;
  readonly #trustDomain: string;
  readonly #maxLifetimeSec: number;
  readonly #maxBackdateSec: number;
  readonly #profile: DeviceProfile;
  readonly #serialPool = Buffer.allocUnsafe(SERIAL_POOL_BYTES);
  #serialOffset = SERIAL_POOL_BYTES;

  constructor(opts: CertificateIssuerOptions) {
    this.issuingCa = parseIssuingCa(opts.issuingCertificate);
    this.issuingCertificatePem = toPem(this.issuingCa.certificateDer, 'CERTIFICATE');
    if (!samePublicKey(this.issuingCa.publicKey, opts.backend.publicKey())) {
      throw new CaError('CA_CONFIG_INVALID', 'issuing CA certificate does not match the backend key');
    }
    if (!TRUST_DOMAIN_PATTERN.test(opts.trustDomain)) {
      throw new CaError('CA_CONFIG_INVALID', `invalid trust domain ${JSON.stringify(opts.trustDomain)}`);
    }
    this.#backend = opts.backend;
    this.#clock = opts.clock;
    this.#trustDomain = opts.trustDomain;
    this.#maxLifetimeSec = opts.maxLifetimeSec ?? DEFAULT_MAX_LIFETIME_SEC;
    this.#maxBackdateSec = opts.maxBackdateSec ?? DEFAULT_MAX_BACKDATE_SEC;
    this.#profile = new DeviceProfile(this.issuingCa);
  }

  get trustDomain(): string {
    return this.#trustDomain;
  }

  async issue(req: IssueRequest): Promise<IssueResponse> {
    const { deviceId, trustDomain, lifetimeSec, backdateSec } = req;
    if (typeof deviceId !== 'string' || !DEVICE_ID_PATTERN.test(deviceId)) {
      throw new CaError('CA_BAD_REQUEST', 'deviceId must match [A-Za-z0-9._-]{1,64}');
    }
    if (typeof trustDomain !== 'string' || !TRUST_DOMAIN_PATTERN.test(trustDomain)) {
      throw new CaError('CA_BAD_REQUEST', 'invalid trust domain');
    }
    if (trustDomain !== this.#trustDomain) {
      throw new CaError('CA_POLICY_DENIED', `this CA does not issue for trust domain ${trustDomain}`);
    }
    if (!Number.isSafeInteger(lifetimeSec) || lifetimeSec <= 0) {
      throw new CaError('CA_BAD_REQUEST', 'lifetimeSec must be a positive integer');
    }
    if (!Number.isSafeInteger(backdateSec) || backdateSec < 0) {
      throw new CaError('CA_BAD_REQUEST', 'backdateSec must be a non-negative integer');
    }
    if (lifetimeSec > this.#maxLifetimeSec) {
      throw new CaError('CA_POLICY_DENIED', `lifetime ${lifetimeSec}s exceeds the CA maximum ${this.#maxLifetimeSec}s`);
    }
    if (backdateSec > this.#maxBackdateSec) {
      throw new CaError('CA_POLICY_DENIED', `backdate ${backdateSec}s exceeds the CA maximum ${this.#maxBackdateSec}s`);
    }

    const now = this.#clock.now();
    let notBefore: number;
    if (req.notBefore !== undefined) {
      notBefore = req.notBefore instanceof Date ? req.notBefore.getTime() : NaN;
      if (!Number.isFinite(notBefore)) throw new CaError('CA_BAD_REQUEST', 'notBefore is not a valid date');
      if (notBefore < now - this.#maxBackdateSec * 1000) {
        throw new CaError('CA_POLICY_DENIED', 'notBefore lies further in the past than the CA allows');
      }
    } else {
      notBefore = now - backdateSec * 1000;
    }
    // X.509 times have whole seconds; truncate before adding so notAfter - notBefore == lifetime exactly.
    notBefore = Math.floor(notBefore / 1000) * 1000;
    const notAfter = notBefore + lifetimeSec * 1000;
    if (notAfter > this.issuingCa.notAfter) {
      throw new CaError('CA_POLICY_DENIED', 'certificate would outlive the issuing CA');
    }

    const { spki, publicKeyBits } = checkSpki(req.publicKeySpki);
    const spiffeId = spiffeIdFor(trustDomain, deviceId);
    const serial = this.#nextSerial();
    const tbs = this.#profile.encodeTbs({
      serial,
      notBefore,
      notAfter,
      deviceId,
      uri: spiffeId,
      spki,
      subjectKeyId: createHash('sha1').update(publicKeyBits).digest(), // RFC 5280 method 1
    });

    let signature: Buffer;
    try {
      ({ signature } = await this.#backend.sign({ tbs }));
    } catch (e) {
      if (e instanceof CaError) throw e;
      throw new CaError('CA_BACKEND_FAILED', 'CA backend failed to sign', { cause: e });
    }
    return {
      certificateDer: assembleSigned(tbs, signature),
      serialNumber: serial.toString('hex'),
      notBefore: new Date(notBefore),
      notAfter: new Date(notAfter),
      spiffeId,
    };
  }

  #nextSerial(): Buffer {
    if (this.#serialOffset + SERIAL_BYTES > SERIAL_POOL_BYTES) {
      randomFillSync(this.#serialPool);
      this.#serialOffset = 0;
    }
    const serial = Buffer.from(this.#serialPool.subarray(this.#serialOffset, this.#serialOffset + SERIAL_BYTES));
    this.#serialPool.fill(0, this.#serialOffset, this.#serialOffset + SERIAL_BYTES);
    this.#serialOffset += SERIAL_BYTES;
    // Top bit on: the value is exactly 128 bits long, never zero, and positive after the 0x00 prefix.
    serial[0] = (serial[0] as number) | 0x80;
    return serial;
  }
}

/** Canonical EC SPKI with the point on the curve; see spki.ts for why not createPublicKey. */
function checkSpki(spki: unknown): { spki: Buffer; publicKeyBits: Buffer } {
  if (!Buffer.isBuffer(spki)) throw new CaError('CA_BAD_REQUEST', 'publicKeySpki must be a Buffer');
  const k = classifyEcSpki(spki);
  if (!k) throw new CaError('CA_BAD_REQUEST', 'publicKeySpki must be an EC P-256/P-384 key with an uncompressed point');
  if (!isOnCurve(k)) throw new CaError('CA_BAD_REQUEST', 'publicKeySpki point is not on the curve');
  return { spki, publicKeyBits: k.point };
}
