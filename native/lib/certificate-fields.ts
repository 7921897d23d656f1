import { DerError, TAG, bytesOf, contentOf, expectTlv, readSingle, readTime, readTlv, type Tlv } from '../../common/der.js';

/**
 * Reads, from a certificate's DER, what RFC 5280 path validation needs, without node:crypto's
 * X509Certificate (OpenSSL), which refuses certificates real TPM vendors ship: the raw TBS bytes the
 * signature covers, both signature algorithm fields and the signature, serial, raw issuer and subject
 * names, validity, subjectPublicKeyInfo, every extension with its criticality, and the decoded
 * basicConstraints, keyUsage, extKeyUsage and key identifiers. Checking the signature is
 * certificate-signature.ts's job, comparing names x509-name.ts's.
 *
 * Throws DerError on anything malformed. Where real EK and vendor CA certificates are known to bend
 * DER it is lenient on purpose, and only there:
 *  - an explicit `critical FALSE` / `cA FALSE` (DEFAULT values DER says to omit; Intel PTT EK
 *    certificates carry both);
 *  - a serial number INTEGER that is not minimally encoded (leading 0x00 octets: STMicro's "STM TPM EK
 *    Intermediate CA 05" and older STM roots; OpenSSL refuses them with "illegal padding");
 *  - names are not parsed here at all, so a SET whose elements are not in DER order (Nuvoton issuer
 *    names) reads as any other.
 * Lengths must still be definite and minimal, tags and structure exactly as RFC 5280 says.
 */
export const OID = {
  subjectDirectoryAttributes: '2.5.29.9',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  certificatePolicies: '2.5.29.32',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  /** tcg-kp-EKCertificate (TCG EK Credential Profile). */
  tcgKpEkCertificate: '2.23.133.8.1',
} as const;

/** keyUsage bits, RFC 5280 §4.2.1.3 (bit 0 is the most significant bit of the first octet). */
export const KEY_USAGE = {
  digitalSignature: 0,
  nonRepudiation: 1,
  keyEncipherment: 2,
  dataEncipherment: 3,
  keyAgreement: 4,
  keyCertSign: 5,
  cRLSign: 6,
  encipherOnly: 7,
  decipherOnly: 8,
} as const;
export type KeyUsageName = keyof typeof KEY_USAGE;

export interface CertificateExtension {
  readonly oid: string;
  readonly critical: boolean;
  /** Content of extnValue (the DER of the extension's own value). */
  readonly value: Buffer;
}

export interface CertificateFields {
  /** The certificate's whole DER. */
  readonly der: Buffer;
  /** The TBSCertificate exactly as encoded: what the signature covers. */
  readonly tbs: Buffer;
  /** 1, 2 or 3. */
  readonly version: number;
  /** Content octets of the serialNumber INTEGER, as encoded (possibly with non-minimal leading zeros). */
  readonly serial: Buffer;
  /** The serial as lowercase hex of its value (leading zero octets dropped), for messages. */
  readonly serialHex: string;
  /** DER of TBSCertificate.signature (AlgorithmIdentifier). */
  readonly tbsSignatureAlgorithm: Buffer;
  /** DER of Certificate.signatureAlgorithm (AlgorithmIdentifier). */
  readonly signatureAlgorithm: Buffer;
  /** The signature value (BIT STRING content without the unused-bits octet). */
  readonly signature: Buffer;
  /** Epoch ms; NaN when the time cannot be read. */
  readonly notBefore: number;
  readonly notAfter: number;
  /** DER of subjectPublicKeyInfo, as encoded. */
  readonly spki: Buffer;
  /** subjectKeyIdentifier, when present. */
  readonly subjectKeyId: Buffer | undefined;
  /** keyIdentifier of authorityKeyIdentifier, when present and readable. */
  readonly authorityKeyId: Buffer | undefined;
  /** DER of the issuer Name. */
  readonly issuer: Buffer;
  /** DER of the subject Name. */
  readonly subject: Buffer;
  /** subject is an empty SEQUENCE (as on most real EK certificates). */
  readonly subjectEmpty: boolean;
  readonly extensions: readonly CertificateExtension[];
  /** Absent when the certificate has no basicConstraints extension. */
  readonly basicConstraints: { readonly ca: boolean; readonly pathLen: number | undefined } | undefined;
  /** Set of asserted bits; absent when the certificate has no keyUsage extension. */
  readonly keyUsage: ReadonlySet<KeyUsageName> | undefined;
  /** Key purpose OIDs; absent when the certificate has no extKeyUsage extension. */
  readonly extKeyUsage: readonly string[] | undefined;
}

