import { CLOCK_TOLERANCE_MS, skewOf, type TimeSample } from '../fleet-clock.js';
import { fail, humanDuration, ok, warn, type CheckResult } from './check-result.js';

export type { TimeSample } from '../fleet-clock.js';

/**
 * Clock skew against the fleet. Thresholds: certificates are backdated by the fleet (5 min by
 * default) and TLS peers tolerate little more, so a skew that surely exceeds 5 min fails; above 30 s
 * it warns (NTP keeps a healthy device well within that).
 */
export const CLOCK_WARN_MS = CLOCK_TOLERANCE_MS;
export const CLOCK_FAIL_MS = 5 * 60_000;

/**
 * skew = device − fleet, estimated at the middle of the round trip; the fleet answered somewhere in
 * it, so the error is at most half the round trip. Judged by the smallest skew consistent with the
 * sample, so a slow network never turns into a false alarm.
 */
export function judgeSkew(s: TimeSample): CheckResult {
  const rtt = Math.max(0, s.receivedAt - s.sentAt);
  const { skewMs: skew, uncertaintyMs, leastMs: least } = skewOf(s);
  const detail = `device clock ${describe(skew)} the fleet (± ${uncertaintyMs} ms, round trip ${rtt} ms)`;
  if (least > CLOCK_FAIL_MS) return fail('clock', 'CHECK_CLOCK_SKEW', `${detail}; more than ${humanDuration(CLOCK_FAIL_MS)}`);
  if (least > CLOCK_WARN_MS) return warn('clock', 'CHECK_CLOCK_SKEW', `${detail}; more than ${humanDuration(CLOCK_WARN_MS)}`);
  return ok('clock', detail);
}

/**
 * Without a live answer (`why`): the device clock against the newest time the fleet signed that the
 * device holds (its clock floor: CRL thisUpdate, trust bundle issuedAt, certificate notBefore). Only a
 * lower bound: a clock behind it is wrong by at least that much; a clock ahead cannot be judged.
 * `expected`: not measuring is the normal case here (the agent runs), so ok; otherwise a warning.
 */
export function judgeAgainstFloor(now: number, floor: number | undefined, why: string, expected: boolean): CheckResult {
  const behind = floor === undefined ? 0 : floor - now;
  if (behind > CLOCK_FAIL_MS) return fail('clock', 'CHECK_CLOCK_BEHIND_FLOOR', `device clock is ${humanDuration(behind)} behind the newest fleet-signed time it holds (${new Date(floor!).toISOString()}); ${why}`);
  if (behind > CLOCK_WARN_MS) return warn('clock', 'CHECK_CLOCK_BEHIND_FLOOR', `device clock is ${humanDuration(behind)} behind the newest fleet-signed time it holds (${new Date(floor!).toISOString()}); ${why}`);
  const bound = floor === undefined ? 'no fleet-signed time held to compare with' : `not behind the newest fleet-signed time it holds (${new Date(floor).toISOString()})`;
  if (expected) return ok('clock', `${bound}; ${why}`);
  return warn('clock', 'CHECK_CLOCK_NOT_MEASURED', `${why}; ${bound}`);
}

function describe(skewMs: number): string {
  if (Math.abs(skewMs) < 1000) return `within ${Math.max(1, Math.ceil(Math.abs(skewMs)))} ms of`;
  const amount = Math.abs(skewMs) < 120_000 ? `${(Math.abs(skewMs) / 1000).toFixed(1)} s` : humanDuration(skewMs);
  return `${amount} ${skewMs > 0 ? 'ahead of' : 'behind'}`;
}
