import type { ServiceNotifier } from '../../native/lib/sd-notify.js';
import type { AgentLogger } from './agent.js';
import type { AgentState } from './status.js';

/**
 * Tells the service manager (systemd, `Type=notify`) how the agent is doing, through sd_notify(3)
 * messages. Does nothing at all without $NOTIFY_SOCKET (the agent run by hand, or in tests).
 *
 * - Starting (never online yet): `EXTEND_TIMEOUT_USEC=` (3 periods) with `STATUS=` right away and then
 *   every period (half the watchdog interval, or 30 s without a watchdog), while the agent is live. A
 *   device that boots without network keeps extending its start-up and is not killed by
 *   TimeoutStartSec; a hung agent stops extending, and systemd fails the start and restarts it.
 * - `READY=1` with `STATUS=` the first time the agent is online. Also when it parks in `error` or
 *   `revoked` before that: it then stays up waiting for an operator (agent/README.md), and a start job
 *   that never ends would hold up everything ordered after it.
 * - After that `WATCHDOG=1` every period when WATCHDOG_USEC is set (and WATCHDOG_PID, if set, is this
 *   process), but only while the agent is live: the timer runs on the event loop, so a blocked loop
 *   sends nothing; and the supervisor must be waiting on a timer or have moved within `stallMs`
 *   (Agent.liveness()), so a supervisor stuck on a call that never returns sends nothing either.
 *   systemd then kills and restarts the agent (WatchdogSec=, Restart=on-failure).
 * - `STATUS=` on every state change, `STOPPING=1` when stopping; then it detaches (timers cleared).
 *
 * A notification that fails is logged once per code and never ends the agent.
 */

/** The environment variables systemd sets (an injected copy: process.env in production). */
export type ServiceManagerEnv = Readonly<Record<string, string | undefined>>;

/** What this module needs from the agent (Agent fits). */
export interface ManagedAgent {
  readonly state: AgentState;
  onStateChange(listener: (s: AgentState) => void): () => void;
  liveness(): { readonly moves: number; readonly waiting: boolean };
  status(): { readonly error?: { readonly code: string; readonly rejection?: string } };
  diagnostics(): { readonly phase: string; readonly link: string };
}

/** Timers on the event loop and a monotonic clock (tests inject fakes). */
export interface ServiceTimers {
  /** Calls `fn` every `ms`; must not keep the process alive. */
  every(ms: number, fn: () => void): { cancel(): void };
  /** Monotonic milliseconds: a wall-clock step (NTP at boot) must not look like a stall. */
  now(): number;
}

export interface ServiceManagerOptions {
  readonly notifier: ServiceNotifier;
  readonly env: ServiceManagerEnv;
  readonly logger: AgentLogger;
  /** Default: setInterval (unref'd) and performance.now(). */
  readonly timers?: ServiceTimers;
  /** Compared with WATCHDOG_PID. Default: process.pid. */
  readonly pid?: number;
  /**
   * How long the supervisor may go without moving, outside a timed wait, and still count as live.
   * Default 6 minutes: longer than the 300 s the Linux TPM driver allows the slowest TPM 2.0 commands
   * (key creation), and than any network step (each has its own timeout).
   */
  readonly stallMs?: number;
}

export interface ServiceManagerLink {
  /** False when $NOTIFY_SOCKET is unset: nothing is ever sent. */
  readonly active: boolean;
  /** The watchdog interval systemd expects pings within (WATCHDOG_USEC), if it is on for this process. */
  readonly watchdogMs: number | undefined;
  /** Stops the timers and the state listener. Idempotent. */
  close(): void;
}

/** Period of the start-up extensions without a watchdog. */
export const DEFAULT_PERIOD_MS = 30_000;
export const DEFAULT_STALL_MS = 6 * 60_000;
/** Each extension covers this many periods, so one late tick does not end the start-up. */
const EXTEND_PERIODS = 3;

export const realServiceTimers: ServiceTimers = {
  every(ms, fn) {
    const t = setInterval(fn, ms);
    t.unref();
    return { cancel: () => clearInterval(t) };
  },
  now: () => performance.now(),
};

/** The watchdog interval in ms when WATCHDOG_USEC asks this process for pings; else undefined (and why). */
export function watchdogFromEnv(env: ServiceManagerEnv, pid: number): { ms?: number; ignored?: string } {
  const usec = env['WATCHDOG_USEC'];
  if (usec === undefined || usec === '') return {};
  if (!/^[1-9][0-9]*$/.test(usec)) return { ignored: `WATCHDOG_USEC=${usec.slice(0, 32)} is not a positive number of microseconds` };
  const watchdogPid = env['WATCHDOG_PID'];
  if (watchdogPid !== undefined && watchdogPid !== '' && watchdogPid !== String(pid)) return { ignored: 'WATCHDOG_PID names another process' };
  return { ms: Number(usec) / 1000 };
}

