import { createHash } from 'node:crypto';
import { EkCertificateError, verifyEkCertificate, type EkCertificateErrorCode, type EkTrustStore, type EkVerifyOptions } from '../../native/lib/ek-certificate.js';
import type { EkKind, Tpm } from '../../native/lib/tpm.js';
import { StationError } from './errors.js';

/** A TPM's endorsement key, proven to be the key its manufacturer certified. */
export interface VerifiedEk {
  readonly kind: EkKind;
  /** DER EK certificate as read from the TPM's NV (or the file supplied for the device). */
  readonly certificate: Buffer;
  /** DER SubjectPublicKeyInfo of the EK. */
  readonly spki: Buffer;
  /** hex SHA-256 of `spki`: the EK's identity in the fleet inventory. */
  readonly publicHash: string;
  /** Subject of the manufacturer root the certificate chains to. */
  readonly root: string;
}

/** An EK registered under the factory-trusted EK policy: no certificate, its public key read from the TPM. */
export interface FactoryTrustedEk {
  readonly kind: EkKind;
  readonly spki: Buffer;
  readonly publicHash: string;
}

const KINDS: readonly EkKind[] = ['ecc', 'rsa'];

export function ekPublicHash(spki: Buffer): string {
  return createHash('sha256').update(spki).digest('hex');
}

/**
 * Reads the EK certificate (ECC preferred, RSA otherwise), verifies its chain against the trusted
 * manufacturers, then re-derives the EK inside the TPM and requires it to be the certified key: a
 * certificate copied into another TPM's NV proves nothing about that TPM.
 *
 * A kind whose certificate does not verify falls through to the next one, because vendors may anchor
 * their RSA and ECC EK certificates in different roots and a fleet may trust only one of them.
 * When none verifies: STATION_EK_UNTRUSTED, the message naming each kind's refusal with its code
 * (`ecc: [EK_CERT_EXPIRED] ...`), `details.cause` the first refusal's code (EK_UNTRUSTED,
 * EK_CERT_EXPIRED or EK_CERT_INVALID) and `details.refusals` every kind's. The validity policy is
 * `options.ekValidity`, else `trust.ekValidity`, else 'ignore-expiry' (native/lib/ek-certificate.ts).
 */
export async function verifyTpmEk(tpm: Tpm, trust: EkTrustStore, now: number, options?: EkVerifyOptions): Promise<VerifiedEk> {
  const refusals: { kind: EkKind; code: EkCertificateErrorCode; message: string }[] = [];
  for (const kind of KINDS) {
    const certificate = await tpm.readEkCertificate(kind);
    if (!certificate) continue;
    let verified;
    try {
      verified = verifyEkCertificate(certificate, trust, now, options);
    } catch (e) {
      if (!(e instanceof EkCertificateError)) throw e;
      refusals.push({ kind, code: e.code, message: e.message });
      continue;
    }
    await requireCertifiedEk(tpm, kind, verified.ekSpki, 'its EK certificate');
    return { kind, certificate, spki: verified.ekSpki, publicHash: ekPublicHash(verified.ekSpki), root: verified.root };
  }
  const [first] = refusals;
  if (!first) throw new StationError('STATION_EK_MISSING', 'the TPM holds no EK certificate (neither ECC nor RSA)');
  throw new StationError('STATION_EK_UNTRUSTED', `EK certificate refused: ${refusals.map((r) => `${r.kind}: [${r.code}] ${r.message}`).join('; ')}`, {
    details: { cause: first.code, refusals: refusals.map(({ kind, code }) => ({ kind, code })) },
  });
}

/**
 * The EK certificate supplied for a device (a vendor that serves it online, keyed by the EK's hash:
 * fetched before the device reached the line), verified as one read from NV: chain to a trusted
 * manufacturer, then the EK derived in this TPM (its certificate's kind, from the TCG template of the
 * index that kind's certificate would be in) must be the certified key (STATION_EK_MISMATCH).
 * Refused: STATION_EK_UNTRUSTED with the verifier's code in `details.cause`.
 */
export async function verifySuppliedEk(tpm: Tpm, certificate: Buffer, trust: EkTrustStore, now: number, options?: EkVerifyOptions): Promise<VerifiedEk> {
  let verified;
  try {
    verified = verifyEkCertificate(certificate, trust, now, options);
  } catch (e) {
    if (!(e instanceof EkCertificateError)) throw e;
    throw new StationError('STATION_EK_UNTRUSTED', `the supplied EK certificate is refused: [${e.code}] ${e.message}`, { details: { cause: e.code } });
  }
  const kind: EkKind = verified.ekKeyType === 'ec' ? 'ecc' : 'rsa';
  await requireCertifiedEk(tpm, kind, verified.ekSpki, 'the supplied EK certificate');
  return { kind, certificate, spki: verified.ekSpki, publicHash: ekPublicHash(verified.ekSpki), root: verified.root };
}

/**
 * Derives the `kind` EK in the TPM and requires it to be `certifiedSpki`: a certificate copied from
 * another TPM proves nothing about this one (STATION_EK_MISMATCH, naming `certificate`).
 */
async function requireCertifiedEk(tpm: Tpm, kind: EkKind, certifiedSpki: Buffer, certificate: string): Promise<void> {
  const ek = await tpm.createEk(kind);
  let matches: boolean;
  try {
    matches = ek.spki.equals(certifiedSpki);
  } finally {
    await tpm.flush(ek);
  }
  if (!matches) throw new StationError('STATION_EK_MISMATCH', `the ${kind} EK derived in the TPM is not the key ${certificate} certifies`);
}

/**
 * The factory-trusted EK of a TPM that holds no EK certificate (docs/hardware.md): ECC P-256 from the
 * TCG L-2 template, or RSA-2048 (L-1) on a chip that cannot make the ECC one. Only the public key is
 * read; what vouches for it is the station that read it on the line.
 */
export async function readFactoryTrustedEk(tpm: Tpm): Promise<FactoryTrustedEk> {
  let firstError: unknown;
  for (const kind of KINDS) {
    let ek;
    try {
      ek = await tpm.createEk(kind);
    } catch (e) {
      firstError ??= e;
      continue;
    }
    try {
      return { kind, spki: ek.spki, publicHash: ekPublicHash(ek.spki) };
    } finally {
      await tpm.flush(ek);
    }
  }
  throw firstError;
}
