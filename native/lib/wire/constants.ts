/** TPM 2.0 Part 2 constants used by this project (TPM_ALG_ID §6.3, TPM_ECC_CURVE §6.4, TPMA_OBJECT §8.3). */
export const ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  MGF1: 0x0007,
  KEYEDHASH: 0x0008,
  XOR: 0x000a,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  SM4: 0x0013,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  SM2: 0x001b,
  ECSCHNORR: 0x001c,
  ECMQV: 0x001d,
  KDF1_SP800_56A: 0x0020,
  KDF2: 0x0021,
  KDF1_SP800_108: 0x0022,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  CAMELLIA: 0x0026,
  CTR: 0x0040,
  OFB: 0x0041,
  CBC: 0x0042,
  CFB: 0x0043,
  ECB: 0x0044,
} as const;

export const ECC_CURVE = {
  NIST_P256: 0x0003,
  NIST_P384: 0x0004,
  NIST_P521: 0x0005,
} as const;

export const OBJECT_ATTR = {
  fixedTPM: 0x00000002,
  stClear: 0x00000004,
  fixedParent: 0x00000010,
  sensitiveDataOrigin: 0x00000020,
  userWithAuth: 0x00000040,
  adminWithPolicy: 0x00000080,
  noDA: 0x00000400,
  encryptedDuplication: 0x00000800,
  restricted: 0x00010000,
  decrypt: 0x00020000,
  sign: 0x00040000,
} as const;

export type ObjectAttributeName = keyof typeof OBJECT_ATTR;

/** TPM_GENERATED_VALUE: TPMS_ATTEST.magic of every structure the TPM itself signed (Part 2 §6.2). */
export const TPM_GENERATED_VALUE = 0xff544347;

export const ST_ATTEST = {
  CERTIFY: 0x8017,
  QUOTE: 0x8018,
} as const;

export const HIERARCHY = {
  OWNER: 0x40000001,
  NULL: 0x40000007,
  ENDORSEMENT: 0x4000000b,
  PLATFORM: 0x4000000c,
} as const;

/**
 * EK certificate NV indices (TCG EK Credential Profile 2.0 §2.2.1.4): low range L-1 RSA-2048 and L-2 ECC
 * P-256 (most hardware TPMs), high range H-2 ECC P-256 and H-3 ECC P-384 (swtpm 0.7 writes H-3).
 */
export const EK_CERT_NV = {
  RSA_2048: 0x01c00002,
  ECC_P256: 0x01c0000a,
  ECC_P256_HIGH: 0x01c00014,
  ECC_P384_HIGH: 0x01c00016,
} as const;

export const CAP = {
  ALGS: 0x00000000,
  TPM_PROPERTIES: 0x00000006,
} as const;

export const PT = {
  FAMILY_INDICATOR: 0x100,
  REVISION: 0x102,
  MANUFACTURER: 0x105,
  VENDOR_STRING_1: 0x106,
  VENDOR_STRING_2: 0x107,
  VENDOR_STRING_3: 0x108,
  VENDOR_STRING_4: 0x109,
  FIRMWARE_VERSION_1: 0x10b,
  FIRMWARE_VERSION_2: 0x10c,
} as const;

export type HashName = 'sha1' | 'sha256' | 'sha384' | 'sha512';

const HASHES: ReadonlyMap<number, { name: HashName; size: number }> = new Map([
  [ALG.SHA1, { name: 'sha1', size: 20 }],
  [ALG.SHA256, { name: 'sha256', size: 32 }],
  [ALG.SHA384, { name: 'sha384', size: 48 }],
  [ALG.SHA512, { name: 'sha512', size: 64 }],
]);

export function hashInfo(alg: number): { name: HashName; size: number } | undefined {
  return HASHES.get(alg);
}

export function hashAlgOf(name: HashName): number {
  for (const [alg, info] of HASHES) if (info.name === name) return alg;
  throw new Error(`unknown hash ${name}`);
}
