/**
 * The EK certificate as TPMs really store it in NV (issue 13). The TCG profile says the index holds
 * the DER certificate, but chips in the field add bytes around it:
 * - padding after the certificate: ST33HTPHF2EI2C returns the whole 1,600-byte index, the certificate
 *   followed by 0xFF (tpm2-tools #3474); HIRS #23 saw other trailing bytes;
 * - a header before it: some Intel (PTT) certificates start with the TCG PC Client prefix
 *   `10 01 00 <length, 16 bits big-endian>` (go-attestation #38).
 * The certificate's extent is read from its own outer DER header; what surrounds it is reported, not
 * used. Only the length is read here; the certificate itself is checked where it is verified.
 */

/** Tag 0x1001 (EK certificate), then a 0x00 byte, then the certificate's length (go-attestation). */
const PC_CLIENT_PREFIX = Buffer.from([0x10, 0x01, 0x00]);
const PREFIX_BYTES = PC_CLIENT_PREFIX.length + 2;

export type EkNvContent =
  | {
      readonly kind: 'certificate';
      /** The DER certificate alone. */
      readonly der: Buffer;
      /** The TCG PC Client prefix was present and stripped. */
      readonly prefixed: boolean;
      /** Bytes after the certificate (padding) that were ignored. */
      readonly trailingBytes: number;
    }
  | { readonly kind: 'empty' }
  | { readonly kind: 'invalid'; readonly reason: string };

/**
 * Finds the certificate in the contents of an EK certificate NV index. `empty`: nothing but erased
 * bytes (all 0x00 or all 0xFF), as an index defined but never written reads.
 */
export function ekCertificateFromNv(nv: Buffer): EkNvContent {
  if (nv.length === 0 || nv.every((b) => b === 0xff) || nv.every((b) => b === 0x00)) return { kind: 'empty' };
  let start = 0;
  let declared: number | undefined;
  if (nv.length >= PREFIX_BYTES && nv.subarray(0, PC_CLIENT_PREFIX.length).equals(PC_CLIENT_PREFIX)) {
    declared = nv.readUInt16BE(PC_CLIENT_PREFIX.length);
    start = PREFIX_BYTES;
    if (start + declared > nv.length) {
      return { kind: 'invalid', reason: `the PC Client header declares ${declared} bytes but only ${nv.length - start} follow it` };
    }
  }
  const size = outerSequenceSize(nv, start);
  if (typeof size === 'string') return { kind: 'invalid', reason: size };
  if (declared !== undefined && declared !== size) {
    return { kind: 'invalid', reason: `the PC Client header declares ${declared} bytes but the certificate is ${size}` };
  }
  return { kind: 'certificate', der: Buffer.from(nv.subarray(start, start + size)), prefixed: start > 0, trailingBytes: nv.length - start - size };
}

/** Total size of the SEQUENCE at `off` (header + content), or why it cannot be one. Lengths need not be minimal. */
function outerSequenceSize(b: Buffer, off: number): number | string {
  if (b[off] !== 0x30) return `no DER SEQUENCE at byte ${off} (found 0x${(b[off] ?? 0).toString(16).padStart(2, '0')})`;
  const first = b[off + 1];
  if (first === undefined) return 'the certificate header is cut off';
  let len: number;
  let header: number;
  if (first < 0x80) {
    len = first;
    header = 2;
  } else {
    const n = first & 0x7f;
    // 0x80 is BER's indefinite length; a certificate fits in 4 length bytes with room to spare.
    if (n === 0 || n > 4) return `the certificate's length field (0x${first.toString(16)}) is not a definite length`;
    if (off + 2 + n > b.length) return 'the certificate header is cut off';
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (b[off + 2 + i] as number);
    header = 2 + n;
  }
  if (off + header + len > b.length) return `the certificate declares ${header + len} bytes but the index holds ${b.length - off} from it`;
  return header + len;
}
