import { describe, expect, it } from 'vitest';
import {
  constants as cryptoConstants,
  createDecipheriv,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  privateDecrypt,
  type KeyObject,
} from 'node:crypto';
import { TpmReader } from './buffer-io.js';
import { ALG, ECC_CURVE, hashInfo } from './constants.js';
import { TpmWireError } from './errors.js';
import { kdfa, kdfe } from './kdf.js';
import { makeCredential } from './make-credential.js';
import { attributeBits, curveInfo, type EccPublic, type RsaPublic, type TpmPublic } from './public.js';

const hex = (s: string) => Buffer.from(s, 'hex');
const EMPTY = Buffer.alloc(0);

const code = (fn: () => unknown) => {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(TpmWireError);
    return (e as TpmWireError).code;
  }
  return 'no error';
};

const EK_ATTRS = attributeBits(['fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'adminWithPolicy', 'restricted', 'decrypt']);
const aes = (keyBits: number) => ({ algorithm: ALG.AES, keyBits, mode: ALG.CFB });

const NODE_CURVE = { [ECC_CURVE.NIST_P256]: 'prime256v1', [ECC_CURVE.NIST_P384]: 'secp384r1' } as const;

/** TCG EK template shapes: L-1 RSA-2048, L-2 P-256 (SHA-256, AES-128), H-3 P-384 (SHA-384, AES-256). */
function rsaEk(publicKey: KeyObject): RsaPublic {
  const n = Buffer.from(publicKey.export({ format: 'jwk' }).n!, 'base64url');
  return { type: 'rsa', nameAlg: ALG.SHA256, objectAttributes: EK_ATTRS, authPolicy: Buffer.alloc(32), symmetric: aes(128), scheme: { scheme: ALG.NULL }, keyBits: 2048, exponent: 0, modulus: n };
}

function eccEk(publicKey: KeyObject, curveId: 0x0003 | 0x0004): EccPublic {
  const jwk = publicKey.export({ format: 'jwk' });
  const p384 = curveId === ECC_CURVE.NIST_P384;
  return {
    type: 'ecc',
    nameAlg: p384 ? ALG.SHA384 : ALG.SHA256,
    objectAttributes: EK_ATTRS | (p384 ? attributeBits(['userWithAuth']) : 0),
    authPolicy: Buffer.alloc(p384 ? 48 : 32),
    symmetric: aes(p384 ? 256 : 128),
    scheme: { scheme: ALG.NULL },
    curveId,
    kdf: { scheme: ALG.NULL },
    x: Buffer.from(jwk.x!, 'base64url'),
    y: Buffer.from(jwk.y!, 'base64url'),
  };
}

function newEk(kind: 'rsa' | 'p256' | 'p384'): { ek: TpmPublic; privateKey: KeyObject } {
  if (kind === 'rsa') {
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    return { ek: rsaEk(publicKey), privateKey };
  }
  const curveId = kind === 'p256' ? ECC_CURVE.NIST_P256 : ECC_CURVE.NIST_P384;
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: NODE_CURVE[curveId] });
  return { ek: eccEk(publicKey, curveId), privateKey };
}

/**
 * TPM2_ActivateCredential written out from the spec (Part 1 §24, Annex B.10/C.6), independent of
 * makeCredential: recover the seed with the EK private key, check the outer HMAC, decrypt the credential.
 */
