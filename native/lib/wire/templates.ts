import { ALG, ECC_CURVE, type ObjectAttributeName } from './constants.js';
import { attributeBits, type EccPublic, type RsaPublic, type TpmPublic } from './public.js';

/**
 * Object templates. EK templates reproduce the keys whose certificates TPM vendors write to NV (TCG EK
 * Credential Profile 2.0 §2.2.1.4: L-1, L-2, H-2, H-3); the SRK follows the TCG TPM v2.0 Provisioning
 * Guidance §7.5.1; AK and identity keys are this project's.
 */

/** PolicySecret(TPM_RH_ENDORSEMENT) with SHA-256: the low-range EK authPolicy (PolicyA). */
const POLICY_A_SHA256 = Buffer.from('837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa', 'hex');
/** High-range EK authPolicy (PolicyB = PolicyOR(PolicyA, PolicyC)), SHA-256 and SHA-384 variants. */
const POLICY_B_SHA256 = Buffer.from('ca3d0a99a2b93906f7a3342414efcfb3a385d44cd1fd459089d19b5071c0b7a0', 'hex');
const POLICY_B_SHA384 = Buffer.from(
  'b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419cacb47ba09699646150f9fc000f3f80e12',
  'hex',
);

/**
 * The branches of PolicyB (TCG EK Credential Profile 2.0 §B.6): PolicyA = PolicySecret(endorsement),
 * PolicyC = PolicyAuthorizeNV(index I-1 (SHA-256) / I-2 (SHA-384)). Checked: PolicyOR(A, C) reproduces
 * POLICY_B_* exactly (see templates.test.ts).
 */
export const EK_POLICY_BRANCHES = {
  sha256: [
    POLICY_A_SHA256,
    Buffer.from('3767e2edd43ff45a3a7e1eaefcef78643dca964632e7aad82c673a30d8633fde', 'hex'),
  ],
  sha384: [
    Buffer.from('8bbf2266537c171cb56e403c4dc1d4b64f432611dc386e6f532050c3278c930e143e8bb1133824ccb431053871c6db53', 'hex'),
    Buffer.from('d6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5b4947c2d73e63005eed2dc2b3593d165', 'hex'),
  ],
} as const;

/** How to satisfy an EK's authPolicy in a policy session: PolicySecret, then PolicyOR for PolicyB. */
export function ekPolicySession(ek: TpmPublic): { sessionHashAlg: number; policyOr?: readonly Buffer[] } {
  if (ek.authPolicy.equals(POLICY_A_SHA256)) return { sessionHashAlg: ALG.SHA256 };
  if (ek.authPolicy.equals(POLICY_B_SHA256)) return { sessionHashAlg: ALG.SHA256, policyOr: EK_POLICY_BRANCHES.sha256 };
  if (ek.authPolicy.equals(POLICY_B_SHA384)) return { sessionHashAlg: ALG.SHA384, policyOr: EK_POLICY_BRANCHES.sha384 };
  return { sessionHashAlg: ek.nameAlg };
}

export const EK_POLICY_B = { sha256: POLICY_B_SHA256, sha384: POLICY_B_SHA384 } as const;

