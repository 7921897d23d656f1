import { constants, createECDH, createHash, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { TpmWriter } from './buffer-io.js';
import { ALG, ECC_CURVE, hashAlgOf, type HashName } from './constants.js';
import { curveParams, ecdsaVerifyDigest } from './prehashed.js';
import { parsePublic2b } from './public.js';
import { ecdsaToDer, ecdsaToRaw, parseSignature, verifyDigestSignature, verifyTpmSignature, type TpmtSignature } from './signature.js';
import { SWTPM } from './swtpm-fixtures.js';
import { ekRsaTemplate, identityKeyTemplate } from './templates.js';
import { codeOf, eccKeyFor, rsaKeyFor } from './test-helpers.js';

const SIZES = { 'P-256': 32, 'P-384': 48, 'P-521': 66 } as const;

/** A TPMT_SIGNATURE the way a TPM marshals an ECDSA signature made by node:crypto. */
function tpmEcdsa(privateKey: KeyObject, hash: HashName, msg: Buffer, size: number): { wire: Buffer; r: Buffer; s: Buffer } {
  const raw = sign(hash, msg, { key: privateKey, dsaEncoding: 'ieee-p1363' });
  const r = raw.subarray(0, size);
  const s = raw.subarray(size);
  return { wire: new TpmWriter().u16(ALG.ECDSA).u16(hashAlgOf(hash)).tpm2b(r).tpm2b(s).finish(), r, s };
}

function tpmRsa(privateKey: KeyObject, hash: HashName, msg: Buffer, pss: boolean, saltLength?: number): Buffer {
  const sig = sign(hash, msg, pss ? { key: privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: saltLength ?? constants.RSA_PSS_SALTLEN_DIGEST } : privateKey);
  return new TpmWriter().u16(pss ? ALG.RSAPSS : ALG.RSASSA).u16(hashAlgOf(hash)).tpm2b(sig).finish();
}

describe('ECDSA r,s conversions', () => {
  it('ecdsaToRaw and ecdsaToDer agree with node:crypto for many signatures (leading zeros, high bits)', () => {
    for (const crv of ['P-256', 'P-384', 'P-521'] as const) {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: { 'P-256': 'prime256v1', 'P-384': 'secp384r1', 'P-521': 'secp521r1' }[crv] });
      for (let i = 0; i < 40; i++) {
        const msg = Buffer.from(`m${i}`);
        const raw = sign('sha256', msg, { key: privateKey, dsaEncoding: 'ieee-p1363' });
        const size = SIZES[crv];
        const r = raw.subarray(0, size);
        const s = raw.subarray(size);
        expect(ecdsaToRaw(r, s, size).equals(raw)).toBe(true);
        const der = ecdsaToDer(r, s);
        expect(verify('sha256', msg, { key: publicKey, dsaEncoding: 'der' }, der)).toBe(true);
        // DER round-trips through node's own converter.
        expect(verify('sha256', msg, { key: publicKey, dsaEncoding: 'ieee-p1363' }, raw)).toBe(true);
      }
    }
  });

  it('encodes minimal DER integers (strips zeros, adds 00 before a high bit)', () => {
    expect(ecdsaToDer(Buffer.from([0, 0, 1]), Buffer.from([0x80])).toString('hex')).toBe('3007' + '020101' + '02020080');
    expect(ecdsaToDer(Buffer.alloc(0), Buffer.from([0])).toString('hex')).toBe('3006' + '020100' + '020100');
  });

  it('ecdsaToRaw left-pads short components and strips surplus leading zeros; refuses oversize ones', () => {
    expect(ecdsaToRaw(Buffer.from([1]), Buffer.from([2]), 4).toString('hex')).toBe('00000001' + '00000002');
    expect(ecdsaToRaw(Buffer.from([0, 0, 0, 0, 1]), Buffer.from([2]), 4).toString('hex')).toBe('00000001' + '00000002');
    expect(codeOf(() => ecdsaToRaw(Buffer.alloc(33, 1), Buffer.alloc(32)))).toBe('TPM_WIRE_INVALID');
  });
});

