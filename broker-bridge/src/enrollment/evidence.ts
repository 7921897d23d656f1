import { createHash, timingSafeEqual } from 'node:crypto';
import { CodedError } from '../../../common/coded-error.js';
import type { RejectionCode } from '../../../common/protocol/errors.js';
import { EkCertificateError, verifyEkCertificate, type EkTrustStore, type EkVerifyOptions, type ReadCertificate } from '../../../native/lib/ek-certificate.js';
import { parseAttest } from '../../../native/lib/wire/attest.js';
import { ALG, ECC_CURVE, TPM_GENERATED_VALUE, hashInfo } from '../../../native/lib/wire/constants.js';
import { attributesOf, objectName, parsePublic2b, publicToSpki, type TpmPublic } from '../../../native/lib/wire/public.js';
import { parseSignature, verifyTpmSignature, type TpmtSignature } from '../../../native/lib/wire/signature.js';
import { parseAndVerifyCsr } from '../ca/csr.js';
import type { CertificateRecord, DeviceRecord } from '../inventory/inventory.js';

/**
 * The individual checks of TPM evidence and of a device's standing, each refusing with the protocol's
 * rejection code. Pure functions of their inputs (and `now`): the enrollment and rotation services
 * call them in their documented order and stop at the first failure. A malformed-but-parseable input
 * fails with the code of the check it belongs to, never with an uncaught error (which would become a
 * retryable INTERNAL).
 */
export class EnrollmentRejection extends CodedError<RejectionCode> {
  readonly retryAfterSec: number | undefined;
  constructor(code: RejectionCode, message: string, opts?: { retryAfterSec?: number; cause?: unknown }) {
    super(code, message, opts?.cause === undefined ? undefined : { cause: opts.cause });
    this.retryAfterSec = opts?.retryAfterSec;
  }
}

export const reject = (code: RejectionCode, message: string, cause?: unknown): never => {
  throw new EnrollmentRejection(code, message, cause === undefined ? undefined : { cause });
};

export const sha256Hex = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Parses a TPM2B_PUBLIC from the wire, refusing with `code` when it is malformed. */
export function parseWirePublic(buf: Buffer, code: RejectionCode, what: string): TpmPublic {
  try {
    return parsePublic2b(buf);
  } catch (e) {
    return reject(code, `${what} is not a valid TPM2B_PUBLIC`, e);
  }
}

/**
 * EK certificate chains to a trusted manufacturer (RFC 5280 path validation and the TCG EK profile,
 * native/lib/ek-certificate.ts) and certifies exactly this EK public key. `options.ekValidity`
 * (default: the trust store's, else 'ignore-expiry') decides whether validity periods count;
 * `acceptedOutsideValidity` lists what was accepted outside its period, for the caller's log.
 */
export function checkEk(
  ekCertificate: Buffer,
  ekPublic: TpmPublic,
  trust: EkTrustStore,
  now: number,
  options?: EkVerifyOptions,
): { root: string; certificate: ReadCertificate; acceptedOutsideValidity: readonly string[] } {
  let verified;
  try {
    verified = verifyEkCertificate(ekCertificate, trust, now, options);
  } catch (e) {
    if (!(e instanceof EkCertificateError)) return reject('EK_UNTRUSTED', 'unparseable EK certificate', e);
    // EK_CERT_EXPIRED: the chain is valid but outside its validity period under the 'strict' policy.
    return reject(e.code === 'EK_CERT_EXPIRED' ? 'EK_CERT_EXPIRED' : 'EK_UNTRUSTED', `${e.code}: ${e.message}`, e);
  }
  let spki: Buffer;
  try {
    spki = publicToSpki(ekPublic);
  } catch (e) {
    return reject('EK_MISMATCH', 'EK public area holds no valid key', e);
  }
  if (!spki.equals(verified.ekSpki)) reject('EK_MISMATCH', 'EK certificate does not certify this EK public key');
  checkEkAttributes(ekPublic);
  return { root: verified.root, certificate: verified.certificate, acceptedOutsideValidity: verified.acceptedOutsideValidity };
}

/**
 * MakeCredential needs a storage-type EK: a restricted decryption key bound to its TPM (fixedTPM) with
 * a symmetric algorithm. Checked for every EK, with a certificate or factory-trusted.
 */
export function checkEkAttributes(ekPublic: TpmPublic): void {
  const a = attributesOf(ekPublic);
  if (!a.restricted || !a.decrypt || !a.fixedTPM || ekPublic.symmetric.algorithm !== ALG.AES) {
    reject('EK_MISMATCH', 'EK public area is not a restricted decryption key');
  }
}

