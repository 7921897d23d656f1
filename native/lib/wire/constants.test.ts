import { describe, expect, it } from 'vitest';
import { ALG, OBJECT_ATTR, TPM_GENERATED_VALUE, hashAlgOf, hashInfo } from './constants.js';

describe('constants', () => {
  it('TPM_GENERATED_VALUE is 0xff "TCG"', () => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(TPM_GENERATED_VALUE);
    expect(b.subarray(1).toString('latin1')).toBe('TCG');
    expect(b[0]).toBe(0xff);
  });

  it('maps hash algorithms both ways with their digest sizes', () => {
    expect(hashInfo(ALG.SHA1)).toEqual({ name: 'sha1', size: 20 });
    expect(hashInfo(ALG.SHA256)).toEqual({ name: 'sha256', size: 32 });
    expect(hashInfo(ALG.SHA384)).toEqual({ name: 'sha384', size: 48 });
    expect(hashInfo(ALG.SHA512)).toEqual({ name: 'sha512', size: 64 });
    expect(hashInfo(ALG.NULL)).toBeUndefined();
    for (const n of ['sha1', 'sha256', 'sha384', 'sha512'] as const) expect(hashInfo(hashAlgOf(n))?.name).toBe(n);
  });

  it('TPMA_OBJECT bits are distinct single bits', () => {
    const bits = Object.values(OBJECT_ATTR);
    expect(new Set(bits).size).toBe(bits.length);
    for (const b of bits) expect(b & (b - 1)).toBe(0);
    // Part 2 §8.3.2: the L-1 EK attribute word.
    expect(OBJECT_ATTR.fixedTPM | OBJECT_ATTR.fixedParent | OBJECT_ATTR.sensitiveDataOrigin | OBJECT_ATTR.adminWithPolicy | OBJECT_ATTR.restricted | OBJECT_ATTR.decrypt).toBe(0x000300b2);
  });
});
