import { createHash, verify as verifySignature, type X509Certificate } from 'node:crypto';
import { TAG, readSingle, readTlv, readTime, type Tlv } from '../../common/der.js';
import { publicKeyOf, spkiOf, x509FromPem } from '../../common/x509-cache.js';

/**
 * A reader for exactly what RFC 5280 5.1 defines in a CRL, and for the few fields of a CA certificate
 * the revocation cache needs (subject, SKI, whether keyUsage allows cRLSign).
 *
 * Why a DER walker of our own instead of @peculiar/x509's X509Crl: asn1js refuses inputs of more than
 * 10,000 ASN.1 nodes ("Maximum ASN.1 node count exceeded"), i.e. CRLs of more than about 3,000
 * entries; a fleet CRL has 100,000. It refuses unknown critical extensions (5.2, 5.3), indirect CRLs,
 * a non-critical deltaCRLIndicator and removeFromCRL in a complete CRL.
 */
export const REMOVE_FROM_CRL = 'removeFromCRL';

/** RFC 5280 5.3.1 (7 is unused). */
const REASON_NAMES: Readonly<Record<number, string>> = {
  0: 'unspecified',
  1: 'keyCompromise',
  2: 'cACompromise',
  3: 'affiliationChanged',
  4: 'superseded',
  5: 'cessationOfOperation',
  6: 'certificateHold',
  8: REMOVE_FROM_CRL,
  9: 'privilegeWithdrawn',
  10: 'aACompromise',
};

/** Lowercase hex without leading zeros ('0' for zero): the index key. */
export function normalizeSerial(serial: string): string {
  const s = serial.toLowerCase().replace(/^0+/, '');
  return s === '' ? '0' : s;
}

// --- CRL parsing (RFC 5280 5.1) ----------------------------------------------------------------

export class CrlFormatError extends Error {}

export interface ParsedCrl {
  readonly tbs: Buffer;
  readonly sigAlg: Buffer;
  readonly signature: Buffer;
  readonly issuerDer: Buffer;
  readonly thisUpdate: number;
  readonly nextUpdate: number;
  readonly crlNumber: bigint;
  /** The deltaCRLIndicator's BaseCRLNumber: set for a delta CRL. */
  readonly baseCrlNumber: bigint | undefined;
  readonly akiKeyId: Buffer | undefined;
  readonly entries: readonly { readonly serial: string; readonly reason: string | undefined }[];
}

const OID_TAG = 0x06;
const BOOLEAN = 0x01;
const CTX0 = 0xa0;
const CTX3 = 0xa3;
const ext = (last: number): string => `551d${last.toString(16).padStart(2, '0')}`; // 2.5.29.x
const EXT_AKI = ext(35);
const EXT_SKI = ext(14);
const EXT_KEY_USAGE = ext(15);
const EXT_CRL_NUMBER = ext(20);
const EXT_DELTA = ext(27);
const EXT_REASON = ext(21);
const EXT_INVALIDITY_DATE = ext(24);
/** CRL extensions understood (RFC 5280 5.2): AKI, issuerAltName, CRL number, freshestCRL (non-critical only). */
const KNOWN_CRL_EXTS = new Set([EXT_AKI, ext(18), EXT_CRL_NUMBER, ext(46)]);
const KNOWN_ENTRY_EXTS = new Set([EXT_REASON, EXT_INVALIDITY_DATE]);

/** Signature AlgorithmIdentifier OIDs (hex of the OID content) → digest for crypto.verify. */
const SIG_ALGS: ReadonlyMap<string, string | null> = new Map([
  ['2a8648ce3d040302', 'sha256'], // ecdsa-with-SHA256
  ['2a8648ce3d040303', 'sha384'],
  ['2a8648ce3d040304', 'sha512'],
  ['2a864886f70d01010b', 'sha256'], // sha256WithRSAEncryption
  ['2a864886f70d01010c', 'sha384'],
  ['2a864886f70d01010d', 'sha512'],
  ['2b6570', null], // Ed25519
]);

