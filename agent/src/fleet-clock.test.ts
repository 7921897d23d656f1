import { describe, expect, it } from 'vitest';
import { beyondTolerance, CLOCK_TOLERANCE_MS, skewOf } from './fleet-clock.js';

describe('skewOf', () => {
  it('estimates device − fleet at the middle of the round trip, ± half of it', () => {
    // Device asked at 1,000 and heard back at 1,200 (its clock); the fleet said 500 in between.
    expect(skewOf({ sentAt: 1_000, receivedAt: 1_200, serverTime: 500 })).toEqual({ skewMs: 600, uncertaintyMs: 100, leastMs: 500 });
    expect(skewOf({ sentAt: 1_000, receivedAt: 1_200, serverTime: 1_700 })).toEqual({ skewMs: -600, uncertaintyMs: 100, leastMs: 500 });
  });

  it('a slow round trip that could explain the difference is no skew', () => {
    const s = skewOf({ sentAt: 0, receivedAt: 80_000, serverTime: 5_000 });
    expect(s.skewMs).toBe(35_000);
    expect(s.leastMs).toBe(0);
    expect(beyondTolerance(s)).toBe(false);
  });

  it('beyond tolerance only when even the least skew the sample allows exceeds it', () => {
    const at = (skew: number) => skewOf({ sentAt: 10_000, receivedAt: 10_000, serverTime: 10_000 - skew });
    expect(beyondTolerance(at(CLOCK_TOLERANCE_MS))).toBe(false);
    expect(beyondTolerance(at(CLOCK_TOLERANCE_MS + 1))).toBe(true);
    expect(beyondTolerance(at(-CLOCK_TOLERANCE_MS - 1))).toBe(true);
  });

  it('a reply that claims to come before the request (clock stepped back) is read as no round trip', () => {
    expect(skewOf({ sentAt: 2_000, receivedAt: 1_000, serverTime: 1_500 }).uncertaintyMs).toBe(0);
  });
});
