import { TpmWireError } from './errors.js';

/** Big-endian reader over TPM wire structures (TPM 2.0 Part 2: all integers are big-endian). */
export class TpmReader {
  readonly #buf: Buffer;
  #off = 0;
  constructor(buf: Buffer) {
    this.#buf = buf;
  }
  get offset(): number {
    return this.#off;
  }
  get remaining(): number {
    return this.#buf.length - this.#off;
  }
  #need(n: number, what: string): void {
    if (this.#off + n > this.#buf.length) {
      throw new TpmWireError('TPM_WIRE_TRUNCATED', `truncated reading ${what} at offset ${this.#off}`);
    }
  }
  u8(what = 'u8'): number {
    this.#need(1, what);
    return this.#buf.readUInt8(this.#off++);
  }
  u16(what = 'u16'): number {
    this.#need(2, what);
    const v = this.#buf.readUInt16BE(this.#off);
    this.#off += 2;
    return v;
  }
  u32(what = 'u32'): number {
    this.#need(4, what);
    const v = this.#buf.readUInt32BE(this.#off);
    this.#off += 4;
    return v;
  }
  u64(what = 'u64'): bigint {
    this.#need(8, what);
    const v = this.#buf.readBigUInt64BE(this.#off);
    this.#off += 8;
    return v;
  }
  bytes(n: number, what = 'bytes'): Buffer {
    if (!Number.isInteger(n) || n < 0) throw new TpmWireError('TPM_WIRE_INVALID', `invalid length ${n} for ${what}`);
    this.#need(n, what);
    const v = this.#buf.subarray(this.#off, this.#off + n);
    this.#off += n;
    return Buffer.from(v);
  }
  /** A TPM2B: u16 size then that many bytes. */
  tpm2b(what = 'TPM2B'): Buffer {
    return this.bytes(this.u16(`${what} size`), what);
  }
  /** The unread bytes (copied), without consuming them. */
  rest(): Buffer {
    return Buffer.from(this.#buf.subarray(this.#off));
  }
  expectEnd(what: string): void {
    if (this.remaining !== 0) throw new TpmWireError('TPM_WIRE_INVALID', `${this.remaining} trailing bytes after ${what}`);
  }
}

export class TpmWriter {
  readonly #parts: Buffer[] = [];
  #uint(v: number, bytes: 1 | 2 | 4): this {
    // Range-checked here so a bad field surfaces as a coded error, not a RangeError from Buffer.
    if (!Number.isInteger(v) || v < 0 || v >= 2 ** (8 * bytes)) {
      throw new TpmWireError('TPM_WIRE_INVALID', `${v} does not fit in ${bytes * 8} bits`);
    }
    const b = Buffer.alloc(bytes);
    b.writeUIntBE(v, 0, bytes);
    this.#parts.push(b);
    return this;
  }
  u8(v: number): this {
    return this.#uint(v, 1);
  }
  u16(v: number): this {
    return this.#uint(v, 2);
  }
  u32(v: number): this {
    // Results of JS bitwise operators are signed int32; accept them as the u32 they encode.
    return this.#uint(Number.isInteger(v) && v < 0 && v >= -(2 ** 31) ? v >>> 0 : v, 4);
  }
  u64(v: bigint | number): this {
    if (typeof v === 'number' && !Number.isSafeInteger(v)) throw new TpmWireError('TPM_WIRE_INVALID', `${v} is not a 64-bit integer`);
    const n = BigInt(v);
    if (n < 0n || n >= 1n << 64n) throw new TpmWireError('TPM_WIRE_INVALID', `${n} does not fit in 64 bits`);
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(n);
    this.#parts.push(b);
    return this;
  }
  bytes(b: Buffer): this {
    this.#parts.push(b);
    return this;
  }
  tpm2b(b: Buffer): this {
    if (b.length > 0xffff) throw new TpmWireError('TPM_WIRE_INVALID', 'TPM2B larger than 65535 bytes');
    return this.u16(b.length).bytes(b);
  }
  finish(): Buffer {
    return Buffer.concat(this.#parts);
  }
}

/** Wraps bytes in a TPM2B (u16 size prefix). */
export function tpm2b(b: Buffer): Buffer {
  return new TpmWriter().tpm2b(b).finish();
}
