import { CodedError } from '../../common/coded-error.js';
import { TPM_RESPONSE_CODES, TSS_BASE_CODES } from './rc-table.js';

/** The software layer of tpm2-tss that produced a response code (bits 16..23 of TSS2_RC). */
export type TssLayer = 'tpm' | 'feature' | 'esapi' | 'sys' | 'mu' | 'tcti' | 'resmgr' | 'resmgr-tpm' | 'unknown';

/**
 * Closed set of error codes:
 * - `TPM_RC_*`: the TPM itself refused (names from TPM 2.0 Part 2 §6.6, e.g. TPM_RC_OBJECT_MEMORY);
 * - `ESYS_*`, `TCTI_*`, `SYS_*`, `MU_*`, `FEATURE_*`, `RESMGR_*`: a tpm2-tss layer (base codes from tss2_common.h);
 * - `TPM_CLOSED`: the context was closed; `TPM_UNKNOWN_HANDLE`: a handle this context never handed out
 *   (or already flushed); `TPM_BAD_ARGUMENT`: invalid input rejected before reaching the TPM;
 *   `TPM_UNREACHABLE`: the TCTI could not reach a TPM when opening; `TPM_ENGINE`: TLS engine misuse;
 *   `TPM_ADDON_NOT_FOUND`: the native addon was not built or not found; `TPM_EK_NV_INVALID`: an EK
 *   certificate index holds bytes that are not a certificate (padding and the PC Client prefix are
 *   understood, see ek-nv.ts).
 */
export type TpmErrorCode =
  | `TPM_RC_${string}`
  | `RESMGR_TPM_RC_${string}`
  | `ESYS_${string}`
  | `TCTI_${string}`
  | `SYS_${string}`
  | `MU_${string}`
  | `FEATURE_${string}`
  | `RESMGR_${string}`
  | 'TSS_UNKNOWN'
  | 'TPM_CLOSED'
  | 'TPM_UNKNOWN_HANDLE'
  | 'TPM_BAD_ARGUMENT'
  | 'TPM_UNREACHABLE'
  | 'TPM_ENGINE'
  | 'TPM_EK_NV_INVALID'
  | 'TPM_ADDON_NOT_FOUND';

export class TpmError extends CodedError<TpmErrorCode> {
  /** Raw TSS2_RC when the error came from tpm2-tss or the TPM. */
  readonly rc: number | undefined;
  readonly layer: TssLayer | undefined;
  constructor(code: TpmErrorCode, message: string, opts?: { rc?: number; layer?: TssLayer; cause?: unknown }) {
    super(code, message, opts?.cause === undefined ? undefined : { cause: opts.cause });
    this.rc = opts?.rc;
    this.layer = opts?.layer;
  }
}

const LAYERS: Record<number, { layer: TssLayer; prefix: string }> = {
  0: { layer: 'tpm', prefix: '' },
  6: { layer: 'feature', prefix: 'FEATURE_' },
  7: { layer: 'esapi', prefix: 'ESYS_' },
  8: { layer: 'sys', prefix: 'SYS_' },
  9: { layer: 'mu', prefix: 'MU_' },
  10: { layer: 'tcti', prefix: 'TCTI_' },
  11: { layer: 'resmgr', prefix: 'RESMGR_' },
  12: { layer: 'resmgr-tpm', prefix: 'RESMGR_' },
};

/** Name of a TPM-layer response code (lower 16 bits), per TPM 2.0 Part 2 §6.6.3. */
function tpmCodeName(rc: number): string {
  if (rc & 0x080) {
    // Format one: bits 0..5 are the error, the rest say which handle/parameter/session it concerns.
    return TPM_RESPONSE_CODES.get(0x080 | (rc & 0x03f)) ?? 'TPM_RC_UNKNOWN';
  }
  if (rc & 0x400) return 'TPM_RC_VENDOR';
  return TPM_RESPONSE_CODES.get(rc & 0x97f) ?? 'TPM_RC_UNKNOWN';
}

/** The one mapping from a TSS2_RC to a stable code string and its layer. */
export function codeForRc(rc: number): { code: TpmErrorCode; layer: TssLayer } {
  const layerNo = (rc >>> 16) & 0xff;
  const entry = LAYERS[layerNo];
  if (!entry) return { code: 'TSS_UNKNOWN', layer: 'unknown' };
  const low = rc & 0xffff;
  if (entry.layer === 'tpm') return { code: tpmCodeName(low) as TpmErrorCode, layer: 'tpm' };
  if (entry.layer === 'resmgr-tpm') return { code: `RESMGR_${tpmCodeName(low)}` as TpmErrorCode, layer: entry.layer };
  const base = TSS_BASE_CODES.get(low);
  return { code: `${entry.prefix}${base ?? 'UNKNOWN'}` as TpmErrorCode, layer: entry.layer };
}

/** Format-one TPM errors name the parameter (P=1) or handle/session (P=0) at fault: Part 2 §6.6.3. */
export function rcSubject(rc: number): { kind: 'parameter' | 'handle' | 'session'; index: number } | undefined {
  if (((rc >>> 16) & 0xff) !== 0 || !(rc & 0x080)) return undefined;
  const n = (rc >>> 8) & 0xf;
  if (rc & 0x040) return { kind: 'parameter', index: n };
  if (n === 0) return undefined;
  return n & 0x8 ? { kind: 'session', index: n & 0x7 } : { kind: 'handle', index: n };
}

/** Turns whatever the addon rejected with into a TpmError (the addon sets `rc` or a misuse `code`). */
export function toTpmError(e: unknown, operation: string): TpmError {
  if (e instanceof TpmError) return e;
  const err = e as { rc?: unknown; code?: unknown; message?: unknown };
  const message = typeof err?.message === 'string' ? err.message : String(e);
  if (typeof err?.rc === 'number') {
    const { code, layer } = codeForRc(err.rc);
    return new TpmError(code, `${operation}: ${message}`, { rc: err.rc, layer, cause: e });
  }
  const known: ReadonlySet<string> = new Set(['TPM_CLOSED', 'TPM_UNKNOWN_HANDLE', 'TPM_BAD_ARGUMENT', 'TPM_ENGINE']);
  if (typeof err?.code === 'string' && known.has(err.code)) {
    return new TpmError(err.code as TpmErrorCode, `${operation}: ${message}`, { cause: e });
  }
  return new TpmError('TPM_BAD_ARGUMENT', `${operation}: ${message}`, { cause: e });
}