const BOOLEAN = 0x01;
const CTX_VERSION = 0xa0;
const CTX_ISSUER_UID = 0x81;
const CTX_SUBJECT_UID = 0x82;
const CTX_EXTENSIONS = 0xa3;

export function readCertificateFields(der: Buffer): CertificateFields {
  const cert = readSingle(der, TAG.SEQUENCE, 'Certificate');
  const tbs = expectTlv(der, cert.contentStart, cert.end, TAG.SEQUENCE, 'TBSCertificate');
  const outerAlg = expectTlv(der, tbs.end, cert.end, TAG.SEQUENCE, 'signatureAlgorithm');
  const sigValue = expectTlv(der, outerAlg.end, cert.end, TAG.BIT_STRING, 'signatureValue');
  if (sigValue.end !== cert.end) throw new DerError('Certificate: trailing field');
  if (sigValue.end - sigValue.contentStart < 2 || der[sigValue.contentStart] !== 0) throw new DerError('signatureValue: malformed BIT STRING');
  let p = tbs.contentStart;
  let version = 1;
  let t = readTlv(der, p, tbs.end);
  if (t.tag === CTX_VERSION) {
    const v = expectTlv(der, t.contentStart, t.end, TAG.INTEGER, 'version');
    if (v.end !== t.end || v.end - v.contentStart !== 1) throw new DerError('version: malformed');
    version = (der[v.contentStart] as number) + 1;
    if (version < 1 || version > 3) throw new DerError(`version: unknown value ${version}`);
    p = t.end;
  }
  const serial = expectTlv(der, p, tbs.end, TAG.INTEGER, 'serialNumber');
  if (serial.end === serial.contentStart) throw new DerError('serialNumber: empty INTEGER');
  const innerAlg = expectTlv(der, serial.end, tbs.end, TAG.SEQUENCE, 'signature');
  const issuer = expectTlv(der, innerAlg.end, tbs.end, TAG.SEQUENCE, 'issuer');
  const validity = expectTlv(der, issuer.end, tbs.end, TAG.SEQUENCE, 'validity');
  const notBefore = readTlv(der, validity.contentStart, validity.end);
  const notAfter = readTlv(der, notBefore.end, validity.end);
  if (notAfter.end !== validity.end) throw new DerError('validity: trailing data');
  const subject = expectTlv(der, validity.end, tbs.end, TAG.SEQUENCE, 'subject');
  const spki = expectTlv(der, subject.end, tbs.end, TAG.SEQUENCE, 'subjectPublicKeyInfo');
  p = spki.end;
  let extensions: CertificateExtension[] = [];
  for (const tag of [CTX_ISSUER_UID, CTX_SUBJECT_UID, CTX_EXTENSIONS]) {
    if (p >= tbs.end) break;
    t = readTlv(der, p, tbs.end);
    if (t.tag !== tag) continue;
    if (tag === CTX_EXTENSIONS) {
      if (version !== 3) throw new DerError('extensions in a certificate that is not version 3');
      extensions = readExtensions(der, t);
    }
    p = t.end;
  }
  if (p !== tbs.end) throw new DerError('TBSCertificate: unexpected trailing field');

  const seen = new Set<string>();
  for (const e of extensions) {
    // RFC 5280 §4.2: a certificate MUST NOT include more than one instance of an extension.
    if (seen.has(e.oid)) throw new DerError(`extension ${e.oid} appears twice`);
    seen.add(e.oid);
  }
  const find = (oid: string) => extensions.find((e) => e.oid === oid);
  const bc = find(OID.basicConstraints);
  const ku = find(OID.keyUsage);
  const eku = find(OID.extKeyUsage);
  for (const oid of [OID.subjectAltName, OID.subjectDirectoryAttributes, OID.certificatePolicies]) {
    const e = find(oid);
    if (e) readSequenceOf(e.value, oid);
  }
  const ski = find(OID.subjectKeyIdentifier);
  const aki = find(OID.authorityKeyIdentifier);
  const serialBytes = contentOf(der, serial);
  return {
    der,
    tbs: bytesOf(der, tbs),
    version,
    serial: serialBytes,
    serialHex: serialHex(serialBytes),
    tbsSignatureAlgorithm: bytesOf(der, innerAlg),
    signatureAlgorithm: bytesOf(der, outerAlg),
    signature: der.subarray(sigValue.contentStart + 1, sigValue.end),
    notBefore: timeOrNaN(der, notBefore),
    notAfter: timeOrNaN(der, notAfter),
    spki: bytesOf(der, spki),
    subjectKeyId: ski ? contentOf(ski.value, readSingle(ski.value, TAG.OCTET_STRING, 'subjectKeyIdentifier')) : undefined,
    authorityKeyId: aki ? authorityKeyId(aki.value) : undefined,
    issuer: bytesOf(der, issuer),
    subject: bytesOf(der, subject),
    subjectEmpty: subject.end === subject.contentStart,
    extensions,
    basicConstraints: bc ? readBasicConstraints(bc.value) : undefined,
    keyUsage: ku ? readKeyUsage(ku.value) : undefined,
    extKeyUsage: eku ? readSequenceOf(eku.value, 'extKeyUsage').map((el) => readOid(eku.value, el, 'extKeyUsage')) : undefined,
  };
}

