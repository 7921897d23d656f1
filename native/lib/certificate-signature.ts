import { constants, verify, type KeyObject } from 'node:crypto';
import { DerError, TAG, contentOf, expectTlv, readSingle, readTlv } from '../../common/der.js';
import { readOid } from './certificate-fields.js';

/**
 * Checks a certificate's signature exactly: over the TBSCertificate bytes as they are encoded (never
 * re-encoded, so a vendor's non-canonical DER is checked as the vendor signed it), with the algorithm
 * the certificate names, which must be the same in TBSCertificate.signature and
 * Certificate.signatureAlgorithm (RFC 5280 §4.1.1.2, as OpenSSL's X509_verify requires).
 *
 * Algorithms: RSA PKCS#1 v1.5 and ECDSA with SHA-1, SHA-224, SHA-256, SHA-384, SHA-512; RSASSA-PSS
 * with explicit parameters (MGF1 with the same hash, trailer 1); Ed25519. SHA-1 is accepted because
 * older TPM vendor roots and intermediates are signed with it and X509_verify accepts it too: an
 * attacker cannot make a vendor CA sign a chosen prefix, which is what a SHA-1 collision would need.
 * Anything else: CertificateSignatureError, which callers treat as a signature that does not verify.
 */
export class CertificateSignatureError extends Error {
  override readonly name = 'CertificateSignatureError';
}

export interface SignedCertificate {
  readonly tbs: Buffer;
  readonly tbsSignatureAlgorithm: Buffer;
  readonly signatureAlgorithm: Buffer;
  readonly signature: Buffer;
}

const HASH_OIDS: Readonly<Record<string, string>> = {
  '1.3.14.3.2.26': 'sha1',
  '2.16.840.1.101.3.4.2.4': 'sha224',
  '2.16.840.1.101.3.4.2.1': 'sha256',
  '2.16.840.1.101.3.4.2.2': 'sha384',
  '2.16.840.1.101.3.4.2.3': 'sha512',
};

/** Signature algorithm OID → [family, hash]. */
const SIGNATURE_OIDS: Readonly<Record<string, readonly ['rsa' | 'ecdsa' | 'ed25519', string | null]>> = {
  '1.2.840.113549.1.1.5': ['rsa', 'sha1'],
  '1.2.840.113549.1.1.14': ['rsa', 'sha224'],
  '1.2.840.113549.1.1.11': ['rsa', 'sha256'],
  '1.2.840.113549.1.1.12': ['rsa', 'sha384'],
  '1.2.840.113549.1.1.13': ['rsa', 'sha512'],
  '1.2.840.10045.4.1': ['ecdsa', 'sha1'],
  '1.2.840.10045.4.3.1': ['ecdsa', 'sha224'],
  '1.2.840.10045.4.3.2': ['ecdsa', 'sha256'],
  '1.2.840.10045.4.3.3': ['ecdsa', 'sha384'],
  '1.2.840.10045.4.3.4': ['ecdsa', 'sha512'],
  '1.3.101.112': ['ed25519', null],
};
const RSASSA_PSS = '1.2.840.113549.1.1.10';
const MGF1 = '1.2.840.113549.1.1.8';

/** True when `cert`'s signature verifies with `issuerKey`; false for a wrong key or a bad signature. */
export function certificateSignatureValid(cert: SignedCertificate, issuerKey: KeyObject): boolean {
  if (!cert.tbsSignatureAlgorithm.equals(cert.signatureAlgorithm)) {
    throw new CertificateSignatureError('the signature algorithm in the TBSCertificate differs from the outer one');
  }
  const alg = signatureAlgorithm(cert.signatureAlgorithm);
  try {
    if (alg.family === 'ecdsa') return verify(alg.hash, cert.tbs, { key: issuerKey, dsaEncoding: 'der' }, cert.signature);
    if (alg.family === 'rsa') return verify(alg.hash, cert.tbs, { key: issuerKey, padding: constants.RSA_PKCS1_PADDING }, cert.signature);
    if (alg.family === 'rsa-pss') {
      return verify(alg.hash, cert.tbs, { key: issuerKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: alg.saltLength }, cert.signature);
    }
    return verify(null, cert.tbs, issuerKey, cert.signature);
  } catch {
    // A key of another type than the algorithm (an EC issuer key for an RSA signature), a malformed
    // ECDSA signature: it does not verify.
    return false;
  }
}

