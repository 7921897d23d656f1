import { createPublicKey, type KeyObject } from 'node:crypto';

/**
 * Device public keys. Only the canonical named-curve encodings with an uncompressed point are
 * accepted, so a byte comparison classifies them and the certificate/SKI for a key is deterministic.
 *
 * Why not crypto.createPublicKey on the DER: in Node 20 (OpenSSL 3 decoders) that costs ~200 µs,
 * more than the ECDSA verify and sign of an issuance together. The JWK route (~90 µs) is used where a
 * KeyObject is needed (CSR verify); where only validity is needed, an on-curve check in BigInt (~3 µs)
 * is enough, since P-256 and P-384 have cofactor 1 (every affine point on the curve has order n).
 */

export type DeviceCurve = 'P-256' | 'P-384';

interface CurveForm {
  readonly curve: DeviceCurve;
  readonly prefix: Buffer;
  readonly coordLen: number;
  readonly p: bigint;
  readonly b: bigint;
}

const FORMS: readonly CurveForm[] = [
  {
    curve: 'P-256',
    prefix: Buffer.from('3059301306072a8648ce3d020106082a8648ce3d030107034200', 'hex'),
    coordLen: 32,
    p: 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffffn,
    b: 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn,
  },
  {
    curve: 'P-384',
    prefix: Buffer.from('3076301006072a8648ce3d020106052b81040022036200', 'hex'),
    coordLen: 48,
    p: 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffffn,
    b: 0xb3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aefn,
  },
];

export interface EcSpki {
  readonly curve: DeviceCurve;
  /** subjectPublicKey BIT STRING value without the unused-bits byte: 0x04 || X || Y. */
  readonly point: Buffer;
  readonly x: Buffer;
  readonly y: Buffer;
}

/** Structure check only (no curve arithmetic). */
export function classifyEcSpki(spki: Buffer): EcSpki | undefined {
  for (const f of FORMS) {
    if (spki.length !== f.prefix.length + 1 + 2 * f.coordLen) continue;
    if (spki.compare(f.prefix, 0, f.prefix.length, 0, f.prefix.length) !== 0) continue;
    const point = spki.subarray(f.prefix.length);
    if (point[0] !== 0x04) return undefined;
    return { curve: f.curve, point, x: point.subarray(1, 1 + f.coordLen), y: point.subarray(1 + f.coordLen) };
  }
  return undefined;
}

/** y² = x³ - 3x + b (mod p), with 0 <= x, y < p. */
export function isOnCurve(k: EcSpki): boolean {
  const f = FORMS.find((c) => c.curve === k.curve) as CurveForm;
  const x = BigInt('0x' + k.x.toString('hex'));
  const y = BigInt('0x' + k.y.toString('hex'));
  if (x >= f.p || y >= f.p) return false;
  return (y * y - (x * x * x - 3n * x + f.b)) % f.p === 0n;
}

/** KeyObject via JWK (validates the point). Throws on an invalid point. */
export function ecKeyObject(k: EcSpki): KeyObject {
  return createPublicKey({
    key: { kty: 'EC', crv: k.curve, x: k.x.toString('base64url'), y: k.y.toString('base64url') },
    format: 'jwk',
  });
}
