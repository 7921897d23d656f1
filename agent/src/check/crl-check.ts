import { judgeNow } from '../policy.js';
import { fail, humanDuration, ok, warn, type CheckResult } from './check-result.js';
import type { DeviceView } from './device-view.js';

/**
 * Freshness of the revocation data the device holds, by the agent's policy: stale (what `agent
 * verify` and the agent refuse to answer from) once the judged time is past the newest CRL's
 * nextUpdate plus the grace; overdue (warn) past nextUpdate within the grace; missing (warn) when no
 * CRL was received yet.
 */
export function checkCrl(view: DeviceView, o: { readonly now: number }): CheckResult {
  const judged = judgeNow(o.now, view.clockFloor).now;
  const s = view.revocation.status(view.identity?.serial ?? '00', judged);
  const n = view.revocation.crlNumber();
  if (s.freshness === 'none' || n === undefined || s.nextUpdate === undefined || s.thisUpdate === undefined) {
    return warn('crl', 'CHECK_CRL_MISSING', 'no CRL held yet (the agent receives the fleet CRL on its device connection)');
  }
  const graceMs = view.crlGraceSec * 1000;
  const what = `CRL ${n} of ${new Date(s.thisUpdate).toISOString()}, nextUpdate ${new Date(s.nextUpdate).toISOString()}`;
  if (s.freshness === 'stale') return fail('crl', 'CHECK_CRL_STALE', `${what}: past nextUpdate plus the ${humanDuration(graceMs)} grace by ${humanDuration(judged - s.nextUpdate - graceMs)}`);
  if (judged > s.nextUpdate) return warn('crl', 'CHECK_CRL_OVERDUE', `${what}: overdue by ${humanDuration(judged - s.nextUpdate)}; stale in ${humanDuration(s.nextUpdate + graceMs - judged)}`);
  return ok('crl', `${what} (in ${humanDuration(s.nextUpdate - judged)})`);
}
