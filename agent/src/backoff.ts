import { CodedError } from '../../common/coded-error.js';

/**
 * Waiting between retries: exponential backoff with jitter ("equal jitter": half fixed, half random,
 * so a fleet that failed together does not retry together), and an abortable sleep. Time is injected:
 * tests pass a `sleep` that advances a ManualClock instead of waiting.
 */
export type Sleep = (ms: number, signal?: AbortSignal) => Promise<void>;

export interface BackoffOptions {
  readonly baseMs?: number;
  readonly capMs?: number;
  /** In [0, 1); default Math.random. */
  readonly random?: () => number;
}

export class Backoff {
  readonly #base: number;
  readonly #cap: number;
  readonly #random: () => number;
  #failures = 0;

  constructor(opts: BackoffOptions = {}) {
    this.#base = opts.baseMs ?? 1000;
    this.#cap = opts.capMs ?? 60_000;
    this.#random = opts.random ?? Math.random;
  }

  /** The wait before the next attempt; grows with each call until `reset()`. */
  next(): number {
    const ceiling = Math.min(this.#cap, this.#base * 2 ** Math.min(this.#failures, 30));
    this.#failures++;
    return Math.round(ceiling / 2 + (ceiling / 2) * this.#random());
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
