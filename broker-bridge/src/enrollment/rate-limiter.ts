import type { Clock } from '../../../common/clock.js';

/**
 * Token buckets keyed by caller (device id) plus one global bucket, on an injected clock. `take`
 * answers immediately: allowed, or the seconds until a token is available (sent to the device as
 * retryAfterSec). Idle per-key buckets are dropped so memory stays bounded by active callers.
 */
export interface RateLimit {
  /** Sustained requests per second. */
  readonly ratePerSec: number;
  /** Burst size. */
  readonly burst: number;
}

/**
 * Rate limits unless configured otherwise (bridge.json `rateLimit`, EmbeddedFleet `rateLimit`): per
 * device (token hash, EK or device id) 10 burst then 1/s, and 1000 burst then 500/s in all;
 * enrollment and rotation each have their own pair of budgets.
 */
export const DEFAULT_RATE_LIMITS: { readonly perDevice: RateLimit; readonly global: RateLimit } = {
  perDevice: { ratePerSec: 1, burst: 10 },
  global: { ratePerSec: 500, burst: 1000 },
};

interface Bucket {
  tokens: number;
  at: number;
}

export class RateLimiter {
  readonly #perKey: RateLimit;
  readonly #global: RateLimit;
  readonly #clock: Clock;
  readonly #buckets = new Map<string, Bucket>();
  readonly #globalBucket: Bucket;
  readonly #maxKeys: number;

  constructor(opts: { perKey: RateLimit; global: RateLimit; clock: Clock; maxKeys?: number }) {
    this.#perKey = opts.perKey;
    this.#global = opts.global;
    this.#clock = opts.clock;
    this.#maxKeys = opts.maxKeys ?? 100_000;
    this.#globalBucket = { tokens: opts.global.burst, at: opts.clock.now() };
  }

  take(key: string): { allowed: true } | { allowed: false; retryAfterSec: number; scope: 'key' | 'global' } {
    const now = this.#clock.now();
    let bucket = this.#buckets.get(key);
    if (!bucket) {
      if (this.#buckets.size >= this.#maxKeys) this.#evictFull(now);
      bucket = { tokens: this.#perKey.burst, at: now };
      this.#buckets.set(key, bucket);
    }
    refill(bucket, this.#perKey, now);
    refill(this.#globalBucket, this.#global, now);
    if (bucket.tokens < 1) return { allowed: false, retryAfterSec: waitSec(bucket, this.#perKey), scope: 'key' };
    if (this.#globalBucket.tokens < 1) {
      return { allowed: false, retryAfterSec: waitSec(this.#globalBucket, this.#global), scope: 'global' };
    }
    bucket.tokens -= 1;
    this.#globalBucket.tokens -= 1;
    return { allowed: true };
  }

  /** Buckets that have refilled completely carry no state worth keeping. */
  #evictFull(now: number): void {
    for (const [k, b] of this.#buckets) {
      refill(b, this.#perKey, now);
      if (b.tokens >= this.#perKey.burst) this.#buckets.delete(k);
    }
  }
}

function refill(b: Bucket, limit: RateLimit, now: number): void {
  const elapsed = Math.max(0, now - b.at) / 1000;
  b.tokens = Math.min(limit.burst, b.tokens + elapsed * limit.ratePerSec);
  b.at = now;
}

function waitSec(b: Bucket, limit: RateLimit): number {
  return Math.max(1, Math.ceil((1 - b.tokens) / limit.ratePerSec));
}
