/**
 * Minimal DER: just enough to splice certificates and CRLs from pre-encoded parts and to read
 * the few structures the CA consumes (CSRs, its own certificates, SPKIs). The reader is strict
 * (single-byte tags, definite minimal lengths, bounds-checked) because its input is untrusted.
 */

export const TAG = {
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  ENUMERATED: 0x0a,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

export function lengthOfLength(n: number): number {
  if (n < 0x80) return 1;
  if (n < 0x100) return 2;
  if (n < 0x10000) return 3;
  if (n < 0x1000000) return 4;
  return 5;
}

/** Total size of a TLV whose content is `contentLen` bytes (single-byte tag). */
export function tlvSize(contentLen: number): number {
  return 1 + lengthOfLength(contentLen) + contentLen;
}

/** Writes tag + length at `off`, returns the offset where the content starts. */
export function writeHeader(buf: Buffer, off: number, tag: number, len: number): number {
  buf[off++] = tag;
  if (len < 0x80) {
    buf[off++] = len;
  } else if (len < 0x100) {
    buf[off++] = 0x81;
    buf[off++] = len;
  } else if (len < 0x10000) {
    buf[off++] = 0x82;
    buf[off++] = len >>> 8;
    buf[off++] = len & 0xff;
  } else if (len < 0x1000000) {
    buf[off++] = 0x83;
    buf[off++] = len >>> 16;
    buf[off++] = (len >>> 8) & 0xff;
    buf[off++] = len & 0xff;
  } else {
    buf[off++] = 0x84;
    buf.writeUInt32BE(len, off);
    off += 4;
  }
  return off;
}

export function tlv(tag: number, ...content: Buffer[]): Buffer {
  let len = 0;
  for (const c of content) len += c.length;
  const out = Buffer.allocUnsafe(tlvSize(len));
  let off = writeHeader(out, 0, tag, len);
  for (const c of content) off += c.copy(out, off);
  return out;
}

export function seq(...content: Buffer[]): Buffer {
  return tlv(TAG.SEQUENCE, ...content);
}

export function encodeOid(dotted: string): Buffer {
  const arcs = dotted.split('.').map((a) => {
    if (!/^\d+$/.test(a)) throw new Error(`bad OID ${dotted}`);
    return BigInt(a);
  });
  const [a0, a1] = arcs;
  if (a0 === undefined || a1 === undefined) throw new Error(`bad OID ${dotted}`);
  const bytes: number[] = [];
  const push = (v: bigint): void => {
    const tmp: number[] = [Number(v & 0x7fn)];
    v >>= 7n;
    while (v > 0n) {
      tmp.unshift(Number((v & 0x7fn) | 0x80n));
      v >>= 7n;
    }
    bytes.push(...tmp);
  };
  push(a0 * 40n + a1);
  for (const a of arcs.slice(2)) push(a);
  return tlv(TAG.OID, Buffer.from(bytes));
}

/** DER INTEGER content for an unsigned big-endian magnitude: minimal, positive. */
export function unsignedIntegerContent(magnitude: Buffer): Buffer {
  let i = 0;
  while (i < magnitude.length - 1 && magnitude[i] === 0) i++;
  const m = magnitude.subarray(i);
  if (m.length === 0) return Buffer.from([0]);
  return (m[0] as number) & 0x80 ? Buffer.concat([Buffer.from([0]), m]) : Buffer.from(m);
}

export function encodeUnsignedInteger(magnitude: Buffer | bigint | number): Buffer {
  let mag: Buffer;
  if (Buffer.isBuffer(magnitude)) {
    mag = magnitude;
  } else {
    let v = BigInt(magnitude);
    if (v < 0n) throw new Error('negative integer');
    let hex = v.toString(16);
    if (hex.length % 2) hex = '0' + hex;
    mag = Buffer.from(hex, 'hex');
  }
  return tlv(TAG.INTEGER, unsignedIntegerContent(mag));
}

// --- Time -------------------------------------------------------------------------------------

/** RFC 5280 4.1.2.5: UTCTime for years 1950..2049, GeneralizedTime otherwise; whole seconds, Z. */
export function timeSize(ms: number): number {
  const y = new Date(ms).getUTCFullYear();
  return y >= 1950 && y < 2050 ? 15 : 17;
}

export function writeTime(buf: Buffer, off: number, ms: number): number {
  const d = new Date(ms);
  const y = d.getUTCFullYear();
  if (y < 0 || y > 9999) throw new RangeError('year out of range');
  const utc = y >= 1950 && y < 2050;
  buf[off++] = utc ? TAG.UTC_TIME : TAG.GENERALIZED_TIME;
  buf[off++] = utc ? 13 : 15;
  if (!utc) off = two(buf, off, Math.floor(y / 100));
  off = two(buf, off, y % 100);
  off = two(buf, off, d.getUTCMonth() + 1);
  off = two(buf, off, d.getUTCDate());
  off = two(buf, off, d.getUTCHours());
  off = two(buf, off, d.getUTCMinutes());
  off = two(buf, off, d.getUTCSeconds());
  buf[off++] = 0x5a; // 'Z'
  return off;
}

export function encodeTime(ms: number): Buffer {
  const out = Buffer.allocUnsafe(timeSize(ms));
  writeTime(out, 0, ms);
  return out;
}

function two(buf: Buffer, off: number, v: number): number {
  buf[off++] = 0x30 + Math.floor(v / 10);
  buf[off++] = 0x30 + (v % 10);
  return off;
}

// --- Reader -----------------------------------------------------------------------------------

export class DerError extends Error {
  override readonly name = 'DerError';
}

export interface Tlv {
  readonly tag: number;
  /** Offset of the tag byte. */
  readonly start: number;
  /** Offset of the first content byte. */
  readonly contentStart: number;
  /** Offset one past the last content byte. */
  readonly end: number;
}

/** Reads one TLV at `off` that must end at or before `limit`. */
export function readTlv(buf: Buffer, off: number, limit: number = buf.length): Tlv {
  if (limit > buf.length) limit = buf.length;
  if (off + 2 > limit) throw new DerError('truncated header');
  const tag = buf[off] as number;
  if ((tag & 0x1f) === 0x1f) throw new DerError('multi-byte tags not supported');
  let p = off + 1;
  const first = buf[p++] as number;
  let len: number;
  if (first < 0x80) {
    len = first;
  } else {
    const n = first & 0x7f;
    if (n === 0) throw new DerError('indefinite length');
    if (n > 4) throw new DerError('length too large');
    if (p + n > limit) throw new DerError('truncated length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (buf[p++] as number);
    if (len < 0x80 || lengthOfLength(len) !== n + 1) throw new DerError('non-minimal length');
  }
  const end = p + len;
  if (end > limit) throw new DerError('content past end');
  return { tag, start: off, contentStart: p, end };
}

export function expectTlv(buf: Buffer, off: number, limit: number, tag: number, what: string): Tlv {
  const t = readTlv(buf, off, limit);
  if (t.tag !== tag) throw new DerError(`${what}: expected tag 0x${tag.toString(16)}, got 0x${t.tag.toString(16)}`);
  return t;
}

/** Whole-buffer parse of exactly one TLV (no trailing bytes). */
export function readSingle(buf: Buffer, tag: number, what: string): Tlv {
  const t = expectTlv(buf, 0, buf.length, tag, what);
  if (t.end !== buf.length) throw new DerError(`${what}: trailing data`);
  return t;
}

export function contentOf(buf: Buffer, t: Tlv): Buffer {
  return buf.subarray(t.contentStart, t.end);
}

export function bytesOf(buf: Buffer, t: Tlv): Buffer {
  return buf.subarray(t.start, t.end);
}

/** Parses a UTCTime/GeneralizedTime TLV (Z form, whole seconds) to epoch ms. */
export function readTime(buf: Buffer, t: Tlv): number {
  const s = buf.toString('latin1', t.contentStart, t.end);
  let m: RegExpExecArray | null;
  let year: number;
  let rest: string;
  if (t.tag === TAG.UTC_TIME && (m = /^(\d{2})(\d{10})Z$/.exec(s))) {
    const yy = Number(m[1]);
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
    rest = m[2] as string;
  } else if (t.tag === TAG.GENERALIZED_TIME && (m = /^(\d{4})(\d{10})Z$/.exec(s))) {
    year = Number(m[1]);
    rest = m[2] as string;
  } else {
    throw new DerError('bad time');
  }
  const n = (i: number): number => Number(rest.slice(i, i + 2));
  return Date.UTC(year, n(0) - 1, n(2), n(4), n(6), n(8));
}

// --- PEM --------------------------------------------------------------------------------------

export function toPem(der: Buffer, label: string): string {
  const b64 = der.toString('base64');
  let out = `-----BEGIN ${label}-----\n`;
  for (let i = 0; i < b64.length; i += 64) out += b64.slice(i, i + 64) + '\n';
  return out + `-----END ${label}-----\n`;
}

/** All PEM blocks with the given label, in order. */
export function pemBlocks(text: string, label: string): Buffer[] {
  const re = new RegExp(`-----BEGIN ${label}-----([A-Za-z0-9+/=\\s]*?)-----END ${label}-----`, 'g');
  const out: Buffer[] = [];
  for (const m of text.matchAll(re)) out.push(Buffer.from((m[1] as string).replace(/\s+/g, ''), 'base64'));
  return out;
}