/** A serial's value in hex: a negative or padded INTEGER is shown by its octets, leading zeros dropped. */
function serialHex(c: Buffer): string {
  let i = 0;
  while (i < c.length - 1 && c[i] === 0) i++;
  return c.subarray(i).toString('hex');
}

/** Unreadable times do not make a certificate unreadable: the validity policy decides what they mean. */
function timeOrNaN(der: Buffer, t: Tlv): number {
  try {
    return readTime(der, t);
  } catch {
    return Number.NaN;
  }
}

/** keyIdentifier [0] of AuthorityKeyIdentifier; undefined when absent or unreadable (it is only a hint). */
function authorityKeyId(value: Buffer): Buffer | undefined {
  try {
    const s = readSingle(value, TAG.SEQUENCE, 'authorityKeyIdentifier');
    if (s.contentStart === s.end) return undefined;
    const first = readTlv(value, s.contentStart, s.end);
    return first.tag === 0x80 ? contentOf(value, first) : undefined;
  } catch {
    return undefined;
  }
}

function readExtensions(der: Buffer, wrapper: Tlv): CertificateExtension[] {
  const list = expectTlv(der, wrapper.contentStart, wrapper.end, TAG.SEQUENCE, 'extensions');
  if (list.end !== wrapper.end) throw new DerError('extensions: trailing data');
  const out: CertificateExtension[] = [];
  for (let p = list.contentStart; p < list.end; ) {
    const ext = expectTlv(der, p, list.end, TAG.SEQUENCE, 'extension');
    const oidTlv = expectTlv(der, ext.contentStart, ext.end, TAG.OID, 'extnID');
    let q = oidTlv.end;
    let critical = false;
    const next = readTlv(der, q, ext.end);
    if (next.tag === BOOLEAN) {
      critical = readBoolean(der, next, 'critical');
      q = next.end;
    }
    const value = expectTlv(der, q, ext.end, TAG.OCTET_STRING, 'extnValue');
    if (value.end !== ext.end) throw new DerError('extension: trailing data');
    out.push({ oid: readOid(der, oidTlv, 'extnID'), critical, value: Buffer.from(contentOf(der, value)) });
    p = ext.end;
  }
  return out;
}

