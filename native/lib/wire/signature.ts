import { KeyObject, constants as cryptoConstants, verify as cryptoVerify } from 'node:crypto';
import { TpmReader } from './buffer-io.js';
import { ALG, hashAlgOf, hashInfo, type HashName } from './constants.js';
import { TpmWireError } from './errors.js';
import { ecdsaVerifyDigest, rsapssVerifyDigest, rsassaVerifyDigest, type NistCurve } from './prehashed.js';
import { publicToKeyObject, type TpmPublic } from './public.js';

/** A parsed TPMT_SIGNATURE (Part 2 §11.3.4). */
export type TpmtSignature =
  | { readonly sigAlg: 'ecdsa'; readonly hash: HashName; readonly r: Buffer; readonly s: Buffer }
  | { readonly sigAlg: 'rsassa' | 'rsapss'; readonly hash: HashName; readonly sig: Buffer };

export function parseSignature(buf: Buffer): TpmtSignature {
  const r = new TpmReader(buf);
  const sigAlg = r.u16('sigAlg');
  const hashAlg = r.u16('hash');
  const hash = hashInfo(hashAlg)?.name;
  if (!hash) throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported signature hash 0x${hashAlg.toString(16)}`);
  let out: TpmtSignature;
  if (sigAlg === ALG.ECDSA) {
    out = { sigAlg: 'ecdsa', hash, r: r.tpm2b('signatureR'), s: r.tpm2b('signatureS') };
  } else if (sigAlg === ALG.RSASSA || sigAlg === ALG.RSAPSS) {
    out = { sigAlg: sigAlg === ALG.RSASSA ? 'rsassa' : 'rsapss', hash, sig: r.tpm2b('sig') };
  } else {
    throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported signature algorithm 0x${sigAlg.toString(16)}`);
  }
  r.expectEnd('TPMT_SIGNATURE');
  return out;
}

function derInteger(v: Buffer): Buffer {
  let i = 0;
  while (i < v.length - 1 && v[i] === 0) i++;
  let body = v.subarray(i);
  if (body.length === 0) body = Buffer.from([0]);
  if (body[0]! & 0x80) body = Buffer.concat([Buffer.from([0]), body]);
  return Buffer.concat([Buffer.from([0x02, body.length]), body]);
}

/** DER ECDSA-Sig-Value (SEQUENCE of two INTEGERs) from r and s. */
export function ecdsaToDer(r: Buffer, s: Buffer): Buffer {
  const body = Buffer.concat([derInteger(r), derInteger(s)]);
  const len = body.length < 0x80 ? Buffer.from([body.length]) : Buffer.from([0x81, body.length]);
  return Buffer.concat([Buffer.from([0x30]), len, body]);
}

/** r ‖ s, each left-padded to `size` bytes (WebCrypto / JOSE form). */
export function ecdsaToRaw(r: Buffer, s: Buffer, size = 32): Buffer {
  const pad = (v: Buffer) => {
    let i = 0;
    while (i < v.length - size && v[i] === 0) i++;
    const t = v.subarray(i);
    if (t.length > size) throw new TpmWireError('TPM_WIRE_INVALID', `ECDSA component longer than ${size} bytes`);
    return Buffer.concat([Buffer.alloc(size - t.length), t]);
  };
  return Buffer.concat([pad(r), pad(s)]);
}

/**
 * Verifies a TPM signature over `message` (hashed here with the signature's hash, as the TPM hashed
 * the TPMS_ATTEST before signing). Returns false for a wrong signature, throws only for malformed input.
 */
export function verifyTpmSignature(publicKey: TpmPublic | KeyObject, message: Buffer, sig: TpmtSignature | Buffer): boolean {
  const parsed = Buffer.isBuffer(sig) ? parseSignature(sig) : sig;
  const key = publicKey instanceof KeyObject ? publicKey : publicToKeyObject(publicKey);
  try {
    if (parsed.sigAlg === 'ecdsa') {
      return cryptoVerify(parsed.hash, message, { key, dsaEncoding: 'der' }, ecdsaToDer(parsed.r, parsed.s));
    }
    if (parsed.sigAlg === 'rsassa') return cryptoVerify(parsed.hash, message, key, parsed.sig);
    // Salt length recovered from the signature: TPMs differ (digest size in the reference code, maximum in others).
    return cryptoVerify(parsed.hash, message, { key, padding: cryptoConstants.RSA_PKCS1_PSS_PADDING, saltLength: cryptoConstants.RSA_PSS_SALTLEN_AUTO }, parsed.sig);
  } catch {
    return false;
  }
}

/**
 * Verifies a TPM signature over a digest computed by the caller (what TPM2_Sign signs: the TPM never
 * sees the message). `digest` must be as long as the signature's hash. Same results as verifyTpmSignature.
 */
export function verifyDigestSignature(publicKey: TpmPublic | KeyObject, digest: Buffer, sig: TpmtSignature | Buffer): boolean {
  const parsed = Buffer.isBuffer(sig) ? parseSignature(sig) : sig;
  const size = hashInfo(hashAlgOf(parsed.hash))!.size;
  if (digest.length !== size) throw new TpmWireError('TPM_WIRE_INVALID', `digest is ${digest.length} bytes, ${parsed.hash} needs ${size}`);
  const key = publicKey instanceof KeyObject ? publicKey : publicToKeyObject(publicKey);
  if (parsed.sigAlg === 'ecdsa') {
    if (key.asymmetricKeyType !== 'ec') return false;
    const jwk = key.export({ format: 'jwk' });
    if (jwk.crv !== 'P-256' && jwk.crv !== 'P-384' && jwk.crv !== 'P-521') return false;
    return ecdsaVerifyDigest(jwk.crv as NistCurve, Buffer.from(jwk.x ?? '', 'base64url'), Buffer.from(jwk.y ?? '', 'base64url'), digest, parsed.r, parsed.s);
  }
  if (key.asymmetricKeyType !== 'rsa') return false;
  return parsed.sigAlg === 'rsassa' ? rsassaVerifyDigest(key, parsed.hash, digest, parsed.sig) : rsapssVerifyDigest(key, parsed.hash, digest, parsed.sig);
}
