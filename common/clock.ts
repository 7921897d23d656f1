/**
 * Time source, injected everywhere a decision depends on "now" (expiry, rotation, rate limits,
 * challenge lifetimes) so tests move time instead of sleeping.
 */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
}

export const systemClock: Clock = { now: () => Date.now() };

/** A clock tests drive by hand. */
export class ManualClock implements Clock {
  #ms: number;
  constructor(start: number | Date = Date.UTC(2026, 0, 1)) {
    this.#ms = typeof start === 'number' ? start : start.getTime();
  }
  now(): number {
    return this.#ms;
  }
  set(ms: number | Date): void {
    this.#ms = typeof ms === 'number' ? ms : ms.getTime();
  }
  advance(ms: number): void {
    this.#ms += ms;
  }
}
