import { createPublicKey, type KeyObject } from 'node:crypto';
import { CaError } from './errors.js';

/**
 * A CA signing key. It only signs: what gets signed (profile, constraints, validity) is decided by
 * the issuance pipeline above it, so a backend never sees a certificate field.
 */
export interface CaBackend {
  readonly kind: 'file' | 'pkcs11';
  readonly algorithm: 'ECDSA-P256-SHA256';
  /** The CA public key (P-256). */
  publicKey(): KeyObject;
  sign(req: SignRequest): Promise<SignResponse>;
  /** Waits for in-flight signatures, then releases the key. Further `sign` calls fail. */
  close(): Promise<void>;
}

export interface SignRequest {
  /**
   * The exact DER bytes to be signed (a TBSCertificate or TBSCertList). The backend hashes them with
   * SHA-256 itself, so a caller cannot get an arbitrary digest signed without also supplying its preimage.
   */
  readonly tbs: Buffer;
}

export interface SignResponse {
  /** DER Ecdsa-Sig-Value (SEQUENCE { r INTEGER, s INTEGER }), as it goes into the BIT STRING. */
  readonly signature: Buffer;
}

/** AlgorithmIdentifier ecdsa-with-SHA256 (1.2.840.10045.4.3.2), parameters absent (RFC 5758). */
export const ECDSA_WITH_SHA256_ALGID = Buffer.from('300a06082a8648ce3d040302', 'hex');

/** DER of the namedCurve OID prime256v1, as it appears in CKA_EC_PARAMS and the SPKI. */
export const P256_OID_DER = Buffer.from('06082a8648ce3d030107', 'hex');

/** SPKI header for an uncompressed P-256 point: everything before the 65-byte point. */
const P256_SPKI_PREFIX = Buffer.from('3059301306072a8648ce3d020106082a8648ce3d030107034200', 'hex');

export function p256SpkiFromPoint(point: Buffer): Buffer {
  if (point.length !== 65 || point[0] !== 0x04) {
    throw new CaError('CA_CONFIG_INVALID', 'expected an uncompressed P-256 point');
  }
  return Buffer.concat([P256_SPKI_PREFIX, point]);
}

export function assertP256(key: KeyObject, what: string): void {
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new CaError('CA_CONFIG_INVALID', `${what} must be an EC P-256 key`);
  }
}

/** PKCS#11 CKM_ECDSA returns r||s (each zero-padded to the field size); X.509 wants DER. */
export function rawEcdsaToDer(raw: Buffer): Buffer {
  if (raw.length === 0 || raw.length % 2 !== 0) throw new CaError('CA_BACKEND_FAILED', 'malformed raw ECDSA signature');
  const half = raw.length / 2;
  const r = derIntContent(raw, 0, half);
  const s = derIntContent(raw, half, raw.length);
  const rl = r.end - r.start + r.pad;
  const sl = s.end - s.start + s.pad;
  const body = 2 + rl + 2 + sl;
  // Short-form length suffices up to P-384 (body <= 102 bytes); P-521 is not a supported CA curve.
  if (body >= 0x80) throw new CaError('CA_BACKEND_FAILED', 'signature too long for this encoder');
  const out = Buffer.allocUnsafe(2 + body);
  let o = 0;
  out[o++] = 0x30;
  out[o++] = body;
  out[o++] = 0x02;
  out[o++] = rl;
  if (r.pad) out[o++] = 0;
  o += raw.copy(out, o, r.start, r.end);
  out[o++] = 0x02;
  out[o++] = sl;
  if (s.pad) out[o++] = 0;
  raw.copy(out, o, s.start, s.end);
  return out;
}

function derIntContent(buf: Buffer, start: number, end: number): { start: number; end: number; pad: number } {
  while (start < end - 1 && buf[start] === 0) start++;
  return { start, end, pad: ((buf[start] as number) & 0x80) !== 0 ? 1 : 0 };
}

/** Byte-exact comparison of two public keys via their SPKI DER. */
export function samePublicKey(a: KeyObject, b: KeyObject): boolean {
  const da = a.export({ type: 'spki', format: 'der' });
  const db = b.export({ type: 'spki', format: 'der' });
  return da.equals(db);
}

export function publicKeyFromSpki(spki: Buffer): KeyObject {
  return createPublicKey({ key: spki, format: 'der', type: 'spki' });
}
