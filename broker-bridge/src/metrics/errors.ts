import { CodedError } from '../../../common/coded-error.js';

export type MetricsErrorCode =
  /** The metrics port could not be bound (in use, not permitted, unknown host). */
  | 'METRICS_LISTEN_FAILED'
  /** The `metrics` block of the configuration is malformed. */
  | 'METRICS_CONFIG_INVALID';

export class MetricsError extends CodedError<MetricsErrorCode> {}
