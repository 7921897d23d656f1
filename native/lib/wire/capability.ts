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

/** Four ASCII characters packed in a u32 (manufacturer id, vendor strings), NULs and spaces trimmed. */
export function u32Ascii(v: number): string {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b.toString('latin1').replace(/[\0\s]+$/g, '').replace(/\0/g, '');
}
