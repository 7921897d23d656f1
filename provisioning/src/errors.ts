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
  | 'STATION_USAGE';

export class StationError extends CodedError<StationErrorCode> {}

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