function readBoolean(der: Buffer, t: Tlv, what: string): boolean {
  if (t.end - t.contentStart !== 1) throw new DerError(`${what}: BOOLEAN must be one octet`);
  return der[t.contentStart] !== 0;
}

/** Decodes an OBJECT IDENTIFIER TLV to dotted form (minimal base-128 arcs). */
export function readOid(der: Buffer, t: Tlv, what: string): string {
  if (t.tag !== TAG.OID) throw new DerError(`${what}: expected an OBJECT IDENTIFIER`);
  const c = contentOf(der, t);
  if (c.length === 0 || c.length > 64) throw new DerError(`${what}: bad OBJECT IDENTIFIER length`);
  const arcs: bigint[] = [];
  let v = 0n;
  let start = true;
  for (const b of c) {
    if (start && b === 0x80) throw new DerError(`${what}: non-minimal OBJECT IDENTIFIER arc`);
    v = (v << 7n) | BigInt(b & 0x7f);
    start = (b & 0x80) === 0;
    if (start) {
      arcs.push(v);
      v = 0n;
    }
  }
  if (!start) throw new DerError(`${what}: truncated OBJECT IDENTIFIER`);
  const first = arcs[0] as bigint;
  const head = first < 40n ? [0n, first] : first < 80n ? [1n, first - 40n] : [2n, first - 80n];
  return [...head, ...arcs.slice(1)].join('.');
}

/** The elements of a value that must be exactly one non-empty SEQUENCE. */
function readSequenceOf(value: Buffer, what: string): Tlv[] {
  const seq = readSingle(value, TAG.SEQUENCE, what);
  const out: Tlv[] = [];
  for (let p = seq.contentStart; p < seq.end; ) {
    const el = readTlv(value, p, seq.end);
    out.push(el);
    p = el.end;
  }
  if (out.length === 0) throw new DerError(`${what}: empty SEQUENCE`);
  return out;
}

function readBasicConstraints(value: Buffer): { ca: boolean; pathLen: number | undefined } {
  const seq = readSingle(value, TAG.SEQUENCE, 'basicConstraints');
  let p = seq.contentStart;
  let ca = false;
  let pathLen: number | undefined;
  if (p < seq.end) {
    const t = readTlv(value, p, seq.end);
    if (t.tag === BOOLEAN) {
      ca = readBoolean(value, t, 'basicConstraints.cA');
      p = t.end;
    }
  }
  if (p < seq.end) {
    const t = expectTlv(value, p, seq.end, TAG.INTEGER, 'basicConstraints.pathLenConstraint');
    const c = contentOf(value, t);
    if (c.length === 0 || ((c[0] as number) & 0x80) !== 0) throw new DerError('basicConstraints.pathLenConstraint: must be a non-negative INTEGER');
    // Anything beyond 2^31 is "unlimited" for any real chain.
    pathLen = c.length > 4 ? 0x7fffffff : c.readUIntBE(0, c.length);
    p = t.end;
  }
  if (p !== seq.end) throw new DerError('basicConstraints: trailing data');
  return { ca, pathLen };
}

function readKeyUsage(value: Buffer): Set<KeyUsageName> {
  const t = readSingle(value, TAG.BIT_STRING, 'keyUsage');
  const c = contentOf(value, t);
  if (c.length === 0 || (c[0] as number) > 7 || (c.length === 1 && c[0] !== 0)) throw new DerError('keyUsage: malformed BIT STRING');
  const bits = c.subarray(1);
  const out = new Set<KeyUsageName>();
  for (const [name, bit] of Object.entries(KEY_USAGE) as [KeyUsageName, number][]) {
    const byte = bits[bit >> 3];
    if (byte !== undefined && (byte & (0x80 >> (bit & 7))) !== 0) out.add(name);
  }
  return out;
}