function activate(ek: TpmPublic, ekPrivate: KeyObject, name: Buffer, credentialBlob: Buffer, encryptedSecret: Buffer): Buffer {
  const h = hashInfo(ek.nameAlg)!;
  const secret = new TpmReader(encryptedSecret).tpm2b('TPM2B_ENCRYPTED_SECRET');
  let seed: Buffer;
  if (ek.type === 'rsa') {
    seed = privateDecrypt({ key: ekPrivate, padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: h.name, oaepLabel: Buffer.from('IDENTITY\0') }, secret);
  } else {
    const r = new TpmReader(secret);
    const x = r.tpm2b('x');
    const y = r.tpm2b('y');
    r.expectEnd('TPMS_ECC_POINT');
    const crv = curveInfo(ek.curveId).jwk;
    const eph = createPublicKey({ key: { kty: 'EC', crv, x: x.toString('base64url'), y: y.toString('base64url') }, format: 'jwk' });
    seed = kdfe(ek.nameAlg, diffieHellman({ privateKey: ekPrivate, publicKey: eph }), 'IDENTITY', x, ek.x, h.size * 8);
  }
  const id = new TpmReader(credentialBlob);
  const idObject = new TpmReader(id.tpm2b('TPM2B_ID_OBJECT'));
  id.expectEnd('TPM2B_ID_OBJECT');
  const outerHmac = idObject.tpm2b('integrityHMAC');
  const encIdentity = idObject.rest();
  const hmacKey = kdfa(ek.nameAlg, seed, 'INTEGRITY', EMPTY, EMPTY, h.size * 8);
  if (!createHmac(h.name, hmacKey).update(encIdentity).update(name).digest().equals(outerHmac)) throw new Error('TPM_RC_INTEGRITY');
  const keyBits = ek.symmetric.keyBits!;
  const d = createDecipheriv(`aes-${keyBits}-cfb`, kdfa(ek.nameAlg, seed, 'STORAGE', name, EMPTY, keyBits), Buffer.alloc(16));
  const plain = new TpmReader(Buffer.concat([d.update(encIdentity), d.final()]));
  const credential = plain.tpm2b('TPM2B_DIGEST');
  plain.expectEnd('encIdentity');
  return credential;
}

const tpmName = (nameAlg: number, fill: number) => Buffer.concat([Buffer.from([nameAlg >> 8, nameAlg & 0xff]), Buffer.alloc(hashInfo(nameAlg)!.size, fill)]);

/**
 * Fixtures from tpm2-tools 5.4 `tpm2_makecredential -T none` (tools credential file: 0xBADCC0DE, version 1,
 * TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET) for EKs whose private keys are below (test keys, nothing else).
 */
const TOOLS = {
  name: Buffer.concat([hex('000b'), Buffer.from('ak-name-for-kat-0123456789abcdef')]),
  credential: Buffer.from('credential-secret-0123456789abcd'),
  rsaSeed: hex('df4fe69bd68b11ac2c10fd242549985b7aaf18998ebc7d44a4173bdeaed2ba4b'),
  rsaIdObject: hex(
    '004400200fee287542f828e98605b1f21c5ae3db376fa195ce895b1668d13c736cd72824aadb1ee5ed3ad7629413fe5ec63c6fbde88603f2f454d3dfea13414424560f591a5f',
  ),
  p256: {
    key: 'MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgD/UxRrnD0/yFIhwQxkQFFsFvy/0UR/DE2QBqtYLej+ihRANCAASRlxbCl6C3yQ63F9MmrOfQx92pRh3z7GR+kT7zqJXCvs1a9L5tFEIqo5l4j2VRcZ81b5hHC7Lmcn09IXq2b0aU',
    file: hex(
      'badcc0de0000000100440020988fe2ce8b8e9218c489882615669936e64a600b20fb1b3442426632d40d7c0639c140a62a9501260efc35a521e295a797aa8f8f6c201986ab9fe5612b403b6759d60044002058da62bb3affc99d30fa2856f07313582e20ce377e891ca201b423838191c61f0020ddaa541eb7856ac26361a861dd5cf0de7201d97ffd1add225718071ca1caca98',
    ),
  },
  p384: {
    key: 'MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDABBFhWrq+RhwEfWQ/cXUetJHkOWh0F0q+UNwffmUGS2qyQkuHkh5hhKjomfZSRXRChZANiAAS2NuPtjYzmc/x8rCWDZu2rOFGy7DE03CBibbr/xMBLEb0RVa+XmyUp0CilxkneFDC7VFmawxdtdebR2J3Hj6ke6bzIgEObIaIPyVXv9cILV9LwsiVE8NT8AzzO0LgOZes=',
    file: hex(
      'badcc0de000000010054003006019c1fa5cc584781caceeec5d74413a75c4a8fb15365c405ce589518686baa774af5a5fcdcf44d39578aac923c8e1effd7c2a0e016b4499479fbcd105e868fa53c2ab3ecff0d2eb955e3ce37ae31c222f100640030a2bd78183bcfbe887210067610da880abde65290fdbf9aca79fe3e89056cd04f8a6ae33abb12a0f343895743874e7a4800302b66e63e4f2c42e70fb539e97dd0904fc2116121e307fb796eb0827780093d00a43333bd1502cc26b6343b4943be8f1a',
    ),
  },
};

