import { verify as verifySignature, type X509Certificate } from 'node:crypto';
import { decodeTrustBundle, trustBundleToBeSigned, type TrustBundleMessage } from '../../common/protocol/trust-bundle.js';
import { publicKeyOf, x509FromPem } from '../../common/x509-cache.js';
import { readCertificateFields } from '../../native/lib/certificate-fields.js';

/**
 * Whether the agent may replace its trust bundle with one received on `<base>/trust-bundle` (issue 7,
 * "Trust bundle updates are authenticated"; the message and its signed bytes are defined in
 * common/protocol/trust-bundle.ts). Pure: no I/O, no clock of its own, never throws.
 *
 * Accepted only when, in this order (the first failing check gives the code):
 * 1. the payload passes the protocol schema and size limit                  TRUST_BUNDLE_MALFORMED
 * 2. its version is greater than the one held (any version when none is)    TRUST_BUNDLE_OLDER
 *    (the same or an older bundle, e.g. the retained copy redelivered on every reconnect: no news,
 *    nothing to log or report)
 * 3. every root parses as a CA certificate (basicConstraints cA, keyCertSign when keyUsage is
 *    present), none listed twice                                              TRUST_BUNDLE_ROOT_INVALID
 * 4. signer[0] is a CA whose path through signer[1..] reaches a root of the CURRENT bundle (never a
 *    root of the new one: a bundle cannot vouch for itself): each link's issuer name and signature,
 *    every certificate on the path a CA with keyCertSign (when keyUsage is present) and within the
 *    pathLenConstraint of the CAs above it                                     TRUST_BUNDLE_SIGNER_UNTRUSTED
 * 5. every certificate on that path, the trusted root included, is valid at `now` (the agent's
 *    judged time)                     TRUST_BUNDLE_SIGNER_NOT_YET_VALID / TRUST_BUNDLE_SIGNER_EXPIRED
 * 6. the signature (ecdsa-with-SHA256, DER) verifies over the signed bytes with signer[0]'s key
 *                                                                            TRUST_BUNDLE_SIGNATURE_INVALID
 * Trailing signer certificates after the one that reaches a trusted root are ignored.
 */
export type TrustBundleRejectCode =
  | 'TRUST_BUNDLE_MALFORMED'
  | 'TRUST_BUNDLE_OLDER'
  | 'TRUST_BUNDLE_ROOT_INVALID'
  | 'TRUST_BUNDLE_SIGNER_UNTRUSTED'
  | 'TRUST_BUNDLE_SIGNER_NOT_YET_VALID'
  | 'TRUST_BUNDLE_SIGNER_EXPIRED'
  | 'TRUST_BUNDLE_SIGNATURE_INVALID';

export type TrustBundleVerdict =
  | {
      readonly accepted: true;
      /** The new roots (PEM, as received): the agent's whole trust bundle from now on. */
      readonly roots: string[];
      readonly version: number;
      /** When the fleet signed it (ms); signed, so usable as a lower bound for the agent's clock. */
      readonly issuedAt: number;
    }
  | { readonly accepted: false; readonly code: TrustBundleRejectCode; readonly reason: string };

export interface CurrentTrustBundle {
  /** The roots the agent trusts now (PEM). */
  readonly roots: readonly string[];
  /** The version of the bundle they came from; undefined when they came from bootstrap or enrollment. */
  readonly version: number | undefined;
}

class Refusal {
  constructor(
    readonly code: TrustBundleRejectCode,
    readonly reason: string,
  ) {}
}

const refuse = (code: TrustBundleRejectCode, reason: string): never => {
  throw new Refusal(code, reason);
};

export function acceptTrustBundle(payload: Buffer, current: CurrentTrustBundle, now: number): TrustBundleVerdict {
  try {
    return check(payload, current, now);
  } catch (e) {
    if (e instanceof Refusal) return { accepted: false, code: e.code, reason: e.reason };
    // Unreachable by design; a parser surprise on network input must still not escape.
    return { accepted: false, code: 'TRUST_BUNDLE_MALFORMED', reason: `unexpected: ${(e as Error)?.message ?? String(e)}` };
  }
}

interface Ca {
  readonly x509: X509Certificate;
  readonly label: string;
  /** undefined: no pathLenConstraint. */
  readonly pathLen: number | undefined;
}

