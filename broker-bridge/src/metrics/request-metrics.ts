import type { RejectionCode } from '../../../common/protocol/errors.js';

/**
 * What the bridge's request handlers report to the metrics, when they are given a sink (optional:
 * without one they report nothing). Implemented by `FleetMetrics`; the handlers depend on this small
 * interface only, never on prom-client.
 *
 * Label values are bounded: an operation from a closed set and a code from the protocol's closed set of
 * rejection codes (or 'ok'). Nothing a device sends (ids, tokens, serials) ever becomes a label.
 */
export type CertificateOperation = 'enroll' | 'rotate' | 'reattest';

/** 'ok' for a certificate issued and recorded; else the rejection code the device was sent. */
export type ResultCode = 'ok' | RejectionCode;

export interface RequestMetrics {
  /**
   * The outcome of one certificate request: counted once per request that ended (issued, or refused at
   * any step). Redeliveries answered from a cache are not counted again.
   */
  result(operation: CertificateOperation, code: ResultCode): void;
  /** A certificate was signed `seconds` after the request that led to it arrived (injected clock). */
  issued(operation: CertificateOperation, seconds: number): void;
}

export interface RevocationMetrics {
  /**
   * A revocation took effect: `serials` certificates revoked, `seconds` from the call until the new CRL
   * was signed, published to devices and the broker told to enforce it (`enforced` false: the broker
   * update failed and is retried by the service's tick).
   */
  revoked(target: 'device' | 'serial', serials: number, seconds: number, enforced: boolean): void;
}
