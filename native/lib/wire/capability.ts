import { TpmReader } from './buffer-io.js';
import { CAP } from './constants.js';
import { TpmWireError } from './errors.js';

/** TPMS_CAPABILITY_DATA for TPM_CAP_TPM_PROPERTIES → property → value. */
export function parseTpmProperties(buf: Buffer): Map<number, number> {
  const r = new TpmReader(buf);
  const cap = r.u32('capability');
  if (cap !== CAP.TPM_PROPERTIES) throw new TpmWireError('TPM_WIRE_INVALID', `expected TPM properties, got capability ${cap}`);
  const count = r.u32('count');
  const out = new Map<number, number>();
  for (let i = 0; i < count; i++) out.set(r.u32('property'), r.u32('value'));
  r.expectEnd('TPMS_CAPABILITY_DATA');
  return out;
}

/** TPMS_CAPABILITY_DATA for TPM_CAP_ALGS → implemented algorithm ids. */
export function parseAlgorithms(buf: Buffer): { alg: number; attributes: number }[] {
  const r = new TpmReader(buf);
  const cap = r.u32('capability');
  if (cap !== CAP.ALGS) throw new TpmWireError('TPM_WIRE_INVALID', `expected algorithms, got capability ${cap}`);
  const count = r.u32('count');
  const out: { alg: number; attributes: number }[] = [];
  for (let i = 0; i < count; i++) out.push({ alg: r.u16('alg'), attributes: r.u32('algAttributes') });
  r.expectEnd('TPMS_CAPABILITY_DATA');
  return out;
}

/**
 * Four ASCII characters packed big-endian in a u32 (TPM_PT_MANUFACTURER, TPM_PT_VENDOR_STRING_n; Part 2
 * §6.13), with the NUL and space padding vendors use trimmed from both ends ("IBM\0" → "IBM").
 */
export function manufacturerString(v: number): string {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b.toString('latin1').replace(/^[\0 ]+|[\0 ]+$/g, '');
}

/** Four ASCII characters packed in a u32 (manufacturer id, vendor strings), NULs and trailing whitespace removed. */
export function u32Ascii(v: number): string {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b.toString('latin1').replace(/[\0\s]+$/g, '').replace(/\0/g, '');
}

/**
 * TPM_PT_VENDOR_STRING_1..4 read as one string: the parts are concatenated before trimming, since a
 * vendor's string may span them with spaces inside (swtpm: "SW  " + " TPM" is "SW   TPM").
 */
export function vendorString(parts: readonly number[]): string {
  const b = Buffer.alloc(4 * parts.length);
  parts.forEach((v, i) => b.writeUInt32BE(v >>> 0, 4 * i));
  return b.toString('latin1').replace(/\0/g, '').trim();
}
