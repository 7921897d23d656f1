import { CodedError } from '../../common/coded-error.js';

/**
 * The operator CLI's own failures. `exit` says how the program ends: 2 for the user's input (usage,
 * files, a refusal that will not change by retrying), 1 for everything else (an outage, a timeout).
 */
export type OperatorCliErrorCode =
  | 'OPERATOR_USAGE'
  | 'OPERATOR_CONFIG_INVALID'
  | 'OPERATOR_FILE_UNREADABLE'
  | 'OPERATOR_CERT_INVALID'
  | 'OPERATOR_OUTPUT_EXISTS'
  | 'OPERATOR_TIMEOUT'
  | 'OPERATOR_REPLY_INVALID';

const USER_ERRORS: ReadonlySet<string> = new Set<OperatorCliErrorCode>(['OPERATOR_USAGE', 'OPERATOR_CONFIG_INVALID', 'OPERATOR_FILE_UNREADABLE', 'OPERATOR_CERT_INVALID', 'OPERATOR_OUTPUT_EXISTS']);

export class OperatorCliError extends CodedError<OperatorCliErrorCode> {}

/** The bridge refused the command (a code of common/protocol/operator.ts OPERATOR_REPLY_CODES). */
export class OperatorRefusal extends CodedError<string> {
  readonly retryable: boolean;
  constructor(code: string, message: string, retryable: boolean) {
    super(code, message);
    this.retryable = retryable;
  }
}

export const usage = (message: string): OperatorCliError => new OperatorCliError('OPERATOR_USAGE', message);

/** The exit code for a coded failure. */
export function exitCodeOf(e: { code: string }): 1 | 2 {
  if (e instanceof OperatorRefusal) return e.retryable ? 1 : 2;
  return USER_ERRORS.has(e.code) ? 2 : 1;
}
