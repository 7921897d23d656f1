import { createPublicKey, type KeyObject } from 'node:crypto';
import { pemBlocks, toPem } from '../../common/der.js';
import { CodedError } from '../../common/coded-error.js';
import { OID, readCertificateFields, type CertificateFields, type KeyUsageName } from './certificate-fields.js';
import { CertificateSignatureError, certificateSignatureValid } from './certificate-signature.js';
import { ECC_CURVE } from './wire/constants.js';
import { curveInfo, eccSpki } from './wire/public.js';
import { nameMatchKey, renderName } from './x509-name.js';

/**
 * Verifies an EK certificate against the TPM manufacturer roots a fleet trusts. Used by the factory
 * station (before registering a device) and by the bridge (at enrollment).
 *
 * The chain is built and validated here, following RFC 5280 §6.1, because general-purpose validators
 * refuse the critical TCG subjectAltName EK certificates carry, check validity periods we do not
 * want to enforce by default, and (OpenSSL, Go, Python cryptography) refuse to even parse
 * certificates real TPM vendors ship. Certificates are read from their DER by certificate-fields.ts,
 * leniently only where vendors are known to bend DER (STMicro's non-minimal serial numbers, Nuvoton's
 * unsorted name SETs; see there and x509-name.ts), never through node:crypto's X509Certificate.
 * Every path from the EK certificate to a trusted root through the configured intermediates is
 * tried (depth ≤ MAX_DEPTH); the first that passes wins, otherwise the refusal of the path that came
 * closest is thrown. On a path:
 *  - each link: the child's issuer name matches the issuer's subject (the same bytes, or the same
 *    name under RFC 5280 §7.1 comparison: attribute order within an RDN, string type, case and
 *    spacing do not count); when the child has an authorityKeyIdentifier and the issuer a
 *    subjectKeyIdentifier, they are equal; and the child's signature verifies exactly, over its
 *    TBSCertificate bytes as encoded, with the issuer's key (certificate-signature.ts);
 *  - every CA, the root included (as OpenSSL does): basicConstraints cA=TRUE; keyUsage, when present,
 *    asserts keyCertSign; pathLenConstraint bounds the number of non-self-issued intermediates below
 *    it (§6.1.4 (l), (m));
 *  - the EK certificate (TCG EK Credential Profile §3.2, as go-attestation's x509ext.ToEKCertificate
 *    reads it): not a CA; extKeyUsage, when present, contains tcg-kp-EKCertificate 2.23.133.8.1;
 *    keyUsage present and asserting keyEncipherment for an RSA EK, keyAgreement for an ECC EK;
 *  - every certificate: no critical extension this module does not understand (§4.2). Understood:
 *    basicConstraints, keyUsage, extKeyUsage, subjectAltName (the TCG directoryName with TPM
 *    manufacturer, model and version, critical when the subject is empty), certificatePolicies
 *    (no policy is required, so they never refuse a path, as in OpenSSL with no explicit policy) and
 *    subjectDirectoryAttributes (TCG TPM specification/security assertions). Everything else that
 *    is critical (nameConstraints, policyConstraints, ...) refuses the path: fail closed.
 *  - validity periods: see EkValidityPolicy.
 *
 * Errors: EK_CERT_INVALID (the EK certificate cannot be parsed), EK_UNTRUSTED (no path to a trusted
 * root, or a path that breaks a constraint above), EK_CERT_EXPIRED (a path valid in every respect
 * but a validity period, under 'strict'). Messages name certificates by issuer and serial, since real
 * EK certificates have an empty subject.
 */
export type EkCertificateErrorCode = 'EK_CERT_INVALID' | 'EK_UNTRUSTED' | 'EK_CERT_EXPIRED';

export class EkCertificateError extends CodedError<EkCertificateErrorCode> {}