function splitToolsFile(file: Buffer): { credentialBlob: Buffer; encryptedSecret: Buffer } {
  const r = new TpmReader(file);
  expect(r.u32()).toBe(0xbadcc0de);
  expect(r.u32()).toBe(1);
  const credentialBlob = r.bytes(2 + file.readUInt16BE(8));
  const encryptedSecret = r.rest();
  expect(encryptedSecret.readUInt16BE(0)).toBe(encryptedSecret.length - 2);
  return { credentialBlob, encryptedSecret };
}

describe('makeCredential against tpm2_makecredential', () => {
  it('RSA EK: with the seed tpm2-tools chose, produces its TPM2B_ID_OBJECT byte for byte', () => {
    const { ek, privateKey } = newEk('rsa');
    const out = makeCredential({ ekPublic: ek, objectName: TOOLS.name, credential: TOOLS.credential, random: { seed: TOOLS.rsaSeed } });
    expect(out.credentialBlob.toString('hex')).toBe(TOOLS.rsaIdObject.toString('hex'));
    expect(out.encryptedSecret).toHaveLength(2 + 256);
    expect(activate(ek, privateKey, TOOLS.name, out.credentialBlob, out.encryptedSecret).equals(TOOLS.credential)).toBe(true);
  });

  it.each(['p256', 'p384'] as const)('ECC %s EK: the reference activation opens tpm2-tools output and ours alike', (kind) => {
    const privateKey = createPrivateKey({ key: Buffer.from(TOOLS[kind].key, 'base64'), format: 'der', type: 'pkcs8' });
    const ek = eccEk(createPublicKey(privateKey), kind === 'p256' ? ECC_CURVE.NIST_P256 : ECC_CURVE.NIST_P384);
    const tools = splitToolsFile(TOOLS[kind].file);
    expect(activate(ek, privateKey, TOOLS.name, tools.credentialBlob, tools.encryptedSecret).equals(TOOLS.credential)).toBe(true);
    const ours = makeCredential({ ekPublic: ek, objectName: TOOLS.name, credential: TOOLS.credential });
    expect(ours.credentialBlob).toHaveLength(tools.credentialBlob.length);
    expect(ours.encryptedSecret).toHaveLength(tools.encryptedSecret.length);
    expect(activate(ek, privateKey, TOOLS.name, ours.credentialBlob, ours.encryptedSecret).equals(TOOLS.credential)).toBe(true);
  });
});

