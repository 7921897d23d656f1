import { X509Certificate } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { TAG, encodeOid, seq, tlv } from '../../common/der.js';
import { readCertificateFields } from './certificate-fields.js';
import { encodeMultiValuedName, encodeName, ecKey, testCa } from './ek-test-pki.js';
import { nameMatchKey, parseName, renderName } from './x509-name.js';

const atv = (oid: string, tag: number, value: Buffer) => seq(encodeOid(oid), tlv(tag, value));

describe('x509-name', () => {
  it('renders names as node:crypto does, escapes included', () => {
    const names = [
      encodeName([['C', 'DE'], ['O', 'Infineon Technologies AG'], ['CN', 'Infineon OPTIGA(TM) RSA Root CA']]),
      encodeName([['CN', 'a, b + "c" <d>;'], ['O', ' leading space'], ['OU', '#hash']]),
      encodeMultiValuedName([['CN', 'Nuvoton TPM Root CA 2111'], ['O', 'Nuvoton Technology Corporation'], ['C', 'TW']], 'as-given'),
      encodeName([]),
    ];
    for (const name of names) {
      const ca = testCa({ name, key: ecKey() });
      expect(renderName(readCertificateFields(ca.der).subject)).toBe(new X509Certificate(ca.der).subject ?? '');
    }
  });

  it('decodes BMPString and UniversalString, keeps unknown value types by their encoding', () => {
    const name = seq(
      tlv(TAG.SET, atv('2.5.4.3', 0x1e, Buffer.from('0054005000d6', 'hex'))), // BMP "TPÖ"
      tlv(TAG.SET, atv('2.5.4.10', 0x1c, Buffer.from('0001f512', 'hex'))), // Universal "🔒"
      tlv(TAG.SET, atv('2.23.133.2.1', TAG.OCTET_STRING, Buffer.from('0102', 'hex'))),
    );
    expect(parseName(name).map((r) => r.map((a) => a.text))).toEqual([['TPÖ'], ['🔒'], [undefined]]);
    expect(renderName(name)).toBe('CN=TPÖ\nO=🔒\n2.23.133.2.1=#04020102');
  });

  it('match keys: SET order, string type, case and spacing do not count; RDN order, values and grouping do', () => {
    const key = (n: Buffer) => nameMatchKey(n);
    const base = encodeMultiValuedName([['CN', 'X'], ['O', 'Y']], 'der');
    expect(key(encodeMultiValuedName([['O', 'Y'], ['CN', 'X']], 'as-given'))).toBe(key(base));
    expect(key(seq(tlv(TAG.SET, atv('2.5.4.3', TAG.PRINTABLE_STRING, Buffer.from(' x ')), atv('2.5.4.10', TAG.UTF8_STRING, Buffer.from('y')))))).toBe(key(base));
    expect(key(encodeMultiValuedName([['CN', 'X'], ['O', 'Z']], 'der'))).not.toBe(key(base));
    expect(key(encodeName([['CN', 'X'], ['O', 'Y']]))).not.toBe(key(base));
    expect(key(encodeName([['CN', 'X'], ['O', 'Y']]))).not.toBe(key(encodeName([['O', 'Y'], ['CN', 'X']])));
    expect(key(encodeName([['CN', 'a  b']]))).toBe(key(encodeName([['CN', 'A B']])));
  });

  it('refuses what is not a Name: an empty RDN, trailing data, a broken UTF8String', () => {
    expect(() => parseName(seq(tlv(TAG.SET)))).toThrow(/empty SET/);
    expect(() => parseName(seq(tlv(TAG.SET, Buffer.concat([seq(encodeOid('2.5.4.3'), tlv(TAG.UTF8_STRING, Buffer.from('a')), tlv(TAG.NULL))]))))).toThrow(/trailing data/);
    expect(() => parseName(seq(tlv(TAG.SET, atv('2.5.4.3', TAG.UTF8_STRING, Buffer.from([0xff])))))).toThrow();
  });
});
