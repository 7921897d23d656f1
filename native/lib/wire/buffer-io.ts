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
    this.#need(n, what);
    const v = this.#buf.subarray(this.#off, this.#off + n);
    this.#off += n;
    return Buffer.from(v);
  }
  /** A TPM2B: u16 size then that many bytes. */
  tpm2b(what = 'TPM2B'): Buffer {
    return this.bytes(this.u16(`${what} size`), what);
  }
  expectEnd(what: string): void {
    if (this.remaining !== 0) throw new TpmWireError('TPM_WIRE_INVALID', `${this.remaining} trailing bytes after ${what}`);
  }
}

export class TpmWriter {
  readonly #parts: Buffer[] = [];
  u8(v: number): this {
    const b = Buffer.alloc(1);
    b.writeUInt8(v);
    this.#parts.push(b);
    return this;
  }
  u16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(v);
    this.#parts.push(b);
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v >>> 0);
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
