import { CodedError } from '../../../common/coded-error.js';

export type RevocationErrorCode =
  /** Malformed device id, serial or reason. */
  | 'REVOCATION_BAD_REQUEST'
  /** No such device, or a serial neither in the inventory nor a known service certificate. */
  | 'REVOCATION_NOT_FOUND'
  /** The revocation is recorded and the CRL signed, but the broker files or the reload failed (retried on the next tick). */
  | 'REVOCATION_BROKER_FAILED'
  /** The persisted CRL state is unreadable. */
  | 'REVOCATION_STATE_INVALID'
  | 'REVOCATION_STOPPED';

export class RevocationError extends CodedError<RevocationErrorCode> {}
