import { createHash } from 'node:crypto';
import { TpmReader, TpmWriter } from './buffer-io.js';
import { hashAlgOf, hashInfo, type HashName } from './constants.js';
import { TpmWireError } from './errors.js';

export interface PcrSelection {
  readonly hash: HashName;
  readonly pcrs: readonly number[];
}

const MAX_PCR = 23;

/** TPML_PCR_SELECTION (Part 2 §10.9.7) with 3-byte bitmaps (PCRs 0..23). */
export function marshalPcrSelection(selections: readonly PcrSelection[]): Buffer {
  const w = new TpmWriter().u32(selections.length);
  for (const s of selections) {
    const bitmap = Buffer.alloc(3);
    for (const pcr of s.pcrs) {
      if (!Number.isInteger(pcr) || pcr < 0 || pcr > MAX_PCR) throw new TpmWireError('TPM_WIRE_INVALID', `PCR index ${pcr} out of range`);
      bitmap[pcr >> 3]! |= 1 << (pcr & 7);
    }
    w.u16(hashAlgOf(s.hash)).u8(3).bytes(bitmap);
  }
  return w.finish();
}

export function readPcrSelection(r: TpmReader): PcrSelection[] {
  const count = r.u32('TPML_PCR_SELECTION.count');
  if (count > 16) throw new TpmWireError('TPM_WIRE_INVALID', `implausible PCR selection count ${count}`);
  const out: PcrSelection[] = [];
  for (let i = 0; i < count; i++) {
    const alg = r.u16('pcrSelection.hash');
    const hash = hashInfo(alg)?.name;
    if (!hash) throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported PCR bank 0x${alg.toString(16)}`);
    const bitmap = r.bytes(r.u8('sizeofSelect'), 'pcrSelect');
    const pcrs: number[] = [];
    bitmap.forEach((byte, idx) => {
      for (let bit = 0; bit < 8; bit++) if (byte & (1 << bit)) pcrs.push(idx * 8 + bit);
    });
    out.push({ hash, pcrs });
  }
  return out;
}

export function parsePcrSelection(buf: Buffer): PcrSelection[] {
  const r = new TpmReader(buf);
  const s = readPcrSelection(r);
  r.expectEnd('TPML_PCR_SELECTION');
  return s;
}

/** TPML_DIGEST: u32 count then TPM2B_DIGESTs. */
export function parseDigestList(buf: Buffer): Buffer[] {
  const r = new TpmReader(buf);
  const count = r.u32('TPML_DIGEST.count');
  if (count > 64) throw new TpmWireError('TPM_WIRE_INVALID', `implausible digest count ${count}`);
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) out.push(r.tpm2b('digest'));
  r.expectEnd('TPML_DIGEST');
  return out;
}

/** pcrDigest of a quote: H(PCR values concatenated in selection order) (Part 3 §18.4). */
export function quotePcrDigest(hash: HashName, values: readonly Buffer[]): Buffer {
  const h = createHash(hash);
  for (const v of values) h.update(v);
  return h.digest();
}
