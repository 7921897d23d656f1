import { createHash } from 'node:crypto';
import { EkCertificateError, verifyEkCertificate, type EkTrustStore } from '../../native/lib/ek-certificate.js';
import type { EkKind, Tpm } from '../../native/lib/tpm.js';
import { StationError } from './errors.js';

/** A TPM's endorsement key, proven to be the key its manufacturer certified. */
export interface VerifiedEk {
  readonly kind: EkKind;
  /** DER EK certificate as read from the TPM's NV. */
  readonly certificate: Buffer;
  /** DER SubjectPublicKeyInfo of the EK. */
  readonly spki: Buffer;
  /** hex SHA-256 of `spki`: the EK's identity in the fleet inventory. */
  readonly publicHash: string;
  /** Subject of the manufacturer root the certificate chains to. */
  readonly root: string;
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
 */
export async function verifyTpmEk(tpm: Tpm, trust: EkTrustStore, now: number): Promise<VerifiedEk> {
  const refusals: string[] = [];
  for (const kind of KINDS) {
    const certificate = await tpm.readEkCertificate(kind);
    if (!certificate) continue;
    let verified;
    try {
      verified = verifyEkCertificate(certificate, trust, now);
    } catch (e) {
      if (!(e instanceof EkCertificateError)) throw e;
      refusals.push(`${kind}: ${e.message}`);
      continue;
    }
    const ek = await tpm.createEk(kind);
    let matches: boolean;
    try {
      matches = ek.spki.equals(verified.ekSpki);
    } finally {
      await tpm.flush(ek);
    }
    if (!matches) {
      throw new StationError('STATION_EK_MISMATCH', `the ${kind} EK derived in the TPM is not the key its EK certificate certifies`);
    }
    return { kind, certificate, spki: verified.ekSpki, publicHash: ekPublicHash(verified.ekSpki), root: verified.root };
  }
  if (refusals.length === 0) throw new StationError('STATION_EK_MISSING', 'the TPM holds no EK certificate (neither ECC nor RSA)');
  throw new StationError('STATION_EK_UNTRUSTED', `EK certificate refused: ${refusals.join('; ')}`);
}