/** The `ekKind` the device declares is the kind of the EK it sent: an RSA EK sent as 'ecc' (or the reverse) is refused. */
export function checkEkKind(ekKind: 'rsa' | 'ecc', ekPublic: TpmPublic): void {
  if (ekPublic.type !== ekKind) reject('EK_MISMATCH', `ekKind is '${ekKind}' but the EK sent is an ${ekPublic.type.toUpperCase()} key`);
}

/** The AK must be a TPM-bound restricted ECDSA P-256 signing key (so it signs only TPM-generated data). */
export function checkAk(ak: TpmPublic): void {
  // Pinned: the Name (what credential activation binds and the inventory records) is SHA-256.
  if (ak.nameAlg !== ALG.SHA256) reject('AK_INVALID', 'AK nameAlg must be SHA-256');
  const a = attributesOf(ak);
  if (!(a.restricted && a.sign && !a.decrypt && a.fixedTPM && a.fixedParent && a.sensitiveDataOrigin)) {
    reject('AK_INVALID', 'AK must be restricted, sign-only, fixedTPM, fixedParent and sensitiveDataOrigin');
  }
  if (ak.type !== 'ecc' || ak.curveId !== ECC_CURVE.NIST_P256 || ak.scheme.scheme !== ALG.ECDSA || ak.scheme.hashAlg !== ALG.SHA256) {
    reject('AK_INVALID', 'AK must be an ECC P-256 key with scheme ECDSA-SHA256');
  }
}

export function checkActivation(expected: Buffer, answered: Buffer): void {
  if (answered.length !== expected.length || !timingSafeEqual(answered, expected)) {
    reject('ACTIVATION_FAILED', 'credential activation secret does not match');
  }
}

/**
 * TPM2_Certify evidence: produced by the TPM (magic), of type certify, bound to this challenge's nonce,
 * naming exactly `key`, signed by `ak` with the AK's own scheme (ECDSA-SHA256, see checkAk: a signature
 * naming another hash is refused even if it would verify); and `key` itself must be SHA-256-named,
 * TPM-bound and generated inside it.
 *
 * qualifiedSigner is the AK's *qualified* Name, H(QN(parent) ‖ Name(AK)) (Part 1 §16), not its Name:
 * it cannot be compared with Name(AK) without the parent's qualified name, which the protocol does not
 * carry. What is checked is that it is a Name-shaped value of the AK's nameAlg; the binding to the AK
 * is the signature (a restricted AK signs only TPM-generated structures, so the TPM filled it in).
 */
export function checkCertify(opts: { certifyInfo: Buffer; signature: Buffer; ak: TpmPublic; key: TpmPublic; nonce: Buffer }): void {
  let attest;
  try {
    attest = parseAttest(opts.certifyInfo);
  } catch (e) {
    return reject('CERTIFY_INVALID', 'certifyInfo is not a TPMS_ATTEST', e);
  }
  if (attest.magic !== TPM_GENERATED_VALUE) reject('CERTIFY_INVALID', 'certifyInfo was not generated by a TPM');
  if (attest.type !== 'certify') return reject('CERTIFY_INVALID', 'certifyInfo is not a certification');
  if (!attest.extraData.equals(opts.nonce)) reject('CERTIFY_INVALID', 'certification is not bound to this challenge');
  if (opts.key.nameAlg !== ALG.SHA256) reject('CERTIFY_INVALID', 'identity key nameAlg must be SHA-256');
  if (!attest.certified.name.equals(objectName(opts.key))) reject('CERTIFY_INVALID', 'certification names a different key');
  const a = attributesOf(opts.key);
  if (!(a.fixedTPM && a.fixedParent && a.sensitiveDataOrigin && a.sign && !a.decrypt && !a.restricted)) {
    reject('CERTIFY_INVALID', 'identity key must be fixedTPM, fixedParent, sensitiveDataOrigin, sign-only, unrestricted');
  }
  if (!isNameOf(attest.qualifiedSigner, opts.ak.nameAlg)) reject('CERTIFY_INVALID', 'qualifiedSigner is not a qualified name of the AK\'s nameAlg');
  let sig: TpmtSignature;
  try {
    sig = parseSignature(opts.signature);
  } catch (e) {
    return reject('CERTIFY_INVALID', 'certification signature is malformed', e);
  }
  const akHash = opts.ak.scheme.hashAlg === undefined ? undefined : hashInfo(opts.ak.scheme.hashAlg)?.name;
  if (sig.sigAlg !== 'ecdsa' || opts.ak.scheme.scheme !== ALG.ECDSA || sig.hash !== akHash) {
    reject('CERTIFY_INVALID', 'certification signature does not use the AK\'s scheme');
  }
  let ok = false;
  try {
    ok = verifyTpmSignature(opts.ak, opts.certifyInfo, sig);
  } catch (e) {
    reject('CERTIFY_INVALID', 'certification signature is malformed', e);
  }
  if (!ok) reject('CERTIFY_INVALID', 'certification is not signed by the attested AK');
}

