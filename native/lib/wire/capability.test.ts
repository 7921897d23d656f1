import { describe, expect, it } from 'vitest';
import { TpmWriter } from './buffer-io.js';
import { ALG, CAP, PT } from './constants.js';
import { manufacturerString, parseAlgorithms, parseTpmProperties, u32Ascii, vendorString } from './capability.js';
import { SWTPM } from './swtpm-fixtures.js';
import { codeOf } from './test-helpers.js';

const ascii = (s: string) => Buffer.from(s.padEnd(4, '\0'), 'latin1').readUInt32BE(0);

describe('TPMS_CAPABILITY_DATA', () => {
  it('TPM_CAP_TPM_PROPERTIES → Map(property → value)', () => {
    const wire = new TpmWriter().u32(CAP.TPM_PROPERTIES).u32(2).u32(PT.MANUFACTURER).u32(ascii('IBM')).u32(PT.REVISION).u32(164).finish();
    expect(parseTpmProperties(wire)).toEqual(new Map([[PT.MANUFACTURER, ascii('IBM')], [PT.REVISION, 164]]));
  });

  it('TPM_CAP_ALGS → [{alg, attributes}]', () => {
    const wire = new TpmWriter().u32(CAP.ALGS).u32(2).u16(ALG.RSA).u32(0x9).u16(ALG.SHA256).u32(0x4).finish();
    expect(parseAlgorithms(wire)).toEqual([{ alg: ALG.RSA, attributes: 0x9 }, { alg: ALG.SHA256, attributes: 0x4 }]);
  });

  it('parses what a real TPM (swtpm) returned', () => {
    const props = parseTpmProperties(SWTPM.capProps);
    expect(manufacturerString(props.get(PT.MANUFACTURER)!)).toBe('IBM');
    expect(manufacturerString(props.get(PT.FAMILY_INDICATOR)!)).toBe('2.0');
    expect(vendorString([PT.VENDOR_STRING_1, PT.VENDOR_STRING_2, PT.VENDOR_STRING_3, PT.VENDOR_STRING_4].map((p) => props.get(p) ?? 0))).toBe('SW   TPM');
    expect(props.get(PT.FIRMWARE_VERSION_1)).toBe(0x20191023);
    expect(props.get(PT.REVISION)).toBeGreaterThanOrEqual(116);
    const algs = parseAlgorithms(SWTPM.capAlgs).map((a) => a.alg);
    for (const a of [ALG.RSA, ALG.ECC, ALG.SHA256, ALG.AES, ALG.CFB, ALG.ECDSA, ALG.OAEP, ALG.RSASSA, ALG.RSAPSS]) expect(algs).toContain(a);
  });

  it('refuses the wrong capability, truncation and trailing bytes with codes', () => {
    const props = new TpmWriter().u32(CAP.TPM_PROPERTIES).u32(1).u32(PT.REVISION).u32(1).finish();
    expect(codeOf(() => parseAlgorithms(props))).toBe('TPM_WIRE_INVALID');
    expect(codeOf(() => parseTpmProperties(new TpmWriter().u32(CAP.ALGS).u32(0).finish()))).toBe('TPM_WIRE_INVALID');
    for (let n = 0; n < props.length; n++) expect(codeOf(() => parseTpmProperties(props.subarray(0, n)))).toBe('TPM_WIRE_TRUNCATED');
    expect(codeOf(() => parseTpmProperties(Buffer.concat([props, Buffer.from([0])])))).toBe('TPM_WIRE_INVALID');
    // A huge count runs into the end of the buffer instead of looping.
    expect(codeOf(() => parseAlgorithms(new TpmWriter().u32(CAP.ALGS).u32(0xffffffff).finish()))).toBe('TPM_WIRE_TRUNCATED');
  });
});

describe('ASCII in u32', () => {
  it('manufacturerString trims NUL and space padding from both ends', () => {
    expect(manufacturerString(0x49424d00)).toBe('IBM');
    expect(manufacturerString(ascii('INTC'))).toBe('INTC');
    expect(manufacturerString(0x20204e00)).toBe('N');
    expect(manufacturerString(0)).toBe('');
    expect(manufacturerString(0x53572020)).toBe('SW');
  });

  it('u32Ascii (existing callers) keeps its behaviour', () => {
    expect(u32Ascii(0x49424d00)).toBe('IBM');
    expect(u32Ascii(0x2054504d)).toBe(' TPM');
  });
});
