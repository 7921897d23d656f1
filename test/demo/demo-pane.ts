/**
 * Harness for the demo tests: the shipped demo bundle on a real TTY (a detached tmux session of its own)
 * or on pipes, with every descendant process noted by PID (and start time) while it runs, so a test can
 * prove that none outlives the demo. The demo runs with TMPDIR pointing at a directory of the test's
 * own, which must end up empty.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** What /proc/PID/comm says for a Node process: Node 24 names its main thread "MainThread". */
const NODE_COMMS: readonly string[] = ['node', 'MainThread'];
export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface Proc {
  readonly pid: number;
  readonly comm: string;
  /** Start time in clock ticks since boot: tells a PID's reuse from the process we saw. */
  readonly start: string;
}

export function readStat(pid: number): { comm: string; state: string; ppid: number; start: string } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const close = text.lastIndexOf(')');
  const fields = text.slice(close + 2).split(' '); // fields[0] is the state (field 3 of proc(5))
  return { comm: text.slice(text.indexOf('(') + 1, close), state: fields[0]!, ppid: Number(fields[1]), start: fields[19]! };
}

export function descendantsOf(root: number): Proc[] {
  const children = new Map<number, number[]>();
  const stats = new Map<number, NonNullable<ReturnType<typeof readStat>>>();
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid)) continue;
    const st = readStat(pid);
    if (!st) continue;
    stats.set(pid, st);
    children.set(st.ppid, [...(children.get(st.ppid) ?? []), pid]);
  }
  const out: Proc[] = [];
  const queue = [...(children.get(root) ?? [])];
  while (queue.length) {
    const pid = queue.shift()!;
    const st = stats.get(pid)!;
    out.push({ pid, comm: st.comm, start: st.start });
    queue.push(...(children.get(pid) ?? []));
  }
  return out;
}

export function alive(p: Proc): boolean {
  const st = readStat(p.pid);
  return st !== undefined && st.start === p.start && st.state !== 'Z';
}

export const comms = (ps: Iterable<Proc>) => [...ps].map((p) => p.comm).sort();
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Those of `procs` still alive after a grace for them to end and be reaped. */
export async function survivorsOf(procs: Iterable<Proc>, graceMs: number): Promise<Proc[]> {
  const end = Date.now() + graceMs;
  let left = [...procs].filter(alive);
  while (left.length && Date.now() < end) {
    await sleep(50);
    left = left.filter(alive);
  }
  return left;
}

/** `node dist/demo.mjs <args>` in a detached tmux session of its own (own socket), on a real TTY. */
export class DemoPane {
  readonly dir = mkdtempSync(join(tmpdir(), 'demo-pane-'));
  readonly demoTmp = join(this.dir, 'tmp');
  readonly #sock = join(this.dir, 'tmux.sock');
  readonly #rcFile = join(this.dir, 'rc');
  readonly seen = new Map<number, Proc>();
  #panePid = 0;

  start(args: string): void {
    mkdirSync(this.demoTmp);
    // bash (not exec): it outlives node and records its exit status. Non-interactive bash waits for a
    // child that handles SIGINT instead of dying with it.
    const cmd = `bash -c 'TMPDIR=${this.demoTmp} node dist/demo.mjs ${args}; echo $? >${this.#rcFile}'`;
    this.#tmux('-f', '/dev/null', 'new-session', '-d', '-s', 'demo', '-x', '220', '-y', '60', '-c', ROOT, cmd, ';', 'set-option', '-t', 'demo', 'remain-on-exit', 'on');
    this.#panePid = Number(this.#tmux('display-message', '-p', '-t', 'demo', '#{pane_pid}').trim());
  }

  screen(): string {
    return this.#tmux('capture-pane', '-p', '-J', '-S', '-500', '-t', 'demo');
  }

