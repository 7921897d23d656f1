import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { TpmWriter } from './buffer-io.js';
import { ALG, ECC_CURVE, HIERARCHY } from './constants.js';
import { attributesOf, marshalPublic, marshalPublic2b, parsePublic2b, type TpmPublic } from './public.js';
import { SWTPM } from './swtpm-fixtures.js';
import {
  EK_POLICY_B,
  EK_POLICY_BRANCHES,
  attestationKeyTemplate,
  ekEccP256HighTemplate,
  ekEccP384HighTemplate,
  ekEccTemplate,
  ekPolicySession,
  ekRsaTemplate,
  identityKeyTemplate,
  matchesTemplate,
  srkEccTemplate,
} from './templates.js';

const POLICY_A = '837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa';

/** A created object's public area with its unique field replaced by the template's. */
function withUniqueOf(actual: TpmPublic, template: TpmPublic): TpmPublic {
  if (actual.type === 'rsa' && template.type === 'rsa') return { ...actual, modulus: template.modulus };
  if (actual.type === 'ecc' && template.type === 'ecc') return { ...actual, x: template.x, y: template.y };
  return actual;
}

describe('EK templates (TCG EK Credential Profile 2.0 §2.2.1.5, Annex B)', () => {
  it('L-1 (RSA 2048) marshals to the profile template byte for byte', () => {
    const expected =
      '0001' + '000b' + '000300b2' + '0020' + POLICY_A + // type, nameAlg, attributes, authPolicy
      '0006' + '0080' + '0043' + // AES-128-CFB
      '0010' + '0800' + '00000000' + // scheme NULL, 2048 bits, exponent 0
      '0100' + '00'.repeat(256); // unique: 256 zero bytes
    expect(marshalPublic(ekRsaTemplate()).toString('hex')).toBe(expected);
  });

  it('L-2 (ECC NIST P-256) marshals to the profile template byte for byte', () => {
    const expected =
      '0023' + '000b' + '000300b2' + '0020' + POLICY_A +
      '0006' + '0080' + '0043' + // AES-128-CFB
      '0010' + '0003' + '0010' + // scheme NULL, NIST P-256, kdf NULL
      '0020' + '00'.repeat(32) + '0020' + '00'.repeat(32);
    expect(marshalPublic(ekEccTemplate()).toString('hex')).toBe(expected);
  });

  it('EK attributes: fixedTPM|fixedParent|sensitiveDataOrigin|adminWithPolicy|restricted|decrypt', () => {
    for (const t of [ekRsaTemplate(), ekEccTemplate()]) {
      expect(attributesOf(t)).toEqual({
        fixedTPM: true, stClear: false, fixedParent: true, sensitiveDataOrigin: true, userWithAuth: false, adminWithPolicy: true,
        noDA: false, encryptedDuplication: false, restricted: true, decrypt: true, sign: false,
      });
    }
    // High-range EKs add userWithAuth (their PolicyB carries the admin path).
    expect(attributesOf(ekEccP384HighTemplate()).userWithAuth).toBe(true);
    expect(attributesOf(ekEccP256HighTemplate()).userWithAuth).toBe(true);
  });

  it('PolicyA is PolicySecret(TPM_RH_ENDORSEMENT) (Part 3 §23.4: the Name of a permanent handle is the handle)', () => {
    const cc = Buffer.from('00000151', 'hex'); // TPM_CC_PolicySecret
    const handle = new TpmWriter().u32(HIERARCHY.ENDORSEMENT).finish();
    const inner = createHash('sha256').update(Buffer.alloc(32)).update(cc).update(handle).digest();
    const policy = createHash('sha256').update(inner).update(Buffer.alloc(0) /* policyRef */).digest();
    expect(policy.toString('hex')).toBe(POLICY_A);
    expect(ekRsaTemplate().authPolicy.toString('hex')).toBe(POLICY_A);
  });

  it('PolicyB = PolicyOR(PolicyA, PolicyC) for SHA-256 and SHA-384 (EK profile Annex B.6)', () => {
    for (const alg of ['sha256', 'sha384'] as const) {
      const [a, c] = EK_POLICY_BRANCHES[alg];
      const size = a.length;
      const b = createHash(alg).update(Buffer.alloc(size)).update(Buffer.from('00000171', 'hex') /* TPM_CC_PolicyOR */).update(a).update(c).digest();
      expect(b.equals(EK_POLICY_B[alg])).toBe(true);
      const inner = createHash(alg).update(Buffer.alloc(size)).update(Buffer.from('00000151', 'hex')).update(Buffer.from('4000000b', 'hex')).digest();
      expect(createHash(alg).update(inner).digest().equals(a)).toBe(true);
    }
    expect(ekEccP384HighTemplate().authPolicy.equals(EK_POLICY_B.sha384)).toBe(true);
    expect(ekEccP256HighTemplate().authPolicy.equals(EK_POLICY_B.sha256)).toBe(true);
  });

  it('ekPolicySession picks the session hash and PolicyOR branches from the EK policy', () => {
    expect(ekPolicySession(ekRsaTemplate())).toEqual({ sessionHashAlg: ALG.SHA256 });
    expect(ekPolicySession(ekEccP384HighTemplate())).toEqual({ sessionHashAlg: ALG.SHA384, policyOr: EK_POLICY_BRANCHES.sha384 });
  });

  it('EKs a real TPM created from these templates differ from them only in unique', () => {
    // tpm2_createek builds L-1/L-2 itself; the same public came back from CreatePrimary with our bytes.
    expect(marshalPublic2b(withUniqueOf(parsePublic2b(SWTPM.ekRsaPub2b), ekRsaTemplate())).equals(marshalPublic2b(ekRsaTemplate()))).toBe(true);
    expect(marshalPublic2b(withUniqueOf(parsePublic2b(SWTPM.ekEccPub2b), ekEccTemplate())).equals(marshalPublic2b(ekEccTemplate()))).toBe(true);
  });
});