describe('makeCredential', () => {
  it.each(['rsa', 'p256', 'p384'] as const)('%s EK: the credential opens only for the Name it was made for', (kind) => {
    const { ek, privateKey } = newEk(kind);
    const size = hashInfo(ek.nameAlg)!.size;
    const name = tpmName(ALG.SHA256, 0xa5);
    for (const credential of [Buffer.from([0x42]), Buffer.alloc(size, 0x17)]) {
      const out = makeCredential({ ekPublic: ek, objectName: name, credential });
      // TPM2B_ID_OBJECT = u16 ‖ TPM2B_DIGEST(outerHMAC) ‖ encIdentity(TPM2B_DIGEST of the credential)
      expect(out.credentialBlob.readUInt16BE(0)).toBe(out.credentialBlob.length - 2);
      expect(out.credentialBlob.readUInt16BE(2)).toBe(size);
      expect(out.credentialBlob.length).toBe(2 + 2 + size + 2 + credential.length);
      expect(out.encryptedSecret.readUInt16BE(0)).toBe(out.encryptedSecret.length - 2);
      expect(activate(ek, privateKey, name, out.credentialBlob, out.encryptedSecret).equals(credential)).toBe(true);
      expect(() => activate(ek, privateKey, tpmName(ALG.SHA256, 0xa6), out.credentialBlob, out.encryptedSecret)).toThrow('TPM_RC_INTEGRITY');
    }
  });

  it('encrypts the ECC seed as the ephemeral TPMS_ECC_POINT (x and y TPM2Bs of the curve size)', () => {
    const { ek } = newEk('p384');
    const eph = generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).privateKey;
    const jwk = eph.export({ format: 'jwk' });
    const out = makeCredential({ ekPublic: ek, objectName: tpmName(ALG.SHA256, 1), credential: Buffer.alloc(48, 1), random: { ephemeralPrivateKey: eph } });
    const point = Buffer.concat([Buffer.from([0, 48]), Buffer.from(jwk.x!, 'base64url'), Buffer.from([0, 48]), Buffer.from(jwk.y!, 'base64url')]);
    expect(out.encryptedSecret.toString('hex')).toBe(Buffer.concat([Buffer.from([0, 100]), point]).toString('hex'));
  });

  it('is deterministic with injected randomness, and random without it', () => {
    const name = tpmName(ALG.SHA256, 5);
    const credential = Buffer.alloc(32, 1);
    const { ek: rsa } = newEk('rsa');
    const seed = Buffer.alloc(32, 9);
    const r1 = makeCredential({ ekPublic: rsa, objectName: name, credential, random: { seed } });
    const r2 = makeCredential({ ekPublic: rsa, objectName: name, credential, random: { seed } });
    expect(r1.credentialBlob.equals(r2.credentialBlob)).toBe(true); // OAEP itself stays randomised
    expect(makeCredential({ ekPublic: rsa, objectName: name, credential }).credentialBlob.equals(r1.credentialBlob)).toBe(false);

    for (const kind of ['p256', 'p384'] as const) {
      const { ek } = newEk(kind);
      const eph = generateKeyPairSync('ec', { namedCurve: kind === 'p256' ? 'prime256v1' : 'secp384r1' }).privateKey;
      const a = makeCredential({ ekPublic: ek, objectName: name, credential, random: { ephemeralPrivateKey: eph } });
      const b = makeCredential({ ekPublic: ek, objectName: name, credential, random: { ephemeralPrivateKey: eph } });
      expect(a.credentialBlob.equals(b.credentialBlob) && a.encryptedSecret.equals(b.encryptedSecret)).toBe(true);
      // The raw private scalar is accepted too and means the same key.
      const d = Buffer.from(eph.export({ format: 'jwk' }).d!, 'base64url');
      const c = makeCredential({ ekPublic: ek, objectName: name, credential, random: { ephemeralPrivateKey: d } });
      expect(c.credentialBlob.equals(a.credentialBlob) && c.encryptedSecret.equals(a.encryptedSecret)).toBe(true);
      const fresh = makeCredential({ ekPublic: ek, objectName: name, credential });
      expect(fresh.encryptedSecret.equals(a.encryptedSecret)).toBe(false);
    }
  });

  it('refuses EKs that are not restricted AES-CFB decryption keys with codes', () => {
    const { ek } = newEk('p256');
    const name = tpmName(ALG.SHA256, 5);
    const mc = (ekPublic: TpmPublic, credential = Buffer.alloc(16, 1)) => code(() => makeCredential({ ekPublic, objectName: name, credential }));
    expect(mc(ek)).toBe('no error');
    expect(mc({ ...ek, objectAttributes: attributeBits(['fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'decrypt']) })).toBe('TPM_WIRE_INVALID');
    expect(mc({ ...ek, objectAttributes: attributeBits(['fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'restricted', 'sign']) })).toBe('TPM_WIRE_INVALID');
    expect(mc({ ...ek, objectAttributes: EK_ATTRS | attributeBits(['sign']) })).toBe('TPM_WIRE_INVALID');
    expect(mc({ ...ek, symmetric: { algorithm: ALG.NULL } })).toBe('TPM_WIRE_INVALID');
    expect(mc({ ...ek, symmetric: { algorithm: ALG.AES, keyBits: 128, mode: ALG.CBC } })).toBe('TPM_WIRE_INVALID');
    expect(mc({ ...ek, symmetric: { algorithm: ALG.AES, keyBits: 64, mode: ALG.CFB } })).toBe('TPM_WIRE_INVALID');
    expect(mc({ ...ek, symmetric: { algorithm: ALG.CAMELLIA, keyBits: 128, mode: ALG.CFB } })).toBe('TPM_WIRE_UNSUPPORTED');
    expect(mc({ ...ek, symmetric: { algorithm: ALG.SM4, keyBits: 128, mode: ALG.CFB } })).toBe('TPM_WIRE_UNSUPPORTED');
    expect(mc({ ...ek, scheme: { scheme: ALG.ECDH, hashAlg: ALG.SHA256 } })).toBe('TPM_WIRE_INVALID');
    expect(mc({ ...ek, nameAlg: 0x0012 /* SM3_256 */ })).toBe('TPM_WIRE_UNSUPPORTED');
    expect(mc({ ...(ek as EccPublic), curveId: 0x0010 /* BN_P256 */ })).toBe('TPM_WIRE_UNSUPPORTED');
    expect(mc({ ...(ek as EccPublic), curveId: 0x0020 /* SM2_P256 */ })).toBe('TPM_WIRE_UNSUPPORTED');
    // A point off the curve would leak the ephemeral key's residues (invalid-curve attack).
    expect(mc({ ...(ek as EccPublic), y: Buffer.alloc(32, 1) })).toBe('TPM_WIRE_INVALID');
    expect(mc({ ...(ek as EccPublic), x: Buffer.alloc(33, 1) })).toBe('TPM_WIRE_INVALID');
  });

  it('refuses oversize or empty credentials, malformed Names and unusable injected randomness with codes', () => {
    const { ek: p384 } = newEk('p384');
    const { ek: rsa } = newEk('rsa');
    const name = tpmName(ALG.SHA256, 5);
    const mc = (ekPublic: TpmPublic, credential: Buffer, objectName = name, random?: { seed?: Buffer; ephemeralPrivateKey?: KeyObject | Buffer }) =>
      code(() => makeCredential({ ekPublic, objectName, credential, ...(random ? { random } : {}) }));
    expect(mc(p384, Buffer.alloc(48))).toBe('no error');
    expect(mc(p384, Buffer.alloc(49))).toBe('TPM_WIRE_INVALID');
    expect(mc(rsa, Buffer.alloc(32))).toBe('no error');
    expect(mc(rsa, Buffer.alloc(33))).toBe('TPM_WIRE_INVALID');
    expect(mc(rsa, Buffer.alloc(0))).toBe('TPM_WIRE_INVALID');
    expect(mc(rsa, Buffer.alloc(8), tpmName(ALG.SHA384, 1))).toBe('no error');
    for (const bad of [Buffer.alloc(0), Buffer.from([0, 0x0b]), name.subarray(0, 33), Buffer.concat([name, Buffer.alloc(1)]), tpmName(ALG.SHA256, 1).fill(0x12, 0, 2)]) {
      expect(mc(rsa, Buffer.alloc(8), bad)).toBe('TPM_WIRE_INVALID');
    }
    expect(mc(rsa, Buffer.alloc(8), name, { seed: Buffer.alloc(31) })).toBe('TPM_WIRE_INVALID');
    const p256Key = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
    expect(mc(p384, Buffer.alloc(8), name, { ephemeralPrivateKey: p256Key })).toBe('TPM_WIRE_INVALID');
    expect(mc(p384, Buffer.alloc(8), name, { ephemeralPrivateKey: createPublicKey(generateKeyPairSync('ec', { namedCurve: 'secp384r1' }).privateKey) })).toBe('TPM_WIRE_INVALID');
    expect(mc(p384, Buffer.alloc(8), name, { ephemeralPrivateKey: Buffer.alloc(48, 0xff) })).toBe('TPM_WIRE_INVALID');
  });
});
