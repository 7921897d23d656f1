import {
  createCipheriv,
  createECDH,
  createHmac,
  createPrivateKey,
  diffieHellman,
  generateKeyPairSync,
  publicEncrypt,
  randomBytes,
  constants as cryptoConstants,
  type KeyObject,
} from 'node:crypto';
import { TpmWriter, tpm2b } from './buffer-io.js';
import { ALG, hashInfo } from './constants.js';
import { TpmWireError } from './errors.js';
import { kdfa, kdfe } from './kdf.js';
import { attributesOf, curveInfo, publicToKeyObject, type EccPublic, type RsaPublic, type TpmPublic } from './public.js';

export interface MakeCredentialInput {
  readonly ekPublic: TpmPublic;
  /** TPM Name (nameAlg ‖ digest) of the object the credential is bound to, e.g. the AK. */
  readonly objectName: Buffer;
  /** The secret: 1 to digest-size-of-EK-nameAlg bytes. */
  readonly credential: Buffer;
  /**
   * Injected randomness, for deterministic tests only: the seed (RSA EK; digest size of the EK nameAlg) or
   * the ephemeral ECDH private key (ECC EK; a KeyObject on the EK curve, or its raw private scalar).
   */
  readonly random?: { readonly seed?: Buffer; readonly ephemeralPrivateKey?: KeyObject | Buffer };
}

export interface MakeCredentialOutput {
  /** Marshalled TPM2B_ID_OBJECT. */
  readonly credentialBlob: Buffer;
  /** Marshalled TPM2B_ENCRYPTED_SECRET. */
  readonly encryptedSecret: Buffer;
}

const NODE_CURVE: Readonly<Record<string, string>> = { 'P-256': 'prime256v1', 'P-384': 'secp384r1', 'P-521': 'secp521r1' };
const AES_KEY_BITS: ReadonlySet<number> = new Set([128, 192, 256]);
const EMPTY = Buffer.alloc(0);

function invalid(message: string, cause?: unknown): TpmWireError {
  return new TpmWireError('TPM_WIRE_INVALID', message, cause === undefined ? undefined : { cause });
}

/**
 * TPM2_MakeCredential refuses a handle that is not an asymmetric decryption key (Part 3 §12.6, TPM_RC_TYPE);
 * it must also be restricted, since only then does it carry the symmetric definition that keys the
 * credential (Part 1 §24) and can TPM2_ActivateCredential use it.
 */
function checkEk(ek: TpmPublic): { hash: string; digestSize: number; keyBits: number } {
  const h = hashInfo(ek.nameAlg);
  if (!h) throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported EK nameAlg 0x${ek.nameAlg.toString(16)}`);
  const a = attributesOf(ek);
  if (!a.restricted || !a.decrypt || a.sign) throw invalid('EK must be a restricted decryption key');
  const sym = ek.symmetric;
  // Part 1 §24 encrypts the credential with the EK's symmetric algorithm in CFB mode.
  if (sym.algorithm === ALG.NULL || sym.mode !== ALG.CFB) throw invalid('EK symmetric definition must be a block cipher in CFB mode');
  if (sym.algorithm !== ALG.AES) throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported EK symmetric algorithm 0x${sym.algorithm.toString(16)}`);
  if (sym.keyBits === undefined || !AES_KEY_BITS.has(sym.keyBits)) throw invalid(`EK symmetric key size ${sym.keyBits} is not an AES key size`);
  // The scheme of a restricted decryption key is TPM_ALG_NULL (Part 2 §12.2.3.5, §12.2.3.6); any other
  // would change how the TPM decrypts the seed.
  if (ek.scheme.scheme !== ALG.NULL) throw invalid('EK scheme must be TPM_ALG_NULL');
  return { hash: h.name, digestSize: h.size, keyBits: sym.keyBits };
}

function checkObjectName(name: Buffer): void {
  const h = name.length >= 2 ? hashInfo(name.readUInt16BE(0)) : undefined;
  if (!h || name.length !== 2 + h.size) throw invalid('objectName is not an object Name (nameAlg ‖ digest)');
}

/** RSA secret sharing (Part 1 Annex B.10): OAEP with the EK nameAlg and label "IDENTITY" plus its NUL. */
function rsaSeed(ek: RsaPublic, hash: string, digestSize: number, injected: Buffer | undefined): { seed: Buffer; secret: Buffer } {
  if (injected && injected.length !== digestSize) throw invalid(`seed must be ${digestSize} bytes`);
  const seed = injected ?? randomBytes(digestSize);
  const secret = publicEncrypt(
    { key: publicToKeyObject(ek), padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash, oaepLabel: Buffer.from('IDENTITY\0', 'latin1') },
    seed,
  );
  return { seed, secret };
}

