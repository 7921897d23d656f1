import { spawn, type ChildProcess } from 'node:child_process';
import { createConnection, createServer } from 'node:net';
import { CodedError } from './coded-error.js';

/**
 * A child process we own (swtpm, mosquitto in the embedded fleet): started with arguments, awaited
 * until its TCP ports answer, stopped by PID (SIGTERM, then SIGKILL after a grace period). Every live
 * child is also killed synchronously when this process exits, so none outlives us.
 */
export type ProcessErrorCode = 'PROCESS_START_FAILED' | 'PROCESS_NOT_READY';

/**
 * Run as `bash -c <this> <name> <command> <args…>`: closes every descriptor above stderr, then execs the
 * command (same PID, so stop-by-PID still works). Native libraries in this process (libtss2's TCTI
 * sockets, LevelDB's files) open descriptors without close-on-exec; a long-lived child inheriting a
 * TCTI socket would keep that swtpm connection open after we close ours, and swtpm, which serves one
 * connection at a time, would never answer our next one.
 */
const CLOSE_INHERITED_FDS = 'for fd in /proc/$$/fd/*; do n=${fd##*/}; if [ "$n" -gt 2 ]; then eval "exec $n>&-"; fi; done 2>/dev/null; exec "$@"';

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

export class ManagedProcess {
  readonly #child: ChildProcess;
  readonly name: string;
  #exited: Promise<number | null>;
  #stderr = '';

  private constructor(name: string, child: ChildProcess) {
    this.name = name;
    this.#child = child;
    live.add(child);
    child.stderr?.on('data', (d: Buffer) => {
      this.#stderr = (this.#stderr + d.toString()).slice(-4000);
    });
    this.#exited = new Promise((resolve) => {
      child.once('exit', (code) => {
        live.delete(child);
        resolve(code);
      });
      child.once('error', () => {
        live.delete(child);
        resolve(null);
      });
    });
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  get running(): boolean {
    return this.#child.exitCode === null && this.#child.signalCode === null && live.has(this.#child);
  }

  /** Spawns `command` and waits until every port in `ports` accepts TCP connections on `host`. */
  static async start(opts: {
    name: string;
    command: string;
    args: readonly string[];
    ports: readonly number[];
    host?: string;
    env?: NodeJS.ProcessEnv;
    readyTimeoutMs?: number;
  }): Promise<ManagedProcess> {
    installExitHook();
    const child = spawn('/bin/bash', ['-c', CLOSE_INHERITED_FDS, opts.name, opts.command, ...opts.args], { stdio: ['ignore', 'ignore', 'pipe'], env: opts.env ?? process.env });
    const proc = new ManagedProcess(opts.name, child);
    const deadline = Date.now() + (opts.readyTimeoutMs ?? 10_000);
    for (const port of opts.ports) {
      while (!(await portAnswers(opts.host ?? '127.0.0.1', port))) {
        if (!proc.running) {
          throw new CodedError('PROCESS_START_FAILED', `${opts.name} exited during start: ${proc.#stderr.trim() || 'no output'}`);
        }
        if (Date.now() > deadline) {
          await proc.stop();
          throw new CodedError('PROCESS_NOT_READY', `${opts.name} did not open port ${port} in time: ${proc.#stderr.trim()}`);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    return proc;
  }

  /** SIGTERM, wait up to `graceMs`, then SIGKILL. Idempotent. */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.running) return;
    this.#child.kill('SIGTERM');
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), graceMs);
    await this.#exited;
    clearTimeout(timer);
  }
}

export function portAnswers(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = createConnection({ host, port });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

/**
 * `count` consecutive free TCP ports on `host`; returns the first. Candidates are drawn at random below
 * Linux's ephemeral range (32768+), where the kernel never hands out ports on its own, so parallel
 * callers rarely race for the same one; callers still retry a start that loses a race.
 */
export async function freePorts(count = 1, host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * (12_000 - count));
    let ok = true;
    for (let i = 0; ok && i < count; i++) ok = await canListen(host, base + i);
    if (ok) return base;
  }
  throw new CodedError('PROCESS_START_FAILED', `no ${count} consecutive free ports on ${host}`);
}

/** Free on `host` and on the wildcard address (a container's port proxy binds 0.0.0.0). */
async function canListen(host: string, port: number): Promise<boolean> {
  for (const h of [host, '0.0.0.0']) {
    const free = await new Promise<boolean>((resolve) => {
      const srv = createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, h, () => srv.close(() => resolve(true)));
    });
    if (!free) return false;
  }
  return true;
}
