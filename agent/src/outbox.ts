import { randomBytes } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { CodedError } from '../../common/coded-error.js';
import { deviceEventBody, SECURITY_EVENTS, type DeviceEvent } from '../../common/protocol/messages.js';
import { abortError } from './backoff.js';

/**
 * Store-and-forward outbox for device events, in a LevelDB sublevel of the agent store.
 *
 * Guarantees:
 * - Written before sent: `enqueue` resolves only after the event is persisted, with its `seq` and `id`.
 * - Sent in `seq` order; `seq` strictly increases across restarts (the next value is persisted with
 *   every write, and never lower than the last stored key + 1).
 * - Deleted only after `send` resolves (the agent's send resolves when the bridge acknowledges the event
 *   on `events/ack`, i.e. it is in the inventory; a broker's PUBACK does not survive its crash), and
 *   only for the acknowledged prefix: events are pipelined (up to `window` sends in flight, issued in
 *   order), and when send k fails the outbox stops issuing, waits for the sends in flight, deletes
 *   the acknowledged events before k and keeps k and everything after it — including later events
 *   that were acknowledged. Those are sent again by the next drain; the bridge deduplicates by `id`
 *   (the envelope requestId). So delivery is at least once, in order, and exactly once after dedup.
 * - Survives restarts and outages of any length: the queue is the database.
 *
 * Bound (documented policy, also in agent/README.md): at most `maxEvents` (default 10,000) events
 * pending. When the outbox is full, a new non-security event (clock_skew, events_dropped) is dropped
 * and counted; the count is persisted and reported in status (`outboxDropped`). Security events
 * (SECURITY_EVENTS: enrolled, rotated, rotation_failed, reattested, revoked) are never dropped: the
 * queue grows past `maxEvents` for them (they are rare: a few per certificate lifetime). A stored
 * record that no longer parses as an event is deleted and counted as dropped, so it cannot stall
 * the queue.
 *
 * Records: `e!<seq, 16 digits>` → QueuedEvent (zero-padded, so key order is seq order);
 * `meta` → { nextSeq, dropped }. Every write (enqueue, drop, delete) goes through one FIFO, so `meta`
 * never moves backwards and events are committed in seq order.
 */
export type OutboxErrorCode = 'OUTBOX_NOT_OPEN' | 'OUTBOX_EVENT_INVALID' | 'OUTBOX_STORE_FAILED';

export class OutboxError extends CodedError<OutboxErrorCode> {}

/** An event as stored and sent: the protocol body plus its id (the envelope requestId). */
export type QueuedEvent = DeviceEvent & { readonly id: string };

/**
 * What the agent enqueues: `seq` is assigned by the outbox; `at` defaults to the clock; `id` defaults to
 * a random one. A caller-chosen id (e.g. derived from the serial an event is about) makes an event that
 * may be enqueued twice across a crash count once: the bridge deduplicates by id.
 */
export type NewEvent = Omit<DeviceEvent, 'seq' | 'at'> & { readonly at?: number; readonly id?: string };

export type OutboxBatchOp = { type: 'put'; key: string; value: unknown } | { type: 'del'; key: string };

/**
 * The part of a LevelDB (sub)level the outbox uses; an `AbstractSublevel` with string keys and JSON
 * values satisfies it. The outbox owns every key in it.
 */
export interface OutboxDb {
  get(key: string): Promise<unknown>;
  batch(ops: OutboxBatchOp[]): Promise<void>;
  iterator(opts: { gt?: string; lt?: string; limit?: number }): { all(): Promise<Array<[string, unknown]>> };
  keys(opts: { gt?: string; lt?: string; reverse?: boolean; limit?: number }): AsyncIterable<string>;
}

export interface OutboxOptions {
  /** Default 10,000. */
  readonly maxEvents?: number;
  readonly clock: Clock;
  /** Bytes for event ids (12–18 bytes give the 16–24 character ids); default 16 random bytes. */
  readonly random?: () => Buffer | undefined;
}

export interface DrainOptions {
  /** Sends in flight at once; default 32. */
  readonly window?: number;
  /** Stops issuing; the drain returns AGENT_STOPPED without waiting for sends in flight. */
  readonly signal?: AbortSignal;
}

export interface DrainResult {
  /** Events acknowledged and deleted by this run. */
  readonly sent: number;
  /** Why the run stopped before the queue was empty: the failed send's error, AGENT_STOPPED, or OUTBOX_STORE_FAILED. */
  readonly error?: unknown;
}

export const DEFAULT_OUTBOX_MAX_EVENTS = 10_000;
export const DEFAULT_DRAIN_WINDOW = 32;

const EVENT_LO = 'e!';
const EVENT_HI = 'e"'; // '"' follows '!': every `e!…` key sorts below it
const META = 'meta';
const READ_CHUNK = 256;
const EVENT_ID = /^[A-Za-z0-9_-]{8,64}$/;
const MESSAGE_MAX = 256; // deviceEventBody.message

const eventKey = (seq: number): string => EVENT_LO + seq.toString().padStart(16, '0');
const seqOfKey = (key: string): number => Number(key.slice(EVENT_LO.length));

