import { REJECTION_CODES } from '../../../common/protocol/errors.js';
import { encodeRejection } from '../../../common/protocol/messages.js';
import { EnrollmentRejection } from './evidence.js';
import type { RateLimiter } from './rate-limiter.js';

/**
 * Plumbing the request handlers (enrollment, rotation) share: answering one request once while it runs,
 * turning a rejection into its reply, and the rate limit check.
 */
export interface Reply {
  readonly topic: string;
  readonly payload: Buffer;
}

/** Concurrent duplicates (QoS1 redelivery while the first is still handled) share one answer. */
export class InFlight {
  readonly #running = new Map<string, Promise<Reply>>();

  run(key: string, work: () => Promise<Reply>): Promise<Reply> {
    const running = this.#running.get(key);
    if (running) return running;
    const started = work().finally(() => this.#running.delete(key));
    this.#running.set(key, started);
    return started;
  }
}

/** The rejection envelope for `requestId` on `topic`; the code's own message, never internals. */
export function rejectionReply(topic: string, requestId: string, now: number, r: EnrollmentRejection): Reply {
  return {
    topic,
    payload: encodeRejection(requestId, now, r.code, {
      message: REJECTION_CODES[r.code].message,
      ...(r.retryAfterSec === undefined ? {} : { retryAfterSec: r.retryAfterSec }),
    }),
  };
}

/** Throws RATE_LIMITED (with retryAfterSec) when `key` or the global budget is spent. */
export function enforceRateLimit(limiter: RateLimiter | undefined, key: string): void {
  const verdict = limiter?.take(key);
  if (verdict && !verdict.allowed) {
    throw new EnrollmentRejection('RATE_LIMITED', `rate limited (${verdict.scope})`, { retryAfterSec: verdict.retryAfterSec });
  }
}