/** The one-line STATUS= text for a state. */
export function statusText(state: AgentState, error?: { readonly code: string; readonly rejection?: string }): string {
  switch (state) {
    case 'starting':
      return 'starting: opening the store and the TPM';
    case 'enrolling':
      return 'enrolling with the fleet';
    case 'reattesting':
      return 're-attesting with the TPM';
    case 'connecting':
      return 'offline, working from caches; connecting to the fleet';
    case 'online':
      return 'online';
    case 'rotating':
      return 'online, rotating the identity key';
    case 'revoked':
      return 'revoked by the fleet; waiting for an operator';
    case 'error':
      return `error ${error?.code ?? 'AGENT_INTERNAL'}${error?.rejection ? ` (${error.rejection})` : ''}; waiting for an operator`;
    case 'stopping':
      return 'stopping';
    case 'stopped':
      return error ? `stopped: cannot start (${error.code})` : 'stopped';
  }
}

const oneLine = (s: string) => s.replace(/[\r\n]+/g, ' ');

export function attachServiceManager(agent: ManagedAgent, o: ServiceManagerOptions): ServiceManagerLink {
  if (!o.env['NOTIFY_SOCKET']) return { active: false, watchdogMs: undefined, close: () => undefined };
  const timers = o.timers ?? realServiceTimers;
  const stallMs = o.stallMs ?? DEFAULT_STALL_MS;
  const watchdog = watchdogFromEnv(o.env, o.pid ?? process.pid);
  if (watchdog.ignored) o.logger.warn({ code: 'AGENT_WATCHDOG_OFF' }, `service manager watchdog off: ${watchdog.ignored}`);
  const watchdogMs = watchdog.ms;
  // setInterval takes at most 2^31 - 1 ms (a longer delay would fire every millisecond).
  const periodMs = watchdogMs === undefined ? DEFAULT_PERIOD_MS : Math.min(2 ** 31 - 1, Math.max(1, Math.floor(watchdogMs / 2)));
  const extendUsec = Math.round(periodMs * EXTEND_PERIODS * 1000);

  const failedCodes = new Set<string>();
  /** False when the message could not be sent (logged once per code). */
  const send = (...lines: string[]): boolean => {
    try {
      o.notifier.notify(lines.join('\n'));
      return true;
    } catch (e) {
      const code = typeof (e as { code?: unknown }).code === 'string' ? (e as { code: string }).code : 'SD_NOTIFY_FAILED';
      if (!failedCodes.has(code)) {
        failedCodes.add(code);
        o.logger.warn({ code, err: (e as Error).message }, 'cannot notify the service manager (logged once per code)');
      }
      return false;
    }
  };
  const status = (s: AgentState) => `STATUS=${oneLine(statusText(s, s === 'error' || s === 'stopped' ? agent.status().error : undefined))}`;
  // Attached before start() (so no change is missed), the agent may not be started yet; after it
  // stopped, this is detached.
  const current = (): AgentState => (agent.state === 'stopped' ? 'starting' : agent.state);

  /** The agent reached the end of its start-up; `readySent`: READY=1 went out (else each tick retries it). */
  let ready = false;
  let readySent = false;
  let closed = false;
  let timer: { cancel(): void } | undefined;
  let unsubscribe: (() => void) | undefined;

  // Liveness: the supervisor is waiting on a timer, or moved within stallMs (seen from these samples).
  let seenMoves: number | undefined;
  let movedAt = timers.now();
  let stalled = false;
  const live = (): boolean => {
    const { moves, waiting } = agent.liveness();
    const now = timers.now();
    if (waiting || moves !== seenMoves) {
      seenMoves = moves;
      movedAt = now;
    }
    const ok = now - movedAt < stallMs;
    if (!ok && !stalled) {
      stalled = true;
      o.logger.error(
        { code: 'AGENT_STALLED', stalledMs: Math.round(now - movedAt), ...agent.diagnostics() },
        ready ? 'the supervisor made no progress; withholding the watchdog ping so the service manager restarts the agent' : 'the supervisor made no progress; no longer extending the start-up',
      );
    } else if (ok && stalled) {
      stalled = false;
      o.logger.info({}, 'the supervisor makes progress again');
    }
    return ok;
  };

  const tick = (): void => {
    if (closed) return;
    if (!ready) {
      if (live()) send(`EXTEND_TIMEOUT_USEC=${extendUsec}`, status(current()));
    } else if (!readySent) {
      // A lost READY=1 (e.g. EAGAIN while systemd is busy at boot) would fail the start: say it again.
      sayReady();
    } else if (watchdogMs !== undefined) {
      if (live()) send('WATCHDOG=1');
    }
  };
  const sayReady = (): void => {
    readySent = send('READY=1', status(current()));
    // Without a watchdog there is nothing left to send on a timer.
    if (readySent && watchdogMs === undefined) {
      timer?.cancel();
      timer = undefined;
    }
  };
  const close = (): void => {
    if (closed) return;
    closed = true;
    timer?.cancel();
    timer = undefined;
    unsubscribe?.();
  };
  unsubscribe = agent.onStateChange((s) => {
    if (closed) return;
    if (s === 'stopping') {
      send('STOPPING=1', status(s));
      close();
      return;
    }
    if (s === 'stopped') {
      send(status(s));
      close();
      return;
    }
    if (!ready && (s === 'online' || s === 'error' || s === 'revoked')) {
      ready = true;
      sayReady();
      return;
    }
    send(status(s));
  });

  // The first extension at once: TimeoutStartSec only has to cover the process start up to here.
  send(`EXTEND_TIMEOUT_USEC=${extendUsec}`, status(current()));
  timer = timers.every(periodMs, tick);
  return { active: true, watchdogMs, close };
}