const fail = (why: string): never => {
  throw new CrlFormatError(`malformed CRL: ${why}`);
};

function expect(buf: Buffer, off: number, limit: number, tag: number, what: string): Tlv {
  const t = readTlv(buf, off, limit);
  if (t.tag !== tag) fail(`${what}: unexpected tag 0x${t.tag.toString(16)}`);
  return t;
}

function isTime(t: Tlv): boolean {
  return t.tag === TAG.UTC_TIME || t.tag === TAG.GENERALIZED_TIME;
}

function unsignedInteger(buf: Buffer, t: Tlv, what: string): Buffer {
  const c = buf.subarray(t.contentStart, t.end);
  if (c.length === 0) fail(`${what}: empty INTEGER`);
  return c;
}

interface Ext {
  readonly id: string;
  readonly critical: boolean;
  readonly value: Buffer;
}

/** Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension, starting at the SEQUENCE TLV `t`. */
function readExtensions(buf: Buffer, t: Tlv): Ext[] {
  const out: Ext[] = [];
  const seen = new Set<string>();
  for (let p = t.contentStart; p < t.end; ) {
    const e = expect(buf, p, t.end, TAG.SEQUENCE, 'extension');
    const oid = expect(buf, e.contentStart, e.end, OID_TAG, 'extnID');
    let q = oid.end;
    let critical = false;
    let v = readTlv(buf, q, e.end);
    if (v.tag === BOOLEAN) {
      critical = v.end - v.contentStart === 1 && buf[v.contentStart] !== 0;
      q = v.end;
      v = readTlv(buf, q, e.end);
    }
    if (v.tag !== TAG.OCTET_STRING || v.end !== e.end) fail('extnValue');
    const id = buf.toString('hex', oid.contentStart, oid.end);
    if (seen.has(id)) fail(`extension ${id} repeated`);
    seen.add(id);
    out.push({ id, critical, value: buf.subarray(v.contentStart, v.end) });
    p = e.end;
  }
  return out;
}

function readTimeOf(buf: Buffer, t: Tlv, what: string): number {
  if (!isTime(t)) fail(`${what}: not a Time`);
  try {
    return readTime(buf, t);
  } catch {
    return fail(`${what}: bad time`);
  }
}

export function parseCrl(der: Buffer): ParsedCrl {
  try {
    return parseCrlUnchecked(der);
  } catch (e) {
    if (e instanceof CrlFormatError) throw e;
    throw new CrlFormatError(`malformed CRL: ${e instanceof Error ? e.message : 'bad DER'}`);
  }
}

