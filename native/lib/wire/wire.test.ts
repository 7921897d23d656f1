import { describe, expect, it } from 'vitest';
import { createHash, generateKeyPairSync, sign, verify } from 'node:crypto';
import { TpmWireError } from './errors.js';
import { ALG } from './constants.js';
import { attributesOf, marshalPublic, marshalPublic2b, objectName, parsePublic, parsePublic2b, publicToSpki, type EccPublic } from './public.js';
import { EK_POLICY_B, EK_POLICY_BRANCHES, attestationKeyTemplate, ekEccP384HighTemplate, ekRsaTemplate, identityKeyTemplate } from './templates.js';
import { ecdsaToDer, ecdsaToRaw, parseSignature, verifyTpmSignature } from './signature.js';
import { parseAttest } from './attest.js';
import { marshalPcrSelection, parsePcrSelection } from './pcr.js';
import { kdfa, kdfe } from './kdf.js';
import { makeCredential } from './make-credential.js';
import { TpmWriter } from './buffer-io.js';

const code = (fn: () => unknown) => {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(TpmWireError);
    return (e as TpmWireError).code;
  }
  return 'no error';
};

/** An ECC public area holding a real node:crypto key, so SPKI/Name/signatures can be checked. */
function eccPublicFromNode(template: EccPublic) {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const jwk = publicKey.export({ format: 'jwk' });
  const pub: EccPublic = { ...template, x: Buffer.from(jwk.x!, 'base64url'), y: Buffer.from(jwk.y!, 'base64url') };
  return { pub, publicKey, privateKey };
}

