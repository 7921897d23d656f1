import { describe, expect, it } from 'vitest';
import { Backoff, backoffDelay, DEFAULT_BACKOFF_BASE_MS, DEFAULT_BACKOFF_CAP_MS } from './backoff.js';

const opts = { baseMs: 1000, capMs: 180_000 };

/** A deterministic stand-in for Math.random (mulberry32). */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('backoffDelay (pure)', () => {
  it.each([
    // failures, r, expected: r * min(cap, base * 2^failures), floored
    [0, 0, 0],
    [0, 0.5, 500],
    [0, 0.999, 999],
    [1, 0.5, 1000],
    [2, 0.5, 2000],
    [7, 0.5, 64_000],
    [7, 0.999, 127_872],
    [8, 0.5, 90_000], // 256 s ceiling capped at 180 s
    [8, 0.999, 179_820],
    [40, 0.5, 90_000],
  ])('failures=%d r=%d -> %d ms', (failures, r, expected) => {
    expect(backoffDelay(failures, opts, r)).toBe(expected);
  });

  it('stays in [0, ceiling) even for r = 1 from a sloppy random source', () => {
    expect(backoffDelay(0, opts, 1)).toBe(999);
    expect(backoffDelay(100, opts, 1)).toBe(179_999);
    expect(backoffDelay(3, opts, -0.5)).toBe(0);
  });

  it('never overflows: 10^6 and more failures give the cap, never NaN or Infinity', () => {
    for (const failures of [1_000_000, 1e15, Number.MAX_SAFE_INTEGER, Infinity]) {
      const d = backoffDelay(failures, opts, 0.5);
      expect(Number.isFinite(d)).toBe(true);
      expect(d).toBe(90_000);
    }
    expect(backoffDelay(1_000_000, { baseMs: 0, capMs: 0 }, 0.5)).toBe(0);
  });

  it('full jitter: draws cover the whole window [0, ceiling), not only its upper half', () => {
    const random = seeded(42);
    const samples = Array.from({ length: 10_000 }, () => backoffDelay(20, opts, random()));
    expect(Math.min(...samples)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...samples)).toBeLessThan(180_000);
    // Equal jitter would never go below half the ceiling; full jitter does, about half the time.
    const lowerHalf = samples.filter((s) => s < 90_000).length;
    expect(lowerHalf).toBeGreaterThan(4_500);
    expect(lowerHalf).toBeLessThan(5_500);
    expect(samples.filter((s) => s < 18_000).length).toBeGreaterThan(800); // bottom tenth is populated
  });
});

describe('Backoff', () => {
  it('defaults to base 1 s and cap 3 minutes', () => {
    expect(DEFAULT_BACKOFF_BASE_MS).toBe(1000);
    expect(DEFAULT_BACKOFF_CAP_MS).toBe(180_000);
    const b = new Backoff({ random: () => 0.999999 });
    const waits = Array.from({ length: 12 }, () => b.next());
    expect(waits).toEqual([999, 1999, 3999, 7999, 15_999, 31_999, 63_999, 127_999, 179_999, 179_999, 179_999, 179_999]);
  });

  it('each wait is within [0, min(cap, base * 2^n)) and the ceiling doubles per failure', () => {
    const random = seeded(7);
    const b = new Backoff({ baseMs: 100, capMs: 5000, random });
    for (let n = 0; n < 50; n++) {
      const w = b.next();
      expect(w).toBeGreaterThanOrEqual(0);
      expect(w).toBeLessThan(Math.min(5000, 100 * 2 ** n));
      expect(b.failures).toBe(n + 1);
    }
  });

  it('honours a configured cap', () => {
    const b = new Backoff({ baseMs: 1000, capMs: 10_000, random: () => 0.5 });
    expect(Array.from({ length: 6 }, () => b.next())).toEqual([500, 1000, 2000, 4000, 5000, 5000]);
  });

  it('reset() starts again from the base', () => {
    const b = new Backoff({ random: () => 0.5 });
    b.next();
    b.next();
    b.next();
    expect(b.failures).toBe(3);
    b.reset();
    expect(b.failures).toBe(0);
    expect(b.next()).toBe(500);
    expect(b.failures).toBe(1);
  });

  it('after 10^6 failures next() is still a finite wait within the cap', () => {
    const b = new Backoff({ random: () => 0.25 });
    for (let i = 0; i < 1_000_000; i++) b.next();
    expect(b.failures).toBe(1_000_000);
    expect(b.next()).toBe(45_000);
  });

  it.each([
    [{ baseMs: -1 }, 'baseMs=-1'],
    [{ baseMs: 1000, capMs: 500 }, 'capMs=500'],
    [{ baseMs: Number.NaN }, 'baseMs=NaN'],
  ])('refuses inconsistent options %o with AGENT_CONFIG_INVALID', (o, text) => {
    expect(() => new Backoff(o)).toThrow(expect.objectContaining({ code: 'AGENT_CONFIG_INVALID', message: expect.stringContaining(text) }));
  });
});