const EK_ATTRS: ObjectAttributeName[] = ['fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'adminWithPolicy', 'restricted', 'decrypt'];
/** Every key this project creates: bound to this TPM, generated inside it, usable with empty auth. */
const KEY_ATTRS: ObjectAttributeName[] = ['fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'userWithAuth'];

const aes = (keyBits: number) => ({ algorithm: ALG.AES, keyBits, mode: ALG.CFB });
const nullScheme = { scheme: ALG.NULL };

/** L-1: RSA 2048, NV 0x01c00002. */
export function ekRsaTemplate(): RsaPublic {
  return {
    type: 'rsa',
    nameAlg: ALG.SHA256,
    objectAttributes: attributeBits(EK_ATTRS),
    authPolicy: Buffer.from(POLICY_A_SHA256),
    symmetric: aes(128),
    scheme: nullScheme,
    keyBits: 2048,
    exponent: 0,
    modulus: Buffer.alloc(256),
  };
}

/** L-2: ECC NIST P-256, NV 0x01c0000a (the common case on hardware TPMs). */
export function ekEccTemplate(): EccPublic {
  return {
    type: 'ecc',
    nameAlg: ALG.SHA256,
    objectAttributes: attributeBits(EK_ATTRS),
    authPolicy: Buffer.from(POLICY_A_SHA256),
    symmetric: aes(128),
    scheme: nullScheme,
    curveId: ECC_CURVE.NIST_P256,
    kdf: nullScheme,
    x: Buffer.alloc(32),
    y: Buffer.alloc(32),
  };
}

/** H-2: ECC NIST P-256 high range, NV 0x01c00014: userWithAuth, PolicyB, empty unique. */
export function ekEccP256HighTemplate(): EccPublic {
  return {
    ...ekEccTemplate(),
    objectAttributes: attributeBits([...EK_ATTRS, 'userWithAuth']),
    authPolicy: Buffer.from(POLICY_B_SHA256),
    x: Buffer.alloc(0),
    y: Buffer.alloc(0),
  };
}

/** H-3: ECC NIST P-384 high range, NV 0x01c00016 (what swtpm 0.7 certifies). */
export function ekEccP384HighTemplate(): EccPublic {
  return {
    type: 'ecc',
    nameAlg: ALG.SHA384,
    objectAttributes: attributeBits([...EK_ATTRS, 'userWithAuth']),
    authPolicy: Buffer.from(POLICY_B_SHA384),
    symmetric: aes(256),
    scheme: nullScheme,
    curveId: ECC_CURVE.NIST_P384,
    kdf: nullScheme,
    x: Buffer.alloc(0),
    y: Buffer.alloc(0),
  };
}

/** Storage root key: ECC P-256 restricted decryption key (Provisioning Guidance §7.5.1). */
export function srkEccTemplate(): EccPublic {
  return {
    type: 'ecc',
    nameAlg: ALG.SHA256,
    objectAttributes: attributeBits([...KEY_ATTRS, 'noDA', 'restricted', 'decrypt']),
    authPolicy: Buffer.alloc(0),
    symmetric: aes(128),
    scheme: nullScheme,
    curveId: ECC_CURVE.NIST_P256,
    kdf: nullScheme,
    x: Buffer.alloc(32),
    y: Buffer.alloc(32),
  };
}

/**
 * Attestation key: restricted ECDSA-SHA256 signing key, so it signs only TPM-generated structures
 * (certify, quote), never an external digest that could mimic one. noDA: it has no auth to guess, and
 * without it every power loss on a device would count towards dictionary-attack lockout.
 */
export function attestationKeyTemplate(): EccPublic {
  return {
    type: 'ecc',
    nameAlg: ALG.SHA256,
    objectAttributes: attributeBits([...KEY_ATTRS, 'noDA', 'restricted', 'sign']),
    authPolicy: Buffer.alloc(0),
    symmetric: { algorithm: ALG.NULL },
    scheme: { scheme: ALG.ECDSA, hashAlg: ALG.SHA256 },
    curveId: ECC_CURVE.NIST_P256,
    kdf: nullScheme,
    x: Buffer.alloc(0),
    y: Buffer.alloc(0),
  };
}

/**
 * Identity key: unrestricted ECC P-256 signing key (never decrypt, never duplicable). Scheme NULL so
 * the caller picks the hash per signature (TLS may ask for SHA-384). noDA as for the AK.
 */
export function identityKeyTemplate(): EccPublic {
  return {
    type: 'ecc',
    nameAlg: ALG.SHA256,
    objectAttributes: attributeBits([...KEY_ATTRS, 'noDA', 'sign']),
    authPolicy: Buffer.alloc(0),
    symmetric: { algorithm: ALG.NULL },
    scheme: nullScheme,
    curveId: ECC_CURVE.NIST_P256,
    kdf: nullScheme,
    x: Buffer.alloc(0),
    y: Buffer.alloc(0),
  };
}

/** True when `actual` (a created object) was made from `template` (unique and key bits aside). */
export function matchesTemplate(actual: TpmPublic, template: TpmPublic): boolean {
  if (actual.type !== template.type || actual.nameAlg !== template.nameAlg) return false;
  if (actual.objectAttributes !== template.objectAttributes || !actual.authPolicy.equals(template.authPolicy)) return false;
  if (JSON.stringify(actual.symmetric) !== JSON.stringify(template.symmetric)) return false;
  if (JSON.stringify(actual.scheme) !== JSON.stringify(template.scheme)) return false;
  if (actual.type === 'ecc' && template.type === 'ecc') return actual.curveId === template.curveId;
  if (actual.type === 'rsa' && template.type === 'rsa') return actual.keyBits === template.keyBits;
  return false;
}