/** The protocol body of a queued event (its id travels as the envelope requestId). */
export function eventBody(e: QueuedEvent): DeviceEvent {
  const { id: _id, ...body } = e;
  return body;
}

interface Inflight {
  readonly key: string;
  state: 'sending' | 'acked' | 'failed';
}

export class Outbox {
  readonly #db: OutboxDb;
  readonly #max: number;
  readonly #clock: Clock;
  readonly #random: (() => Buffer | undefined) | undefined;
  #opened: Promise<void> | undefined;
  #ready = false;
  #nextSeq = 1;
  #pending = 0;
  #dropped = 0;
  #writes: Promise<void> = Promise.resolve();
  #run: Promise<DrainResult> | undefined;
  #again = false;

  constructor(db: OutboxDb, opts: OutboxOptions) {
    this.#db = db;
    this.#max = opts.maxEvents ?? DEFAULT_OUTBOX_MAX_EVENTS;
    this.#clock = opts.clock;
    this.#random = opts.random;
  }

  /** Loads the next seq, the pending and the dropped counts. Idempotent. */
  open(): Promise<void> {
    this.#opened ??= this.#load().catch((e: unknown) => {
      this.#opened = undefined;
      throw e instanceof OutboxError ? e : new OutboxError('OUTBOX_STORE_FAILED', 'cannot read the outbox', { cause: e });
    });
    return this.#opened;
  }

  async #load(): Promise<void> {
    const meta = (await this.#db.get(META)) as { nextSeq?: unknown; dropped?: unknown } | undefined;
    let count = 0;
    for await (const _key of this.#db.keys({ gt: EVENT_LO, lt: EVENT_HI })) count++;
    let last = 0;
    for await (const key of this.#db.keys({ gt: EVENT_LO, lt: EVENT_HI, reverse: true, limit: 1 })) last = seqOfKey(key);
    const storedNext = typeof meta?.nextSeq === 'number' && Number.isSafeInteger(meta.nextSeq) ? meta.nextSeq : 1;
    this.#nextSeq = Math.max(storedNext, last + 1, 1);
    this.#dropped = typeof meta?.dropped === 'number' && Number.isSafeInteger(meta.dropped) ? meta.dropped : 0;
    this.#pending = count;
    this.#ready = true;
  }

  /** Events stored and not yet acknowledged (including those in flight). */
  pending(): number {
    return this.#pending;
  }

  /** Non-security events dropped because the outbox was full, since the store was created. */
  dropped(): number {
    return this.#dropped;
  }

  /**
   * Persists an event and resolves with it (seq and id assigned), or with undefined when the policy
   * dropped it. Throws OUTBOX_EVENT_INVALID for an event the protocol would refuse (a `message`
   * longer than the protocol allows is truncated, not refused), OUTBOX_STORE_FAILED if the write fails.
   */
  async enqueue(e: NewEvent): Promise<QueuedEvent | undefined> {
    this.#requireOpen();
    if (!SECURITY_EVENTS.has(e.type) && this.#pending >= this.#max) {
      this.#dropped++;
      await this.#write(() => [this.#metaOp()]);
      return undefined;
    }
    const { id, ...fields } = e;
    if (id !== undefined && !EVENT_ID.test(id)) throw new OutboxError('OUTBOX_EVENT_INVALID', 'event id must be 8-64 of [A-Za-z0-9_-]');
    const seq = this.#nextSeq;
    let body: DeviceEvent;
    try {
      body = deviceEventBody.parse(
        { ...fields, at: fields.at ?? this.#clock.now(), seq, ...(fields.message === undefined ? {} : { message: fields.message.slice(0, MESSAGE_MAX) }) },
        '',
      );
    } catch (err) {
      throw new OutboxError('OUTBOX_EVENT_INVALID', `event refused: ${(err as Error).message}`, { cause: err });
    }
    const event: QueuedEvent = { id: id ?? this.#newId(), ...body };
    this.#nextSeq = seq + 1;
    this.#pending++;
    try {
      await this.#write(() => [{ type: 'put', key: eventKey(seq), value: event }, this.#metaOp()]);
    } catch (err) {
      this.#pending--;
      throw err;
    }
    return event;
  }

  /**
   * Sends pending events in seq order through `send` (which must resolve only once the fleet has the
   * event, e.g. on PUBACK), deleting each acknowledged prefix. Runs until the queue is empty, a send
   * fails, or `signal` aborts. A call while a drain runs joins it (with that run's window and signal),
   * and the run makes one more pass so events persisted before the call are attempted.
   */
  drain(send: (e: QueuedEvent) => Promise<void>, opts: DrainOptions = {}): Promise<DrainResult> {
    this.#requireOpen();
    if (this.#run) {
      this.#again = true;
      return this.#run;
    }
    const run = this.#drain(send, Math.max(1, Math.floor(opts.window ?? DEFAULT_DRAIN_WINDOW)), opts.signal).finally(() => {
      this.#run = undefined;
    });
    this.#run = run;
    return run;
  }

  /** Resolves when every write issued so far is committed (e.g. before closing the database). */
  async flush(): Promise<void> {
    await this.#writes;
  }

  async #drain(send: (e: QueuedEvent) => Promise<void>, window: number, signal: AbortSignal | undefined): Promise<DrainResult> {
    let sent = 0;
    let error: unknown;
    let aborted = false;
    let finished = false; // after an abort, late acknowledgements must not touch the queue
    let unsettled = 0;
    const issued: Inflight[] = []; // in seq order; head = oldest not yet deleted
    const deletions: Promise<void>[] = [];
    let wake: (() => void) | undefined;
    const poke = () => {
      const w = wake;
      wake = undefined;
      w?.();
    };
    const waitForChange = () => new Promise<void>((resolve) => (wake = resolve));
    const onAbort = () => {
      aborted = true;
      error ??= abortError();
      poke();
    };

    const deleteAckedPrefix = () => {
      const keys: string[] = [];
      while (issued.length > 0 && issued[0]!.state === 'acked') keys.push(issued.shift()!.key);
      if (keys.length === 0) return;
      deletions.push(
        this.#write(() => keys.map((key) => ({ type: 'del' as const, key }))).then(
          () => {
            this.#pending -= keys.length;
            sent += keys.length;
          },
          (e: unknown) => {
            error ??= e; // kept in the store; sent again by the next drain
          },
        ),
      );
    };

    const issue = (key: string, event: QueuedEvent) => {
      const slot: Inflight = { key, state: 'sending' };
      issued.push(slot);
      unsettled++;
      let p: Promise<void>;
      try {
        p = send(event);
      } catch (e) {
        p = Promise.reject(e);
      }
      p.then(
        () => {
          slot.state = 'acked';
        },
        (e: unknown) => {
          slot.state = 'failed';
          error ??= e;
        },
      ).finally(() => {
        if (finished) return;
        unsettled--;
        deleteAckedPrefix();
        poke();
      });
    };

    if (signal?.aborted) onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    let cursor = EVENT_LO;
    try {
      do {
        this.#again = false;
        // Issue everything stored after the cursor, `window` at a time.
        while (error === undefined) {
          let entries: Array<[string, unknown]>;
          try {
            entries = await this.#db.iterator({ gt: cursor, lt: EVENT_HI, limit: READ_CHUNK }).all();
          } catch (e) {
            error ??= new OutboxError('OUTBOX_STORE_FAILED', 'cannot read the outbox', { cause: e });
            break;
          }
          if (entries.length === 0) break;
          for (const [key, value] of entries) {
            while (unsettled >= window && error === undefined) await waitForChange();
            if (error !== undefined) break;
            cursor = key;
            const event = parseStored(value);
            if (event) issue(key, event);
            else this.#discardCorrupt(key, deletions);
          }
        }
        // Let the sends in flight settle (after a failure too), unless stopped.
        while (unsettled > 0 && !aborted) await waitForChange();
        await Promise.all(deletions);
      } while (this.#again && error === undefined);
    } finally {
      finished = true;
      signal?.removeEventListener('abort', onAbort);
    }
    await Promise.all(deletions);
    return error === undefined ? { sent } : { sent, error };
  }

  /**
   * A record that is not an event is deleted at once and counted as dropped. It is never sent, so
   * deleting it ahead of the acknowledged prefix loses nothing.
   */
  #discardCorrupt(key: string, deletions: Promise<void>[]): void {
    this.#dropped++;
    deletions.push(
      this.#write(() => [{ type: 'del', key }, this.#metaOp()]).then(
        () => {
          this.#pending--;
        },
        () => undefined, // stays stored; skipped again by the next drain
      ),
    );
  }

  #metaOp(): OutboxBatchOp {
    return { type: 'put', key: META, value: { nextSeq: this.#nextSeq, dropped: this.#dropped } };
  }

  /** Serializes every write; `ops` is built when the write runs, so `meta` carries the latest values. */
  #write(ops: () => OutboxBatchOp[]): Promise<void> {
    const p = this.#writes.then(() => this.#db.batch(ops()));
    this.#writes = p.catch(() => undefined);
    return p.catch((e: unknown) => {
      throw new OutboxError('OUTBOX_STORE_FAILED', 'cannot write the outbox', { cause: e });
    });
  }

  #newId(): string {
    const id = (this.#random?.() ?? randomBytes(16)).toString('base64url');
    if (!EVENT_ID.test(id)) throw new OutboxError('OUTBOX_EVENT_INVALID', `event id of ${id.length} characters is not a valid requestId`);
    return id;
  }

  #requireOpen(): void {
    if (!this.#ready) throw new OutboxError('OUTBOX_NOT_OPEN', 'outbox is not open');
  }
}

function parseStored(value: unknown): QueuedEvent | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const { id, ...rest } = value as Record<string, unknown>;
  if (typeof id !== 'string' || !EVENT_ID.test(id)) return undefined;
  try {
    return { id, ...deviceEventBody.parse(rest, '') };
  } catch {
    return undefined;
  }
}
