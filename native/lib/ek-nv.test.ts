import { X509Certificate } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { pemBlocks } from '../../common/der.js';
import { createTestCa } from '../../test/harness/pki.js';
import { ekCertificateFromNv } from './ek-nv.js';

/** What chips put around the certificate (issue 13), byte for byte. */
const pcClientPrefix = (der: Buffer) => Buffer.concat([Buffer.from([0x10, 0x01, 0x00, der.length >> 8, der.length & 0xff]), der]);
const padTo = (b: Buffer, size: number, fill = 0xff) => Buffer.concat([b, Buffer.alloc(size - b.length, fill)]);

describe('ekCertificateFromNv', () => {
  let der: Buffer;
  beforeAll(async () => {
    const ca = await createTestCa('nv-quirks');
    der = pemBlocks((await ca.issue({ cn: 'ek' })).certPem, 'CERTIFICATE')[0]!;
    expect(der.length).toBeGreaterThan(255); // long-form length: the case real certificates have
  });

  const certificate = (nv: Buffer) => {
    const c = ekCertificateFromNv(nv);
    if (c.kind !== 'certificate') throw new Error(`expected a certificate, got ${JSON.stringify(c)}`);
    // What comes out parses as exactly the certificate that went in.
    expect(c.der.equals(der)).toBe(true);
    expect(new X509Certificate(c.der).raw.equals(der)).toBe(true);
    return c;
  };

  it('takes the DER alone as it is', () => {
    expect(certificate(der)).toMatchObject({ prefixed: false, trailingBytes: 0 });
  });

  it('ignores 0xFF padding to the end of a 1,600-byte index (ST33HTPHF2EI2C, tpm2-tools #3474)', () => {
    const nv = padTo(der, 1600);
    expect(certificate(nv)).toMatchObject({ prefixed: false, trailingBytes: 1600 - der.length });
  });

  it('ignores other trailing bytes (HIRS #23)', () => {
    const nv = Buffer.concat([der, Buffer.from('00000000deadbeef', 'hex')]);
    expect(certificate(nv)).toMatchObject({ trailingBytes: 8 });
  });

  it('strips the TCG PC Client prefix 10 01 00 <len16> (Intel, go-attestation #38), with or without padding after', () => {
    expect(certificate(pcClientPrefix(der))).toMatchObject({ prefixed: true, trailingBytes: 0 });
    expect(certificate(padTo(pcClientPrefix(der), 2048))).toMatchObject({ prefixed: true, trailingBytes: 2048 - 5 - der.length });
  });

  it('reads a non-minimal length field (lenient: only the extent is read here)', () => {
    // 30 82 LL LL → 30 83 00 LL LL: the same content, one more length byte.
    expect(der[1]).toBe(0x82);
    const loose = Buffer.concat([Buffer.from([0x30, 0x83, 0x00]), der.subarray(2)]);
    const c = ekCertificateFromNv(padTo(loose, 1600));
    expect(c).toMatchObject({ kind: 'certificate', trailingBytes: 1600 - loose.length });
    expect(c.kind === 'certificate' && c.der.equals(loose)).toBe(true);
  });

  it('says empty for an index that was never written (all 0xFF, all 0x00, nothing)', () => {
    expect(ekCertificateFromNv(Buffer.alloc(1600, 0xff))).toEqual({ kind: 'empty' });
    expect(ekCertificateFromNv(Buffer.alloc(64))).toEqual({ kind: 'empty' });
    expect(ekCertificateFromNv(Buffer.alloc(0))).toEqual({ kind: 'empty' });
  });

  it.each<[string, (d: Buffer) => Buffer, RegExp]>([
    ['a certificate cut short', (d) => d.subarray(0, d.length - 40), /declares \d+ bytes but the index holds \d+ from it/],
    ['junk before it', (d) => Buffer.concat([Buffer.from([0x04, 0x00]), d]), /no DER SEQUENCE at byte 0 \(found 0x04\)/],
    ['a PC Client header longer than what follows', (d) => Buffer.concat([Buffer.from([0x10, 0x01, 0x00, 0x7f, 0xff]), d]), /declares 32767 bytes but only/],
    ['a PC Client header that disagrees with the certificate', (d) => Buffer.concat([Buffer.from([0x10, 0x01, 0x00, (d.length - 1) >> 8, (d.length - 1) & 0xff]), d]), /header declares \d+ bytes but the certificate is \d+/],
    ['an indefinite length (BER)', (d) => Buffer.concat([Buffer.from([0x30, 0x80]), d.subarray(4)]), /not a definite length/],
    ['a header cut off', () => Buffer.from([0x30, 0x82, 0x05]), /cut off/],
  ])('refuses %s with the reason', (_name, make, reason) => {
    const c = ekCertificateFromNv(make(der));
    expect(c.kind).toBe('invalid');
    expect(c.kind === 'invalid' && c.reason).toMatch(reason);
  });
});
