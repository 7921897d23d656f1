import { X509Certificate } from 'node:crypto';
import { CodedError } from '../../common/coded-error.js';

/**
 * Verifies an EK certificate against the TPM manufacturer roots a fleet trusts. Used by the factory
 * station (before registering a device) and by the bridge (at enrollment).
 *
 * EK certificates carry TCG-specific critical extensions (a directoryName SAN with the TPM
 * manufacturer, model and version; TCG EK Credential Profile §3.2) that general-purpose path
 * validators refuse, so the chain is built here: each link is checked for issuer/subject match,
 * signature, CA flag of the issuer and validity at `now`.
 */
export type EkCertificateErrorCode = 'EK_CERT_INVALID' | 'EK_UNTRUSTED' | 'EK_CERT_EXPIRED';

export class EkCertificateError extends CodedError<EkCertificateErrorCode> {}

export interface EkTrustStore {
  /** Manufacturer root certificates (PEM or DER). */
  readonly roots: readonly (string | Buffer)[];
  /** Intermediate CA certificates the manufacturer publishes (optional). */
  readonly intermediates?: readonly (string | Buffer)[];
}

export interface VerifiedEkCertificate {
  readonly certificate: X509Certificate;
  /** Leaf first, root last. */
  readonly chain: readonly X509Certificate[];
  /** Subject of the trusted root that anchors the chain. */
  readonly root: string;
  /** DER SubjectPublicKeyInfo of the EK certified. */
  readonly ekSpki: Buffer;
}

const MAX_DEPTH = 6;

export function parseCertificates(certs: readonly (string | Buffer)[]): X509Certificate[] {
  return certs.flatMap((c) => {
    if (Buffer.isBuffer(c)) return [new X509Certificate(c)];
    const pems = c.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
    return pems.map((p) => new X509Certificate(p));
  });
}

export function verifyEkCertificate(ekCertDer: Buffer, trust: EkTrustStore, now: number): VerifiedEkCertificate {
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(ekCertDer);
  } catch (e) {
    throw new EkCertificateError('EK_CERT_INVALID', 'EK certificate is not a parseable X.509 certificate', { cause: e });
  }
  const roots = parseCertificates(trust.roots);
  const intermediates = parseCertificates(trust.intermediates ?? []);
  const at = new Date(now);
  const chain: X509Certificate[] = [leaf];
  let current = leaf;
  for (let depth = 0; depth < MAX_DEPTH; depth++) {
    checkValidity(current, at);
    const root = roots.find((r) => issuedBy(current, r));
    if (root) {
      checkValidity(root, at);
      if (root !== current) chain.push(root);
      return {
        certificate: leaf,
        chain,
        root: root.subject,
        ekSpki: leaf.publicKey.export({ type: 'spki', format: 'der' }),
      };
    }
    const next = intermediates.find((i) => i !== current && issuedBy(current, i));
    if (!next) break;
    chain.push(next);
    current = next;
  }
  throw new EkCertificateError('EK_UNTRUSTED', `EK certificate issued by "${current.issuer}" does not chain to a trusted TPM manufacturer root`);
}

function issuedBy(cert: X509Certificate, issuer: X509Certificate): boolean {
  if (!issuer.ca) return false;
  if (!cert.checkIssued(issuer)) return false;
  try {
    return cert.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

function checkValidity(cert: X509Certificate, at: Date): void {
  if (at < new Date(cert.validFrom) || at > new Date(cert.validTo)) {
    throw new EkCertificateError('EK_CERT_EXPIRED', `certificate "${cert.subject}" is not valid at ${at.toISOString()}`);
  }
}
