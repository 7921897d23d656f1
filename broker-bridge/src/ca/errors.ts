import { CodedError } from '../../../common/coded-error.js';

/**
 * Every error the CA module lets escape carries one of these codes.
 * - CA_BAD_CSR: the CSR is malformed, oversize, uses an unsupported algorithm or its signature is wrong.
 * - CA_BAD_REQUEST: an issuance/CRL request field is malformed (device id, SPKI, numbers).
 * - CA_POLICY_DENIED: well-formed, but outside what this CA will sign (lifetime, trust domain, CA expiry).
 * - CA_BACKEND_FAILED: the signing backend failed or is closed (retryable once the backend recovers).
 * - CA_BUSY: the backend queue is full (retryable).
 * - CA_KEY_NOT_FOUND: no key file / no key with that label in the token.
 * - CA_KEY_PERMISSIONS: key file readable by group/other, or a token key that is extractable.
 * - CA_CONFIG_INVALID: configuration or CA material is inconsistent (wrong curve, key/cert mismatch, ...).
 */
export type CaErrorCode =
  | 'CA_BAD_CSR'
  | 'CA_BAD_REQUEST'
  | 'CA_POLICY_DENIED'
  | 'CA_BACKEND_FAILED'
  | 'CA_BUSY'
  | 'CA_KEY_NOT_FOUND'
  | 'CA_KEY_PERMISSIONS'
  | 'CA_CONFIG_INVALID';

export class CaError extends CodedError<CaErrorCode> {}

export function isCaError(e: unknown): e is CaError {
  return e instanceof CaError;
}
