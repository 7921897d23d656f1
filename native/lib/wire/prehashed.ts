import { constants as cryptoConstants, createHash, publicDecrypt, type KeyObject } from 'node:crypto';
import type { HashName } from './constants.js';

/**
 * Signature checks over a digest the caller already has (what TPM2_Sign signed). node:crypto cannot do
 * this itself: crypto.verify always hashes its input (with `null` it picks the key's default hash, so a
 * digest gets hashed again), and WebCrypto likewise. So: ECDSA is checked with the curve arithmetic
 * below, RSA signatures are opened with the public key (publicDecrypt) and their padding checked here.
 * All inputs are public, so none of this needs to be constant-time.
 */

interface Curve {
  readonly p: bigint;
  readonly b: bigint; // a = -3 on every NIST prime curve
  readonly n: bigint;
  readonly gx: bigint;
  readonly gy: bigint;
}

/** FIPS 186-4 §D.1.2 domain parameters. */
const CURVES: Readonly<Record<'P-256' | 'P-384' | 'P-521', Curve>> = {
  'P-256': {
    p: 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffffn,
    b: 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn,
    n: 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n,
    gx: 0x6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296n,
    gy: 0x4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5n,
  },
  'P-384': {
    p: 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffffn,
    b: 0xb3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aefn,
    n: 0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973n,
    gx: 0xaa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7n,
    gy: 0x3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5fn,
  },
  'P-521': {
    p: (1n << 521n) - 1n,
    b: 0x0051953eb9618e1c9a1f929a21a0b68540eea2da725b99b315f3b8b489918ef109e156193951ec7e937b1652c0bd3bb1bf073573df883d2c34f1ef451fd46b503f00n,
    n: 0x01fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409n,
    gx: 0x00c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af606b4d3dbaa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429bf97e7e31c2e5bd66n,
    gy: 0x011839296a789a3bc0045c8a5fb42c7d1bd998f54449579b446817afbd17273e662c97ee72995ef42640c550b9013fad0761353c7086a272c24088be94769fd16650n,
  },
};

export type NistCurve = keyof typeof CURVES;

const toBig = (b: Buffer): bigint => (b.length === 0 ? 0n : BigInt(`0x${b.toString('hex')}`));
const mod = (a: bigint, m: bigint): bigint => {
  const r = a % m;
  return r < 0n ? r + m : r;
};

function invert(a: bigint, m: bigint): bigint {
  let [r0, r1] = [mod(a, m), m];
  let [s0, s1] = [1n, 0n];
  while (r1 !== 0n) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [s0, s1] = [s1, s0 - q * s1];
  }
  return mod(s0, m);
}

/** Jacobian point (X, Y, Z) = affine (X/Z², Y/Z³); Z = 0 is the point at infinity. */
type Jac = readonly [bigint, bigint, bigint];
const INF: Jac = [1n, 1n, 0n];

function double(c: Curve, [x, y, z]: Jac): Jac {
  if (z === 0n || y === 0n) return INF;
  const { p } = c;
  const zz = mod(z * z, p);
  const m = mod(3n * (x - zz) * (x + zz), p); // a = -3
  const yy = mod(y * y, p);
  const s = mod(4n * x * yy, p);
  const x3 = mod(m * m - 2n * s, p);
  const y3 = mod(m * (s - x3) - 8n * yy * yy, p);
  return [x3, y3, mod(2n * y * z, p)];
}

function add(c: Curve, a: Jac, b: Jac): Jac {
  if (a[2] === 0n) return b;
  if (b[2] === 0n) return a;
  const { p } = c;
  const [x1, y1, z1] = a;
  const [x2, y2, z2] = b;
  const z1z1 = mod(z1 * z1, p);
  const z2z2 = mod(z2 * z2, p);
  const u1 = mod(x1 * z2z2, p);
  const u2 = mod(x2 * z1z1, p);
  const s1 = mod(y1 * z2 * z2z2, p);
  const s2 = mod(y2 * z1 * z1z1, p);
  if (u1 === u2) return s1 === s2 ? double(c, a) : INF;
  const h = mod(u2 - u1, p);
  const r = mod(s2 - s1, p);
  const hh = mod(h * h, p);
  const hhh = mod(h * hh, p);
  const v = mod(u1 * hh, p);
  const x3 = mod(r * r - hhh - 2n * v, p);
  const y3 = mod(r * (v - x3) - s1 * hhh, p);
  return [x3, y3, mod(z1 * z2 * h, p)];
}

/** u1·G + u2·Q with one shared double-and-add pass (Shamir's trick). */
function twoMul(c: Curve, u1: bigint, g: Jac, u2: bigint, q: Jac): Jac {
  const gq = add(c, g, q);
  let acc: Jac = INF;
  const bits = Math.max(u1.toString(2).length, u2.toString(2).length);
  for (let i = bits - 1; i >= 0; i--) {
    acc = double(c, acc);
    const b1 = (u1 >> BigInt(i)) & 1n;
    const b2 = (u2 >> BigInt(i)) & 1n;
    if (b1 && b2) acc = add(c, acc, gq);
    else if (b1) acc = add(c, acc, g);
    else if (b2) acc = add(c, acc, q);
  }
  return acc;
}