/**
 * What the validity periods of the EK certificate, vendor intermediates and roots count for.
 *
 * - 'ignore-expiry' (default): signatures and every constraint are checked, validity periods are
 *   not; a certificate outside its period is accepted and reported in `acceptedOutsideValidity`
 *   (for the caller's log). The EK certificate's notAfter says nothing about the key's current
 *   trustworthiness: the EK lives as long as the TPM, and the certificate is never renewed in the
 *   field. Vendors issue long or odd periods, and a device may sit on a shelf past an
 *   intermediate's notAfter between the factory and enrollment. Refusing would brick it for good.
 *   Keylime does the same: its `cert_utils.verify_cert` (keylime/keylime, keylime/cert_utils.py,
 *   used by `verify_ek` and the registrar) accepts an EK certificate when a trusted certificate's
 *   subject matches its issuer and the signature verifies, and checks no date. go-attestation's
 *   `x509ext.ToEKCertificate` (google/go-attestation, x509/ekcert.go) validates the EK profile
 *   (extensions, criticality, keyUsage per key type) and no date either, leaving chain building and
 *   the clock to its caller.
 *   "Not yet valid" is treated the same way: the dates are the vendor's statement about the
 *   certificate, not the key, and a not-yet-valid EK certificate is almost always a verifier or
 *   factory clock that is behind.
 * - 'strict': a certificate outside its period (expired or not yet valid, at `now`) refuses the path
 *   with EK_CERT_EXPIRED, the message saying which certificate and which bound. A path that is
 *   valid through a renewed intermediate still wins.
 */
export type EkValidityPolicy = 'ignore-expiry' | 'strict';
export const DEFAULT_EK_VALIDITY: EkValidityPolicy = 'ignore-expiry';
export const EK_VALIDITY_POLICIES: readonly EkValidityPolicy[] = ['ignore-expiry', 'strict'];

export interface EkTrustStore {
  /** Manufacturer root certificates (PEM or DER). */
  readonly roots: readonly (string | Buffer)[];
  /** Intermediate CA certificates the manufacturer publishes (optional). */
  readonly intermediates?: readonly (string | Buffer)[];
  /** Validity policy configured with these roots; `EkVerifyOptions.ekValidity` overrides it. */
  readonly ekValidity?: EkValidityPolicy;
}

export interface EkVerifyOptions {
  /** Default: the trust store's `ekValidity`, else DEFAULT_EK_VALIDITY. */
  readonly ekValidity?: EkValidityPolicy;
}

/** A certificate as this module reads it (DER, not OpenSSL). */
export interface ReadCertificate {
  readonly der: Buffer;
  readonly pem: string;
  readonly fields: CertificateFields;
  /** Rendered as node:crypto renders names: one RDN per line, `CN=...`. '' for an empty name. */
  readonly subject: string;
  readonly issuer: string;
}

export interface VerifiedEkCertificate {
  readonly certificate: ReadCertificate;
  /** Leaf first, root last. */
  readonly chain: readonly ReadCertificate[];
  /** Subject of the trusted root that anchors the chain. */
  readonly root: string;
  /** DER SubjectPublicKeyInfo of the EK certified. */
  readonly ekSpki: Buffer;
  /** The EK's key type. */
  readonly ekKeyType: 'rsa' | 'ec';
  /**
   * Certificates of the chain that are outside their validity period at `now`, each with the bound
   * it missed; accepted because the policy is 'ignore-expiry'. Empty otherwise.
   */
  readonly acceptedOutsideValidity: readonly string[];
}

const MAX_DEPTH = 6;

/** Critical extensions whose semantics this module implements (see the module comment). */
const UNDERSTOOD_CRITICAL: ReadonlySet<string> = new Set([
  OID.basicConstraints,
  OID.keyUsage,
  OID.extKeyUsage,
  OID.subjectAltName,
  OID.certificatePolicies,
  OID.subjectDirectoryAttributes,
]);

/**
 * Reads one certificate (DER bytes) as this module does; throws EK_CERT_INVALID, the message saying
 * what is malformed.
 */