/** nameAlg ‖ digest of that algorithm's size. */
function isNameOf(name: Buffer, nameAlg: number): boolean {
  const h = hashInfo(nameAlg);
  return h !== undefined && name.length === 2 + h.size && name.readUInt16BE(0) === nameAlg;
}

/** CSR signature is valid, its subject is the device, and its key is the certified TPM key. */
export function checkCsr(csr: Buffer, deviceId: string, key: TpmPublic): Buffer {
  let verified;
  try {
    verified = parseAndVerifyCsr(csr);
  } catch (e) {
    return reject('CSR_INVALID', `certificate request is invalid: ${(e as Error).message}`, e);
  }
  if (verified.commonName !== deviceId) reject('CSR_INVALID', 'certificate request subject is not this device');
  let certifiedSpki: Buffer;
  try {
    certifiedSpki = publicToSpki(key);
  } catch (e) {
    // e.g. a genuine TPM key on a curve the fleet does not issue for (BN P-256): no CSR can match it.
    return reject('CSR_KEY_MISMATCH', 'the certified key is not a key the fleet can certify', e);
  }
  if (!verified.publicKeySpki.equals(certifiedSpki)) reject('CSR_KEY_MISMATCH', 'certificate request key is not the certified key');
  return verified.publicKeySpki;
}

/**
 * The AK presented now is the one credential activation bound to the EK at enrollment (`akNameHex`,
 * recorded in the inventory). An AK whose Name cannot even be computed cannot be that one.
 */
export function checkAkMatches(ak: TpmPublic, akNameHex: string): void {
  let name: string;
  try {
    name = objectName(ak).toString('hex');
  } catch (e) {
    return reject('AK_MISMATCH', 'AK Name cannot be computed', e);
  }
  const a = Buffer.from(name, 'hex');
  const b = Buffer.from(akNameHex, 'hex');
  if (a.length !== b.length || !timingSafeEqual(a, b)) reject('AK_MISMATCH', 'AK differs from the one bound at enrollment');
}

/**
 * A rotated key must be new: never the key of a certificate already issued to this device (a stolen
 * old certificate plus a re-certified old key would otherwise outlive rotation). Refused as CSR_INVALID:
 * the request is well formed and its key TPM-resident, but not acceptable; the device must make a new key.
 */
export function checkKeyIsNew(keySpki: Buffer, issued: readonly CertificateRecord[]): void {
  const hash = sha256Hex(keySpki);
  if (issued.some((c) => c.keySpkiHash === hash)) reject('CSR_INVALID', 'key was certified before; rotation needs a new key');
}

/** The device may rotate or re-attest: registered, enrolled (has an AK Name), not revoked. */
export function checkDeviceActive(device: DeviceRecord | undefined): asserts device is DeviceRecord & { akName: string } {
  if (!device) return reject('DEVICE_UNKNOWN', 'device is not registered');
  if (device.akName === undefined) reject('NOT_ENROLLED', 'device has not enrolled yet');
  if (device.revokedAt !== undefined) reject('DEVICE_REVOKED', 'device is revoked');
}

/**
 * `serial` is a certificate of this device that it may still use: known and this device's
 * (IDENTITY_UNKNOWN), not revoked (DEVICE_REVOKED), not superseded (IDENTITY_UNKNOWN), not expired by the
 * bridge clock (IDENTITY_EXPIRED).
 */
export function checkCurrentCertificate(cert: CertificateRecord | undefined, deviceId: string, now: number): CertificateRecord {
  if (!cert || cert.deviceId !== deviceId) return reject('IDENTITY_UNKNOWN', 'not a certificate of this device');
  if (cert.revokedAt !== undefined) reject('DEVICE_REVOKED', 'certificate is revoked');
  if (cert.supersededAt !== undefined) reject('IDENTITY_UNKNOWN', 'certificate was superseded');
  if (cert.notAfter <= now) reject('IDENTITY_EXPIRED', 'certificate expired');
  return cert;
}
