import { REJECTION_CODES } from '../../common/protocol/errors.js';
import { decode } from '../../common/protocol/messages.js';
import type { DeviceTopic } from '../../common/protocol/topics.js';
import { peekRequestId, type Reply } from '../../broker-bridge/src/enrollment/enrollment-service.js';
import type { CapturingLogger } from './fleet.js';
import type { Rng } from './prng.js';

/**
 * The checks every fuzzed request/response handler must pass, and the bookkeeping of a run (codes
 * seen, time, RSS). A failed check throws an error naming the seed, the run number, the input (label,
 * topic, payload) and every stack the handler logged, so `FUZZ_SEED=<seed>` replays it.
 */
export interface Attempt {
  readonly handler: string;
  readonly seed: number;
  readonly run: number;
  readonly label: string;
  readonly topic: string;
  readonly payload: Buffer;
}

export class FuzzFailure extends Error {}

export function fail(a: Attempt, problem: string, logger?: CapturingLogger): never {
  const shown = a.payload.length > 1500 ? `${a.payload.subarray(0, 1500).toString('base64')}… (${a.payload.length} bytes)` : a.payload.toString('base64');
  const stacks = (logger?.errors ?? []).map((e) => {
    const err = e.obj.err as { stack?: string } | undefined;
    return `  logged error "${e.msg}": ${err?.stack ?? JSON.stringify(e.obj)}`;
  });
  throw new FuzzFailure(
    [
      `fuzz ${a.handler}: ${problem}`,
      `  reproduce: FUZZ_SEED=${a.seed} (run ${a.run})`,
      `  input: ${a.label}`,
      `  topic: ${JSON.stringify(a.topic)}`,
      `  payload (base64): ${shown}`,
      ...stacks,
    ].join('\n'),
  );
}

/** What one reply may be: the answer topic, or the rejection topic with a coded rejection. */
export interface Expected {
  readonly ok: { topic: string; kind: DeviceTopic };
  readonly rejected: { topic: string; kind: 'enrollRejected' | 'rotateRejected' };
}

/**
 * Checks a request/response handler's reply and returns its outcome: the rejection code, or the kind
 * of the legitimate answer. Never INTERNAL, never an exception, nothing logged as an error.
 */
export function checkReply(a: Attempt, reply: Reply | undefined, expected: Expected, logger: CapturingLogger): string {
  if (logger.errors.length > 0) fail(a, 'the handler logged an internal error', logger);
  if (!reply) return fail(a, 'no reply to a message on a handled topic', logger);
  const requestId = peekRequestId(a.payload);
  if (reply.topic === expected.rejected.topic) {
    let error;
    try {
      const msg = decode(expected.rejected.kind, reply.payload);
      if (msg.requestId !== requestId) fail(a, `rejection addressed to requestId ${msg.requestId}, expected ${requestId}`, logger);
      error = msg.error;
    } catch (e) {
      if (e instanceof FuzzFailure) throw e;
      return fail(a, `rejection does not pass the rejection schema: ${(e as Error).message}: ${reply.payload.toString('utf8').slice(0, 300)}`, logger);
    }
    if (!Object.hasOwn(REJECTION_CODES, error.code)) fail(a, `unknown rejection code ${error.code}`, logger);
    if (error.code === 'INTERNAL') fail(a, 'INTERNAL rejection for fuzzed input', logger);
    if (error.retryable !== REJECTION_CODES[error.code].retryable) fail(a, `retryable flag of ${error.code} is wrong`, logger);
    return error.code;
  }
  if (reply.topic === expected.ok.topic) {
    try {
      const msg = decode(expected.ok.kind, reply.payload) as { requestId: string };
      if (msg.requestId !== requestId) fail(a, `answer addressed to requestId ${msg.requestId}, expected ${requestId}`, logger);
    } catch (e) {
      if (e instanceof FuzzFailure) throw e;
      return fail(a, `answer does not pass the ${expected.ok.kind} schema: ${(e as Error).message}`, logger);
    }
    return expected.ok.kind;
  }
  return fail(a, `reply on unexpected topic ${reply.topic}`, logger);
}

/** Outcome counts, time and RSS of one handler's run; `line()` is the report. */
export class RunStats {
  readonly codes = new Map<string, number>();
  readonly #t0 = performance.now();
  readonly rssBefore = process.memoryUsage().rss;
  rssAfter = 0;
  constructor(
    readonly handler: string,
    readonly seed: number,
    readonly runs: number,
  ) {}

  add(outcome: string): void {
    this.codes.set(outcome, (this.codes.get(outcome) ?? 0) + 1);
  }

  finish(): void {
    this.rssAfter = process.memoryUsage().rss;
  }

  get rssGrowthMb(): number {
    return (this.rssAfter - this.rssBefore) / 2 ** 20;
  }

  line(): string {
    const codes = [...this.codes.entries()].sort((x, y) => y[1] - x[1]).map(([k, v]) => `${k}=${v}`).join(' ');
    const sec = ((performance.now() - this.#t0) / 1000).toFixed(1);
    return `fuzz ${this.handler}: ${this.runs} runs, seed ${this.seed}, ${sec} s, RSS ${(this.rssBefore / 2 ** 20).toFixed(0)} → ${(this.rssAfter / 2 ** 20).toFixed(0)} MB (${this.rssGrowthMb >= 0 ? '+' : ''}${this.rssGrowthMb.toFixed(0)}), outcomes: ${codes}`;
  }
}

/**
 * RSS may grow by at most this much over one handler's run. Generous on purpose: V8 grows its heap
 * lazily and LevelDB caches blocks, so growth is not a leak; a per-message leak of the 16 kB inputs
 * over 10 000 runs would exceed it.
 */
export const RSS_BOUND_MB = 256;

/** Topics a handler must ignore (resolve undefined): malformed ids, wildcards, other kinds. */
export function foreignTopic(rng: Rng, base: string, ownKindSuffix: string): string {
  const badId = rng.pick(['', '+', '#', 'a/b', '-lead', 'x'.repeat(65), 'dev re', 'dév', 'enr-short', `enr-${'A'.repeat(61)}`, '..', 'dev\u0000re']);
  return rng.pick([
    `${base}/enroll/${badId}/${ownKindSuffix}`,
    `${base}/devices/${badId}/${ownKindSuffix}`,
    `${base}/devices/dev-re/${ownKindSuffix}/extra`,
    `${base}/devices/dev-re/challenge`,
    `${base}/devices/dev-re/rotate/accepted`,
    `other/v1/devices/dev-re/${ownKindSuffix}`,
    `${base}/trust-bundle`,
    '',
    '#',
    `${base}/enroll/+/${ownKindSuffix}`,
  ]);
}
