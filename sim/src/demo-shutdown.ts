import { rmSync } from 'node:fs';

/**
 * The demo's way out. Whatever the demo started (swtpm, mosquitto, agents, the bridge) is stopped and its
 * work directory (CA keys, one-time tokens, TPM state) removed, whether the demo ends, fails, or is
 * interrupted:
 * - the first SIGINT, SIGTERM or SIGHUP (the terminal closed) aborts `signal`, runs the cleanups in
 *   reverse order, removes the directory and exits with 128 + the signal number;
 * - a second SIGINT or SIGTERM (or cleanups taking longer than `forceAfterMs`) forces: the directory is removed at
 *   once and the process exits; `ManagedProcess`'s exit hook SIGKILLs every child still running.
 * The directory is removed once more in an exit hook, so a file written by work still in flight while
 * the cleanups ran does not survive either.
 */
export class DemoShutdown {
  readonly #dir: string;
  readonly #print: (line: string) => void;
  readonly #forceAfterMs: number;
  readonly #abort = new AbortController();
  readonly #cleanups: (() => Promise<void>)[] = [];
  #closing: Promise<void> | undefined;
  #signalled: NodeJS.Signals | undefined;

  constructor(dir: string, opts: { print?: (line: string) => void; forceAfterMs?: number } = {}) {
    this.#dir = dir;
    this.#print = opts.print ?? ((line) => process.stderr.write(`${line}\n`));
    this.#forceAfterMs = opts.forceAfterMs ?? 15_000;
  }

  /** Aborted by the first signal: long waits in the demo give up on it. */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  get interrupted(): boolean {
    return this.#signalled !== undefined;
  }

  install(): this {
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => this.#onSignal(sig));
    process.on('exit', () => {
      try {
        this.#removeDir();
      } catch {
        // nothing more can be done while exiting
      }
    });
    return this;
  }

  /** Registers how to stop something just started. After shutdown began, it is stopped right away. */
  defer(stop: () => Promise<void>): void {
    if (this.#closing) void stop().catch(() => undefined);
    else this.#cleanups.push(stop);
  }

  /** Runs the cleanups (last registered first) and removes the directory. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      for (const stop of this.#cleanups.reverse()) await stop().catch(() => undefined);
      this.#removeDir();
    })();
    return this.#closing;
  }

  #onSignal(sig: 'SIGINT' | 'SIGTERM' | 'SIGHUP'): void {
    const code = 128 + { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 }[sig];
    if (sig === 'SIGHUP') {
      // The terminal is gone: writing to it fails (EIO), and an unhandled stream error would end the
      // process before the cleanup. Output from here on goes nowhere.
      for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
    }
    if (this.#signalled) {
      if (sig === 'SIGHUP') return; // a hangup can arrive twice (the terminal, its emulator): not a request to force
      this.#print(`\n${sig} again: forcing exit`);
      this.#removeDir();
      process.exit(code);
    }
    this.#signalled = sig;
    this.#print(`\n${sig}: stopping the devices and the fleet, removing ${this.#dir} (${sig === 'SIGINT' ? 'Ctrl-C' : 'the signal'} again forces)`);
    this.#abort.abort();
    setTimeout(() => {
      this.#print(`cleanup did not finish in ${this.#forceAfterMs} ms: forcing exit`);
      this.#removeDir();
      process.exit(code);
    }, this.#forceAfterMs);
    void this.close().then(() => {
      this.#print('stopped; nothing left behind');
      process.exit(code);
    });
  }

  #removeDir(): void {
    rmSync(this.#dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 20 });
  }
}
