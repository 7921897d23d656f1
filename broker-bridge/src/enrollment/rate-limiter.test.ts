import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../../common/clock.js';
import { RateLimiter } from './rate-limiter.js';

describe('RateLimiter', () => {
  it('allows a burst per key, then asks to wait, and refills with time', () => {
    const clock = new ManualClock();
    const rl = new RateLimiter({ perKey: { ratePerSec: 0.5, burst: 2 }, global: { ratePerSec: 100, burst: 100 }, clock });
    expect(rl.take('a').allowed).toBe(true);
    expect(rl.take('a').allowed).toBe(true);
    expect(rl.take('a')).toEqual({ allowed: false, retryAfterSec: 2, scope: 'key' });
    expect(rl.take('b').allowed).toBe(true);
    clock.advance(2000);
    expect(rl.take('a').allowed).toBe(true);
  });

  it('enforces the global limit across keys', () => {
    const clock = new ManualClock();
    const rl = new RateLimiter({ perKey: { ratePerSec: 10, burst: 10 }, global: { ratePerSec: 1, burst: 3 }, clock });
    expect(['a', 'b', 'c'].map((k) => rl.take(k).allowed)).toEqual([true, true, true]);
    expect(rl.take('d')).toMatchObject({ allowed: false, scope: 'global' });
    clock.advance(1000);
    expect(rl.take('d').allowed).toBe(true);
  });
});