describe('TPMT_SIGNATURE', () => {
  it('parses ECDSA, RSASSA and RSAPSS signatures', () => {
    const ecdsa = new TpmWriter().u16(ALG.ECDSA).u16(ALG.SHA256).tpm2b(Buffer.from([1])).tpm2b(Buffer.from([2])).finish();
    expect(parseSignature(ecdsa)).toEqual({ sigAlg: 'ecdsa', hash: 'sha256', r: Buffer.from([1]), s: Buffer.from([2]) });
    const rsassa = new TpmWriter().u16(ALG.RSASSA).u16(ALG.SHA384).tpm2b(Buffer.from([3])).finish();
    expect(parseSignature(rsassa)).toEqual({ sigAlg: 'rsassa', hash: 'sha384', sig: Buffer.from([3]) });
    const pss = new TpmWriter().u16(ALG.RSAPSS).u16(ALG.SHA1).tpm2b(Buffer.from([4])).finish();
    expect(parseSignature(pss)).toEqual({ sigAlg: 'rsapss', hash: 'sha1', sig: Buffer.from([4]) });
    expect(parseSignature(SWTPM.quoteSig).sigAlg).toBe('ecdsa');
    expect(parseSignature(SWTPM.rsassaQuoteSig).sigAlg).toBe('rsassa');
    expect(parseSignature(SWTPM.rsapssQuoteSig).sigAlg).toBe('rsapss');
  });

  it('refuses truncated, trailing and unsupported signatures with coded errors', () => {
    const ecdsa = new TpmWriter().u16(ALG.ECDSA).u16(ALG.SHA256).tpm2b(Buffer.alloc(32, 1)).tpm2b(Buffer.alloc(32, 2)).finish();
    for (let n = 0; n < ecdsa.length; n += 5) expect(codeOf(() => parseSignature(ecdsa.subarray(0, n)))).toBe('TPM_WIRE_TRUNCATED');
    expect(codeOf(() => parseSignature(Buffer.concat([ecdsa, Buffer.from([0])])))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => parseSignature(new TpmWriter().u16(0x1234).u16(ALG.SHA256).finish()))).toBe('TPM_WIRE_UNSUPPORTED');
    expect(codeOf(() => parseSignature(new TpmWriter().u16(ALG.ECDSA).u16(ALG.NULL).finish()))).toBe('TPM_WIRE_UNSUPPORTED');
    expect(codeOf(() => parseSignature(new TpmWriter().u16(ALG.HMAC).u16(ALG.SHA256).tpm2b(Buffer.alloc(32)).finish()))).toBe('TPM_WIRE_UNSUPPORTED');
  });
});