describe('SRK, attestation and identity key templates', () => {
  it('SRK: ECC P-256 restricted decryption key, AES-128-CFB, SHA-256, unique zeros (Provisioning Guidance §7.5.1)', () => {
    const t = srkEccTemplate();
    expect(t).toMatchObject({ type: 'ecc', nameAlg: ALG.SHA256, curveId: ECC_CURVE.NIST_P256, symmetric: { algorithm: ALG.AES, keyBits: 128, mode: ALG.CFB }, scheme: { scheme: ALG.NULL }, kdf: { scheme: ALG.NULL } });
    expect(t.x.equals(Buffer.alloc(32)) && t.y.equals(Buffer.alloc(32)) && t.authPolicy.length === 0).toBe(true);
    expect(attributesOf(t)).toEqual({
      fixedTPM: true, stClear: false, fixedParent: true, sensitiveDataOrigin: true, userWithAuth: true, adminWithPolicy: false,
      noDA: true, encryptedDuplication: false, restricted: true, decrypt: true, sign: false,
    });
  });

  it('AK: restricted ECDSA-SHA256 P-256 signing key, symmetric NULL, empty policy', () => {
    const t = attestationKeyTemplate();
    expect(t).toMatchObject({ type: 'ecc', nameAlg: ALG.SHA256, curveId: ECC_CURVE.NIST_P256, symmetric: { algorithm: ALG.NULL }, scheme: { scheme: ALG.ECDSA, hashAlg: ALG.SHA256 } });
    expect(t.authPolicy.length).toBe(0);
    expect(attributesOf(t)).toMatchObject({ restricted: true, sign: true, decrypt: false, fixedTPM: true, fixedParent: true, sensitiveDataOrigin: true, userWithAuth: true, adminWithPolicy: false });
  });

  it('identity key: unrestricted P-256 signing key, scheme NULL, never decrypt', () => {
    const t = identityKeyTemplate();
    expect(t).toMatchObject({ type: 'ecc', nameAlg: ALG.SHA256, curveId: ECC_CURVE.NIST_P256, symmetric: { algorithm: ALG.NULL }, scheme: { scheme: ALG.NULL } });
    expect(t.authPolicy.length).toBe(0);
    expect(attributesOf(t)).toMatchObject({ restricted: false, sign: true, decrypt: false, fixedTPM: true, fixedParent: true, sensitiveDataOrigin: true, userWithAuth: true });
  });

  it('the keys a real TPM created from the AK and identity templates keep every template field', () => {
    const ak = parsePublic2b(SWTPM.ak2Pub2b);
    const idk = parsePublic2b(SWTPM.idkPub2b);
    expect(marshalPublic(withUniqueOf(ak, attestationKeyTemplate())).equals(marshalPublic(attestationKeyTemplate()))).toBe(true);
    expect(marshalPublic(withUniqueOf(idk, identityKeyTemplate())).equals(marshalPublic(identityKeyTemplate()))).toBe(true);
    expect(matchesTemplate(ak, attestationKeyTemplate())).toBe(true);
    expect(matchesTemplate(idk, identityKeyTemplate())).toBe(true);
    expect(matchesTemplate(idk, attestationKeyTemplate())).toBe(false);
    expect(matchesTemplate(parsePublic2b(SWTPM.ekRsaPub2b), ekEccTemplate())).toBe(false);
  });

  it('every call returns a fresh object (callers may not share buffers)', () => {
    const a = ekRsaTemplate();
    a.modulus[0] = 1;
    a.authPolicy[0] = 0;
    expect(ekRsaTemplate().modulus[0]).toBe(0);
    expect(ekRsaTemplate().authPolicy.toString('hex')).toBe(POLICY_A);
  });
});
