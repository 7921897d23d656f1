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

const CURVES: ReadonlyMap<number, { jwk: string; size: number }> = new Map([
  [ECC_CURVE.NIST_P256, { jwk: 'P-256', size: 32 }],
  [ECC_CURVE.NIST_P384, { jwk: 'P-384', size: 48 }],
  [ECC_CURVE.NIST_P521, { jwk: 'P-521', size: 66 }],
]);

export function curveInfo(curveId: number): { jwk: string; size: number } {
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
    return createPublicKey({
      key: { kty: 'EC', crv: c.jwk, x: leftPad(p.x, c.size).toString('base64url'), y: leftPad(p.y, c.size).toString('base64url') },
      format: 'jwk',
    });
  } catch (e) {
    if (e instanceof TpmWireError) throw e;
    throw new TpmWireError('TPM_WIRE_INVALID', `public area does not hold a valid key: ${(e as Error).message}`, { cause: e });
  }
}

/** DER SubjectPublicKeyInfo of the key in a public area. */
export function publicToSpki(p: TpmPublic): Buffer {
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
