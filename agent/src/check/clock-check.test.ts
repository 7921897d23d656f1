import { describe, expect, it } from 'vitest';
import { humanDuration } from './check-result.js';
import { CLOCK_FAIL_MS, CLOCK_WARN_MS, judgeAgainstFloor, judgeSkew } from './clock-check.js';

describe('clock skew judgement', () => {
  const T = Date.UTC(2026, 5, 1);
  const sample = (skewMs: number, rttMs: number) => ({ sentAt: T + skewMs, receivedAt: T + skewMs + rttMs, serverTime: T + rttMs / 2 });

  it('estimates device − fleet at the middle of the round trip, ahead and behind', () => {
    expect(judgeSkew(sample(0, 10))).toMatchObject({ result: 'ok', code: 'OK' });
    expect(judgeSkew(sample(45_000, 10))).toMatchObject({ result: 'warn', code: 'CHECK_CLOCK_SKEW', detail: expect.stringMatching(/45\.0 s ahead of the fleet/) });
    expect(judgeSkew(sample(-10 * 60_000, 10))).toMatchObject({ result: 'fail', code: 'CHECK_CLOCK_SKEW', detail: expect.stringMatching(/10m behind the fleet/) });
  });

  it('judges by the smallest skew the round trip allows: a slow answer is no false alarm', () => {
    // 40 s apparent skew, but the answer took 20 s: the true skew may be as small as 30 s.
    expect(judgeSkew(sample(CLOCK_WARN_MS + 10_000, 20_000)).result).toBe('ok');
    expect(judgeSkew(sample(CLOCK_FAIL_MS + 1_000, 4_000)).result).toBe('warn');
    expect(judgeSkew(sample(CLOCK_FAIL_MS + 3_000, 4_000)).result).toBe('fail');
  });

  it('without an answer, only a clock behind the clock floor is judged', () => {
    expect(judgeAgainstFloor(T, T - 1000, 'agent running', true)).toMatchObject({ result: 'ok' });
    expect(judgeAgainstFloor(T, undefined, 'agent running', true)).toMatchObject({ result: 'ok', detail: expect.stringMatching(/no fleet-signed time/) });
    expect(judgeAgainstFloor(T, T - 1000, 'broker down', false)).toMatchObject({ result: 'warn', code: 'CHECK_CLOCK_NOT_MEASURED' });
    expect(judgeAgainstFloor(T, T + 60_000, 'agent running', true)).toMatchObject({ result: 'warn', code: 'CHECK_CLOCK_BEHIND_FLOOR' });
    expect(judgeAgainstFloor(T, T + 3_600_000, 'agent running', true)).toMatchObject({ result: 'fail', code: 'CHECK_CLOCK_BEHIND_FLOOR' });
  });

  it('durations read as people write them', () => {
    expect(humanDuration(45_000)).toBe('45s');
    expect(humanDuration(10 * 60_000)).toBe('10m');
    expect(humanDuration(24 * 3_600_000 - 20_000)).toBe('24h 0m');
    expect(humanDuration(30 * 86_400_000)).toBe('30d 0h');
  });
});