export function readCertificate(der: Buffer): ReadCertificate {
  try {
    const fields = readCertificateFields(Buffer.from(der));
    return { der: fields.der, pem: toPem(fields.der, 'CERTIFICATE'), fields, subject: renderName(fields.subject), issuer: renderName(fields.issuer) };
  } catch (e) {
    throw new EkCertificateError('EK_CERT_INVALID', `not a readable X.509 certificate: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Every certificate in `certs`: each a PEM text (any number of CERTIFICATE blocks) or DER bytes (a
 * Buffer that starts with a SEQUENCE tag; any other Buffer is read as PEM text). Throws EK_CERT_INVALID
 * for the first certificate that cannot be read.
 */
export function parseCertificates(certs: readonly (string | Buffer)[]): ReadCertificate[] {
  return certs.flatMap((c) => {
    if (Buffer.isBuffer(c) && c[0] === 0x30) return [readCertificate(c)];
    return pemBlocks(c.toString('latin1'), 'CERTIFICATE').map(readCertificate);
  });
}

interface Cert {
  readonly read: ReadCertificate;
  readonly fields: CertificateFields;
  readonly isRoot: boolean;
  /** For messages: `"<subject>" (serial S)`, or issuer + serial when the subject is empty. */
  readonly label: string;
  /** nameMatchKey of the subject and the issuer; undefined when the name cannot be read. */
  readonly subjectKey: string | undefined;
  readonly issuerKey: string | undefined;
  /** The certified public key; undefined when node:crypto cannot read it. */
  readonly publicKey: KeyObject | undefined;
}

interface Failure {
  readonly code: 'EK_UNTRUSTED' | 'EK_CERT_EXPIRED';
  readonly message: string;
}

export function verifyEkCertificate(ekCertDer: Buffer, trust: EkTrustStore, now: number, options: EkVerifyOptions = {}): VerifiedEkCertificate {
  const policy = options.ekValidity ?? trust.ekValidity ?? DEFAULT_EK_VALIDITY;
  let read: ReadCertificate;
  try {
    read = readCertificate(ekCertDer);
  } catch (e) {
    throw new EkCertificateError('EK_CERT_INVALID', `EK certificate is ${(e as Error).message}`, { cause: e });
  }
  const leaf = toCert(read, false, true);
  let ekSpki: Buffer;
  let ekKeyType: string | undefined;
  try {
    ({ spki: ekSpki, keyType: ekKeyType } = certifiedKey(leaf));
  } catch (e) {
    throw new EkCertificateError('EK_CERT_INVALID', `${leaf.label} holds a public key node:crypto cannot read`, { cause: e });
  }
  if (Number.isNaN(leaf.fields.notBefore) || Number.isNaN(leaf.fields.notAfter)) {
    throw new EkCertificateError('EK_CERT_INVALID', `${leaf.label} has an unreadable validity period`);
  }

  const { certs: anchors, unreadable } = trustedCertificates(trust);
  let best: Failure | undefined;
  let linkFailure: string | undefined;
  const search = (chain: Cert[]): VerifiedEkCertificate | undefined => {
    const child = chain[chain.length - 1] as Cert;
    for (const issuer of anchors) {
      if (chain.includes(issuer)) continue;
      const link = linksTo(child, issuer);
      if (link !== true) {
        if (link) linkFailure ??= link;
        continue;
      }
      const signature = signedBy(child, issuer);
      if (signature !== true) {
        linkFailure ??= `the signature of ${child.label} does not verify with the key of ${issuer.label}${signature ? ` (${signature})` : ''}`;
        continue;
      }
      const path = [...chain, issuer];
      if (issuer.isRoot) {
        const failure = checkPath(path, ekKeyType, now, policy);
        if (!failure) {
          return {
            certificate: read,
            chain: path.map((c) => c.read),
            root: issuer.read.subject,
            ekSpki,
            ekKeyType: ekKeyType as 'rsa' | 'ec',
            acceptedOutsideValidity: outsideValidity(path, now),
          };
        }
        if (!best || (failure.code === 'EK_CERT_EXPIRED' && best.code !== 'EK_CERT_EXPIRED')) best = failure;
      } else if (path.length <= MAX_DEPTH) {
        const found = search(path);
        if (found) return found;
      }
    }
    return undefined;
  };
  const found = search([leaf]);
  if (found) return found;
  if (best) throw new EkCertificateError(best.code, best.message);
  const skipped = unreadable.length ? ` (${unreadable.length} configured manufacturer certificate(s) could not be read: ${unreadable.join('; ')})` : '';
  throw new EkCertificateError(
    'EK_UNTRUSTED',
    `${leaf.label} does not chain to a trusted TPM manufacturer root${linkFailure ? `: ${linkFailure}` : ''}${skipped}`,
  );
}

/** The first constraint `path` (leaf first, trusted root last) breaks, or undefined when it is valid. */
function checkPath(path: readonly Cert[], keyType: string | undefined, now: number, policy: EkValidityPolicy): Failure | undefined {
  const untrusted = (message: string): Failure => ({ code: 'EK_UNTRUSTED', message });
  // §6.1.4 (l), (m): walk from the root down; `remaining` is how many more non-self-issued
  // intermediates may follow. The root's own pathLenConstraint counts too (as in OpenSSL).
  let remaining = Number.POSITIVE_INFINITY;
  for (let i = path.length - 1; i >= 1; i--) {
    const ca = path[i] as Cert;
    const f = ca.fields;
    const critical = unknownCritical(f);
    if (critical) return untrusted(`${ca.label} has an unsupported critical extension ${critical}`);
    if (!f.basicConstraints) return untrusted(`${ca.label} has no basicConstraints extension, so it is not a CA`);
    if (!f.basicConstraints.ca) return untrusted(`${ca.label} is not a CA (basicConstraints cA is not TRUE)`);
    if (f.keyUsage && !f.keyUsage.has('keyCertSign')) return untrusted(`${ca.label} may not sign certificates (keyUsage lacks keyCertSign)`);
    if (!ca.isRoot && !selfIssued(ca)) {
      if (remaining <= 0) return untrusted(`${ca.label} exceeds the pathLenConstraint of a CA above it`);
      remaining--;
    }
    if (f.basicConstraints.pathLen !== undefined) remaining = Math.min(remaining, f.basicConstraints.pathLen);
  }
  const leaf = path[0] as Cert;
  const f = leaf.fields;
  const critical = unknownCritical(f);
  if (critical) return untrusted(`${leaf.label} has an unsupported critical extension ${critical}`);
  if (f.basicConstraints?.ca) return untrusted(`${leaf.label} is a CA certificate, not an EK certificate`);
  if (f.extKeyUsage && !f.extKeyUsage.includes(OID.tcgKpEkCertificate)) {
    return untrusted(`${leaf.label} has an extKeyUsage without tcg-kp-EKCertificate (${OID.tcgKpEkCertificate})`);
  }
  const wanted: KeyUsageName | undefined = keyType === 'rsa' ? 'keyEncipherment' : keyType === 'ec' ? 'keyAgreement' : undefined;
  if (!wanted) return untrusted(`${leaf.label} certifies a ${keyType ?? 'unknown'} key, not an RSA or ECC EK`);
  if (!f.keyUsage) return untrusted(`${leaf.label} has no keyUsage extension (the EK profile requires ${wanted})`);
  if (!f.keyUsage.has(wanted)) return untrusted(`${leaf.label} keyUsage lacks ${wanted}, which an ${keyType === 'rsa' ? 'RSA' : 'ECC'} EK needs`);

  if (policy === 'strict') {
    const [first] = outsideValidity(path, now);
    if (first) return { code: 'EK_CERT_EXPIRED', message: `${first} (EK validity policy 'strict')` };
  }
  return undefined;
}

function outsideValidity(path: readonly Cert[], now: number): string[] {
  const out: string[] = [];
  for (const c of path) {
    if (!(now >= c.fields.notBefore)) out.push(`${c.label} is not valid before ${iso(c.fields.notBefore)}`);
    else if (!(now <= c.fields.notAfter)) out.push(`${c.label} expired at ${iso(c.fields.notAfter)}`);
  }
  return out;
}

const iso = (ms: number) => (Number.isNaN(ms) ? 'an unreadable date' : new Date(ms).toISOString());

function unknownCritical(f: CertificateFields): string | undefined {
  return f.extensions.find((e) => e.critical && !UNDERSTOOD_CRITICAL.has(e.oid))?.oid;
}

function selfIssued(c: Cert): boolean {
  return c.fields.issuer.equals(c.fields.subject) || (c.issuerKey !== undefined && c.issuerKey === c.subjectKey);
}

/**
 * Name chaining (§6.1.3 (a)(4)): the same DER, or the same name under §7.1 comparison (x509-name.ts).
 * Then key identifiers, when both certificates carry them, must agree (as OpenSSL's X509_check_akid).
 * true, or false for another name, or why a CA of the right name is not the issuer.
 */
function linksTo(child: Cert, issuer: Cert): boolean | string {
  const sameName = child.fields.issuer.equals(issuer.fields.subject) || (child.issuerKey !== undefined && child.issuerKey === issuer.subjectKey);
  if (!sameName) return false;
  const aki = child.fields.authorityKeyId;
  const ski = issuer.fields.subjectKeyId;
  if (aki && ski && !aki.equals(ski)) return `the authorityKeyIdentifier of ${child.label} is not the subjectKeyIdentifier of ${issuer.label}`;
  return true;
}

/** true, or why not: false for a signature that does not verify, a string for one that cannot be checked. */
function signedBy(child: Cert, issuer: Cert): true | false | string {
  if (!issuer.publicKey) return `the key of ${issuer.label} cannot be read`;
  try {
    return certificateSignatureValid(child.fields, issuer.publicKey);
  } catch (e) {
    if (e instanceof CertificateSignatureError) return e.message;
    throw e;
  }
}

interface ParsedTrust {
  /** The arrays the certificates were parsed from, element by element (see trustedCertificates). */
  readonly roots: readonly (string | Buffer)[];
  readonly intermediates: readonly (string | Buffer)[];
  readonly certs: readonly Cert[];
  /** Why each configured certificate that could not be read was left out. */
  readonly unreadable: readonly string[];
}

const parsedTrust = new WeakMap<EkTrustStore, ParsedTrust>();

const sameInputs = (a: readonly (string | Buffer)[], b: readonly (string | Buffer)[]) =>
  a.length === b.length &&
  a.every((x, i) => {
    const y = b[i];
    if (typeof x === 'string' || typeof y === 'string') return x === y;
    return x === y || (y !== undefined && x.equals(y));
  });

/**
 * Roots then intermediates, parsed once per trust store. Keyed by the store object, and used only
 * while the store still lists exactly the certificates they were parsed from: the types say
 * read-only, but a caller that mutates the arrays (or a Buffer in them) gets a fresh parse, never a
 * stale anchor. The check is a pointer comparison per entry for unchanged strings. A configured
 * certificate that cannot be read is left out (it can anchor nothing) and named in refusals; the
 * station and the bridge check their trust files when they start (parseCertificates).
 */
function trustedCertificates(trust: EkTrustStore): ParsedTrust {
  const intermediatesIn = trust.intermediates ?? [];
  const cached = parsedTrust.get(trust);
  if (cached && sameInputs(cached.roots, trust.roots) && sameInputs(cached.intermediates, intermediatesIn)) return cached;
  const unreadable: string[] = [];
  const readAll = (list: readonly (string | Buffer)[], what: string) =>
    list.flatMap((c, i) => {
      try {
        return parseCertificates([c]);
      } catch (e) {
        unreadable.push(`${what} #${i + 1}: ${(e as Error).message}`);
        return [];
      }
    });
  const roots = readAll(trust.roots, 'root');
  // A certificate listed as both root and intermediate is a root.
  const intermediates = readAll(intermediatesIn, 'intermediate').filter((i) => !roots.some((r) => r.der.equals(i.der)));
  const certs = [...roots.map((r) => toCert(r, true, false)), ...intermediates.map((i) => toCert(i, false, false))];
  // Snapshots (Buffers copied), so later changes to the caller's arrays or Buffers are seen as changes.
  const snapshot = (a: readonly (string | Buffer)[]) => a.map((x) => (typeof x === 'string' ? x : Buffer.from(x)));
  const parsed = { roots: snapshot(trust.roots), intermediates: snapshot(intermediatesIn), certs, unreadable };
  parsedTrust.set(trust, parsed);
  return parsed;
}

