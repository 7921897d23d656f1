import { CodedError } from '../../common/coded-error.js';
import { InventoryError } from '../../broker-bridge/src/inventory/inventory.js';
import { TpmError } from '../../native/lib/tpm-error.js';

/**
 * The station's closed set of error codes. Every outcome the audit manifest records carries one of
 * them; the underlying TPM or inventory code, when there is one, goes into `details.cause`.
 */
export type StationErrorCode =
  | 'STATION_EK_MISSING'
  | 'STATION_EK_UNTRUSTED'
  | 'STATION_EK_MISMATCH'
  | 'STATION_TPM'
  | 'STATION_MANIFEST_INVALID'
  | 'STATION_CONFLICT'
  | 'STATION_IO'
  | 'STATION_USAGE'
  /** The bridge refused one device (its code in `details.cause`) for a reason other than the above. */
  | 'STATION_REGISTRATION_REFUSED'
  /** The bridge or the broker refused a whole request (a wrong certificate, a protocol mismatch): stops the batch. */
  | 'STATION_BRIDGE_REFUSED'
  /** No acknowledgment from the bridge after every retry, or no connection: stops the batch. */
  | 'STATION_BRIDGE_UNAVAILABLE';

export class StationError extends CodedError<StationErrorCode> {}

/** Failures that would fail every following device alike: a batch stops at the first. */
export const BATCH_FATAL: ReadonlySet<StationErrorCode> = new Set(['STATION_BRIDGE_REFUSED', 'STATION_BRIDGE_UNAVAILABLE']);

/** Maps whatever a step threw onto a station code, keeping the original as `cause`. */
export function toStationError(e: unknown, context: string): StationError {
  if (e instanceof StationError) return e;
  if (e instanceof TpmError) {
    return new StationError('STATION_TPM', `${context}: ${e.message}`, { cause: e, details: { cause: e.code } });
  }
  if (e instanceof InventoryError) {
    const code = e.code === 'INVENTORY_CONFLICT' ? 'STATION_CONFLICT' : 'STATION_IO';
    return new StationError(code, `${context}: ${e.message}`, { cause: e, details: { cause: e.code } });
  }
  const cause = (e as { code?: unknown } | undefined)?.code;
  const message = e instanceof Error ? e.message : String(e);
  return new StationError('STATION_IO', `${context}: ${message}`, { cause: e, ...(typeof cause === 'string' ? { details: { cause } } : {}) });
}
