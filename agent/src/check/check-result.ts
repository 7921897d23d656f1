/**
 * `agent check` (check-cli.ts): one result per check, each `ok`, `warn` or `fail` with a code from the
 * closed set below and a one-line detail. The codes are stable (scripts and `--json` consumers match on
 * them); the details are for people.
 */
export type CheckName = 'tpm' | 'identity-key' | 'certificate' | 'clock' | 'crl' | 'enroll-listener' | 'device-listener';

/** Output order: the device first, then time and revocation, then the network. */
export const CHECK_ORDER: readonly CheckName[] = ['tpm', 'identity-key', 'certificate', 'clock', 'crl', 'enroll-listener', 'device-listener'];

export type CheckOutcome = 'ok' | 'warn' | 'fail';

export type CheckCode =
  | 'OK'
  // tpm
  | 'CHECK_TPM_UNREACHABLE'
  | 'CHECK_TPM_ERROR'
  | 'CHECK_TPM_TIMEOUT'
  // identity-key, certificate
  | 'CHECK_NO_IDENTITY'
  | 'CHECK_IDENTITY_NOT_RECORDED'
  | 'CHECK_KEY_UNREADABLE'
  | 'CHECK_KEY_MISMATCH'
  | 'CHECK_KEY_UNLOADABLE'
  | 'CHECK_STATE_UNREADABLE'
  | 'CHECK_CERT_UNTRUSTED'
  | 'CHECK_CERT_NOT_YET_VALID'
  | 'CHECK_CERT_EXPIRED'
  | 'CHECK_CERT_REVOKED'
  | 'CHECK_CERT_RENEWAL_DUE'
  | 'CHECK_CERT_EXPIRING'
  // clock
  | 'CHECK_CLOCK_SKEW'
  | 'CHECK_CLOCK_BEHIND_FLOOR'
  | 'CHECK_CLOCK_NO_REPLY'
  | 'CHECK_CLOCK_NOT_MEASURED'
  // crl
  | 'CHECK_CRL_MISSING'
  | 'CHECK_CRL_OVERDUE'
  | 'CHECK_CRL_STALE'
  // listeners
  | 'CHECK_LISTENER_DOWN'
  | 'CHECK_LISTENER_UNTRUSTED'
  | 'CHECK_LISTENER_TLS_FAILED'
  | 'CHECK_DEVICE_REFUSED';

export interface CheckResult {
  readonly name: CheckName;
  readonly result: CheckOutcome;
  readonly code: CheckCode;
  readonly detail: string;
}

export const ok = (name: CheckName, detail: string): CheckResult => ({ name, result: 'ok', code: 'OK', detail });
export const warn = (name: CheckName, code: CheckCode, detail: string): CheckResult => ({ name, result: 'warn', code, detail });
export const fail = (name: CheckName, code: CheckCode, detail: string): CheckResult => ({ name, result: 'fail', code, detail });

/** "3d 4h", "12m", "45s": durations in details. */
export function humanDuration(ms: number): string {
  const s = Math.round(Math.abs(ms) / 1000);
  if (s < 120) return `${s}s`;
  const m = Math.round(s / 60);
  if (m < 120) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}