describe('TPMT_PUBLIC', () => {
  it('round-trips, derives SPKI and Name, decodes attributes', () => {
    const { pub, publicKey } = eccPublicFromNode(identityKeyTemplate());
    const wire = marshalPublic2b(pub);
    const back = parsePublic2b(wire);
    expect(marshalPublic(back).equals(marshalPublic(pub))).toBe(true);
    expect(publicToSpki(back).equals(publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
    const name = objectName(back);
    expect(name.readUInt16BE(0)).toBe(ALG.SHA256);
    expect(name.subarray(2).equals(createHash('sha256').update(marshalPublic(pub)).digest())).toBe(true);
    expect(attributesOf(back)).toMatchObject({ fixedTPM: true, fixedParent: true, sensitiveDataOrigin: true, sign: true, decrypt: false, restricted: false, noDA: true });
    expect(attributesOf(attestationKeyTemplate())).toMatchObject({ restricted: true, sign: true });
  });

  it('refuses truncated, trailing and unsupported input with codes', () => {
    const wire = marshalPublic(ekRsaTemplate());
    expect(code(() => parsePublic(wire.subarray(0, wire.length - 3)))).toBe('TPM_WIRE_TRUNCATED');
    expect(code(() => parsePublic(Buffer.concat([wire, Buffer.from([0])])))).toBe('TPM_WIRE_INVALID');
    expect(code(() => parsePublic(Buffer.from([0x00, 0x08, 0x00, 0x0b, 0, 0, 0, 0, 0, 0])))).toBe('TPM_WIRE_UNSUPPORTED');
    expect(code(() => publicToSpki({ ...identityKeyTemplate(), x: Buffer.alloc(32, 1), y: Buffer.alloc(32, 2) }))).toBe('TPM_WIRE_INVALID');
  });
});

describe('EK policies', () => {
  it('PolicyOR(PolicyA, PolicyC) reproduces the TCG PolicyB digests', () => {
    for (const [alg, [a, c]] of Object.entries(EK_POLICY_BRANCHES) as [keyof typeof EK_POLICY_B, readonly Buffer[]][]) {
      const cc = Buffer.from([0, 0, 0x01, 0x71]); // TPM_CC_PolicyOR
      const zero = Buffer.alloc(a!.length);
      const b = createHash(alg).update(zero).update(cc).update(a!).update(c!).digest();
      expect(b.equals(EK_POLICY_B[alg])).toBe(true);
    }
    // PolicyA itself: PolicySecret(TPM_RH_ENDORSEMENT), empty policyRef (Part 3 §23.4).
    const inner = createHash('sha384').update(Buffer.alloc(48)).update(Buffer.from('00000151', 'hex')).update(Buffer.from('4000000b', 'hex')).digest();
    expect(createHash('sha384').update(inner).digest().equals(EK_POLICY_BRANCHES.sha384[0])).toBe(true);
    expect(ekEccP384HighTemplate().authPolicy.equals(EK_POLICY_B.sha384)).toBe(true);
  });
});

describe('signatures', () => {
  it('converts r,s to DER and raw and verifies TPMT_SIGNATURE against the key', () => {
    const { pub, privateKey, publicKey } = eccPublicFromNode(identityKeyTemplate());
    const msg = Buffer.from('attest bytes');
    const raw = sign('sha256', msg, { key: privateKey, dsaEncoding: 'ieee-p1363' });
    const r = raw.subarray(0, 32);
    const s = raw.subarray(32);
    expect(ecdsaToRaw(r, s).equals(raw)).toBe(true);
    expect(verify('sha256', msg, publicKey, ecdsaToDer(r, s))).toBe(true);
    expect(verify('sha256', msg, publicKey, ecdsaToDer(s, r))).toBe(false);
    const tpmt = new TpmWriter().u16(ALG.ECDSA).u16(ALG.SHA256).tpm2b(r).tpm2b(s).finish();
    expect(parseSignature(tpmt)).toMatchObject({ sigAlg: 'ecdsa', hash: 'sha256' });
    expect(verifyTpmSignature(pub, msg, tpmt)).toBe(true);
    expect(verifyTpmSignature(pub, Buffer.from('other'), tpmt)).toBe(false);
    expect(code(() => parseSignature(new TpmWriter().u16(0x1234).u16(ALG.SHA256).finish()))).toBe('TPM_WIRE_UNSUPPORTED');
  });
});

describe('TPMS_ATTEST and PCR selections', () => {
  it('parses a certify structure and refuses garbage', () => {
    const w = new TpmWriter().u32(0xff544347).u16(0x8017).tpm2b(Buffer.alloc(34, 1)).tpm2b(Buffer.from('nonce'));
    w.u32(0).u32(1).u32(2).u32(3).u8(1).u32(0).u32(7).tpm2b(Buffer.alloc(34, 2)).tpm2b(Buffer.alloc(34, 3));
    const a = parseAttest(w.finish());
    expect(a.type).toBe('certify');
    expect(a.extraData.toString()).toBe('nonce');
    expect(a.clockInfo.safe).toBe(true);
    expect(code(() => parseAttest(Buffer.from([0xff, 0x54])))).toBe('TPM_WIRE_TRUNCATED');
    expect(code(() => parseAttest(new TpmWriter().u32(0).u16(0x8014).tpm2b(Buffer.alloc(0)).tpm2b(Buffer.alloc(0)).u32(0).u32(0).u32(0).u32(0).u8(0).u32(0).u32(0).finish()))).toBe('TPM_WIRE_UNSUPPORTED');
  });
  it('round-trips PCR selections and refuses out-of-range PCRs', () => {
    expect(parsePcrSelection(marshalPcrSelection([{ hash: 'sha256', pcrs: [0, 7, 23] }]))).toEqual([{ hash: 'sha256', pcrs: [0, 7, 23] }]);
    expect(code(() => marshalPcrSelection([{ hash: 'sha256', pcrs: [24] }]))).toBe('TPM_WIRE_INVALID');
  });
});

describe('KDFs and MakeCredential', () => {
  it('KDFa/KDFe produce the requested lengths, depend on every input, and are deterministic', () => {
    const k = Buffer.alloc(32, 7);
    expect(kdfa(ALG.SHA256, k, 'STORAGE', Buffer.from('u'), Buffer.alloc(0), 128)).toHaveLength(16);
    expect(kdfa(ALG.SHA256, k, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), 256)).toHaveLength(32);
    expect(kdfa(ALG.SHA384, k, 'X', Buffer.alloc(0), Buffer.alloc(0), 520)).toHaveLength(65);
    expect(kdfa(ALG.SHA256, k, 'A', Buffer.alloc(0), Buffer.alloc(0), 128).equals(kdfa(ALG.SHA256, k, 'B', Buffer.alloc(0), Buffer.alloc(0), 128))).toBe(false);
    expect(kdfe(ALG.SHA256, k, 'IDENTITY', Buffer.from('a'), Buffer.from('b'), 256).equals(kdfe(ALG.SHA256, k, 'IDENTITY', Buffer.from('a'), Buffer.from('b'), 256))).toBe(true);
    expect(kdfe(ALG.SHA256, k, 'IDENTITY', Buffer.from('a'), Buffer.from('c'), 256).equals(kdfe(ALG.SHA256, k, 'IDENTITY', Buffer.from('a'), Buffer.from('b'), 256))).toBe(false);
  });

  it('is deterministic with injected randomness and refuses unusable EKs and credentials', () => {
    const { pub: ekP256 } = eccPublicFromNode({ ...identityKeyTemplate(), objectAttributes: ekRsaTemplate().objectAttributes, symmetric: { algorithm: ALG.AES, keyBits: 128, mode: ALG.CFB } });
    const name = Buffer.concat([Buffer.from([0, 0x0b]), Buffer.alloc(32, 5)]);
    const eph = Buffer.alloc(32, 9);
    const a = makeCredential({ ekPublic: ekP256, objectName: name, credential: Buffer.alloc(32, 1), random: { ephemeralPrivateKey: eph } });
    const b = makeCredential({ ekPublic: ekP256, objectName: name, credential: Buffer.alloc(32, 1), random: { ephemeralPrivateKey: eph } });
    expect(a.credentialBlob.equals(b.credentialBlob) && a.encryptedSecret.equals(b.encryptedSecret)).toBe(true);
    expect(a.credentialBlob.readUInt16BE(0)).toBe(a.credentialBlob.length - 2);
    expect(code(() => makeCredential({ ekPublic: ekP256, objectName: name, credential: Buffer.alloc(33) }))).toBe('TPM_WIRE_INVALID');
    const signingKey = eccPublicFromNode(identityKeyTemplate()).pub;
    expect(code(() => makeCredential({ ekPublic: signingKey, objectName: name, credential: Buffer.alloc(8) }))).toBe('TPM_WIRE_INVALID');
  });
});
