/**
 * The shipped demo bundle on a real TTY (tmux), interrupted: every process it started (swtpm,
 * swtpm_setup, mosquitto) is gone afterwards, by PID, and so is its work directory (CA keys, tokens,
 * TPM state). The demo runs with TMPDIR pointing at a directory of this test's own, which must end up
 * empty. The processes are every descendant of the tmux pane seen while the demo ran.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

interface Proc {
  readonly pid: number;
  readonly comm: string;
  /** Start time in clock ticks since boot: tells a PID's reuse from the process we saw. */
  readonly start: string;
}

function readStat(pid: number): { comm: string; state: string; ppid: number; start: string } | undefined {
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

function descendantsOf(root: number): Proc[] {
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

function alive(p: Proc): boolean {
  const st = readStat(p.pid);
  return st !== undefined && st.start === p.start && st.state !== 'Z';
}

const comms = (ps: Iterable<Proc>) => [...ps].map((p) => p.comm).sort();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** `node dist/demo.mjs <args>` in a detached tmux session of its own (own socket), on a real TTY. */
class DemoPane {
  readonly dir = mkdtempSync(join(tmpdir(), 'demo-interrupt-'));
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
    const node = [...this.seen.values()].find((p) => p.comm === 'node' && alive(p));
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
  async survivors(graceMs = 2_000): Promise<Proc[]> {
    const end = Date.now() + graceMs;
    let left = [...this.seen.values()].filter(alive);
    while (left.length && Date.now() < end) {
      await sleep(50);
      left = left.filter(alive);
    }
    return left;
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

describe('demo interrupted on a real TTY', () => {
  let pane: DemoPane | undefined;
  afterEach(() => {
    pane?.close();
    pane = undefined;
  });

  it('Ctrl-C with the fleet and devices running: exit 130, no swtpm or mosquitto left, work directory removed', async () => {
    pane = new DemoPane();
    pane.start('--devices 2 --keep-running');
    await pane.waitFor('Ctrl-C stops it');
    expect(pane.running(['swtpm', 'mosquitto'])).toEqual(['mosquitto', 'swtpm', 'swtpm']);
    expect(readdirSync(pane.demoTmp)).toHaveLength(1); // the demo's work directory

    pane.sendKeys('C-c');
    expect(await pane.exitCode()).toBe(130);
    expect(pane.screen()).toContain('stopped; nothing left behind');
    expect(await pane.survivors()).toEqual([]);
    expect(readdirSync(pane.demoTmp)).toEqual([]);
  });

  it('SIGTERM to the demo alone (its children get no signal): the demo stops them itself, exit 143', async () => {
    pane = new DemoPane();
    pane.start('--devices 1 --keep-running');
    await pane.waitFor('Ctrl-C stops it');
    const before = pane.seen.size;
    expect(pane.running(['swtpm', 'mosquitto'])).toEqual(['mosquitto', 'swtpm']);

    process.kill(pane.demoPid(), 'SIGTERM');
    expect(await pane.exitCode()).toBe(143);
    expect(pane.seen.size).toBe(before);
    expect(await pane.survivors()).toEqual([]);
    expect(readdirSync(pane.demoTmp)).toEqual([]);
  });

  it('the terminal closed (SIGHUP; mosquitto survives a hangup by itself): the demo stops everything', async () => {
    pane = new DemoPane();
    pane.start('--devices 1 --keep-running');
    await pane.waitFor('Ctrl-C stops it');
    expect(pane.running(['swtpm', 'mosquitto'])).toEqual(['mosquitto', 'swtpm']);

    pane.hangUp();
    expect(await pane.survivors(15_000)).toEqual([]);
    expect(readdirSync(pane.demoTmp)).toEqual([]);
  });

  it('Ctrl-C while the TPMs are being manufactured: swtpm_setup and its scratch files are gone too', async () => {
    pane = new DemoPane();
    pane.start('--devices 3');
    await pane.waitForProcess('swtpm_setup');

    pane.sendKeys('C-c');
    expect(await pane.exitCode()).toBe(130);
    expect(await pane.survivors()).toEqual([]);
    expect(readdirSync(pane.demoTmp)).toEqual([]);
  });

  it('a second Ctrl-C forces the exit while the cleanup hangs on a stuck broker, and still leaves nothing behind', async () => {
    pane = new DemoPane();
    pane.start('--devices 1 --keep-running');
    await pane.waitFor('Ctrl-C stops it');
    // A stopped mosquitto neither acknowledges the agent's offline status nor exits on SIGTERM: the
    // orderly cleanup now takes seconds, long enough to be forced.
    const mosquitto = [...pane.seen.values()].find((p) => p.comm === 'mosquitto')!;
    process.kill(mosquitto.pid, 'SIGSTOP');

    pane.sendKeys('C-c');
    await pane.waitFor('Ctrl-C again forces');
    pane.sendKeys('C-c');
    expect(await pane.exitCode()).toBe(130);
    expect(pane.screen()).toContain('SIGINT again: forcing exit');
    expect(await pane.survivors()).toEqual([]);
    expect(readdirSync(pane.demoTmp)).toEqual([]);
  });
});