function check(payload: Buffer, current: CurrentTrustBundle, now: number): TrustBundleVerdict {
  let msg: TrustBundleMessage;
  try {
    msg = decodeTrustBundle(payload);
  } catch (e) {
    return refuse('TRUST_BUNDLE_MALFORMED', (e as Error).message);
  }
  if (current.version !== undefined && msg.version <= current.version) {
    return refuse('TRUST_BUNDLE_OLDER', `version ${msg.version} is not newer than the held version ${current.version}`);
  }

  const roots = msg.roots.map((pem, i) => asCa(pem, `root ${i}`, 'TRUST_BUNDLE_ROOT_INVALID'));
  roots.forEach((r, i) => {
    if (roots.findIndex((o) => o.x509.raw.equals(r.x509.raw)) !== i) refuse('TRUST_BUNDLE_ROOT_INVALID', `root ${i} is listed twice`);
  });

  const anchors = current.roots.flatMap((pem, i) => {
    try {
      return [asCa(pem, `trusted root ${i}`, 'TRUST_BUNDLE_SIGNER_UNTRUSTED')];
    } catch {
      return []; // a held root that does not parse anchors nothing
    }
  });
  const path = pathToAnchor(msg.signer, anchors);

  for (const c of path) {
    if (now < Date.parse(c.x509.validFrom)) refuse('TRUST_BUNDLE_SIGNER_NOT_YET_VALID', `${c.label} is not valid before ${c.x509.validFrom}`);
    if (now > Date.parse(c.x509.validTo)) refuse('TRUST_BUNDLE_SIGNER_EXPIRED', `${c.label} expired at ${c.x509.validTo}`);
  }

  const key = publicKeyOf(path[0]!.x509);
  const tbs = trustBundleToBeSigned(msg.version, msg.issuedAt, roots.map((r) => r.x509.raw));
  let valid = false;
  try {
    valid = key.asymmetricKeyType === 'ec' && verifySignature('sha256', tbs, { key, dsaEncoding: 'der' }, msg.signature);
  } catch {
    valid = false;
  }
  if (!valid) refuse('TRUST_BUNDLE_SIGNATURE_INVALID', `the signature does not verify with the key of ${path[0]!.label}`);
  return { accepted: true, roots: [...msg.roots], version: msg.version, issuedAt: msg.issuedAt };
}

/** signer[0] … up to the trusted root it reaches (included), checked as described above. */
function pathToAnchor(signerPems: readonly string[], anchors: readonly Ca[]): Ca[] {
  const signers = signerPems.map((pem, i) => asCa(pem, `signer ${i}`, 'TRUST_BUNDLE_SIGNER_UNTRUSTED'));
  const path: Ca[] = [];
  for (const [i, cert] of signers.entries()) {
    path.push(cert);
    const same = anchors.find((a) => a.x509.raw.equals(cert.x509.raw));
    const anchor = same ?? anchors.find((a) => issued(cert, a));
    if (anchor) {
      if (!same) path.push(anchor);
      // RFC 5280 6.1.4 (l)/(m): a CA at depth d of the path has d - 1 CA certificates below it
      // (signer[0], the end of this path, does not count).
      path.forEach((c, d) => {
        if (d >= 2 && c.pathLen !== undefined && d - 1 > c.pathLen) {
          refuse('TRUST_BUNDLE_SIGNER_UNTRUSTED', `${c.label} allows ${c.pathLen} intermediate CAs below it, the path has ${d - 1}`);
        }
      });
      return path;
    }
    const next = signers[i + 1];
    if (!next) break;
    if (!issued(cert, next)) refuse('TRUST_BUNDLE_SIGNER_UNTRUSTED', `${cert.label} is not issued by ${next.label}`);
  }
  return refuse('TRUST_BUNDLE_SIGNER_UNTRUSTED', 'the signer does not chain to a root the agent already trusts');
}

function issued(child: Ca, issuer: Ca): boolean {
  return child.x509.checkIssued(issuer.x509) && child.x509.verify(publicKeyOf(issuer.x509));
}

/** Parses a certificate that must be a CA (basicConstraints cA; keyCertSign when keyUsage is present). */
function asCa(pem: string, what: string, code: TrustBundleRejectCode): Ca {
  let x509: X509Certificate;
  let fields: ReturnType<typeof readCertificateFields>;
  try {
    x509 = x509FromPem(pem);
    fields = readCertificateFields(x509.raw);
  } catch {
    return refuse(code, `${what} is not a readable certificate`);
  }
  const label = `${what} "${x509.subject.replace(/\n/g, ', ')}"`;
  if (fields.basicConstraints?.ca !== true) refuse(code, `${label} is not a CA certificate`);
  if (fields.keyUsage && !fields.keyUsage.has('keyCertSign')) refuse(code, `${label} lacks keyUsage keyCertSign`);
  return { x509, label, pathLen: fields.basicConstraints?.pathLen };
}
