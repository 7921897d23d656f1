import { createHash, createPublicKey, type KeyObject } from 'node:crypto';
import { TpmReader, TpmWriter } from './buffer-io.js';
import { ALG, ECC_CURVE, OBJECT_ATTR, hashInfo, type ObjectAttributeName } from './constants.js';
import { TpmWireError } from './errors.js';

/** TPMT_SYM_DEF_OBJECT (Part 2 §11.1.7); keyBits/mode absent when algorithm is NULL. */
export interface SymDef {
  readonly algorithm: number;
  readonly keyBits?: number;
  readonly mode?: number;
}

/**
 * TPMT_RSA_SCHEME / TPMT_ECC_SCHEME / TPMT_KDF_SCHEME: a scheme and its details — none for NULL and
 * RSAES, a hash for the others, a hash and a commit count for ECDAA (Part 2 §11.2).
 */
export interface SchemeDef {
  readonly scheme: number;
  readonly hashAlg?: number;
  readonly count?: number;
}

interface PublicCommon {
  readonly nameAlg: number;
  readonly objectAttributes: number;
  readonly authPolicy: Buffer;
  readonly symmetric: SymDef;
  readonly scheme: SchemeDef;
}

export interface RsaPublic extends PublicCommon {
  readonly type: 'rsa';
  readonly keyBits: number;
  /** 0 means the default exponent 65537 (Part 2 §12.2.3.5). */
  readonly exponent: number;
  readonly modulus: Buffer;
}

export interface EccPublic extends PublicCommon {
  readonly type: 'ecc';
  readonly curveId: number;
  readonly kdf: SchemeDef;
  readonly x: Buffer;
  readonly y: Buffer;
}

/** A parsed TPMT_PUBLIC of an asymmetric key (the only kinds this project creates or verifies). */
export type TpmPublic = RsaPublic | EccPublic;

/**
 * The NIST prime curves: JWK name, coordinate size, the DER SubjectPublicKeyInfo prefix (named curve,
 * up to and including the BIT STRING's unused-bits octet) of an uncompressed point, and the curve
 * y² = x³ - 3x + b over GF(p) for the on-curve check.
 */
export interface EccCurve {
  readonly jwk: string;
  readonly size: number;
  readonly spkiPrefix: Buffer;
  readonly p: bigint;
  readonly b: bigint;
}

const CURVES: ReadonlyMap<number, EccCurve> = new Map([
  [
    ECC_CURVE.NIST_P256,
    {
      jwk: 'P-256',
      size: 32,
      spkiPrefix: Buffer.from('3059301306072a8648ce3d020106082a8648ce3d030107034200', 'hex'),
      p: 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffffn,
      b: 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn,
    },
  ],
  [
    ECC_CURVE.NIST_P384,
    {
      jwk: 'P-384',
      size: 48,
      spkiPrefix: Buffer.from('3076301006072a8648ce3d020106052b81040022036200', 'hex'),
      p: 0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffffn,
      b: 0xb3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aefn,
    },
  ],
  [
    ECC_CURVE.NIST_P521,
    {
      jwk: 'P-521',
      size: 66,
      spkiPrefix: Buffer.from('30819b301006072a8648ce3d020106052b8104002303818600', 'hex'),
      p: (1n << 521n) - 1n,
      b: 0x0051953eb9618e1c9a1f929a21a0b68540eea2da725b99b315f3b8b489918ef109e156193951ec7e937b1652c0bd3bb1bf073573df883d2c34f1ef451fd46b503f00n,
    },
  ],
]);

export function curveInfo(curveId: number): EccCurve {
  const c = CURVES.get(curveId);
  if (!c) throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported ECC curve 0x${curveId.toString(16)}`);
  return c;
}

function readSym(r: TpmReader): SymDef {
  const algorithm = r.u16('symmetric.algorithm');
  if (algorithm === ALG.NULL) return { algorithm };
  return { algorithm, keyBits: r.u16('symmetric.keyBits'), mode: r.u16('symmetric.mode') };
}

/** Schemes whose details are a TPMS_SCHEME_HASH (Part 2 §11.2: signing, encryption, key exchange, KDF). */
const HASH_SCHEMES: ReadonlySet<number> = new Set([
  ALG.RSASSA, ALG.RSAPSS, ALG.OAEP, ALG.ECDSA, ALG.ECDH, ALG.SM2, ALG.ECSCHNORR, ALG.ECMQV,
  ALG.MGF1, ALG.KDF1_SP800_56A, ALG.KDF2, ALG.KDF1_SP800_108,
]);

function readScheme(r: TpmReader, what: string): SchemeDef {
  const scheme = r.u16(what);
  if (scheme === ALG.NULL || scheme === ALG.RSAES) return { scheme };
  if (scheme === ALG.ECDAA) return { scheme, hashAlg: r.u16(`${what}.hashAlg`), count: r.u16(`${what}.count`) };
  // An unknown scheme has details of unknown size: reading on would misparse everything after it.
  if (!HASH_SCHEMES.has(scheme)) throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported ${what} 0x${scheme.toString(16)}`);
  return { scheme, hashAlg: r.u16(`${what}.hashAlg`) };
}

