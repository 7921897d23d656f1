import { createCipheriv, createECDH, createHmac, publicEncrypt, randomBytes, constants as cryptoConstants } from 'node:crypto';
import { TpmWriter, tpm2b } from './buffer-io.js';
import { ALG, hashInfo } from './constants.js';
import { TpmWireError } from './errors.js';
import { kdfa, kdfe } from './kdf.js';
import { attributesOf, curveInfo, publicToKeyObject, type TpmPublic } from './public.js';

/**
 * TPM2_MakeCredential in software (TPM 2.0 Part 1 §24, Part 3 §12.6): seals `credential` so that only
 * the TPM holding `ekPublic`'s private key, with an object named `objectName` loaded, recovers it with
 * TPM2_ActivateCredential. This is what binds an AK to an EK during enrollment.
 */
export interface MakeCredentialInput {
  readonly ekPublic: TpmPublic;
  /** TPM Name of the key the credential is bound to (the AK). */
  readonly objectName: Buffer;
  /** The secret; at most the EK nameAlg's digest size. */
  readonly credential: Buffer;
  /** Injected randomness for deterministic tests: the RSA seed, or the ECC ephemeral private scalar. */
  readonly random?: { readonly seed?: Buffer; readonly ephemeralPrivateKey?: Buffer };
}

export interface MakeCredentialOutput {
  /** Marshalled TPM2B_ID_OBJECT. */
  readonly credentialBlob: Buffer;
  /** Marshalled TPM2B_ENCRYPTED_SECRET. */
  readonly encryptedSecret: Buffer;
}

const ECDH_CURVE: Record<string, string> = { 'P-256': 'prime256v1', 'P-384': 'secp384r1', 'P-521': 'secp521r1' };

function leftPad(b: Buffer, size: number): Buffer {
  return b.length >= size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}

/** Seed and its encryption to the EK (Part 1 §24.4 / Annex B.10.3 RSA, C.6.4 ECC). */
function protectSeed(ek: TpmPublic, digestSize: number, random: MakeCredentialInput['random']): { seed: Buffer; secret: Buffer } {
  const h = hashInfo(ek.nameAlg)!;
  if (ek.type === 'rsa') {
    const seed = random?.seed ?? randomBytes(digestSize);
    const secret = publicEncrypt(
      { key: publicToKeyObject(ek), padding: cryptoConstants.RSA_PKCS1_OAEP_PADDING, oaepHash: h.name, oaepLabel: Buffer.from('IDENTITY\0', 'latin1') },
      seed,
    );
    return { seed, secret };
  }
  const curve = curveInfo(ek.curveId);
  const ecdh = createECDH(ECDH_CURVE[curve.jwk]!);
  if (random?.ephemeralPrivateKey) ecdh.setPrivateKey(random.ephemeralPrivateKey);
  else ecdh.generateKeys();
  const ephPub = ecdh.getPublicKey();
  const ephX = ephPub.subarray(1, 1 + curve.size);
  const ephY = ephPub.subarray(1 + curve.size);
  const ekX = leftPad(ek.x, curve.size);
  const ekPoint = Buffer.concat([Buffer.from([4]), ekX, leftPad(ek.y, curve.size)]);
  let z: Buffer;
  try {
    z = ecdh.computeSecret(ekPoint); // x-coordinate of the shared point
  } catch (e) {
    throw new TpmWireError('TPM_WIRE_INVALID', 'EK public point is not on its curve', { cause: e });
  }
  const seed = kdfe(ek.nameAlg, leftPad(z, curve.size), 'IDENTITY', ephX, ekX, digestSize * 8);
  // TPMS_ECC_POINT: x and y as TPM2B.
  const secret = new TpmWriter().tpm2b(ephX).tpm2b(ephY).finish();
  return { seed, secret };
}

export function makeCredential(input: MakeCredentialInput): MakeCredentialOutput {
  const { ekPublic: ek, objectName, credential } = input;
  const h = hashInfo(ek.nameAlg);
  if (!h) throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported EK nameAlg 0x${ek.nameAlg.toString(16)}`);
  const a = attributesOf(ek);
  if (!a.restricted || !a.decrypt) throw new TpmWireError('TPM_WIRE_INVALID', 'EK must be a restricted decryption key');
  if (ek.symmetric.algorithm !== ALG.AES || ek.symmetric.mode !== ALG.CFB || !ek.symmetric.keyBits) {
    throw new TpmWireError('TPM_WIRE_UNSUPPORTED', 'EK symmetric algorithm must be AES-CFB');
  }
  if (credential.length === 0 || credential.length > h.size) {
    throw new TpmWireError('TPM_WIRE_INVALID', `credential must be 1..${h.size} bytes`);
  }
  if (objectName.length < 2) throw new TpmWireError('TPM_WIRE_INVALID', 'objectName is empty');

  const { seed, secret } = protectSeed(ek, h.size, input.random);
  const keyBits = ek.symmetric.keyBits;
  const symKey = kdfa(ek.nameAlg, seed, 'STORAGE', objectName, Buffer.alloc(0), keyBits);
  const cipher = createCipheriv(`aes-${keyBits}-cfb`, symKey, Buffer.alloc(16));
  const encIdentity = Buffer.concat([cipher.update(tpm2b(credential)), cipher.final()]);
  const hmacKey = kdfa(ek.nameAlg, seed, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), h.size * 8);
  const outerHmac = createHmac(h.name, hmacKey).update(encIdentity).update(objectName).digest();
  const idObject = Buffer.concat([tpm2b(outerHmac), encIdentity]);
  return { credentialBlob: tpm2b(idObject), encryptedSecret: tpm2b(secret) };
}