type Algorithm =
  | { readonly family: 'rsa' | 'ecdsa'; readonly hash: string }
  | { readonly family: 'ed25519'; readonly hash: null }
  | { readonly family: 'rsa-pss'; readonly hash: string; readonly saltLength: number };

function signatureAlgorithm(der: Buffer): Algorithm {
  try {
    const seq = readSingle(der, TAG.SEQUENCE, 'AlgorithmIdentifier');
    const oidTlv = expectTlv(der, seq.contentStart, seq.end, TAG.OID, 'algorithm');
    const oid = readOid(der, oidTlv, 'algorithm');
    const params = oidTlv.end < seq.end ? der.subarray(oidTlv.end, seq.end) : undefined;
    if (oid === RSASSA_PSS) return pssParameters(params);
    const known = SIGNATURE_OIDS[oid];
    if (!known) throw new CertificateSignatureError(`unsupported signature algorithm ${oid}`);
    const [family, hash] = known;
    // RSA: parameters NULL (or absent, which some encoders write); ECDSA, Ed25519: absent.
    if (params && !(family === 'rsa' && params.equals(Buffer.from([TAG.NULL, 0])))) {
      throw new CertificateSignatureError(`unexpected parameters for signature algorithm ${oid}`);
    }
    return family === 'ed25519' ? { family, hash: null } : { family, hash: hash as string };
  } catch (e) {
    if (e instanceof DerError) throw new CertificateSignatureError(`malformed signature algorithm: ${e.message}`);
    throw e;
  }
}

/** RFC 4055 §3.1 RSASSA-PSS-params; defaults SHA-1, MGF1-SHA-1, salt 20, trailer 1. */
function pssParameters(params: Buffer | undefined): Algorithm {
  if (!params) throw new CertificateSignatureError('RSASSA-PSS without parameters');
  const seq = readSingle(params, TAG.SEQUENCE, 'RSASSA-PSS-params');
  let hash = 'sha1';
  let mgfHash = 'sha1';
  let saltLength = 20;
  for (let p = seq.contentStart; p < seq.end; ) {
    const field = readTlv(params, p, seq.end);
    const inner = contentOf(params, field);
    if (field.tag === 0xa0) hash = hashOf(inner);
    else if (field.tag === 0xa1) {
      const mgf = readSingle(inner, TAG.SEQUENCE, 'maskGenAlgorithm');
      const mgfOid = expectTlv(inner, mgf.contentStart, mgf.end, TAG.OID, 'maskGenAlgorithm');
      if (readOid(inner, mgfOid, 'maskGenAlgorithm') !== MGF1) throw new CertificateSignatureError('RSASSA-PSS with a mask generation function other than MGF1');
      mgfHash = hashOf(inner.subarray(mgfOid.end, mgf.end));
    } else if (field.tag === 0xa2) {
      const salt = contentOf(inner, readSingle(inner, TAG.INTEGER, 'saltLength'));
      if (salt.length === 0 || salt.length > 2 || ((salt[0] as number) & 0x80) !== 0) throw new CertificateSignatureError('RSASSA-PSS: bad saltLength');
      saltLength = salt.readUIntBE(0, salt.length);
    } else if (field.tag === 0xa3) {
      const trailer = contentOf(inner, readSingle(inner, TAG.INTEGER, 'trailerField'));
      if (!trailer.equals(Buffer.from([1]))) throw new CertificateSignatureError('RSASSA-PSS: trailerField must be 1');
    } else throw new CertificateSignatureError('RSASSA-PSS: unknown parameter');
    p = field.end;
  }
  // node:crypto uses one hash for the message and for MGF1.
  if (mgfHash !== hash) throw new CertificateSignatureError('RSASSA-PSS with MGF1 over another hash than the message hash');
  return { family: 'rsa-pss', hash, saltLength };
}

/** A hash AlgorithmIdentifier (parameters NULL or absent). */
function hashOf(der: Buffer): string {
  const seq = readSingle(der, TAG.SEQUENCE, 'hashAlgorithm');
  const oidTlv = expectTlv(der, seq.contentStart, seq.end, TAG.OID, 'hashAlgorithm');
  const oid = readOid(der, oidTlv, 'hashAlgorithm');
  const hash = HASH_OIDS[oid];
  if (!hash) throw new CertificateSignatureError(`unsupported hash ${oid}`);
  if (oidTlv.end !== seq.end && !der.subarray(oidTlv.end, seq.end).equals(Buffer.from([TAG.NULL, 0]))) {
    throw new CertificateSignatureError(`unexpected parameters for hash ${oid}`);
  }
  return hash;
}
