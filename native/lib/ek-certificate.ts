import { X509Certificate } from 'node:crypto';
import { TAG, bytesOf, expectTlv, readSingle, readTlv } from '../../common/der.js';
import { CodedError } from '../../common/coded-error.js';
import { OID, readCertificateFields, type CertificateFields, type KeyUsageName } from './certificate-fields.js';
import { ECC_CURVE } from './wire/constants.js';
import { curveInfo, eccSpki } from './wire/public.js';

/**
 * Verifies an EK certificate against the TPM manufacturer roots a fleet trusts. Used by the factory
 * station (before registering a device) and by the bridge (at enrollment).
 *
 * The chain is built and validated here, following RFC 5280 §6.1, because general-purpose validators
 * refuse the critical TCG subjectAltName EK certificates carry and check validity periods we do not
 * want to enforce by default. Every path from the EK certificate to a trusted root through the
 * configured intermediates is tried (depth ≤ MAX_DEPTH); the first that passes wins, otherwise the
 * refusal of the path that came closest is thrown. On a path:
 *  - each link: the issuer's subject equals the child's issuer name, and the child's signature
 *    verifies with the issuer's key (node:crypto);
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

export interface VerifiedEkCertificate {
  readonly certificate: X509Certificate;
  /** Leaf first, root last. */
  readonly chain: readonly X509Certificate[];
  /** Subject of the trusted root that anchors the chain. */
  readonly root: string;
  /** DER SubjectPublicKeyInfo of the EK certified. */
  readonly ekSpki: Buffer;
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

export function parseCertificates(certs: readonly (string | Buffer)[]): X509Certificate[] {
  return certs.flatMap((c) => {
    if (Buffer.isBuffer(c)) return [new X509Certificate(c)];
    const pems = c.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
    return pems.map((p) => new X509Certificate(p));
  });
}

interface Cert {
  readonly x509: X509Certificate;
  /** undefined when the DER could not be read (then `fieldsError` says why). */
  readonly fields: CertificateFields | undefined;
  readonly fieldsError: string | undefined;
  readonly isRoot: boolean;
  /** For messages: `"<subject>" (serial S)`, or issuer + serial when the subject is empty. */
  readonly label: string;
  readonly notBefore: number;
  readonly notAfter: number;
}

interface Failure {
  readonly code: 'EK_UNTRUSTED' | 'EK_CERT_EXPIRED';
  readonly message: string;
}