function onCurve(c: Curve, x: bigint, y: bigint): boolean {
  if (x < 0n || x >= c.p || y < 0n || y >= c.p) return false;
  return mod(y * y - (x * x * x - 3n * x + c.b), c.p) === 0n;
}

/** ECDSA verification over a digest (FIPS 186-4 §6.4.2 / SEC 1 §4.1.4), digest truncated to the order's bit length. */
export function ecdsaVerifyDigest(curveName: NistCurve, qx: Buffer, qy: Buffer, digest: Buffer, rBuf: Buffer, sBuf: Buffer): boolean {
  const c = CURVES[curveName];
  const x = toBig(qx);
  const y = toBig(qy);
  if (!onCurve(c, x, y)) return false;
  const r = toBig(rBuf);
  const s = toBig(sBuf);
  if (r <= 0n || r >= c.n || s <= 0n || s >= c.n) return false;
  const nBits = c.n.toString(2).length;
  let e = toBig(digest);
  if (digest.length * 8 > nBits) e >>= BigInt(digest.length * 8 - nBits);
  const w = invert(s, c.n);
  const point = twoMul(c, mod(e * w, c.n), [c.gx, c.gy, 1n], mod(r * w, c.n), [x, y, 1n]);
  if (point[2] === 0n) return false;
  const zInv = invert(point[2], c.p);
  const ax = mod(point[0] * zInv * zInv, c.p);
  return mod(ax, c.n) === r;
}

/** For tests: the curve's base point and order, to check the constants above against node:crypto. */
export function curveParams(curveName: NistCurve): Curve {
  return CURVES[curveName];
}

/** DER DigestInfo prefixes (RFC 8017 §9.2 note 1). */
const DIGEST_INFO: Readonly<Record<HashName, Buffer>> = {
  sha1: Buffer.from('3021300906052b0e03021a05000414', 'hex'),
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
};

/** RSASSA-PKCS1-v1_5 over a digest: the opened signature must be exactly DigestInfo(hash, digest). */
export function rsassaVerifyDigest(key: KeyObject, hash: HashName, digest: Buffer, sig: Buffer): boolean {
  let opened: Buffer;
  try {
    // Checks and strips the type-1 padding (00 01 FF.. 00).
    opened = publicDecrypt({ key, padding: cryptoConstants.RSA_PKCS1_PADDING }, sig);
  } catch {
    return false;
  }
  return opened.equals(Buffer.concat([DIGEST_INFO[hash], digest]));
}

function mgf1(hash: HashName, seed: Buffer, len: number): Buffer {
  const out: Buffer[] = [];
  for (let i = 0, got = 0; got < len; i++) {
    const c = Buffer.alloc(4);
    c.writeUInt32BE(i);
    const block = createHash(hash).update(seed).update(c).digest();
    out.push(block);
    got += block.length;
  }
  return Buffer.concat(out).subarray(0, len);
}

/**
 * RSASSA-PSS over a digest (RFC 8017 §9.1.2 EMSA-PSS-VERIFY, MGF1 with the same hash). Any salt length
 * is accepted: TPMs differ (the reference implementation uses the digest size, some use the maximum).
 */
export function rsapssVerifyDigest(key: KeyObject, hash: HashName, digest: Buffer, sig: Buffer): boolean {
  const modBits = key.asymmetricKeyDetails?.modulusLength;
  if (!modBits) return false;
  let em: Buffer;
  try {
    em = publicDecrypt({ key, padding: cryptoConstants.RSA_NO_PADDING }, sig);
  } catch {
    return false;
  }
  const hLen = digest.length;
  const emBits = modBits - 1;
  const emLen = Math.ceil(emBits / 8);
  // publicDecrypt returns k = ceil(modBits/8) bytes; EM is its last emLen bytes, the rest must be zero.
  if (em.length < emLen || em.subarray(0, em.length - emLen).some((b) => b !== 0)) return false;
  em = em.subarray(em.length - emLen);
  if (emLen < hLen + 2 || em[emLen - 1] !== 0xbc) return false;
  const maskedDb = em.subarray(0, emLen - hLen - 1);
  const h = em.subarray(emLen - hLen - 1, emLen - 1);
  const topBits = 8 * emLen - emBits;
  const topMask = 0xff >> topBits;
  if ((maskedDb[0]! & ~topMask & 0xff) !== 0) return false;
  const dbMask = mgf1(hash, h, maskedDb.length);
  const db = Buffer.alloc(maskedDb.length);
  for (let i = 0; i < db.length; i++) db[i] = maskedDb[i]! ^ dbMask[i]!;
  db[0] = db[0]! & topMask;
  const one = db.indexOf(0x01);
  if (one < 0 || db.subarray(0, one).some((b) => b !== 0)) return false;
  const salt = db.subarray(one + 1);
  const mPrime = Buffer.concat([Buffer.alloc(8), digest, salt]);
  return createHash(hash).update(mPrime).digest().equals(h);
}
