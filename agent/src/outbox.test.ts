import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { ManualClock } from '../../common/clock.js';
import { CodedError } from '../../common/coded-error.js';
import { deviceEventBody } from '../../common/protocol/messages.js';
import { eventBody, Outbox, type OutboxDb, type QueuedEvent } from './outbox.js';

/** A real LevelDB with the outbox in a JSON sublevel, as the agent store provides it. */
class Db {
  level!: Level<string, unknown>;
  sub!: OutboxDb;
  constructor(readonly path: string) {}
  async open(): Promise<OutboxDb> {
    this.level = new Level<string, unknown>(this.path, { valueEncoding: 'json' });
    await this.level.open();
    this.sub = this.level.sublevel<string, unknown>('outbox', { valueEncoding: 'json' });
    return this.sub;
  }
  async close(): Promise<void> {
    await this.level.close();
  }
  /** The seqs stored, in key order. */
  async storedSeqs(): Promise<number[]> {
    const out: number[] = [];
    for await (const key of this.sub.keys({ gt: 'e!', lt: 'e"' })) out.push(Number(key.slice(2)));
    return out;
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void } {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

const tick = () => new Promise<void>((r) => setImmediate(r));

/** Turns the event loop until `cond` holds (LevelDB reads complete on its thread pool); no timers. */
async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 10_000 && !cond(); i++) await tick();
  if (!cond()) throw new Error('condition not reached');
}