  /** Polls the screen for `text`, noting every descendant of the pane meanwhile. */
  async waitFor(text: string, timeoutMs = 40_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      this.#note();
      if (this.screen().includes(text)) return;
      if (existsSync(this.#rcFile)) throw new Error(`demo exited before "${text}":\n${this.screen()}`);
      if (Date.now() > end) throw new Error(`no "${text}" within ${timeoutMs} ms:\n${this.screen()}`);
      await sleep(50);
    }
  }

  /** Waits until a descendant of the pane named `comm` is seen. */
  async waitForProcess(comm: string, timeoutMs = 40_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      this.#note();
      if (comms(this.seen.values()).includes(comm)) return;
      if (existsSync(this.#rcFile)) throw new Error(`demo exited before starting ${comm}:\n${this.screen()}`);
      if (Date.now() > end) throw new Error(`no ${comm} within ${timeoutMs} ms:\n${this.screen()}`);
      await sleep(20);
    }
  }

  sendKeys(...keys: string[]): void {
    this.#tmux('send-keys', '-t', 'demo', ...keys);
  }

  /** Names of the live descendants among `names` (swtpm_setup runs its own swtpm while manufacturing). */
  running(names: readonly string[]): string[] {
    return comms([...this.seen.values()].filter((p) => names.includes(p.comm) && alive(p)));
  }

  demoPid(): number {
    // Node 24 names its main thread, and so the process's comm, "MainThread"; earlier Node keeps "node".
    const node = [...this.seen.values()].find((p) => NODE_COMMS.includes(p.comm) && alive(p));
    if (!node) throw new Error('the demo process is not running');
    return node.pid;
  }

  /** Waits for the demo's exit status, still noting descendants (a child started late counts too). */
  async exitCode(timeoutMs = 30_000): Promise<number> {
    const end = Date.now() + timeoutMs;
    while (!existsSync(this.#rcFile)) {
      this.#note();
      if (Date.now() > end) throw new Error(`demo still running after ${timeoutMs} ms:\n${this.screen()}`);
      await sleep(50);
    }
    return Number(readFileSync(this.#rcFile, 'utf8').trim());
  }

  /** Processes seen under the pane that are still alive after a grace for them to end and be reaped. */
  survivors(graceMs = 2_000): Promise<Proc[]> {
    return survivorsOf(this.seen.values(), graceMs);
  }

  /** Closes the terminal: tmux hangs up the pane (SIGHUP), as closing a terminal window does. */
  hangUp(): void {
    try {
      this.#tmux('kill-server');
    } catch {
      // already gone
    }
  }

  /** After a test, passed or failed: nothing of ours may outlive it. */
  close(): void {
    this.hangUp();
    for (const p of this.seen.values()) if (alive(p)) process.kill(p.pid, 'SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }

  #note(): void {
    // Overwrites: a child is first seen as the bash that execs it (ManagedProcess), then by its name.
    for (const p of descendantsOf(this.#panePid)) this.seen.set(p.pid, p);
  }

  #tmux(...args: string[]): string {
    return execFileSync('tmux', ['-S', this.#sock, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  }
}

/**
 * `node dist/demo.mjs <args>` with stdout and stderr on pipes (not a TTY, as in CI), its descendants
 * noted every 25 ms while it runs (mosquitto restarted by the outage step included).
 */
export class DemoPipe {
  readonly dir = mkdtempSync(join(tmpdir(), 'demo-pipe-'));
  readonly demoTmp = join(this.dir, 'tmp');
  readonly seen = new Map<number, Proc>();
  #child: ChildProcess | undefined;

  /** Runs the demo to its end (or `timeoutMs`, then SIGKILL); resolves with its exit code and output. */
  run(args: readonly string[], timeoutMs = 50_000): Promise<{ code: number | null; out: string; err: string }> {
    mkdirSync(this.demoTmp);
    const child = spawn(process.execPath, ['dist/demo.mjs', ...args], { cwd: ROOT, env: { ...process.env, TMPDIR: this.demoTmp }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child = child;
    this.seen.set(child.pid!, { pid: child.pid!, comm: 'node', start: readStat(child.pid!)?.start ?? '' });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString('utf8')));
    child.stderr.on('data', (b: Buffer) => (err += b.toString('utf8')));
    const note = setInterval(() => {
      for (const p of descendantsOf(child.pid!)) this.seen.set(p.pid, p);
    }, 25);
    const kill = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    return new Promise((resolve) => {
      child.on('close', (code) => {
        clearInterval(note);
        clearTimeout(kill);
        resolve({ code, out, err });
      });
    });
  }

  survivors(graceMs = 2_000): Promise<Proc[]> {
    return survivorsOf(this.seen.values(), graceMs);
  }

  close(): void {
    this.#child?.kill('SIGKILL');
    for (const p of this.seen.values()) if (alive(p)) process.kill(p.pid, 'SIGKILL');
    rmSync(this.dir, { recursive: true, force: true });
  }
}