function ephemeralKey(nodeCurve: string, jwkCurve: string, given: KeyObject | Buffer | undefined): KeyObject {
  if (given === undefined) return generateKeyPairSync('ec', { namedCurve: nodeCurve }).privateKey;
  if (Buffer.isBuffer(given)) {
    const ecdh = createECDH(nodeCurve);
    try {
      ecdh.setPrivateKey(given);
    } catch (e) {
      throw invalid('ephemeral private scalar is not valid on the EK curve', e);
    }
    const pub = ecdh.getPublicKey();
    const size = (pub.length - 1) / 2;
    const b64 = (b: Buffer) => b.toString('base64url');
    return createPrivateKey({
      key: { kty: 'EC', crv: jwkCurve, d: b64(ecdh.getPrivateKey()), x: b64(pub.subarray(1, 1 + size)), y: b64(pub.subarray(1 + size)) },
      format: 'jwk',
    });
  }
  if (given.type !== 'private' || given.asymmetricKeyType !== 'ec' || given.asymmetricKeyDetails?.namedCurve !== nodeCurve) {
    throw invalid(`ephemeral key must be an EC private key on ${jwkCurve}`);
  }
  return given;
}

function leftPad(b: Buffer, size: number): Buffer {
  if (b.length > size) throw invalid(`ECC value longer than ${size} bytes`);
  return b.length === size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}

/**
 * ECC secret sharing (Part 1 Annex C.6, one-pass ECDH): Z is the x-coordinate of [d_e]Q_EK, and
 * seed = KDFe(nameAlg, Z, "IDENTITY", Q_e.x, Q_EK.x, digest bits). Q_EK.x is hashed as the public area
 * holds it, since that is what the TPM's CryptSecretDecrypt passes to KDFe.
 */
function eccSeed(ek: EccPublic, digestSize: number, injected: KeyObject | Buffer | undefined): { seed: Buffer; secret: Buffer } {
  const curve = curveInfo(ek.curveId);
  const nodeCurve = NODE_CURVE[curve.jwk];
  if (!nodeCurve) throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported ECC curve ${curve.jwk}`);
  const ekKey = publicToKeyObject(ek); // refuses points not on the curve (invalid-curve attacks)
  const eph = ephemeralKey(nodeCurve, curve.jwk, injected);
  let z: Buffer;
  try {
    z = diffieHellman({ privateKey: eph, publicKey: ekKey });
  } catch (e) {
    throw invalid('ECDH with the EK public key failed', e);
  }
  const jwk = eph.export({ format: 'jwk' });
  const ephX = leftPad(Buffer.from(jwk.x ?? '', 'base64url'), curve.size);
  const ephY = leftPad(Buffer.from(jwk.y ?? '', 'base64url'), curve.size);
  const seed = kdfe(ek.nameAlg, leftPad(z, curve.size), 'IDENTITY', ephX, ek.x, digestSize * 8);
  return { seed, secret: new TpmWriter().tpm2b(ephX).tpm2b(ephY).finish() }; // TPMS_ECC_POINT
}

/**
 * TPM2_MakeCredential in software (Part 3 §12.6, Part 1 §24): protects `credential` so that only the
 * TPM holding the EK's private key, with an object named `objectName` loaded, recovers it with
 * TPM2_ActivateCredential.
 */
export function makeCredential(input: MakeCredentialInput): MakeCredentialOutput {
  const { ekPublic: ek, objectName, credential } = input;
  const { hash, digestSize, keyBits } = checkEk(ek);
  // Part 3 §12.6.1: credential is a TPM2B_DIGEST no larger than the EK nameAlg digest (TPM_RC_SIZE);
  // an empty one is refused too, as it would be a challenge with nothing secret in it.
  if (credential.length === 0 || credential.length > digestSize) throw invalid(`credential must be 1..${digestSize} bytes`);
  checkObjectName(objectName);

  const { seed, secret } =
    ek.type === 'rsa' ? rsaSeed(ek, hash, digestSize, input.random?.seed) : eccSeed(ek, digestSize, input.random?.ephemeralPrivateKey);

  // Part 1 §24: the seed keys both the encryption (bound to the Name) and the integrity HMAC.
  const symKey = kdfa(ek.nameAlg, seed, 'STORAGE', objectName, EMPTY, keyBits);
  const cipher = createCipheriv(`aes-${keyBits}-cfb`, symKey, Buffer.alloc(16)); // IV is zero (Part 1 §24)
  const encIdentity = Buffer.concat([cipher.update(tpm2b(credential)), cipher.final()]);
  const hmacKey = kdfa(ek.nameAlg, seed, 'INTEGRITY', EMPTY, EMPTY, digestSize * 8);
  const outerHmac = createHmac(hash, hmacKey).update(encIdentity).update(objectName).digest();

  return {
    credentialBlob: tpm2b(Buffer.concat([tpm2b(outerHmac), encIdentity])),
    encryptedSecret: tpm2b(secret),
  };
}
