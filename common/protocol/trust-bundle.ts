import { CodedError } from '../coded-error.js';
import { TAG, encodeUnsignedInteger, seq, tlv } from '../der.js';
import { array, base64, int, literal, object, parseMessage, str, type Infer } from './schema.js';

/**
 * The fleet trust bundle, published retained by the bridge on `<base>/trust-bundle` (bridge → all,
 * QoS1; only the bridge may publish there, the broker's ACL enforces it). Devices replace the roots
 * they trust with it, so it is signed and versioned:
 *
 * ```
 * { "v": 1,
 *   "version": 7,                  // positive safe integer; grows by 1 whenever the roots change
 *   "issuedAt": 1767225600000,     // ms since the epoch, when this message was signed
 *   "roots": ["-----BEGIN CERTIFICATE-----…"],   // 1..8 CA certificates, PEM
 *   "signer": ["-----BEGIN CERTIFICATE-----…"],  // 1..4: the signing CA, then intermediates up to
 *                                                 //   but excluding a root
 *   "signature": "MEUCIQ…" }       // base64 of a DER Ecdsa-Sig-Value, ecdsa-with-SHA256 by signer[0]'s key
 * ```
 *
 * Signed bytes (`trustBundleToBeSigned`): the DER encoding of
 *
 * ```
 * TrustBundleToBeSigned ::= SEQUENCE {
 *   context   UTF8String,             -- exactly "tpmfleet/trust-bundle/v1"
 *   version   INTEGER (1..2^53-1),
 *   issuedAt  INTEGER (0..8.64e15),   -- ms since the epoch
 *   roots     SEQUENCE SIZE (1..8) OF Certificate }  -- each root's DER, in message order
 * }
 * ```
 *
 * Never the JSON: the signature covers the certificates' DER, which PEM line breaks, JSON escaping
 * and key order cannot change. DER is self-delimiting, so two different (version, issuedAt, roots)
 * never encode to the same bytes. The leading UTF8String is the domain separation: the same CA key
 * signs TBSCertificates (first element `[0]` or INTEGER) and TBSCertLists (INTEGER or SEQUENCE), and
 * neither can begin with a UTF8String, so no certificate or CRL signature can pass as a bundle
 * signature, nor the reverse. `signer` is not signed: it is only the path to a trusted root, and a
 * substituted path must still verify, and its end-entity key must still have made the signature.
 *
 * A device accepts a bundle only when (agent/src/trust-bundle.ts): it passes this schema; its version
 * is greater than the one the device holds (otherwise it is old news, never an error to act on);
 * every root parses as a CA certificate; signer[0] is a CA whose path through signer[1..] verifies up
 * to a root of the bundle the device ALREADY trusts (never one of the new roots), with every
 * certificate on the path valid at the device's judged time; and the signature verifies over the
 * bytes above with signer[0]'s key. A root rollover is therefore two bundles: old + new roots signed
 * under the old root, then (once every device holds it) the new roots signed under the new root.
 */
export const TRUST_BUNDLE_VERSION = 1;

/** Hard ceiling for the message (also the fleet-wide per-message ceiling). */
export const TRUST_BUNDLE_MAX_BYTES = 64 * 1024;

/** First element of the signed structure (domain separation, see above). */
export const TRUST_BUNDLE_CONTEXT = 'tpmfleet/trust-bundle/v1';

export const TRUST_BUNDLE_MAX_ROOTS = 8;
export const TRUST_BUNDLE_MAX_SIGNERS = 4;

const pem = str({ max: 8192, pattern: /^-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----\s*$/ });

export const trustBundleMessage = object({
  v: literal(TRUST_BUNDLE_VERSION),
  version: int({ min: 1, max: Number.MAX_SAFE_INTEGER }),
  issuedAt: int({ min: 0, max: 8_640_000_000_000_000 }),
  roots: array(pem, { min: 1, max: TRUST_BUNDLE_MAX_ROOTS }),
  signer: array(pem, { min: 1, max: TRUST_BUNDLE_MAX_SIGNERS }),
  // A DER ECDSA signature is at most 139 bytes (P-521); ours are P-256 (<= 72).
  signature: base64({ minBytes: 8, maxBytes: 160 }),
});

export type TrustBundleMessage = Infer<typeof trustBundleMessage>;

/** Size-limits, parses and validates a trust bundle message. Throws SchemaError (coded). */
export function decodeTrustBundle(payload: Buffer | string): TrustBundleMessage {
  return parseMessage(payload, trustBundleMessage, TRUST_BUNDLE_MAX_BYTES);
}

/** The message as published (key order as in the schema). */
export function encodeTrustBundle(message: TrustBundleMessage): Buffer {
  const { v, version, issuedAt, roots, signer, signature } = message;
  return Buffer.from(JSON.stringify({ v, version, issuedAt, roots, signer, signature: signature.toString('base64') }));
}

export type TrustBundleEncodingErrorCode = 'TRUST_BUNDLE_ENCODING_INVALID';

/**
 * The exact bytes signed (see the module comment). `rootsDer`: each root's certificate DER, in the
 * order of the message's `roots`. Throws TRUST_BUNDLE_ENCODING_INVALID on values outside the schema's
 * ranges (a caller bug; network input has passed `decodeTrustBundle` first).
 */
export function trustBundleToBeSigned(version: number, issuedAt: number, rootsDer: readonly Buffer[]): Buffer {
  const bad = (why: string): never => {
    throw new CodedError<TrustBundleEncodingErrorCode>('TRUST_BUNDLE_ENCODING_INVALID', `trust bundle: ${why}`);
  };
  if (!Number.isSafeInteger(version) || version < 1) bad('version must be a positive safe integer');
  if (!Number.isSafeInteger(issuedAt) || issuedAt < 0 || issuedAt > 8_640_000_000_000_000) bad('issuedAt out of range');
  if (rootsDer.length < 1 || rootsDer.length > TRUST_BUNDLE_MAX_ROOTS) bad(`1..${TRUST_BUNDLE_MAX_ROOTS} roots required`);
  for (const der of rootsDer) if (der.length === 0 || der[0] !== TAG.SEQUENCE) bad('a root is not a DER certificate');
  return seq(
    tlv(TAG.UTF8_STRING, Buffer.from(TRUST_BUNDLE_CONTEXT, 'utf8')),
    encodeUnsignedInteger(version),
    encodeUnsignedInteger(issuedAt),
    seq(...rootsDer),
  );
}
