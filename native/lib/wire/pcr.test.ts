import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { TpmWriter } from './buffer-io.js';
import { ALG } from './constants.js';
import { marshalPcrSelection, parseDigestList, parsePcrSelection, quotePcrDigest } from './pcr.js';
import { codeOf } from './test-helpers.js';

describe('TPML_PCR_SELECTION', () => {
  it('marshals count, then hash ‖ sizeofSelect 3 ‖ bitmap (PCR n is bit n%8 of octet n/8)', () => {
    const wire = marshalPcrSelection([{ hash: 'sha256', pcrs: [0, 1, 7, 16] }]);
    expect(wire.toString('hex')).toBe('00000001' + '000b' + '03' + '83' + '00' + '01');
    expect(marshalPcrSelection([]).toString('hex')).toBe('00000000');
  });

  it('round-trips several banks (PCRs come back sorted, duplicates merged)', () => {
    const sel = [{ hash: 'sha256' as const, pcrs: [23, 0, 7, 7] }, { hash: 'sha1' as const, pcrs: [] }, { hash: 'sha384' as const, pcrs: [10] }];
    expect(parsePcrSelection(marshalPcrSelection(sel))).toEqual([
      { hash: 'sha256', pcrs: [0, 7, 23] },
      { hash: 'sha1', pcrs: [] },
      { hash: 'sha384', pcrs: [10] },
    ]);
  });

  it('reads bitmaps of other sizes (sizeofSelect is the TPM\'s choice)', () => {
    const wire = new TpmWriter().u32(1).u16(ALG.SHA256).u8(4).bytes(Buffer.from('01000080', 'hex')).finish();
    expect(parsePcrSelection(wire)).toEqual([{ hash: 'sha256', pcrs: [0, 31] }]);
  });

  it('refuses bad input with codes', () => {
    expect(codeOf(() => marshalPcrSelection([{ hash: 'sha256', pcrs: [24] }]))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => marshalPcrSelection([{ hash: 'sha256', pcrs: [-1] }]))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => marshalPcrSelection([{ hash: 'sha256', pcrs: [1.5] }]))).toBe('TPM_WIRE_INVALID');
    const wire = marshalPcrSelection([{ hash: 'sha256', pcrs: [1] }]);
    for (let n = 0; n < wire.length; n++) expect(codeOf(() => parsePcrSelection(wire.subarray(0, n)))).toBe('TPM_WIRE_TRUNCATED');
    expect(codeOf(() => parsePcrSelection(Buffer.concat([wire, Buffer.from([0])])))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => parsePcrSelection(new TpmWriter().u32(1).u16(0x0012 /* SM3 */).u8(3).bytes(Buffer.alloc(3)).finish()))).toBe('TPM_WIRE_UNSUPPORTED');
    expect(codeOf(() => parsePcrSelection(new TpmWriter().u32(0xffffffff).finish()))).toBe('TPM_WIRE_INVALID');
  });
});

describe('quotePcrDigest / TPML_DIGEST', () => {
  it('hashes the PCR values concatenated in selection order', () => {
    const values = [Buffer.alloc(32, 1), Buffer.alloc(32, 2)];
    expect(quotePcrDigest('sha256', values).equals(createHash('sha256').update(Buffer.concat(values)).digest())).toBe(true);
    expect(quotePcrDigest('sha384', []).equals(createHash('sha384').digest())).toBe(true);
  });

  it('parses TPML_DIGEST and refuses bad ones', () => {
    const wire = new TpmWriter().u32(2).tpm2b(Buffer.alloc(32, 1)).tpm2b(Buffer.alloc(20, 2)).finish();
    expect(parseDigestList(wire)).toEqual([Buffer.alloc(32, 1), Buffer.alloc(20, 2)]);
    expect(codeOf(() => parseDigestList(wire.subarray(0, wire.length - 1)))).toBe('TPM_WIRE_TRUNCATED');
    expect(codeOf(() => parseDigestList(new TpmWriter().u32(1000).finish()))).toBe('TPM_WIRE_INVALID');
  });
});
