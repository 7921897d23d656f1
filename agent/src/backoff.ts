import { CodedError } from '../../common/coded-error.js';

/**
 * Waiting between retries: capped exponential backoff with FULL jitter, and an abortable sleep.
 *
 * The n-th wait (n = failures so far, from 0) is uniform in [0, min(cap, base * 2^n)). Full jitter
 * (rather than "equal jitter", half fixed and half random) spreads a fleet that failed together — a
 * broker restart, a bridge outage — over the whole window, so it does not come back in waves.
 * Defaults: base 1 s, cap 3 min. Time is injected: tests pass `random` and a `sleep` that advances a
 * ManualClock instead of waiting.
 */
export type Sleep = (ms: number, signal?: AbortSignal) => Promise<void>;

export interface BackoffOptions {
  /** Ceiling of the first wait; default 1000 ms. */
  readonly baseMs?: number;
  /** Largest ceiling ever used; default 180000 ms (3 minutes). */
  readonly capMs?: number;
  /** In [0, 1); default Math.random. */
  readonly random?: () => number;
}

export const DEFAULT_BACKOFF_BASE_MS = 1000;
export const DEFAULT_BACKOFF_CAP_MS = 180_000;

/** 2^62 times any base above 0 ms exceeds every sensible cap, and stays a finite double. */
const MAX_EXPONENT = 62;

/**
 * The wait after `failures` consecutive failures, for a random draw `r` in [0, 1): an integer in
 * [0, min(capMs, baseMs * 2^failures)). Pure; finite for any `failures`, however large.
 */
export function backoffDelay(failures: number, opts: { readonly baseMs: number; readonly capMs: number }, r: number): number {
  const exponent = Math.min(Math.max(0, Math.floor(failures)), MAX_EXPONENT);
  const ceiling = Math.min(opts.capMs, opts.baseMs * 2 ** exponent);
  const draw = Math.min(Math.max(r, 0), 1);
  // floor keeps the result below the ceiling (r < 1); r = 1 from a sloppy source still cannot exceed it.
  return Math.min(Math.floor(draw * ceiling), Math.max(0, Math.ceil(ceiling) - 1));
}

export class Backoff {
  readonly #base: number;
  readonly #cap: number;
  readonly #random: () => number;
  #failures = 0;

  /** Throws AGENT_CONFIG_INVALID for a negative or non-finite base, or a cap below the base. */
  constructor(opts: BackoffOptions = {}) {
    const base = opts.baseMs ?? DEFAULT_BACKOFF_BASE_MS;
    const cap = opts.capMs ?? DEFAULT_BACKOFF_CAP_MS;
    if (!Number.isFinite(base) || base < 0 || !Number.isFinite(cap) || cap < base) {
      throw new CodedError('AGENT_CONFIG_INVALID', `backoff needs 0 <= baseMs <= capMs (finite), got baseMs=${base}, capMs=${cap}`);
    }
    this.#base = base;
    this.#cap = cap;
    this.#random = opts.random ?? Math.random;
  }

  /** Consecutive failures since the last `reset()` (the number of `next()` calls). */
  get failures(): number {
    return this.#failures;
  }

  /** The wait before the next attempt; its ceiling doubles with each call until `reset()`, up to the cap. */
  next(): number {
    const delay = backoffDelay(this.#failures, { baseMs: this.#base, capMs: this.#cap }, this.#random());
    if (this.#failures < Number.MAX_SAFE_INTEGER) this.#failures++;
    return delay;
  }

  reset(): void {
    this.#failures = 0;
  }
}

export const sleep: Sleep = (ms, signal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError());
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError());
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });

export function abortError(): CodedError<'AGENT_STOPPED'> {
  return new CodedError('AGENT_STOPPED', 'the agent was stopped');
}

export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortError();
}