describe('Outbox (real LevelDB)', () => {
  let dir: string;
  let db: Db;
  let clock: ManualClock;
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agent-outbox-'));
    db = new Db(join(dir, 'state'));
    await db.open();
    clock = new ManualClock(Date.UTC(2026, 0, 1));
  });
  afterEach(async () => {
    await db.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function outbox(opts: { maxEvents?: number; random?: () => Buffer | undefined } = {}): Promise<Outbox> {
    const o = new Outbox(db.sub, { clock, ...opts });
    await o.open();
    return o;
  }

  async function restart(): Promise<void> {
    await db.close();
    await db.open();
  }

  async function skew(o: Outbox, n: number): Promise<QueuedEvent[]> {
    const out: QueuedEvent[] = [];
    for (let i = 0; i < n; i++) {
      const e = await o.enqueue({ type: 'clock_skew', skewMs: -i });
      if (e) out.push(e);
    }
    return out;
  }

  it('assigns increasing seqs and request-id-valid ids, stamps `at` from the clock, persists before resolving', async () => {
    const o = await outbox();
    const a = await o.enqueue({ type: 'enrolled', serial: 'ab01', slot: 'A' });
    clock.advance(5);
    const b = await o.enqueue({ type: 'clock_skew', skewMs: -1234, at: 42 });
    expect(a).toMatchObject({ type: 'enrolled', seq: 1, at: Date.UTC(2026, 0, 1), serial: 'ab01', slot: 'A' });
    expect(b).toMatchObject({ type: 'clock_skew', seq: 2, at: 42, skewMs: -1234 });
    for (const e of [a!, b!]) {
      expect(e.id).toMatch(/^[A-Za-z0-9_-]{16,24}$/);
      // What the agent sends is a valid protocol body.
      expect(deviceEventBody.parse(eventBody(e), '')).toEqual(eventBody(e));
    }
    expect(a!.id).not.toBe(b!.id);
    expect(o.pending()).toBe(2);
    // Already in LevelDB when enqueue resolved.
    expect(await db.storedSeqs()).toEqual([1, 2]);
    expect(await db.sub.get('e!0000000000000001')).toEqual(a);
  });

  it('uses injected id bytes, falling back to crypto when the source gives none', async () => {
    const o = await outbox({ random: () => Buffer.alloc(16, 0xfb) });
    expect((await o.enqueue({ type: 'rotated' }))!.id).toBe(Buffer.alloc(16, 0xfb).toString('base64url'));
    const p = await outbox({ random: () => undefined });
    expect((await p.enqueue({ type: 'rotated' }))!.id).toMatch(/^[A-Za-z0-9_-]{22}$/);
  });

  it('refuses an event the protocol would refuse (OUTBOX_EVENT_INVALID) and truncates an overlong message', async () => {
    const o = await outbox();
    await expect(o.enqueue({ type: 'rotation_failed', code: 'not a code!' })).rejects.toMatchObject({ code: 'OUTBOX_EVENT_INVALID' });
    await expect(o.enqueue({ type: 'nope' as 'rotated' })).rejects.toMatchObject({ code: 'OUTBOX_EVENT_INVALID' });
    const e = await o.enqueue({ type: 'rotation_failed', code: 'TRANSPORT_TLS_FAILED', message: 'x'.repeat(1000) });
    expect(e!.message).toHaveLength(256);
    expect(o.pending()).toBe(1);
    expect(await db.storedSeqs()).toEqual([1]); // refused events consumed no seq
  });

  it('refuses use before open() with OUTBOX_NOT_OPEN', async () => {
    const o = new Outbox(db.sub, { clock });
    await expect(o.enqueue({ type: 'rotated' })).rejects.toMatchObject({ code: 'OUTBOX_NOT_OPEN' });
    expect(() => o.drain(async () => {})).toThrow(expect.objectContaining({ code: 'OUTBOX_NOT_OPEN' }));
  });

  it('drains in seq order and deletes everything acknowledged', async () => {
    const o = await outbox();
    const queued = await skew(o, 20);
    const seen: number[] = [];
    const r = await o.drain(async (e) => {
      seen.push(e.seq);
    });
    expect(r).toEqual({ sent: 20 });
    expect(seen).toEqual(queued.map((e) => e.seq));
    expect(o.pending()).toBe(0);
    expect(await db.storedSeqs()).toEqual([]);
    expect(await o.drain(async () => {})).toEqual({ sent: 0 });
  });

  it('deletes an event only after its send resolves, and only the acknowledged prefix', async () => {
    const o = await outbox();
    await skew(o, 3);
    const acks = new Map<number, ReturnType<typeof deferred>>();
    const run = o.drain((e) => {
      const d = deferred();
      acks.set(e.seq, d);
      return d.promise;
    });
    await until(() => acks.size === 3);
    expect([...acks.keys()]).toEqual([1, 2, 3]); // pipelined, in order
    await tick();
    expect(await db.storedSeqs()).toEqual([1, 2, 3]); // nothing acknowledged, nothing deleted

    acks.get(2)!.resolve(); // out of order: 2 is acknowledged but 1 is not
    await tick();
    await o.flush();
    expect(await db.storedSeqs()).toEqual([1, 2, 3]);

    acks.get(1)!.resolve(); // prefix 1..2 acknowledged
    await tick();
    await o.flush();
    expect(await db.storedSeqs()).toEqual([3]);
    expect(o.pending()).toBe(1);

    acks.get(3)!.resolve();
    expect(await run).toEqual({ sent: 3 });
    expect(await db.storedSeqs()).toEqual([]);
  });

  it('a failed send stops the drain: the unacknowledged suffix stays, and the next drain resumes from it in order', async () => {
    const o = await outbox();
    await skew(o, 10);
    const failure = new CodedError('TRANSPORT_CONNECTION_LOST', 'gone');
    const seen: number[] = [];
    const r = await o.drain(
      async (e) => {
        seen.push(e.seq);
        if (e.seq === 5) throw failure;
      },
      { window: 1 },
    );
    expect(r).toEqual({ sent: 4, error: failure });
    expect(seen).toEqual([1, 2, 3, 4, 5]); // stopped issuing after the failure
    expect(await db.storedSeqs()).toEqual([5, 6, 7, 8, 9, 10]);
    expect(o.pending()).toBe(6);

    const resumed: number[] = [];
    expect(await o.drain(async (e) => void resumed.push(e.seq))).toEqual({ sent: 6 });
    expect(resumed).toEqual([5, 6, 7, 8, 9, 10]);
    expect(o.pending()).toBe(0);
  });

  it('with sends in flight, a failure waits for them and keeps the failed event and everything after it', async () => {
    const o = await outbox();
    await skew(o, 100);
    const failure = new CodedError('TRANSPORT_TIMEOUT', 'no puback');
    const issued: number[] = [];
    const r = await o.drain(
      async (e) => {
        issued.push(e.seq);
        await tick();
        if (e.seq === 40) throw failure;
      },
      { window: 8 },
    );
    expect(r.error).toBe(failure);
    expect(r.sent).toBe(39);
    // Issued in order, at most the window past the failure, nothing after it was deleted.
    expect(issued).toEqual(Array.from({ length: issued.length }, (_, i) => i + 1));
    expect(issued.length).toBeLessThanOrEqual(47);
    expect(await db.storedSeqs()).toEqual(Array.from({ length: 61 }, (_, i) => i + 40));
    expect(o.pending()).toBe(61);
  });

  it('a send that throws synchronously counts as a failed send', async () => {
    const o = await outbox();
    await skew(o, 3);
    const failure = new CodedError('TRANSPORT_NOT_CONNECTED', 'offline');
    const r = await o.drain((e) => {
      if (e.seq === 2) throw failure;
      return Promise.resolve();
    });
    expect(r).toEqual({ sent: 1, error: failure });
    expect(await db.storedSeqs()).toEqual([2, 3]);
  });

  it('abort: stops issuing and returns AGENT_STOPPED without waiting for sends in flight', async () => {
    const o = await outbox();
    await skew(o, 10);
    const ac = new AbortController();
    const issued: number[] = [];
    const run = o.drain(
      (e) => {
        issued.push(e.seq);
        if (e.seq <= 2) return Promise.resolve();
        return new Promise<void>(() => {}); // never acknowledged (the broker is gone)
      },
      { window: 4, signal: ac.signal },
    );
    await until(() => issued.length === 6);
    await o.flush();
    ac.abort();
    const r = await run;
    expect(r.error).toMatchObject({ code: 'AGENT_STOPPED' });
    expect(r.sent).toBe(2);
    expect(issued).toEqual([1, 2, 3, 4, 5, 6]);
    expect(await db.storedSeqs()).toEqual([3, 4, 5, 6, 7, 8, 9, 10]);

    // Already aborted: nothing is issued.
    const none: number[] = [];
    const r2 = await o.drain(async (e) => void none.push(e.seq), { signal: AbortSignal.abort() });
    expect(r2.error).toMatchObject({ code: 'AGENT_STOPPED' });
    expect(none).toEqual([]);
  });

  it('concurrent drain() calls share one run; events enqueued during a drain are sent by it, in order', async () => {
    const o = await outbox();
    await skew(o, 5);
    const seen: number[] = [];
    const gate = deferred();
    const send = async (e: QueuedEvent) => {
      seen.push(e.seq);
      await gate.promise;
    };
    const first = o.drain(send, { window: 2 });
    const late = await o.enqueue({ type: 'rotated', serial: 'cd02' });
    const second = o.drain(async () => {
      throw new Error('a joining caller must not start its own run');
    });
    expect(second).toBe(first);
    gate.resolve();
    expect(await first).toEqual({ sent: 6 });
    expect(seen).toEqual([1, 2, 3, 4, 5, late!.seq]);
    expect(o.pending()).toBe(0);
  });

  it('a drain() that joins after the run read its last batch still gets its events sent by that run', async () => {
    let emptyReads = 0;
    const spy: OutboxDb = {
      get: (k) => db.sub.get(k),
      batch: (ops) => db.sub.batch(ops),
      keys: (opts) => db.sub.keys(opts),
      iterator: (opts) => {
        const it = db.sub.iterator(opts);
        return {
          all: async () => {
            const entries = await it.all();
            if (entries.length === 0) emptyReads++;
            return entries;
          },
        };
      },
    };
    const o = new Outbox(spy, { clock });
    await o.open();
    await skew(o, 1);
    const seen: number[] = [];
    const gate = deferred();
    const run = o.drain(async (e) => {
      seen.push(e.seq);
      await gate.promise;
    });
    // The run issued #1 and found nothing more to read; it now waits for #1's acknowledgement.
    await until(() => emptyReads === 1);
    expect(seen).toEqual([1]);
    await o.enqueue({ type: 'clock_skew', skewMs: -7 });
    expect(o.drain(async () => {})).toBe(run);
    gate.resolve();
    expect(await run).toEqual({ sent: 2 });
    expect(seen).toEqual([1, 2]);
    expect(emptyReads).toBe(2);
  });

  it('survives a restart: pending events stay in order and seq continues', async () => {
    let o = await outbox();
    await skew(o, 10);
    const r = await o.drain(async (e) => {
      if (e.seq === 4) throw new CodedError('TRANSPORT_CONNECTION_LOST', 'gone');
    }, { window: 1 });
    expect(r.sent).toBe(3);
    await o.flush();
    await restart();

    o = await outbox();
    expect(o.pending()).toBe(7);
    const next = await o.enqueue({ type: 'rotated', serial: 'ee01' });
    expect(next!.seq).toBe(11);
    const seen: number[] = [];
    expect(await o.drain(async (e) => void seen.push(e.seq))).toEqual({ sent: 8 });
    expect(seen).toEqual([4, 5, 6, 7, 8, 9, 10, 11]);
  });

  it('seq never goes back, even after the queue was emptied and the agent restarted', async () => {
    let o = await outbox();
    await skew(o, 5);
    await o.drain(async () => {});
    await restart();
    o = await outbox();
    expect(o.pending()).toBe(0);
    expect((await o.enqueue({ type: 'rotated' }))!.seq).toBe(6);
  });

  it('when full, drops and counts non-security events (the count survives a restart); security events are never dropped', async () => {
    let o = await outbox({ maxEvents: 3 });
    await skew(o, 3);
    expect(await o.enqueue({ type: 'clock_skew', skewMs: -1 })).toBeUndefined();
    expect(await o.enqueue({ type: 'events_dropped', count: 1 })).toBeUndefined();
    expect(o.dropped()).toBe(2);
    expect(o.pending()).toBe(3);
    const security = [];
    for (const type of ['enrolled', 'rotated', 'rotation_failed', 'reattested', 'revoked'] as const) {
      security.push(await o.enqueue({ type }));
    }
    expect(security.every((e) => e !== undefined)).toBe(true);
    expect(o.pending()).toBe(8); // past maxEvents for security events
    expect(await db.storedSeqs()).toEqual([1, 2, 3, 4, 5, 6, 7, 8]); // drops consumed no seq

    await restart();
    o = await outbox({ maxEvents: 3 });
    expect(o.dropped()).toBe(2);
    expect(o.pending()).toBe(8);
    expect(await o.enqueue({ type: 'clock_skew', skewMs: -2 })).toBeUndefined();
    expect(o.dropped()).toBe(3);

    // Once drained there is room again.
    await o.drain(async () => {});
    expect((await o.enqueue({ type: 'clock_skew', skewMs: -3 }))!.seq).toBe(9);
  });

  it('security events are never dropped, however many', async () => {
    const o = await outbox({ maxEvents: 1 });
    for (let i = 0; i < 50; i++) expect(await o.enqueue({ type: 'rotated', serial: (0x100 + i).toString(16) })).toBeDefined();
    expect(o.pending()).toBe(50);
    expect(o.dropped()).toBe(0);
  });

  it('a stored record that is not an event is deleted and counted as dropped, never sent, and does not stall the queue', async () => {
    const o = await outbox();
    await skew(o, 2);
    await db.sub.batch([{ type: 'put', key: 'e!0000000000000003', value: { id: 'bad', type: 'nonsense' } }]);
    await restart();
    const p = await outbox();
    expect(p.pending()).toBe(3);
    await p.enqueue({ type: 'rotated' });
    const seen: number[] = [];
    expect(await p.drain(async (e) => void seen.push(e.seq))).toEqual({ sent: 3 });
    expect(seen).toEqual([1, 2, 4]);
    expect(p.dropped()).toBe(1);
    expect(p.pending()).toBe(0);
    expect(await db.storedSeqs()).toEqual([]);
  });

  it('1,000 events drain with a window of 32, in order, at most 32 in flight', async () => {
    const o = await outbox();
    const t0 = performance.now();
    const queued = await skew(o, 1000);
    const tEnqueued = performance.now();
    let inFlight = 0;
    let maxInFlight = 0;
    const seen: number[] = [];
    const r = await o.drain(
      async (e) => {
        seen.push(e.seq);
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        await tick(); // acknowledged on a later turn, like a PUBACK
        inFlight--;
      },
      { window: 32 },
    );
    const tDrained = performance.now();
    expect(r).toEqual({ sent: 1000 });
    expect(seen).toEqual(queued.map((e) => e.seq));
    expect(maxInFlight).toBe(32);
    expect(o.pending()).toBe(0);
    expect(await db.storedSeqs()).toEqual([]);
    console.log(
      `[outbox] 1000 events: enqueue ${(1000 / ((tEnqueued - t0) / 1000)).toFixed(0)}/s, ` +
        `drain ${(1000 / ((tDrained - tEnqueued) / 1000)).toFixed(0)}/s (window 32)`,
    );
  });
});