function toCert(read: ReadCertificate, isRoot: boolean, isEk: boolean): Cert {
  const f = read.fields;
  let label: string | undefined;
  let subjectKey: string | undefined | null = null;
  let issuerKey: string | undefined | null = null;
  let publicKey: KeyObject | undefined | null = null;
  const matchKey = (der: Buffer) => {
    try {
      return nameMatchKey(der);
    } catch {
      return undefined;
    }
  };
  // Each computed when first needed: an EK certificate whose issuer bytes equal a CA's subject bytes
  // never needs the normalized names.
  return {
    read,
    fields: f,
    isRoot,
    get label() {
      return (label ??= labelOf(read, isEk, isRoot));
    },
    get subjectKey() {
      return subjectKey === null ? (subjectKey = matchKey(f.subject)) : subjectKey;
    },
    get issuerKey() {
      return issuerKey === null ? (issuerKey = matchKey(f.issuer)) : issuerKey;
    },
    get publicKey() {
      if (publicKey === null) {
        try {
          publicKey = createPublicKey({ key: f.spki, format: 'der', type: 'spki' });
        } catch {
          publicKey = undefined;
        }
      }
      return publicKey;
    },
  };
}

const SPKI_CURVES: readonly number[] = [ECC_CURVE.NIST_P256, ECC_CURVE.NIST_P384, ECC_CURVE.NIST_P521];

