import { createHash, createHmac } from 'node:crypto';
import { hashInfo, type HashName } from './constants.js';
import { TpmWireError } from './errors.js';

function hashOf(alg: number): { name: HashName; size: number } {
  const h = hashInfo(alg);
  if (!h) throw new TpmWireError('TPM_WIRE_UNSUPPORTED', `unsupported KDF hash 0x${alg.toString(16)}`);
  return h;
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
}

/**
 * Label bytes as hashed: the string and its terminating NUL (Part 1 §11.4.10.2, §11.4.10.3). A label
 * that already ends in NUL is not given a second one, as the reference implementation does.
 */
function labelBytes(label: string): Buffer {
  const b = Buffer.from(label, 'latin1');
  return b.length > 0 && b[b.length - 1] === 0 ? b : Buffer.concat([b, Buffer.alloc(1)]);
}

function checkBits(bits: number): void {
  // [L]2 is a u32, and 2^16 bits is far beyond any key or seed the TPM derives.
  if (!Number.isInteger(bits) || bits <= 0 || bits > 0x10000) {
    throw new TpmWireError('TPM_WIRE_INVALID', `KDF output of ${bits} bits is out of range`);
  }
}

/** Concatenates `block(i)` for i = 1.. until `bits` are produced, then trims to `bits`. */
function expand(size: number, bits: number, block: (counter: Buffer) => Buffer): Buffer {
  const bytes = Math.ceil(bits / 8);
  const blocks: Buffer[] = [];
  for (let i = 1; blocks.length * size < bytes; i++) blocks.push(block(u32(i)));
  const out = Buffer.concat(blocks).subarray(0, bytes);
  // The result is a big-endian number of `bits` bits, so surplus high-order bits of the first octet are
  // cleared, as the reference implementation (Part 4, CryptKDFa/CryptKDFe) does.
  if (bits % 8 !== 0) out[0]! &= (1 << (bits % 8)) - 1;
  return out;
}

/**
 * KDFa (TPM 2.0 Part 1 §11.4.10.2): SP 800-108 counter-mode KDF with HMAC-hashAlg,
 * K(i) = HMAC(key, [i]32 ‖ label ‖ 00 ‖ contextU ‖ contextV ‖ [bits]32).
 */
export function kdfa(hashAlg: number, key: Buffer, label: string, contextU: Buffer, contextV: Buffer, bits: number): Buffer {
  const h = hashOf(hashAlg);
  checkBits(bits);
  const fixed = Buffer.concat([labelBytes(label), contextU, contextV, u32(bits)]);
  return expand(h.size, bits, (counter) => createHmac(h.name, key).update(counter).update(fixed).digest());
}

/**
 * KDFe (TPM 2.0 Part 1 §11.4.10.3): SP 800-56A concatenation KDF,
 * K(i) = H([i]32 ‖ Z ‖ label ‖ 00 ‖ partyU ‖ partyV).
 */
export function kdfe(hashAlg: number, z: Buffer, label: string, partyU: Buffer, partyV: Buffer, bits: number): Buffer {
  const h = hashOf(hashAlg);
  checkBits(bits);
  const other = Buffer.concat([labelBytes(label), partyU, partyV]);
  return expand(h.size, bits, (counter) => createHash(h.name).update(counter).update(z).update(other).digest());
}
