import { createHash } from 'node:crypto';
import { SchemaError, base64, int, literal, object, parseMessage, str, type Infer } from './schema.js';

/**
 * CRL distribution to devices (bridge → devices, retained, read-only for devices). Version 1.
 * See docs/protocol.md, "Revocation (CRL)".
 *
 * The broker's `max_packet_size` (64 KiB, global in mosquitto) bounds every message, and a fleet CRL
 * with 100,000 revoked serials is ~4.9 MB (about 50 bytes a serial). So devices get two kinds of messages:
 * - **Complete ("base") CRL in parts**: `<base>/crl/full/<i>`, i = 0..parts-1, each
 *   `{ v, crlNumber, part, parts, sha256, data }`. `data` is a slice of the DER: every part but the last
 *   carries exactly `CRL_PART_BYTES`, the last 1..`CRL_PART_BYTES`. `sha256` is over the whole DER and,
 *   with `crlNumber` and `parts`, names the set a part belongs to: a device joins only parts that agree
 *   on all three, then checks the digest. The digest only detects mixing; the CRL signature is what the
 *   device trusts. Parts past a new base's count are cleared (empty retained payload).
 * - **Delta CRL** (RFC 5280 5.2.4): `<base>/crl/delta`, one message
 *   `{ v, crlNumber, baseCrlNumber, thisUpdate, nextUpdate, crl }`: a CRL with a critical
 *   deltaCRLIndicator naming the complete CRL it applies to, listing every revocation since that base
 *   (cumulative). Complete and delta CRLs share one number sequence. An empty retained payload means
 *   "no delta" (cleared right after a new base).
 * The numbers and times in the JSON are hints for logs and routing; the device takes them from the
 * signed DER.
 */
export const CRL_MESSAGE_VERSION = 1;

/** DER bytes in every part but the last (a multiple of 3: each part's base64 has no padding). */
export const CRL_PART_BYTES = 36 * 1024;
/** Most parts of one complete CRL: 512 × 36 KiB = 18 MiB. */
export const MAX_CRL_PARTS = 512;
/** Largest delta CRL DER (one message). The bridge sends a new base rather than a larger delta. */
export const MAX_DELTA_CRL_BYTES = CRL_PART_BYTES;
/**
 * Largest CRL message (either kind). A full part is ~49.4 KB of JSON: with the topic and MQTT headers
 * it stays well under the broker's 64 KiB `max_packet_size` and the transports' 64 KiB incoming limit.
 */
export const MAX_CRL_MESSAGE_BYTES = 50 * 1024;

/** Decimal, no leading zeros; RFC 5280 5.2.3 numbers are < 2^160 (at most 49 digits). */
const crlNumber = str({ min: 1, max: 49, pattern: /^(0|[1-9][0-9]*)$/ });
const timestamp = int({ min: 0, max: 8_640_000_000_000_000 });

export const crlPartMessage = object({
  v: literal(CRL_MESSAGE_VERSION),
  crlNumber,
  part: int({ min: 0, max: MAX_CRL_PARTS - 1 }),
  parts: int({ min: 1, max: MAX_CRL_PARTS }),
  /** Lowercase hex SHA-256 of the whole DER. */
  sha256: str({ min: 64, max: 64, pattern: /^[0-9a-f]{64}$/ }),
  data: base64({ maxBytes: CRL_PART_BYTES, minBytes: 1 }),
});

export const crlDeltaMessage = object({
  v: literal(CRL_MESSAGE_VERSION),
  crlNumber,
  baseCrlNumber: crlNumber,
  thisUpdate: timestamp,
  nextUpdate: timestamp,
  crl: base64({ maxBytes: MAX_DELTA_CRL_BYTES, minBytes: 1 }),
});

export type CrlPartMessage = Infer<typeof crlPartMessage>;
export type CrlDeltaMessage = Infer<typeof crlDeltaMessage>;