function parseCrlUnchecked(der: Buffer): ParsedCrl {
  const outer = readSingle(der, TAG.SEQUENCE, 'CertificateList');
  const tbsT = expect(der, outer.contentStart, outer.end, TAG.SEQUENCE, 'tbsCertList');
  const algT = expect(der, tbsT.end, outer.end, TAG.SEQUENCE, 'signatureAlgorithm');
  const sigT = expect(der, algT.end, outer.end, TAG.BIT_STRING, 'signatureValue');
  if (sigT.end !== outer.end) fail('trailing data in CertificateList');
  if (sigT.end - sigT.contentStart < 2 || der[sigT.contentStart] !== 0) fail('signatureValue');

  const end = tbsT.end;
  let t = readTlv(der, tbsT.contentStart, end);
  if (t.tag !== TAG.INTEGER) fail('version: a v2 CRL is required (CRL number)');
  if (t.end - t.contentStart !== 1 || der[t.contentStart] !== 1) fail('version: only v2 is supported');
  const innerAlg = expect(der, t.end, end, TAG.SEQUENCE, 'signature');
  if (!der.subarray(innerAlg.start, innerAlg.end).equals(der.subarray(algT.start, algT.end))) {
    fail('signature algorithms of tbsCertList and CertificateList differ');
  }
  const issuerT = expect(der, innerAlg.end, end, TAG.SEQUENCE, 'issuer');
  const thisT = readTlv(der, issuerT.end, end);
  const thisUpdate = readTimeOf(der, thisT, 'thisUpdate');
  let p = thisT.end;
  let nextUpdate: number | undefined;
  if (p < end) {
    t = readTlv(der, p, end);
    if (isTime(t)) {
      nextUpdate = readTimeOf(der, t, 'nextUpdate');
      p = t.end;
    }
  }
  if (nextUpdate === undefined) fail('nextUpdate is required');
  if ((nextUpdate as number) <= thisUpdate) fail('nextUpdate is not after thisUpdate');

  const entries: { serial: string; reason: string | undefined }[] = [];
  if (p < end) {
    t = readTlv(der, p, end);
    if (t.tag === TAG.SEQUENCE) {
      for (let q = t.contentStart; q < t.end; ) {
        const e = expect(der, q, t.end, TAG.SEQUENCE, 'revoked certificate');
        const sn = expect(der, e.contentStart, e.end, TAG.INTEGER, 'userCertificate');
        const at = readTlv(der, sn.end, e.end);
        readTimeOf(der, at, 'revocationDate');
        let reason: string | undefined;
        if (at.end < e.end) {
          const exts = expect(der, at.end, e.end, TAG.SEQUENCE, 'crlEntryExtensions');
          if (exts.end !== e.end) fail('revoked certificate: trailing data');
          for (const x of readExtensions(der, exts)) {
            if (x.id === EXT_REASON) {
              const r = readSingle(x.value, TAG.ENUMERATED, 'reasonCode');
              const code = r.end - r.contentStart === 1 ? (x.value[r.contentStart] as number) : -1;
              reason = REASON_NAMES[code] ?? fail(`unknown reasonCode ${code}`);
            } else if (x.critical && !KNOWN_ENTRY_EXTS.has(x.id)) {
              fail(`unsupported critical entry extension ${x.id} (indirect CRLs are not supported)`);
            }
          }
        }
        entries.push({ serial: normalizeSerial(unsignedInteger(der, sn, 'userCertificate').toString('hex')), reason });
        q = e.end;
      }
      p = t.end;
    }
  }

  let crlNumber: bigint | undefined;
  let baseCrlNumber: bigint | undefined;
  let akiKeyId: Buffer | undefined;
  if (p < end) {
    const wrap = expect(der, p, end, CTX0, 'crlExtensions');
    if (wrap.end !== end) fail('trailing data in tbsCertList');
    const exts = expect(der, wrap.contentStart, wrap.end, TAG.SEQUENCE, 'crlExtensions');
    for (const x of readExtensions(der, exts)) {
      if (x.id === EXT_CRL_NUMBER) {
        crlNumber = crlNumberValue(x.value, 'cRLNumber');
      } else if (x.id === EXT_AKI) {
        const a = readSingle(x.value, TAG.SEQUENCE, 'authorityKeyIdentifier');
        if (a.contentStart < a.end) {
          const k = readTlv(x.value, a.contentStart, a.end);
          if (k.tag === 0x80) akiKeyId = x.value.subarray(k.contentStart, k.end);
        }
      } else if (x.id === EXT_DELTA) {
        // RFC 5280 5.2.4: MUST be critical (a reader unaware of deltas must not take it for complete).
        if (!x.critical) fail('deltaCRLIndicator must be critical');
        baseCrlNumber = crlNumberValue(x.value, 'BaseCRLNumber');
      } else if (x.critical && !KNOWN_CRL_EXTS.has(x.id)) {
        fail(`unsupported critical CRL extension ${x.id}`);
      }
    }
  } else if (p !== end) {
    fail('trailing data in tbsCertList');
  }
  if (crlNumber === undefined) fail('cRLNumber is required');
  if (baseCrlNumber !== undefined && baseCrlNumber >= (crlNumber as bigint)) fail('a delta CRL must be numbered after its base');
  // RFC 5280 5.3.1: removeFromCRL is for delta CRLs only.
  if (baseCrlNumber === undefined && entries.some((e) => e.reason === REMOVE_FROM_CRL)) fail('removeFromCRL in a complete CRL');

  return {
    tbs: der.subarray(tbsT.start, tbsT.end),
    sigAlg: der.subarray(algT.contentStart, algT.end),
    signature: der.subarray(sigT.contentStart + 1, sigT.end),
    issuerDer: der.subarray(issuerT.start, issuerT.end),
    thisUpdate,
    nextUpdate: nextUpdate as number,
    crlNumber: crlNumber as bigint,
    baseCrlNumber,
    akiKeyId,
    entries,
  };
}