describe('verifyTpmSignature (message) and verifyDigestSignature (digest)', () => {
  const msg = Buffer.from('TPMS_ATTEST bytes');

  it('ECDSA on P-256 and P-384 with SHA-256/384/512, true for the right key and message only', () => {
    for (const [crv, curveId] of [['P-256', ECC_CURVE.NIST_P256], ['P-384', ECC_CURVE.NIST_P384]] as const) {
      const { pub, privateKey, publicKey } = eccKeyFor({ ...identityKeyTemplate(), curveId }, crv);
      const other = eccKeyFor({ ...identityKeyTemplate(), curveId }, crv).pub;
      for (const hash of ['sha256', 'sha384', 'sha512'] as const) {
        const { wire } = tpmEcdsa(privateKey, hash, msg, SIZES[crv]);
        const digest = createHash(hash).update(msg).digest();
        expect(verifyTpmSignature(pub, msg, wire)).toBe(true);
        expect(verifyTpmSignature(publicKey, msg, parseSignature(wire))).toBe(true);
        expect(verifyTpmSignature(pub, Buffer.from('other'), wire)).toBe(false);
        expect(verifyTpmSignature(other, msg, wire)).toBe(false);
        expect(verifyDigestSignature(pub, digest, wire)).toBe(true);
        expect(verifyDigestSignature(publicKey, digest, wire)).toBe(true);
        expect(verifyDigestSignature(other, digest, wire)).toBe(false);
        // First octet: with a P-256 key a SHA-384/512 digest's tail is truncated away (FIPS 186-4 §6.4).
        const flipped = Buffer.from(digest);
        flipped[0]! ^= 1;
        expect(verifyDigestSignature(pub, flipped, wire)).toBe(false);
      }
    }
  });

  it('RSASSA-PKCS1-v1_5 and RSASSA-PSS (salt = digest size, maximum, zero)', () => {
    const { pub, privateKey } = rsaKeyFor({ ...ekRsaTemplate(), keyBits: 2048 });
    const other = rsaKeyFor({ ...ekRsaTemplate(), keyBits: 2048 }).pub;
    for (const hash of ['sha1', 'sha256', 'sha384'] as const) {
      const digest = createHash(hash).update(msg).digest();
      const variants = [
        tpmRsa(privateKey, hash, msg, false),
        tpmRsa(privateKey, hash, msg, true),
        tpmRsa(privateKey, hash, msg, true, constants.RSA_PSS_SALTLEN_MAX_SIGN),
        tpmRsa(privateKey, hash, msg, true, 0),
      ];
      for (const wire of variants) {
        expect(verifyTpmSignature(pub, msg, wire)).toBe(true);
        expect(verifyDigestSignature(pub, digest, wire)).toBe(true);
        expect(verifyTpmSignature(pub, Buffer.from('x'), wire)).toBe(false);
        expect(verifyTpmSignature(other, msg, wire)).toBe(false);
        expect(verifyDigestSignature(other, digest, wire)).toBe(false);
        expect(verifyDigestSignature(pub, createHash(hash).update('x').digest(), wire)).toBe(false);
      }
      // A PKCS#1 signature is not a PSS one and vice versa.
      const sig = (variants[0]!.subarray(6));
      const asPss = new TpmWriter().u16(ALG.RSAPSS).u16(hashAlgOf(hash)).tpm2b(sig).finish();
      expect(verifyTpmSignature(pub, msg, asPss)).toBe(false);
      expect(verifyDigestSignature(pub, digest, asPss)).toBe(false);
    }
  });

  it('RSA with an odd modulus size (PSS emBits not a multiple of 8)', () => {
    const { pub, privateKey } = rsaKeyFor({ ...ekRsaTemplate(), keyBits: 1025 });
    const wire = tpmRsa(privateKey, 'sha256', msg, true);
    expect(verifyDigestSignature(pub, createHash('sha256').update(msg).digest(), wire)).toBe(true);
    expect(verifyTpmSignature(pub, msg, wire)).toBe(true);
  });

  it('a signature of the wrong kind for the key is false, not an exception', () => {
    const ecc = eccKeyFor(identityKeyTemplate());
    const rsa = rsaKeyFor({ ...ekRsaTemplate(), keyBits: 1024 });
    const eccSig = tpmEcdsa(ecc.privateKey, 'sha256', msg, 32).wire;
    const rsaSig = tpmRsa(rsa.privateKey, 'sha256', msg, false);
    const digest = createHash('sha256').update(msg).digest();
    expect(verifyTpmSignature(rsa.pub, msg, eccSig)).toBe(false);
    expect(verifyTpmSignature(ecc.pub, msg, rsaSig)).toBe(false);
    expect(verifyDigestSignature(rsa.pub, digest, eccSig)).toBe(false);
    expect(verifyDigestSignature(ecc.pub, digest, rsaSig)).toBe(false);
  });

  it('out-of-range r or s is false', () => {
    const { pub, privateKey } = eccKeyFor(identityKeyTemplate());
    const { r, s } = tpmEcdsa(privateKey, 'sha256', msg, 32);
    const n = Buffer.from(curveParams('P-256').n.toString(16), 'hex');
    const digest = createHash('sha256').update(msg).digest();
    for (const [rr, ss] of [[Buffer.alloc(32), s], [r, Buffer.alloc(32)], [n, s], [r, n], [Buffer.alloc(40, 0xff), s]] as const) {
      const sig: TpmtSignature = { sigAlg: 'ecdsa', hash: 'sha256', r: rr, s: ss };
      expect(verifyDigestSignature(pub, digest, sig)).toBe(false);
      expect(verifyTpmSignature(pub, msg, sig)).toBe(false);
    }
  });

  it('verifyDigestSignature refuses a digest of the wrong length', () => {
    const { pub, privateKey } = eccKeyFor(identityKeyTemplate());
    const { wire } = tpmEcdsa(privateKey, 'sha256', msg, 32);
    expect(codeOf(() => verifyDigestSignature(pub, Buffer.alloc(20), wire))).toBe('TPM_WIRE_INVALID');
  });

  it('verifies signatures a real TPM made (ECDSA AK quote/certify, RSASSA and RSAPSS AK quotes, TPM2_Sign digests)', () => {
    const ak = parsePublic2b(SWTPM.akPub2b);
    expect(verifyTpmSignature(ak, SWTPM.quoteMsg, SWTPM.quoteSig)).toBe(true);
    expect(verifyTpmSignature(ak, SWTPM.certifyAttest, SWTPM.certifySig)).toBe(true);
    expect(verifyDigestSignature(ak, createHash('sha256').update(SWTPM.quoteMsg).digest(), SWTPM.quoteSig)).toBe(true);
    expect(verifyTpmSignature(ak, SWTPM.certifyAttest, SWTPM.quoteSig)).toBe(false);
    expect(verifyTpmSignature(parsePublic2b(SWTPM.ak2Pub2b), SWTPM.quoteMsg, SWTPM.quoteSig)).toBe(false);
    for (const [pub, m, s] of [
      [SWTPM.rsassaAkPub2b, SWTPM.rsassaQuoteMsg, SWTPM.rsassaQuoteSig],
      [SWTPM.rsapssAkPub2b, SWTPM.rsapssQuoteMsg, SWTPM.rsapssQuoteSig],
    ] as const) {
      const key = parsePublic2b(pub);
      expect(verifyTpmSignature(key, m, s)).toBe(true);
      expect(verifyDigestSignature(key, createHash('sha256').update(m).digest(), s)).toBe(true);
      expect(verifyTpmSignature(key, Buffer.concat([m, Buffer.from([0])]), s)).toBe(false);
    }
    const idk = parsePublic2b(SWTPM.idkPub2b);
    expect(verifyDigestSignature(idk, createHash('sha256').update(SWTPM.idkMsg_sha256).digest(), SWTPM.idkSig_sha256)).toBe(true);
    // SHA-384 digest with a P-256 key: truncated to the order's 256 bits (FIPS 186-4 §6.4).
    expect(verifyDigestSignature(idk, createHash('sha384').update(SWTPM.idkMsg_sha384).digest(), SWTPM.idkSig_sha384)).toBe(true);
    expect(verifyTpmSignature(idk, SWTPM.idkMsg_sha384, SWTPM.idkSig_sha384)).toBe(true);
    expect(verifyTpmSignature(idk, SWTPM.idkMsg_sha256, SWTPM.idkSig_sha384)).toBe(false);
  });
});

