import { describe, expect, it } from 'vitest';
import { SdNotifyError, type ServiceNotifier } from '../../native/lib/sd-notify.js';
import type { AgentLogger } from './agent.js';
import { attachServiceManager, DEFAULT_STALL_MS, statusText, watchdogFromEnv, type ManagedAgent, type ServiceTimers } from './service-manager.js';
import type { AgentState } from './status.js';

/** Repeating timers driven by hand, and the monotonic clock they run on. */
class FakeTimers implements ServiceTimers {
  t = 0;
  readonly #timers: { ms: number; fn: () => void; next: number; cancelled: boolean }[] = [];
  every(ms: number, fn: () => void): { cancel(): void } {
    const timer = { ms, fn, next: this.t + ms, cancelled: false };
    this.#timers.push(timer);
    return { cancel: () => void (timer.cancelled = true) };
  }
  now(): number {
    return this.t;
  }
  get active(): number {
    return this.#timers.filter((x) => !x.cancelled).length;
  }
  /** Moves the clock by `ms`, firing every timer due on the way, in order. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      const due = this.#timers.filter((x) => !x.cancelled && x.next <= end).sort((a, b) => a.next - b.next)[0];
      if (!due) break;
      this.t = due.next;
      due.next += due.ms;
      due.fn();
    }
    this.t = end;
  }
}

/** The parts of Agent the service manager reads, set by hand. */
class FakeAgent implements ManagedAgent {
  state: AgentState = 'stopped';
  moves = 0;
  waiting = true;
  error: { code: string; rejection?: string } | undefined;
  readonly listeners = new Set<(s: AgentState) => void>();
  onStateChange(listener: (s: AgentState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  liveness() {
    return { moves: this.moves, waiting: this.waiting };
  }
  status() {
    return this.error ? { error: this.error } : {};
  }
  diagnostics() {
    return { phase: 'step: steady', link: 'TLS + CONNECT' };
  }
  set(s: AgentState): void {
    this.state = s;
    for (const l of this.listeners) l(s);
  }
}

function recordingNotifier(): ServiceNotifier & { sent: string[]; fail: Error | undefined } {
  const n = {
    sent: [] as string[],
    fail: undefined as Error | undefined,
    notify(state: string): boolean {
      if (n.fail) throw n.fail;
      n.sent.push(state);
      return true;
    },
  };
  return n;
}

function recordingLogger(): AgentLogger & { lines: { level: string; msg: string; fields: Record<string, unknown> }[] } {
  const lines: { level: string; msg: string; fields: Record<string, unknown> }[] = [];
  const at = (level: string) => (fields: object, msg: string) => void lines.push({ level, msg, fields: fields as Record<string, unknown> });
  return { lines, info: at('info'), warn: at('warn'), error: at('error') };
}

const PID = 4242;
const SOCKET = { NOTIFY_SOCKET: '/run/systemd/notify' };
/** WatchdogSec=60: pings every 30 s, start-up extended by 90 s at a time. */
const WATCHDOG_60S = { ...SOCKET, WATCHDOG_USEC: '60000000', WATCHDOG_PID: String(PID) };

function setup(env: Record<string, string>, opts: { stallMs?: number } = {}) {
  const agent = new FakeAgent();
  const notifier = recordingNotifier();
  const timers = new FakeTimers();
  const logger = recordingLogger();
  const link = attachServiceManager(agent, { notifier, env, logger, timers, pid: PID, ...opts });
  /** Messages sent since the last call. */
  let seen = 0;
  const fresh = () => {
    const out = notifier.sent.slice(seen);
    seen = notifier.sent.length;
    return out;
  };
  return { agent, notifier, timers, logger, link, fresh };
}

describe('attachServiceManager', () => {
  it('does nothing at all without NOTIFY_SOCKET (run by hand, or in tests): no message, no timer, no listener', () => {
    const s = setup({ WATCHDOG_USEC: '2000000' });
    expect(s.link).toMatchObject({ active: false, watchdogMs: undefined });
    for (const state of ['starting', 'connecting', 'online', 'stopping', 'stopped'] as const) s.agent.set(state);
    s.timers.advance(3_600_000);
    expect(s.notifier.sent).toEqual([]);
    expect(s.timers.active).toBe(0);
    expect(s.agent.listeners.size).toBe(0);
    expect(s.logger.lines).toEqual([]);
  });

  it('extends the start-up at once and every half watchdog interval while starting, says READY=1 once online, then pings the watchdog', () => {
    const s = setup(WATCHDOG_60S);
    expect(s.link).toMatchObject({ active: true, watchdogMs: 60_000 });
    // Attached before start(): the first extension goes out at once, before anything else.
    expect(s.fresh()).toEqual(['EXTEND_TIMEOUT_USEC=90000000\nSTATUS=starting: opening the store and the TPM']);
    s.agent.set('starting');
    s.agent.set('enrolling');
    expect(s.fresh()).toEqual(['STATUS=starting: opening the store and the TPM', 'STATUS=enrolling with the fleet']);
    s.timers.advance(30_000);
    expect(s.fresh()).toEqual(['EXTEND_TIMEOUT_USEC=90000000\nSTATUS=enrolling with the fleet']);
    // A device booting without network: connecting for an hour, extended all along, never ready.
    s.agent.set('connecting');
    s.fresh();
    for (let i = 0; i < 120; i++) {
      s.agent.moves++;
      s.timers.advance(30_000);
      expect(s.fresh()).toEqual(['EXTEND_TIMEOUT_USEC=90000000\nSTATUS=offline, working from caches; connecting to the fleet']);
    }
    s.agent.set('online');
    expect(s.fresh()).toEqual(['READY=1\nSTATUS=online']);
    s.timers.advance(90_000);
    expect(s.fresh()).toEqual(['WATCHDOG=1', 'WATCHDOG=1', 'WATCHDOG=1']);
    // Later transitions only update STATUS; READY=1 is said once.
    s.agent.set('rotating');
    s.agent.set('online');
    s.agent.set('connecting');
    s.agent.set('online');
    expect(s.fresh()).toEqual(['STATUS=online, rotating the identity key', 'STATUS=online', 'STATUS=offline, working from caches; connecting to the fleet', 'STATUS=online']);
  });

  it('pings the watchdog only while the supervisor is live: waiting on a timer, or moving within stallMs', () => {
    const s = setup(WATCHDOG_60S);
    s.agent.set('starting');
    s.agent.set('online');
    s.fresh();
    // Parked in a timed wait (idle until the next tick, or an operator): live for as long as it waits.
    s.timers.advance(3_600_000);
    expect(s.fresh()).toHaveLength(120);
    // Working (not waiting) and moving: live.
    s.agent.waiting = false;
    for (let i = 0; i < 20; i++) {
      s.agent.moves++;
      s.timers.advance(30_000);
    }
    expect(s.fresh()).toEqual(Array(20).fill('WATCHDOG=1'));
    // Stuck: neither waiting nor moving (a call that never returns). Pings go on up to stallMs, then stop.
    s.timers.advance(DEFAULT_STALL_MS - 30_000);
    expect(s.fresh()).toHaveLength(DEFAULT_STALL_MS / 30_000 - 1);
    s.timers.advance(30_000);
    expect(s.fresh()).toEqual([]);
    s.timers.advance(600_000);
    expect(s.fresh()).toEqual([]);
    const stalled = s.logger.lines.filter((l) => l.fields['code'] === 'AGENT_STALLED');
    expect(stalled).toHaveLength(1); // once per stall, not per tick
    expect(stalled[0]).toMatchObject({ level: 'error', fields: { phase: 'step: steady', link: 'TLS + CONNECT' } });
    expect(stalled[0]!.msg).toMatch(/withholding the watchdog ping/);
    // It moves again (had systemd not restarted it yet): pings resume.
    s.agent.moves++;
    s.timers.advance(30_000);
    expect(s.fresh()).toEqual(['WATCHDOG=1']);
    expect(s.logger.lines.at(-1)?.msg).toMatch(/progress again/);
  });

  it('stops extending the start-up when the supervisor stalls, so systemd fails the start and restarts the agent', () => {
    const s = setup(WATCHDOG_60S, { stallMs: 120_000 });
    s.agent.set('starting');
    s.agent.waiting = false;
    s.fresh();
    s.timers.advance(90_000); // first sample at 30 s sees its moves; no move since
    expect(s.fresh()).toHaveLength(3);
    s.timers.advance(60_000);
    expect(s.fresh()).toHaveLength(1); // 120 s: 90 s since the sample that saw it move
    s.timers.advance(300_000);
    expect(s.fresh()).toEqual([]);
    expect(s.logger.lines.find((l) => l.fields['code'] === 'AGENT_STALLED')?.msg).toMatch(/no longer extending the start-up/);
  });

  it('ignores the watchdog when WATCHDOG_PID names another process: extensions every 30 s, READY=1, then no timer', () => {
    const s = setup({ ...WATCHDOG_60S, WATCHDOG_PID: String(PID + 1) });
    expect(s.link.watchdogMs).toBeUndefined();
    expect(s.logger.lines).toEqual([expect.objectContaining({ level: 'warn', fields: { code: 'AGENT_WATCHDOG_OFF' } })]);
    expect(s.fresh()).toEqual(['EXTEND_TIMEOUT_USEC=90000000\nSTATUS=starting: opening the store and the TPM']);
    s.agent.set('starting');
    s.fresh();
    s.timers.advance(60_000);
    expect(s.fresh()).toEqual(Array(2).fill('EXTEND_TIMEOUT_USEC=90000000\nSTATUS=starting: opening the store and the TPM'));
    s.agent.set('online');
    expect(s.fresh()).toEqual(['READY=1\nSTATUS=online']);
    expect(s.timers.active).toBe(0);
    s.timers.advance(3_600_000);
    expect(s.fresh()).toEqual([]);
  });

  it('without WATCHDOG_USEC: extensions every 30 s until READY=1, then only STATUS updates', () => {
    const s = setup(SOCKET);
    expect(s.link.watchdogMs).toBeUndefined();
    s.agent.set('starting');
    s.timers.advance(30_000);
    s.agent.set('online');
    expect(s.fresh()).toEqual([
      'EXTEND_TIMEOUT_USEC=90000000\nSTATUS=starting: opening the store and the TPM',
      'STATUS=starting: opening the store and the TPM',
      'EXTEND_TIMEOUT_USEC=90000000\nSTATUS=starting: opening the store and the TPM',
      'READY=1\nSTATUS=online',
    ]);
    expect(s.timers.active).toBe(0);
    s.agent.set('connecting');
    expect(s.fresh()).toEqual(['STATUS=offline, working from caches; connecting to the fleet']);
  });

  it('reads WATCHDOG_USEC and WATCHDOG_PID as sd_watchdog_enabled(3) does', () => {
    expect(watchdogFromEnv({ WATCHDOG_USEC: '2000000' }, PID)).toEqual({ ms: 2000 });
    expect(watchdogFromEnv({ WATCHDOG_USEC: '2000000', WATCHDOG_PID: String(PID) }, PID)).toEqual({ ms: 2000 });
    expect(watchdogFromEnv({ WATCHDOG_USEC: '2000000', WATCHDOG_PID: '1' }, PID)).toEqual({ ignored: expect.stringMatching(/WATCHDOG_PID/) });
    expect(watchdogFromEnv({}, PID)).toEqual({});
    for (const bad of ['0', '-5', 'soon', '1e6', ' 100']) expect(watchdogFromEnv({ WATCHDOG_USEC: bad }, PID).ignored).toMatch(/not a positive number/);
    // A short interval: pings every half of it.
    const s = setup({ ...SOCKET, WATCHDOG_USEC: '2000000' });
    expect(s.fresh()).toEqual(['EXTEND_TIMEOUT_USEC=3000000\nSTATUS=starting: opening the store and the TPM']);
    s.agent.set('online');
    s.fresh();
    s.timers.advance(10_000);
    expect(s.fresh()).toEqual(Array(10).fill('WATCHDOG=1'));
  });

  it('says READY=1 when the agent parks in error or revoked before it was ever online, and keeps pinging while it waits for an operator', () => {
    const s = setup(WATCHDOG_60S);
    s.agent.set('starting');
    s.agent.set('enrolling');
    s.fresh();
    s.agent.error = { code: 'AGENT_ENROLLMENT_REJECTED', rejection: 'TOKEN_USED' };
    s.agent.set('error');
    expect(s.fresh()).toEqual(['READY=1\nSTATUS=error AGENT_ENROLLMENT_REJECTED (TOKEN_USED); waiting for an operator']);
    s.timers.advance(600_000);
    expect(s.fresh()).toEqual(Array(20).fill('WATCHDOG=1'));

    const r = setup(WATCHDOG_60S);
    r.agent.set('starting');
    r.agent.set('online');
    r.fresh();
    r.agent.set('revoked');
    expect(r.fresh()).toEqual(['STATUS=revoked by the fleet; waiting for an operator']);
  });

  it('says STOPPING=1 when stopping, then clears its timers and listens no more', () => {
    const s = setup(WATCHDOG_60S);
    s.agent.set('starting');
    s.agent.set('online');
    s.fresh();
    s.agent.set('stopping');
    expect(s.fresh()).toEqual(['STOPPING=1\nSTATUS=stopping']);
    expect(s.timers.active).toBe(0);
    expect(s.agent.listeners.size).toBe(0);
    s.agent.set('stopped');
    s.timers.advance(600_000);
    expect(s.fresh()).toEqual([]);
    s.link.close(); // idempotent
  });

  it('reports a start that failed (store or TPM cannot be opened) and detaches', () => {
    const s = setup(WATCHDOG_60S);
    s.agent.set('starting');
    s.fresh();
    s.agent.error = { code: 'TPM_UNREACHABLE' };
    s.agent.set('stopped');
    expect(s.fresh()).toEqual(['STATUS=stopped: cannot start (TPM_UNREACHABLE)']);
    expect(s.timers.active).toBe(0);
  });

  it('logs a failing notification once per code and never throws into the agent', () => {
    const s = setup(WATCHDOG_60S);
    s.fresh();
    s.notifier.fail = new SdNotifyError('SD_NOTIFY_FAILED', 'sendto(/run/systemd/notify): Resource temporarily unavailable');
    expect(() => {
      s.agent.set('starting');
      s.agent.set('online');
      s.timers.advance(300_000);
    }).not.toThrow();
    s.notifier.fail = new SdNotifyError('SD_NOTIFY_BAD_SOCKET', 'NOTIFY_SOCKET must be an absolute path');
    s.timers.advance(300_000);
    s.notifier.fail = undefined;
    // READY=1 never went out: the next tick says it (a lost one would fail the start), then the pings.
    s.timers.advance(30_000);
    expect(s.fresh()).toEqual(['READY=1\nSTATUS=online']);
    s.timers.advance(30_000);
    expect(s.fresh()).toEqual(['WATCHDOG=1']);
    expect(s.logger.lines.map((l) => [l.level, l.fields['code']])).toEqual([
      ['warn', 'SD_NOTIFY_FAILED'],
      ['warn', 'SD_NOTIFY_BAD_SOCKET'],
    ]);
  });
});

describe('statusText', () => {
  it('is one line per state, with the error code when parked', () => {
    const states: AgentState[] = ['stopped', 'starting', 'enrolling', 'reattesting', 'connecting', 'online', 'rotating', 'revoked', 'error', 'stopping'];
    for (const st of states) expect(statusText(st)).toMatch(/^[^\n]+$/);
    expect(statusText('error', { code: 'AGENT_STATE_CORRUPT' })).toBe('error AGENT_STATE_CORRUPT; waiting for an operator');
  });
});
