import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { TpmWriter } from './buffer-io.js';
import { ALG, ECC_CURVE, OBJECT_ATTR } from './constants.js';
import {
  attributeBits,
  attributesOf,
  marshalPublic,
  marshalPublic2b,
  objectName,
  parsePublic,
  parsePublic2b,
  publicToKeyObject,
  publicToSpki,
  type EccPublic,
  type RsaPublic,
} from './public.js';
import { SWTPM } from './swtpm-fixtures.js';
import { attestationKeyTemplate, ekEccTemplate, ekRsaTemplate, identityKeyTemplate, srkEccTemplate } from './templates.js';
import { codeOf, eccKeyFor, rsaKeyFor } from './test-helpers.js';

describe('TPMT_PUBLIC / TPM2B_PUBLIC', () => {
  it('round-trips ECC and RSA public areas', () => {
    const { pub: ecc } = eccKeyFor(identityKeyTemplate());
    const { pub: rsa } = rsaKeyFor(ekRsaTemplate());
    for (const p of [ecc, rsa, ekRsaTemplate(), ekEccTemplate(), srkEccTemplate(), attestationKeyTemplate()]) {
      expect(parsePublic(marshalPublic(p))).toEqual(p);
      expect(parsePublic2b(marshalPublic2b(p))).toEqual(p);
      expect(marshalPublic2b(p).readUInt16BE(0)).toBe(marshalPublic(p).length);
    }
  });

  it('marshals the fields in Part 2 §12.2.4 order (ECC attestation key, byte for byte)', () => {
    const wire = marshalPublic({ ...attestationKeyTemplate(), x: Buffer.from([1]), y: Buffer.from([2]) });
    const expected = new TpmWriter()
      .u16(ALG.ECC)
      .u16(ALG.SHA256)
      .u32(attributeBits(['fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'userWithAuth', 'noDA', 'restricted', 'sign']))
      .tpm2b(Buffer.alloc(0)) // authPolicy
      .u16(ALG.NULL) // symmetric
      .u16(ALG.ECDSA)
      .u16(ALG.SHA256) // scheme
      .u16(ECC_CURVE.NIST_P256)
      .u16(ALG.NULL) // kdf
      .tpm2b(Buffer.from([1]))
      .tpm2b(Buffer.from([2]))
      .finish();
    expect(wire.toString('hex')).toBe(expected.toString('hex'));
  });

  it('parses public areas produced by a real TPM and re-marshals them byte-exact', () => {
    for (const b of [SWTPM.ekRsaPub2b, SWTPM.ekEccPub2b, SWTPM.akPub2b, SWTPM.ak2Pub2b, SWTPM.idkPub2b, SWTPM.rsassaAkPub2b, SWTPM.rsapssAkPub2b]) {
      expect(marshalPublic2b(parsePublic2b(b)).equals(b)).toBe(true);
    }
    const ek = parsePublic2b(SWTPM.ekRsaPub2b);
    expect(ek.type).toBe('rsa');
    expect(ek.type === 'rsa' && ek.keyBits === 2048 && ek.exponent === 0 && ek.modulus.length === 256).toBe(true);
    const ak = parsePublic2b(SWTPM.akPub2b);
    expect(ak.type === 'ecc' && ak.curveId === ECC_CURVE.NIST_P256 && ak.x.length === 32 && ak.y.length === 32).toBe(true);
    expect(ak.scheme).toEqual({ scheme: ALG.ECDSA, hashAlg: ALG.SHA256 });
  });

  it('keeps the details of every scheme kind (none for RSAES, hash, hash + count for ECDAA)', () => {
    const { pub: rsa } = rsaKeyFor({ ...ekRsaTemplate(), keyBits: 1024 });
    const rsaes: RsaPublic = { ...rsa, scheme: { scheme: ALG.RSAES } };
    const oaep: RsaPublic = { ...rsa, scheme: { scheme: ALG.OAEP, hashAlg: ALG.SHA256 } };
    const ecdaa: EccPublic = { ...identityKeyTemplate(), scheme: { scheme: ALG.ECDAA, hashAlg: ALG.SHA256, count: 7 } };
    const kdf: EccPublic = { ...srkEccTemplate(), kdf: { scheme: ALG.KDF1_SP800_56A, hashAlg: ALG.SHA256 } };
    for (const p of [rsaes, oaep, ecdaa, kdf]) expect(parsePublic(marshalPublic(p))).toEqual(p);
    expect(marshalPublic(rsaes).length).toBe(marshalPublic(oaep).length - 2);
  });

  it('refuses truncated, trailing and garbage input with coded errors', () => {
    const wire = marshalPublic(ekRsaTemplate());
    for (let n = 0; n < wire.length; n += 7) expect(codeOf(() => parsePublic(wire.subarray(0, n)))).toBe('TPM_WIRE_TRUNCATED');
    expect(codeOf(() => parsePublic(Buffer.concat([wire, Buffer.from([0])])))).toBe('TPM_WIRE_INVALID');
    // KEYEDHASH objects are not asymmetric keys.
    expect(codeOf(() => parsePublic(Buffer.from('0008000b00000000000000100000', 'hex')))).toBe('TPM_WIRE_UNSUPPORTED');
    // An unknown scheme id: its details have unknown size.
    const unknownScheme = Buffer.from(marshalPublic(identityKeyTemplate()));
    unknownScheme.writeUInt16BE(0x7777, 2 + 2 + 4 + 2 + 2);
    expect(codeOf(() => parsePublic(unknownScheme))).toBe('TPM_WIRE_UNSUPPORTED');
    // TPM2B_PUBLIC whose size disagrees with its content.
    const b = Buffer.from(marshalPublic2b(ekEccTemplate()));
    b.writeUInt16BE(b.readUInt16BE(0) + 1, 0);
    expect(codeOf(() => parsePublic2b(b))).toBe('TPM_WIRE_TRUNCATED');
    expect(codeOf(() => parsePublic2b(Buffer.concat([marshalPublic2b(ekEccTemplate()), Buffer.from([0])])))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => parsePublic(Buffer.alloc(0)))).toBe('TPM_WIRE_TRUNCATED');
  });
});

describe('keys and Names', () => {
  it('publicToSpki / publicToKeyObject give the node:crypto key (ECC P-256, P-384; RSA)', () => {
    const p256 = eccKeyFor(identityKeyTemplate());
    expect(publicToSpki(p256.pub).equals(p256.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
    const p384 = eccKeyFor({ ...identityKeyTemplate(), curveId: ECC_CURVE.NIST_P384 }, 'P-384');
    expect(publicToSpki(p384.pub).equals(p384.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
    const rsa = rsaKeyFor(ekRsaTemplate());
    expect(publicToKeyObject(rsa.pub).equals(rsa.publicKey)).toBe(true);
  });

  it('RSA exponent 0 means 65537, others are kept', () => {
    const dflt = rsaKeyFor({ ...ekRsaTemplate(), keyBits: 1024 });
    expect(dflt.pub.exponent).toBe(0);
    expect(publicToKeyObject(dflt.pub).export({ format: 'jwk' }).e).toBe('AQAB');
    const three = rsaKeyFor({ ...ekRsaTemplate(), keyBits: 1024 }, 3);
    expect(three.pub.exponent).toBe(3);
    expect(publicToSpki(three.pub).equals(three.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
  });

  it('left-pads short ECC coordinates, refuses points off the curve and unknown curves', () => {
    // A coordinate may come without its leading zero octet(s); the key is the same.
    let k = eccKeyFor(identityKeyTemplate());
    while (k.pub.x[0] !== 0) k = eccKeyFor(identityKeyTemplate());
    const { pub, publicKey } = k;
    const shortX: EccPublic = { ...pub, x: pub.x.subarray(1) };
    expect(publicToKeyObject(shortX).equals(publicKey)).toBe(true);
    expect(codeOf(() => publicToSpki({ ...pub, y: Buffer.alloc(32, 2) }))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => publicToSpki({ ...pub, x: Buffer.alloc(33, 1) }))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => publicToSpki(identityKeyTemplate()))).toBe('TPM_WIRE_INVALID'); // empty unique
    expect(codeOf(() => publicToSpki({ ...pub, curveId: 0x0010 /* BN P-256 */ }))).toBe('TPM_WIRE_UNSUPPORTED');
  });

  it('objectName is nameAlg ‖ H(TPMT_PUBLIC), equal to the Names a TPM reported', () => {
    const { pub } = eccKeyFor(identityKeyTemplate());
    const name = objectName(pub);
    expect(name.readUInt16BE(0)).toBe(ALG.SHA256);
    expect(name.subarray(2).equals(createHash('sha256').update(marshalPublic(pub)).digest())).toBe(true);
    expect(objectName(parsePublic2b(SWTPM.akPub2b)).equals(SWTPM.akName)).toBe(true);
    expect(objectName(parsePublic2b(SWTPM.ak2Pub2b)).equals(SWTPM.ak2Name)).toBe(true);
    expect(objectName(parsePublic2b(SWTPM.idkPub2b)).equals(SWTPM.idkName)).toBe(true);
    expect(codeOf(() => objectName({ ...pub, nameAlg: ALG.NULL }))).toBe('TPM_WIRE_UNSUPPORTED');
  });
});

describe('TPMA_OBJECT', () => {
  it('decodes every named bit', () => {
    const none = attributesOf(0);
    expect(Object.values(none).every((v) => v === false)).toBe(true);
    expect(Object.keys(none).sort()).toEqual(
      ['adminWithPolicy', 'decrypt', 'encryptedDuplication', 'fixedParent', 'fixedTPM', 'noDA', 'restricted', 'sensitiveDataOrigin', 'sign', 'stClear', 'userWithAuth'].sort(),
    );
    for (const [name, bit] of Object.entries(OBJECT_ATTR)) {
      const a = attributesOf(bit);
      expect(Object.entries(a).filter(([, v]) => v).map(([k]) => k)).toEqual([name]);
    }
    expect(attributesOf(0xffffffff)).toEqual(Object.fromEntries(Object.keys(none).map((k) => [k, true])));
  });

  it('decodes the attributes of real TPM objects', () => {
    expect(attributesOf(parsePublic2b(SWTPM.ekRsaPub2b))).toEqual({
      fixedTPM: true, stClear: false, fixedParent: true, sensitiveDataOrigin: true, userWithAuth: false, adminWithPolicy: true,
      noDA: false, encryptedDuplication: false, restricted: true, decrypt: true, sign: false,
    });
    expect(attributesOf(parsePublic2b(SWTPM.idkPub2b))).toMatchObject({ sign: true, decrypt: false, restricted: false, userWithAuth: true, fixedTPM: true });
  });

  it('attributeBits is the inverse of attributesOf', () => {
    const bits = attributeBits(['fixedTPM', 'sign', 'userWithAuth']);
    expect(bits).toBe(0x00040042);
    expect(attributesOf(bits)).toMatchObject({ fixedTPM: true, sign: true, userWithAuth: true, decrypt: false });
  });
});
