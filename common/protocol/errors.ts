/**
 * The closed set of rejection codes a device can receive. Every bridge handler failure becomes one of
 * these in a `rejected` reply; internals go to the bridge log, never to the wire.
 *
 * `retryable` tells the agent whether the same request can succeed later unchanged (rate limits,
 * outages); non-retryable codes need a new token, a new challenge or operator action.
 */
export const REJECTION_CODES = {
  BAD_REQUEST: { retryable: false, message: 'message failed schema validation or size limits' },
  RATE_LIMITED: { retryable: true, message: 'too many requests; retry after retryAfterSec' },
  TOKEN_UNKNOWN: { retryable: false, message: 'enrollment token not recognised' },
  TOKEN_EXPIRED: { retryable: false, message: 'enrollment token expired' },
  TOKEN_USED: { retryable: false, message: 'enrollment token already used' },
  TOKEN_MISMATCH: { retryable: false, message: 'enrollment token is bound to another device or EK' },
  EK_UNTRUSTED: { retryable: false, message: 'EK certificate does not chain to a trusted TPM manufacturer' },
  EK_CERT_EXPIRED: { retryable: false, message: 'EK certificate chain is valid but outside its validity period (EK validity policy strict)' },
  EK_MISMATCH: { retryable: false, message: 'EK certificate does not match the EK public key' },
  AK_INVALID: { retryable: false, message: 'attestation key attributes are not acceptable' },
  CHALLENGE_UNKNOWN: { retryable: false, message: 'no such challenge for this device' },
  CHALLENGE_EXPIRED: { retryable: false, message: 'challenge expired; start enrollment again' },
  ACTIVATION_FAILED: { retryable: false, message: 'credential activation proof is wrong' },
  CERTIFY_INVALID: { retryable: false, message: 'key certification by the TPM is invalid' },
  CSR_INVALID: { retryable: false, message: 'certificate request is invalid' },
  CSR_KEY_MISMATCH: { retryable: false, message: 'certificate request key differs from the certified key' },
  POLICY_DENIED: { retryable: false, message: 'enrollment policy refused the request' },
  DEVICE_UNKNOWN: { retryable: false, message: 'device is not registered' },
  NOT_ENROLLED: { retryable: false, message: 'device has not enrolled yet' },
  DEVICE_REVOKED: { retryable: false, message: 'device is revoked' },
  AK_MISMATCH: { retryable: false, message: 'attestation key differs from the one bound at enrollment' },
  IDENTITY_EXPIRED: { retryable: false, message: 'current certificate expired; re-attest through the enrollment listener' },
  IDENTITY_UNKNOWN: { retryable: false, message: 'current certificate is not an active certificate of this device; re-attest' },
  UNAVAILABLE: { retryable: true, message: 'fleet service temporarily unavailable' },
  INTERNAL: { retryable: true, message: 'internal error' },
} as const satisfies Record<string, { retryable: boolean; message: string }>;

export type RejectionCode = keyof typeof REJECTION_CODES;
export const REJECTION_CODE_LIST = Object.keys(REJECTION_CODES) as RejectionCode[];