function writeSym(w: TpmWriter, s: SymDef): void {
  w.u16(s.algorithm);
  if (s.algorithm !== ALG.NULL) w.u16(s.keyBits ?? 0).u16(s.mode ?? ALG.NULL);
}

function writeScheme(w: TpmWriter, s: SchemeDef): void {
  w.u16(s.scheme);
  if (s.scheme === ALG.NULL || s.scheme === ALG.RSAES) return;
  w.u16(s.hashAlg ?? ALG.NULL);
  if (s.scheme === ALG.ECDAA) w.u16(s.count ?? 0);
}

/** Reads a TPMT_PUBLIC from `r` (leaves the reader after it). */
export function readPublic(r: TpmReader): TpmPublic {
  const type = r.u16('type');
  const nameAlg = r.u16('nameAlg');
  const objectAttributes = r.u32('objectAttributes');
  const authPolicy = r.tpm2b('authPolicy');
  if (type === ALG.RSA) {
    const symmetric = readSym(r);
    const scheme = readScheme(r, 'scheme');
    const keyBits = r.u16('keyBits');
    const exponent = r.u32('exponent');
    const modulus = r.tpm2b('unique.rsa');
    return { type: 'rsa', nameAlg, objectAttributes, authPolicy, symmetric, scheme, keyBits, exponent, modulus };
  }
  if (type === ALG.ECC) {
    const symmetric = readSym(r);
    const scheme = readScheme(r, 'scheme');
    const curveId = r.u16('curveID');
    const kdf = readScheme(r, 'kdf');
    const x = r.tpm2b('unique.ecc.x');
    const y = r.tpm2b('unique.ecc.y');
    return { type: 'ecc', nameAlg, objectAttributes, authPolicy, symmetric, scheme, curveId, kdf, x, y };
  }
  throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported public key type 0x${type.toString(16)}`);
}

/** Parses a TPMT_PUBLIC (no size prefix). */
export function parsePublic(buf: Buffer): TpmPublic {
  const r = new TpmReader(buf);
  const p = readPublic(r);
  r.expectEnd('TPMT_PUBLIC');
  return p;
}

/** Parses a TPM2B_PUBLIC (u16 size + TPMT_PUBLIC), as the TPM returns and the agent stores it. */
export function parsePublic2b(buf: Buffer): TpmPublic {
  const r = new TpmReader(buf);
  const inner = r.tpm2b('TPM2B_PUBLIC');
  r.expectEnd('TPM2B_PUBLIC');
  return parsePublic(inner);
}

export function marshalPublic(p: TpmPublic): Buffer {
  const w = new TpmWriter();
  w.u16(p.type === 'rsa' ? ALG.RSA : ALG.ECC).u16(p.nameAlg).u32(p.objectAttributes).tpm2b(p.authPolicy);
  writeSym(w, p.symmetric);
  writeScheme(w, p.scheme);
  if (p.type === 'rsa') {
    w.u16(p.keyBits).u32(p.exponent).tpm2b(p.modulus);
  } else {
    w.u16(p.curveId);
    writeScheme(w, p.kdf);
    w.tpm2b(p.x).tpm2b(p.y);
  }
  return w.finish();
}

export function marshalPublic2b(p: TpmPublic): Buffer {
  return new TpmWriter().tpm2b(marshalPublic(p)).finish();
}

function leftPad(b: Buffer, size: number): Buffer {
  if (b.length > size) throw new TpmWireError('TPM_WIRE_INVALID', `coordinate longer than ${size} bytes`);
  return b.length === size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}

const toBigInt = (b: Buffer) => (b.length === 0 ? 0n : BigInt(`0x${b.toString('hex')}`));

/**
 * DER SubjectPublicKeyInfo of an ECC point given by its coordinates (each at most the curve's size,
 * left-padded), the encoding node:crypto exports (named curve, uncompressed point). Refuses a point
 * that is not a valid public key: coordinates not reduced mod p, or not on the curve (invalid-curve
 * attacks). On these curves that is the whole public key validation (SP 800-56A §5.6.2.3.3): the
 * cofactor is 1, so every affine point on the curve has the group's prime order, and the point at
 * infinity has no affine coordinates. Built here because importing a key into node:crypto to get
 * the same bytes runs OpenSSL's full check, a scalar multiplication by the order (~0.3 ms on P-384).
 */
export function eccSpki(curveId: number, x: Buffer, y: Buffer): Buffer {
  const c = curveInfo(curveId);
  const px = leftPad(x, c.size);
  const py = leftPad(y, c.size);
  const X = toBigInt(px);
  const Y = toBigInt(py);
  if (X >= c.p || Y >= c.p || (Y * Y - (X * X * X - 3n * X + c.b)) % c.p !== 0n) {
    throw new TpmWireError('TPM_WIRE_INVALID', `public area does not hold a valid key: the point is not on ${c.jwk}`);
  }
  return Buffer.concat([c.spkiPrefix, Buffer.from([0x04]), px, py]);
}

export function publicToKeyObject(p: TpmPublic): KeyObject {
  try {
    if (p.type === 'rsa') {
      const exp = p.exponent === 0 ? 65537 : p.exponent;
      const e = Buffer.alloc(4);
      e.writeUInt32BE(exp);
      const firstNonZero = e.findIndex((b) => b !== 0);
      return createPublicKey({
        key: { kty: 'RSA', n: p.modulus.toString('base64url'), e: e.subarray(firstNonZero).toString('base64url') },
        format: 'jwk',
      });
    }
    const c = curveInfo(p.curveId);
    const spki = eccSpki(p.curveId, p.x, p.y); // refuses points not on the curve
    // Both imports validate the point again. The cheaper one differs by curve: the JWK import runs
    // OpenSSL's full key check (a scalar multiplication), fast on P-256's assembly, ~3x the DER
    // decoder's cost on P-384 and P-521.
    if (c.jwk !== 'P-256') return createPublicKey({ key: spki, format: 'der', type: 'spki' });
    return createPublicKey({
      key: { kty: 'EC', crv: c.jwk, x: leftPad(p.x, c.size).toString('base64url'), y: leftPad(p.y, c.size).toString('base64url') },
      format: 'jwk',
    });
  } catch (e) {
    if (e instanceof TpmWireError) throw e;
    throw new TpmWireError('TPM_WIRE_INVALID', `public area does not hold a valid key: ${(e as Error).message}`, { cause: e });
  }
}

/** DER SubjectPublicKeyInfo of the key in a public area (validated; see eccSpki). */
export function publicToSpki(p: TpmPublic): Buffer {
  if (p.type === 'ecc') return eccSpki(p.curveId, p.x, p.y);
  return publicToKeyObject(p).export({ type: 'spki', format: 'der' });
}

/** TPM Name of an object: nameAlg ‖ H_nameAlg(TPMT_PUBLIC) (Part 1 §16). */
export function objectName(p: TpmPublic): Buffer {
  const h = hashInfo(p.nameAlg);
  if (!h) throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported nameAlg 0x${p.nameAlg.toString(16)}`);
  const alg = Buffer.alloc(2);
  alg.writeUInt16BE(p.nameAlg);
  return Buffer.concat([alg, createHash(h.name).update(marshalPublic(p)).digest()]);
}

export type ObjectAttributes = Readonly<Record<ObjectAttributeName, boolean>>;

export function attributesOf(p: TpmPublic | number): ObjectAttributes {
  const bits = typeof p === 'number' ? p : p.objectAttributes;
  const out = {} as Record<ObjectAttributeName, boolean>;
  for (const [name, bit] of Object.entries(OBJECT_ATTR) as [ObjectAttributeName, number][]) out[name] = (bits & bit) !== 0;
  return out;
}

export function attributeBits(names: readonly ObjectAttributeName[]): number {
  return names.reduce((acc, n) => acc | OBJECT_ATTR[n], 0) >>> 0;
}
