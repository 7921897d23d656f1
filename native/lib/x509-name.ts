import { DerError, TAG, bytesOf, contentOf, expectTlv, readSingle, readTlv } from '../../common/der.js';
import { readOid } from './certificate-fields.js';

/**
 * X.501 Names read from DER without requiring DER: the elements of a multi-valued RDN's SET may come
 * in any order (Nuvoton EK certificates encode their issuer's SET out of DER order, so the issuer
 * bytes of the EK certificate differ from the subject bytes of the CA that signed it; keylime #944,
 * #1775). Two views:
 *  - `nameMatchKey`: RFC 5280 §7.1 name comparison, simplified as OpenSSL's X509_NAME_cmp does it:
 *    the same RDNs in the same order, each RDN the same set of attributes in any order, string values
 *    compared after Unicode NFKC, case folding, trimming and collapsing inner whitespace; any other
 *    value by its exact encoding;
 *  - `renderName`: text for messages and records, as node:crypto's X509Certificate renders a name
 *    (one RDN per line, `SN=value`, multi-valued RDNs joined by ` + `).
 * Throws DerError on anything that is not a Name.
 */
export interface NameAttribute {
  readonly oid: string;
  /** The value's decoded text for string types; undefined for any other type. */
  readonly text: string | undefined;
  /** DER of the value (tag, length, content), as encoded. */
  readonly raw: Buffer;
}

export type Rdn = readonly NameAttribute[];

export function parseName(der: Buffer): readonly Rdn[] {
  const name = readSingle(der, TAG.SEQUENCE, 'Name');
  const rdns: Rdn[] = [];
  for (let p = name.contentStart; p < name.end; ) {
    const set = expectTlv(der, p, name.end, TAG.SET, 'RelativeDistinguishedName');
    const rdn: NameAttribute[] = [];
    for (let q = set.contentStart; q < set.end; ) {
      const atv = expectTlv(der, q, set.end, TAG.SEQUENCE, 'AttributeTypeAndValue');
      const type = expectTlv(der, atv.contentStart, atv.end, TAG.OID, 'AttributeType');
      const value = readTlv(der, type.end, atv.end);
      if (value.end !== atv.end) throw new DerError('AttributeTypeAndValue: trailing data');
      rdn.push({ oid: readOid(der, type, 'AttributeType'), text: decodeString(value.tag, contentOf(der, value)), raw: Buffer.from(bytesOf(der, value)) });
      q = atv.end;
    }
    if (rdn.length === 0) throw new DerError('RelativeDistinguishedName: empty SET');
    rdns.push(rdn);
    p = set.end;
  }
  return rdns;
}

/** Equal for two Names exactly when they match under the comparison described above. */
export function nameMatchKey(der: Buffer): string {
  return JSON.stringify(parseName(der).map((rdn) => rdn.map((a) => `${a.oid}=${a.text === undefined ? `#${a.raw.toString('hex')}` : fold(a.text)}`).sort()));
}

export function renderName(der: Buffer): string {
  return parseName(der)
    .map((rdn) => rdn.map((a) => `${SHORT_NAMES[a.oid] ?? a.oid}=${a.text === undefined ? `#${a.raw.toString('hex')}` : escape(a.text)}`).join(' + '))
    .join('\n');
}

const fold = (s: string) => s.normalize('NFKC').toLowerCase().trim().replace(/\s+/g, ' ');

/** RFC 2253 escaping, as OpenSSL's ASN1_STRFLGS_ESC_2253 does it. */
const escape = (s: string) => s.replace(/[,+"\\<>;]/g, '\\$&').replace(/^[ #]/, '\\$&').replace(/ $/, '\\ ');

const SHORT_NAMES: Readonly<Record<string, string>> = {
  '2.5.4.3': 'CN',
  '2.5.4.4': 'SN',
  '2.5.4.5': 'serialNumber',
  '2.5.4.6': 'C',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
  '2.5.4.9': 'street',
  '2.5.4.10': 'O',
  '2.5.4.11': 'OU',
  '2.5.4.12': 'title',
  '2.5.4.42': 'GN',
  '2.5.4.46': 'dnQualifier',
  '1.2.840.113549.1.9.1': 'emailAddress',
  '0.9.2342.19200300.100.1.25': 'DC',
  '0.9.2342.19200300.100.1.1': 'UID',
};

const STRING_TAGS = {
  UTF8: 0x0c,
  NUMERIC: 0x12,
  PRINTABLE: TAG.PRINTABLE_STRING,
  T61: 0x14,
  IA5: TAG.IA5_STRING,
  VISIBLE: 0x1a,
  UNIVERSAL: 0x1c,
  BMP: 0x1e,
} as const;

function decodeString(tag: number, c: Buffer): string | undefined {
  switch (tag) {
    case STRING_TAGS.UTF8:
      return new TextDecoder('utf-8', { fatal: true }).decode(c);
    case STRING_TAGS.NUMERIC:
    case STRING_TAGS.PRINTABLE:
    case STRING_TAGS.IA5:
    case STRING_TAGS.VISIBLE:
    case STRING_TAGS.T61: // Teletex: treated as Latin-1, as OpenSSL does
      return c.toString('latin1');
    case STRING_TAGS.BMP:
      if (c.length % 2) throw new DerError('BMPString: odd length');
      return String.fromCharCode(...Array.from({ length: c.length / 2 }, (_, i) => c.readUInt16BE(2 * i)));
    case STRING_TAGS.UNIVERSAL:
      if (c.length % 4) throw new DerError('UniversalString: length not a multiple of 4');
      return String.fromCodePoint(...Array.from({ length: c.length / 4 }, (_, i) => c.readUInt32BE(4 * i)));
    default:
      return undefined;
  }
}