describe('prehashed ECDSA arithmetic', () => {
  it('curve constants: G is node:crypto\'s generator (private key 1), and (n-1)·G = -G', () => {
    for (const [crv, node] of [['P-256', 'prime256v1'], ['P-384', 'secp384r1'], ['P-521', 'secp521r1']] as const) {
      const c = curveParams(crv);
      const size = SIZES[crv];
      const ecdh = createECDH(node);
      const one = Buffer.alloc(size);
      one[size - 1] = 1;
      ecdh.setPrivateKey(one);
      const g = ecdh.getPublicKey();
      expect(BigInt(`0x${g.subarray(1, 1 + size).toString('hex')}`)).toBe(c.gx);
      expect(BigInt(`0x${g.subarray(1 + size).toString('hex')}`)).toBe(c.gy);
      // n-1 is a valid private key whose public point is -G: same x, y = p - gy.
      const nm1 = Buffer.from((c.n - 1n).toString(16).padStart(size * 2, '0'), 'hex');
      ecdh.setPrivateKey(nm1);
      const negG = ecdh.getPublicKey();
      expect(BigInt(`0x${negG.subarray(1, 1 + size).toString('hex')}`)).toBe(c.gx);
      expect(BigInt(`0x${negG.subarray(1 + size).toString('hex')}`)).toBe(c.p - c.gy);
    }
  });

  it('P-521 signatures from node:crypto verify over their digest', () => {
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'secp521r1' });
    const jwk = publicKey.export({ format: 'jwk' });
    const m = Buffer.from('p521');
    const raw = sign('sha512', m, { key: privateKey, dsaEncoding: 'ieee-p1363' });
    const digest = createHash('sha512').update(m).digest();
    const x = Buffer.from(jwk.x!, 'base64url');
    const y = Buffer.from(jwk.y!, 'base64url');
    expect(ecdsaVerifyDigest('P-521', x, y, digest, raw.subarray(0, 66), raw.subarray(66))).toBe(true);
    expect(ecdsaVerifyDigest('P-521', x, y, createHash('sha512').update('q').digest(), raw.subarray(0, 66), raw.subarray(66))).toBe(false);
    // A public point off the curve is refused.
    const badY = Buffer.from(y);
    badY[badY.length - 1]! ^= 1;
    expect(ecdsaVerifyDigest('P-521', x, badY, digest, raw.subarray(0, 66), raw.subarray(66))).toBe(false);
  });
});
