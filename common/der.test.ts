import { generateKeyPairSync, sign, verify } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { rawEcdsaToDer } from '../broker-bridge/src/ca/ca-backend.js';
import { DerError, encodeTime, encodeUnsignedInteger, readTime, readTlv, tlv, tlvSize } from './der.js';

describe('DER helpers', () => {
  it('encodes lengths minimally in every size class', () => {
    for (const n of [0, 1, 127, 128, 255, 256, 65_535, 65_536]) {
      const t = tlv(0x04, Buffer.alloc(n));
      expect(t.length).toBe(tlvSize(n));
      const r = readTlv(t, 0);
      expect(r.end - r.contentStart).toBe(n);
      expect(r.end).toBe(t.length);
    }
  });

  it('rejects non-minimal, indefinite and overlong lengths', () => {
    expect(() => readTlv(Buffer.from([0x04, 0x81, 0x05, 1, 2, 3, 4, 5]), 0)).toThrow(DerError);
    expect(() => readTlv(Buffer.from([0x30, 0x80, 0, 0]), 0)).toThrow(DerError);
    expect(() => readTlv(Buffer.from([0x04, 0x02, 1]), 0)).toThrow(DerError);
    expect(() => readTlv(Buffer.from([0x1f, 0x01, 0x00]), 0)).toThrow(DerError);
  });

  it('uses UTCTime through 2049 and GeneralizedTime from 2050, round-tripping', () => {
    const cases: [number, string][] = [
      [Date.UTC(1950, 0, 1), '\x17\x0d500101000000Z'],
      [Date.UTC(2049, 11, 31, 23, 59, 59), '\x17\x0d491231235959Z'],
      [Date.UTC(2050, 0, 1), '\x18\x0f20500101000000Z'],
      [Date.UTC(1949, 11, 31, 23, 59, 59), '\x18\x0f19491231235959Z'],
    ];
    for (const [ms, enc] of cases) {
      const b = encodeTime(ms);
      expect(b.toString('latin1')).toBe(enc);
      expect(readTime(b, readTlv(b, 0))).toBe(ms);
    }
  });

  it('encodes unsigned integers as positive minimal DER', () => {
    expect(encodeUnsignedInteger(0).toString('hex')).toBe('020100');
    expect(encodeUnsignedInteger(127).toString('hex')).toBe('02017f');
    expect(encodeUnsignedInteger(128).toString('hex')).toBe('02020080');
    expect(encodeUnsignedInteger(Buffer.from('000080', 'hex')).toString('hex')).toBe('02020080');
    expect(encodeUnsignedInteger(2n ** 64n).toString('hex')).toBe('0209010000000000000000');
  });

  it('converts PKCS#11 raw r||s to a DER signature node:crypto accepts', () => {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const data = Buffer.from('payload');
    for (let i = 0; i < 200; i++) {
      const raw = sign('sha256', data, { key: privateKey, dsaEncoding: 'ieee-p1363' });
      const der = rawEcdsaToDer(raw);
      expect(verify('sha256', data, publicKey, der)).toBe(true);
    }
    // Leading zero bytes are stripped and high bits padded.
    const raw = Buffer.concat([Buffer.alloc(31), Buffer.from([0x01]), Buffer.from([0x80]), Buffer.alloc(31, 0x11)]);
    expect(rawEcdsaToDer(raw).toString('hex')).toBe('3026020101022100' + '80' + '11'.repeat(31));
  });
});