/**
 * The certified key's DER SubjectPublicKeyInfo, as node:crypto exports it, and its type. A NIST-curve
 * key in that canonical encoding (named curve, uncompressed point: what EK certificates carry) is
 * taken from the certificate's bytes once eccSpki has validated the point, which is what decoding it
 * would check; decoding into a KeyObject and exporting it again costs ~0.3-0.5 ms on P-384. Any
 * other encoding or key type goes through node:crypto.
 */
function certifiedKey(c: Cert): { spki: Buffer; keyType: string | undefined } {
  const raw = c.fields.spki;
  for (const curveId of SPKI_CURVES) {
    const { spkiPrefix, size } = curveInfo(curveId);
    if (raw.length !== spkiPrefix.length + 1 + 2 * size || !raw.subarray(0, spkiPrefix.length).equals(spkiPrefix) || raw[spkiPrefix.length] !== 0x04) continue;
    const point = raw.subarray(spkiPrefix.length + 1);
    return { spki: eccSpki(curveId, point.subarray(0, size), point.subarray(size)), keyType: 'ec' };
  }
  const key = createPublicKey({ key: raw, format: 'der', type: 'spki' });
  return { spki: key.export({ type: 'spki', format: 'der' }), keyType: key.asymmetricKeyType };
}

/** Names in messages: one line, RDNs joined by ', '. */
const nameText = (n: string) => n.split('\n').filter(Boolean).join(', ');

function labelOf(read: ReadCertificate, isEk: boolean, isRoot: boolean): string {
  const serial = read.fields.serialHex;
  const subject = nameText(read.subject);
  const issuer = nameText(read.issuer);
  if (isEk) return `EK certificate (serial ${serial}, issuer "${issuer}")`;
  const kind = isRoot ? 'trusted root' : 'CA certificate';
  return subject ? `${kind} "${subject}" (serial ${serial})` : `${kind} (serial ${serial}, issuer "${issuer}")`;
}