/** CRLNumber ::= INTEGER (0..MAX), at most 20 octets (RFC 5280 5.2.3); BaseCRLNumber is a CRLNumber. */
function crlNumberValue(value: Buffer, what: string): bigint {
  const n = readSingle(value, TAG.INTEGER, what);
  const c = value.subarray(n.contentStart, n.end);
  if (c.length === 0 || c.length > 21 || ((c[0] as number) & 0x80) !== 0) fail(`${what} out of range`);
  return BigInt('0x' + c.toString('hex'));
}

export function checkSignature(crl: ParsedCrl, ca: X509Certificate): boolean {
  try {
    const oid = readTlv(crl.sigAlg, 0);
    if (oid.tag !== OID_TAG) return false;
    const digest = SIG_ALGS.get(crl.sigAlg.toString('hex', oid.contentStart, oid.end));
    if (digest === undefined) return false;
    return verifySignature(digest, crl.tbs, { key: publicKeyOf(ca), dsaEncoding: 'der' }, crl.signature);
  } catch {
    return false;
  }
}

// --- CA certificates ---------------------------------------------------------------------------

export interface CaCert {
  readonly cert: X509Certificate;
  readonly subjectDer: Buffer;
  readonly skid: Buffer | undefined;
  readonly mayCrlSign: boolean;
  readonly keyHash: string;
}

/** Subject DER, SKI and whether keyUsage (when present) allows cRLSign; undefined for a non-CA or junk. */
export function parseCaCert(pem: string): CaCert | undefined {
  try {
    const cert = x509FromPem(pem);
    if (!cert.ca) return undefined;
    const der = cert.raw;
    const outer = readSingle(der, TAG.SEQUENCE, 'Certificate');
    const tbs = readTlv(der, outer.contentStart, outer.end);
    let t = readTlv(der, tbs.contentStart, tbs.end);
    if (t.tag === CTX0) t = readTlv(der, t.end, tbs.end); // version
    const sigAlg = readTlv(der, t.end, tbs.end); // t = serialNumber
    const issuer = readTlv(der, sigAlg.end, tbs.end);
    const validity = readTlv(der, issuer.end, tbs.end);
    const subject = readTlv(der, validity.end, tbs.end);
    let skid: Buffer | undefined;
    let mayCrlSign = true;
    for (let p = readTlv(der, subject.end, tbs.end).end; p < tbs.end; ) {
      const x = readTlv(der, p, tbs.end);
      if (x.tag === CTX3) {
        const exts = readTlv(der, x.contentStart, x.end);
        for (const e of readExtensions(der, exts)) {
          if (e.id === EXT_SKI) {
            const k = readSingle(e.value, TAG.OCTET_STRING, 'subjectKeyIdentifier');
            skid = e.value.subarray(k.contentStart, k.end);
          } else if (e.id === EXT_KEY_USAGE) {
            const bits = readSingle(e.value, TAG.BIT_STRING, 'keyUsage');
            // cRLSign is bit 6: the second content byte (after unused-bits) & 0x02.
            const first = bits.end - bits.contentStart >= 2 ? (e.value[bits.contentStart + 1] as number) : 0;
            mayCrlSign = (first & 0x02) !== 0;
          }
        }
      }
      p = x.end;
    }
    return {
      cert,
      subjectDer: der.subarray(subject.start, subject.end),
      skid,
      mayCrlSign,
      keyHash: sha256Hex(spkiOf(cert)),
    };
  } catch {
    return undefined;
  }
}

export function sha256Hex(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}
