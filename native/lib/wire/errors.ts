import { CodedError } from '../../../common/coded-error.js';

/** TPM structure (un)marshalling and verification errors. */
export type TpmWireErrorCode = 'TPM_WIRE_TRUNCATED' | 'TPM_WIRE_UNSUPPORTED' | 'TPM_WIRE_INVALID';

export class TpmWireError extends CodedError<TpmWireErrorCode> {}
