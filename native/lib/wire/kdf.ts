import { createHash, createHmac } from 'node:crypto';
import { hashInfo } from './constants.js';
import { TpmWireError } from './errors.js';

function hashName(alg: number): { name: string; size: number } {
  const h = hashInfo(alg);
  if (!h) throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported hash 0x${alg.toString(16)}`);
  return h;
}

const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
};

/** Label bytes with the terminating NUL the TPM includes (Part 1 §11.4.10.2, §11.4.10.3). */
const labelBytes = (label: string) => Buffer.concat([Buffer.from(label, 'latin1'), Buffer.from([0])]);

function truncate(out: Buffer, bits: number): Buffer {
  const bytes = Math.ceil(bits / 8);
  const r = Buffer.from(out.subarray(0, bytes));
  if (bits % 8) r[0]! &= (1 << (bits % 8)) - 1;
  return r;
}

/** KDFa: SP 800-108 counter-mode KDF with HMAC (TPM 2.0 Part 1 §11.4.10.2). */
export function kdfa(hashAlg: number, key: Buffer, label: string, contextU: Buffer, contextV: Buffer, bits: number): Buffer {
  const h = hashName(hashAlg);
  const parts: Buffer[] = [];
  const fixed = Buffer.concat([labelBytes(label), contextU, contextV, u32(bits)]);
  for (let i = 1, got = 0; got * 8 < bits; i++) {
    const block = createHmac(h.name, key).update(u32(i)).update(fixed).digest();
    parts.push(block);
    got += block.length;
  }
  return truncate(Buffer.concat(parts), bits);
}

/** KDFe: SP 800-56A concatenation KDF (TPM 2.0 Part 1 §11.4.10.3). */
export function kdfe(hashAlg: number, z: Buffer, label: string, partyU: Buffer, partyV: Buffer, bits: number): Buffer {
  const h = hashName(hashAlg);
  const parts: Buffer[] = [];
  for (let i = 1, got = 0; got * 8 < bits; i++) {
    const block = createHash(h.name).update(u32(i)).update(z).update(labelBytes(label)).update(partyU).update(partyV).digest();
    parts.push(block);
    got += block.length;
  }
  return truncate(Buffer.concat(parts), bits);
}
