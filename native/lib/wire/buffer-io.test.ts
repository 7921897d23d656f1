import { describe, expect, it } from 'vitest';
import { TpmReader, TpmWriter, tpm2b } from './buffer-io.js';
import { TpmWireError } from './errors.js';

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(TpmWireError);
    expect(e).toBeInstanceOf(Error);
    return (e as TpmWireError).code;
  }
  return 'no error';
}

describe('TpmReader', () => {
  it('reads big-endian integers, TPM2Bs and raw bytes in order', () => {
    const buf = Buffer.from('01' + '0203' + '04050607' + '08090a0b0c0d0e0f' + '0002abcd' + 'eeff', 'hex');
    const r = new TpmReader(buf);
    expect(r.u8()).toBe(0x01);
    expect(r.u16()).toBe(0x0203);
    expect(r.u32()).toBe(0x04050607);
    expect(r.u64()).toBe(0x08090a0b0c0d0e0fn);
    expect(r.tpm2b().toString('hex')).toBe('abcd');
    expect(r.remaining).toBe(2);
    expect(r.offset).toBe(buf.length - 2);
    expect(r.rest().toString('hex')).toBe('eeff');
    expect(r.remaining).toBe(2); // rest() does not consume
    expect(r.bytes(2).toString('hex')).toBe('eeff');
    r.expectEnd('test');
  });

  it('reads u32 values with the top bit set as positive numbers', () => {
    expect(new TpmReader(Buffer.from('ff544347', 'hex')).u32()).toBe(0xff544347);
    expect(new TpmReader(Buffer.from('ffffffffffffffff', 'hex')).u64()).toBe(0xffffffffffffffffn);
  });

  it('returns copies, not views of the input', () => {
    const buf = Buffer.from('0002abcd', 'hex');
    const got = new TpmReader(buf).tpm2b();
    buf[2] = 0;
    expect(got.toString('hex')).toBe('abcd');
  });

  it('throws TPM_WIRE_TRUNCATED instead of reading past the end, for every reader', () => {
    expect(codeOf(() => new TpmReader(Buffer.alloc(0)).u8())).toBe('TPM_WIRE_TRUNCATED');
    expect(codeOf(() => new TpmReader(Buffer.alloc(1)).u16())).toBe('TPM_WIRE_TRUNCATED');
    expect(codeOf(() => new TpmReader(Buffer.alloc(3)).u32())).toBe('TPM_WIRE_TRUNCATED');
    expect(codeOf(() => new TpmReader(Buffer.alloc(7)).u64())).toBe('TPM_WIRE_TRUNCATED');
    expect(codeOf(() => new TpmReader(Buffer.alloc(3)).bytes(4))).toBe('TPM_WIRE_TRUNCATED');
    // A TPM2B whose size runs past the buffer.
    expect(codeOf(() => new TpmReader(Buffer.from('0005abcd', 'hex')).tpm2b())).toBe('TPM_WIRE_TRUNCATED');
    expect(codeOf(() => new TpmReader(Buffer.from('00', 'hex')).tpm2b())).toBe('TPM_WIRE_TRUNCATED');
  });

  it('a failed read leaves the offset where it was', () => {
    const r = new TpmReader(Buffer.from('0102', 'hex'));
    expect(codeOf(() => r.u32())).toBe('TPM_WIRE_TRUNCATED');
    expect(r.u16()).toBe(0x0102);
  });

  it('refuses negative or fractional lengths and reports trailing bytes as TPM_WIRE_INVALID', () => {
    expect(codeOf(() => new TpmReader(Buffer.alloc(4)).bytes(-1))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => new TpmReader(Buffer.alloc(4)).bytes(1.5))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => new TpmReader(Buffer.alloc(1)).expectEnd('x'))).toBe('TPM_WIRE_INVALID');
  });
});

describe('TpmWriter', () => {
  it('writes big-endian integers and TPM2Bs that TpmReader reads back', () => {
    const buf = new TpmWriter().u8(0xfe).u16(0xbeef).u32(0xff544347).u64(0x0123456789abcdefn).tpm2b(Buffer.from('hi')).bytes(Buffer.from([9])).finish();
    expect(buf.toString('hex')).toBe('fe' + 'beef' + 'ff544347' + '0123456789abcdef' + '00026869' + '09');
    const r = new TpmReader(buf);
    expect([r.u8(), r.u16(), r.u32(), r.u64(), r.tpm2b().toString(), r.u8()]).toEqual([0xfe, 0xbeef, 0xff544347, 0x0123456789abcdefn, 'hi', 9]);
  });

  it('accepts signed int32 results of bitwise operators as u32, and numbers for u64', () => {
    expect(new TpmWriter().u32(0x80000000 | 1).finish().toString('hex')).toBe('80000001');
    expect(new TpmWriter().u64(42).finish().toString('hex')).toBe('000000000000002a');
  });

  it('refuses values that do not fit with TPM_WIRE_INVALID', () => {
    expect(codeOf(() => new TpmWriter().u8(256))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => new TpmWriter().u16(0x10000))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => new TpmWriter().u16(-1))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => new TpmWriter().u32(2 ** 32))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => new TpmWriter().u32(1.5))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => new TpmWriter().u64(1n << 64n))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => new TpmWriter().u64(-1n))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => new TpmWriter().u64(0.5))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => new TpmWriter().tpm2b(Buffer.alloc(0x10000)))).toBe('TPM_WIRE_INVALID');
  });

  it('tpm2b() prefixes the size', () => {
    expect(tpm2b(Buffer.alloc(0)).toString('hex')).toBe('0000');
    expect(tpm2b(Buffer.from([1, 2, 3])).toString('hex')).toBe('0003010203');
  });
});