export function verifyEkCertificate(ekCertDer: Buffer, trust: EkTrustStore, now: number, options: EkVerifyOptions = {}): VerifiedEkCertificate {
  const policy = options.ekValidity ?? trust.ekValidity ?? DEFAULT_EK_VALIDITY;
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(ekCertDer);
  } catch (e) {
    throw new EkCertificateError('EK_CERT_INVALID', 'EK certificate is not a parseable X.509 certificate', { cause: e });
  }
  const leaf = toCert(x509, false, true);
  if (!leaf.fields) throw new EkCertificateError('EK_CERT_INVALID', `${leaf.label} is malformed: ${leaf.fieldsError}`);
  let ekSpki: Buffer;
  let ekKeyType: string | undefined;
  try {
    ({ spki: ekSpki, keyType: ekKeyType } = certifiedKey(x509));
  } catch (e) {
    throw new EkCertificateError('EK_CERT_INVALID', `${leaf.label} holds a public key node:crypto cannot read`, { cause: e });
  }
  if (Number.isNaN(leaf.notBefore) || Number.isNaN(leaf.notAfter)) {
    throw new EkCertificateError('EK_CERT_INVALID', `${leaf.label} has an unreadable validity period`);
  }

  const anchors = trustedCertificates(trust);
  let best: Failure | undefined;
  let linkFailure: string | undefined;
  const search = (chain: Cert[]): VerifiedEkCertificate | undefined => {
    const child = chain[chain.length - 1] as Cert;
    for (const issuer of anchors) {
      if (chain.includes(issuer) || !namesMatch(child, issuer)) continue;
      if (!signedBy(child, issuer)) {
        linkFailure ??= `the signature of ${child.label} does not verify with the key of ${issuer.label}`;
        continue;
      }
      const path = [...chain, issuer];
      if (issuer.isRoot) {
        const failure = checkPath(path, ekKeyType, now, policy);
        if (!failure) {
          return {
            certificate: x509,
            chain: path.map((c) => c.x509),
            root: issuer.x509.subject,
            ekSpki,
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
  throw new EkCertificateError(
    'EK_UNTRUSTED',
    `${leaf.label} does not chain to a trusted TPM manufacturer root${linkFailure ? `: ${linkFailure}` : ''}`,
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
    if (!f) return untrusted(`${ca.label} is malformed: ${ca.fieldsError}`);
    const critical = unknownCritical(f);
    if (critical) return untrusted(`${ca.label} has an unsupported critical extension ${critical}`);
    if (!f.basicConstraints) return untrusted(`${ca.label} has no basicConstraints extension, so it is not a CA`);
    if (!f.basicConstraints.ca) return untrusted(`${ca.label} is not a CA (basicConstraints cA is not TRUE)`);
    if (f.keyUsage && !f.keyUsage.has('keyCertSign')) return untrusted(`${ca.label} may not sign certificates (keyUsage lacks keyCertSign)`);
    if (!ca.isRoot && !selfIssued(f)) {
      if (remaining <= 0) return untrusted(`${ca.label} exceeds the pathLenConstraint of a CA above it`);
      remaining--;
    }
    if (f.basicConstraints.pathLen !== undefined) remaining = Math.min(remaining, f.basicConstraints.pathLen);
  }
  const leaf = path[0] as Cert;
  const f = leaf.fields as CertificateFields;
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
    if (!(now >= c.notBefore)) out.push(`${c.label} is not valid before ${iso(c.notBefore)}`);
    else if (!(now <= c.notAfter)) out.push(`${c.label} expired at ${iso(c.notAfter)}`);
  }
  return out;
}

const iso = (ms: number) => (Number.isNaN(ms) ? 'an unreadable date' : new Date(ms).toISOString());

function unknownCritical(f: CertificateFields): string | undefined {
  return f.extensions.find((e) => e.critical && !UNDERSTOOD_CRITICAL.has(e.oid))?.oid;
}

function selfIssued(f: CertificateFields): boolean {
  return f.issuer.equals(f.subject);
}

/**
 * Name chaining (§6.1.3 (a)(4)): binary equality of the DER names, or, for encodings that differ
 * only in string types, equality of OpenSSL's rendering of them.
 */
function namesMatch(child: Cert, issuer: Cert): boolean {
  if (child.fields && issuer.fields && child.fields.issuer.equals(issuer.fields.subject)) return true;
  const a = child.x509.issuer;
  return typeof a === 'string' && a !== '' && a === issuer.x509.subject;
}

function signedBy(child: Cert, issuer: Cert): boolean {
  try {
    return child.x509.verify(issuer.x509.publicKey);
  } catch {
    return false;
  }
}

interface ParsedTrust {
  /** The arrays the certificates were parsed from, element by element (see trustedCertificates). */
  readonly roots: readonly (string | Buffer)[];
  readonly intermediates: readonly (string | Buffer)[];
  readonly certs: readonly Cert[];
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
 * stale anchor. The check is a pointer comparison per entry for unchanged strings.
 */
function trustedCertificates(trust: EkTrustStore): readonly Cert[] {
  const intermediatesIn = trust.intermediates ?? [];
  const cached = parsedTrust.get(trust);
  if (cached && sameInputs(cached.roots, trust.roots) && sameInputs(cached.intermediates, intermediatesIn)) return cached.certs;
  const roots = parseCertificates(trust.roots);
  const rootDer = roots.map((r) => r.raw);
  // A certificate listed as both root and intermediate is a root.
  const intermediates = parseCertificates(intermediatesIn).filter((i) => !rootDer.some((r) => r.equals(i.raw)));
  const certs = [...roots.map((r) => toCert(r, true, false)), ...intermediates.map((i) => toCert(i, false, false))];
  // Snapshots (Buffers copied), so later changes to the caller's arrays or Buffers are seen as changes.
  const snapshot = (a: readonly (string | Buffer)[]) => a.map((x) => (typeof x === 'string' ? x : Buffer.from(x)));
  parsedTrust.set(trust, { roots: snapshot(trust.roots), intermediates: snapshot(intermediatesIn), certs });
  return certs;
}

function toCert(x509: X509Certificate, isRoot: boolean, isEk: boolean): Cert {
  let fields: CertificateFields | undefined;
  let fieldsError: string | undefined;
  try {
    fields = readCertificateFields(x509.raw);
  } catch (e) {
    fieldsError = (e as Error).message;
  }
  let label: string | undefined;
  return {
    x509,
    fields,
    fieldsError,
    isRoot,
    // Only messages read it: not built for every EK certificate that verifies.
    get label() {
      return (label ??= labelOf(x509, isEk, isRoot));
    },
    notBefore: Date.parse(x509.validFrom),
    notAfter: Date.parse(x509.validTo),
  };
}

const SPKI_CURVES: readonly number[] = [ECC_CURVE.NIST_P256, ECC_CURVE.NIST_P384, ECC_CURVE.NIST_P521];

/**
 * The certified key's DER SubjectPublicKeyInfo, as node:crypto exports it, and its type. A NIST-curve
 * key in that canonical encoding (named curve, uncompressed point: what EK certificates carry) is
 * taken from the certificate's bytes once eccSpki has validated the point, which is what decoding it
 * would check; decoding into a KeyObject and exporting it again costs ~0.3-0.5 ms on P-384. Any
 * other encoding or key type goes through node:crypto as before.
 */
function certifiedKey(x509: X509Certificate): { spki: Buffer; keyType: string | undefined } {
  const raw = spkiBytes(x509.raw);
  for (const curveId of SPKI_CURVES) {
    const { spkiPrefix, size } = curveInfo(curveId);
    if (raw.length !== spkiPrefix.length + 1 + 2 * size || !raw.subarray(0, spkiPrefix.length).equals(spkiPrefix) || raw[spkiPrefix.length] !== 0x04) continue;
    const point = raw.subarray(spkiPrefix.length + 1);
    return { spki: eccSpki(curveId, point.subarray(0, size), point.subarray(size)), keyType: 'ec' };
  }
  const key = x509.publicKey;
  return { spki: key.export({ type: 'spki', format: 'der' }), keyType: key.asymmetricKeyType };
}

/** The subjectPublicKeyInfo TLV of a certificate whose structure node:crypto and readCertificateFields accepted. */
function spkiBytes(der: Buffer): Buffer {
  const tbs = expectTlv(der, readSingle(der, TAG.SEQUENCE, 'Certificate').contentStart, der.length, TAG.SEQUENCE, 'TBSCertificate');
  let p = tbs.contentStart;
  if (der[p] === 0xa0) p = readTlv(der, p, tbs.end).end; // [0] version
  for (let i = 0; i < 5; i++) p = readTlv(der, p, tbs.end).end; // serialNumber, signature, issuer, validity, subject
  return bytesOf(der, expectTlv(der, p, tbs.end, TAG.SEQUENCE, 'subjectPublicKeyInfo'));
}

/** Node renders a multi-RDN name one attribute per line, and an empty name as '' or undefined. */
const nameText = (n: string | undefined) => (n ?? '').split('\n').filter(Boolean).join(', ');

function labelOf(x509: X509Certificate, isEk: boolean, isRoot: boolean): string {
  const serial = x509.serialNumber.toLowerCase();
  const subject = nameText(x509.subject);
  const issuer = nameText(x509.issuer);
  if (isEk) return `EK certificate (serial ${serial}, issuer "${issuer}")`;
  const kind = isRoot ? 'trusted root' : 'CA certificate';
  return subject ? `${kind} "${subject}" (serial ${serial})` : `${kind} (serial ${serial}, issuer "${issuer}")`;
}