/**
 * Validates one part message (size, JSON, schema, `part < parts`, the slice size rule). Throws
 * SchemaError (SCHEMA_TOO_LARGE, SCHEMA_NOT_JSON, SCHEMA_INVALID).
 */
export function decodeCrlPart(payload: Buffer | string): CrlPartMessage {
  const m = parseMessage(payload, crlPartMessage, MAX_CRL_MESSAGE_BYTES);
  if (m.part >= m.parts) throw new SchemaError('SCHEMA_INVALID', 'part', `part ${m.part} of ${m.parts}`);
  if (m.part < m.parts - 1 && m.data.length !== CRL_PART_BYTES) {
    throw new SchemaError('SCHEMA_INVALID', 'data', `every part but the last carries ${CRL_PART_BYTES} bytes, got ${m.data.length}`);
  }
  return m;
}

/** Validates one delta message (size, JSON, schema, baseCrlNumber < crlNumber). Throws SchemaError. */
export function decodeCrlDelta(payload: Buffer | string): CrlDeltaMessage {
  const m = parseMessage(payload, crlDeltaMessage, MAX_CRL_MESSAGE_BYTES);
  if (BigInt(m.baseCrlNumber) >= BigInt(m.crlNumber)) {
    throw new SchemaError('SCHEMA_INVALID', 'baseCrlNumber', 'a delta CRL applies to an earlier complete CRL');
  }
  return m;
}

export function sha256Hex(der: Buffer): string {
  return createHash('sha256').update(der).digest('hex');
}

/** Number of part messages a complete CRL of `derBytes` bytes needs. */
export function crlPartCount(derBytes: number): number {
  return Math.max(1, Math.ceil(derBytes / CRL_PART_BYTES));
}

/**
 * The part payloads of a complete CRL, in order (payload i goes to `Topics.crlPart(i)`). Throws
 * SchemaError SCHEMA_TOO_LARGE when the CRL needs more than MAX_CRL_PARTS parts.
 */
export function encodeCrlParts(crl: { readonly crlNumber: bigint; readonly der: Buffer }): Buffer[] {
  if (crl.der.length === 0) throw new SchemaError('SCHEMA_INVALID', 'der', 'empty CRL');
  const parts = crlPartCount(crl.der.length);
  if (parts > MAX_CRL_PARTS) throw new SchemaError('SCHEMA_TOO_LARGE', '', `a CRL of ${crl.der.length} bytes needs more than ${MAX_CRL_PARTS} parts`);
  const sha256 = sha256Hex(crl.der);
  const out: Buffer[] = [];
  for (let part = 0; part < parts; part++) {
    const data = crl.der.subarray(part * CRL_PART_BYTES, (part + 1) * CRL_PART_BYTES);
    const m: CrlPartMessage = { v: CRL_MESSAGE_VERSION, crlNumber: crl.crlNumber.toString(), part, parts, sha256, data };
    out.push(Buffer.from(JSON.stringify({ ...m, data: data.toString('base64') })));
  }
  return out;
}

/** The delta message, or undefined when it would exceed MAX_CRL_MESSAGE_BYTES (send a new base instead). */
export function encodeCrlDelta(d: {
  readonly crlNumber: bigint;
  readonly baseCrlNumber: bigint;
  readonly thisUpdate: Date;
  readonly nextUpdate: Date;
  readonly der: Buffer;
}): Buffer | undefined {
  if (d.der.length > MAX_DELTA_CRL_BYTES) return undefined;
  const payload = Buffer.from(
    JSON.stringify({
      v: CRL_MESSAGE_VERSION,
      crlNumber: d.crlNumber.toString(),
      baseCrlNumber: d.baseCrlNumber.toString(),
      thisUpdate: d.thisUpdate.getTime(),
      nextUpdate: d.nextUpdate.getTime(),
      crl: d.der.toString('base64'),
    }),
  );
  return payload.length <= MAX_CRL_MESSAGE_BYTES ? payload : undefined;
}
