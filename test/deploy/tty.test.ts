import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { startTpm, type TestTpm } from '../harness/index.js';

/**
 * The CLIs on a real terminal (tmux): the station's progress bar redraws one line in place (carriage
 * return + erase line, seen in the raw bytes tmux records) and ends full; a program's logs are
 * pino-pretty lines on the terminal and JSON lines when stderr is a file. Piped (not a TTY), the
 * station prints one plain line per device instead of a bar.
 */
const ROOT = resolve(import.meta.dirname, '../..');

class Terminal {
  readonly #sock: string;
  readonly raw: string;
  constructor(readonly dir: string) {
    this.#sock = join(dir, 'tmux.sock');
    this.raw = join(dir, 'raw.out');
  }

  /** Runs `script` in a fresh pane (bash, 200x50), recording every byte the pane receives. */
  start(script: string): void {
    const file = join(this.dir, 'script.sh');
    writeFileSync(file, `${script}\necho "__DONE__ $?"\n`);
    this.#tmux('-f', '/dev/null', 'new-session', '-d', '-s', 'tty', '-x', '200', '-y', '50', '-c', ROOT, 'bash', '--norc', '--noprofile');
    this.#tmux('pipe-pane', '-t', 'tty', '-o', `cat >> ${this.raw}`);
    this.#tmux('send-keys', '-t', 'tty', `bash ${file}`, 'Enter');
  }

  screen(): string {
    return this.#tmux('capture-pane', '-p', '-J', '-S', '-200', '-t', 'tty');
  }

  async done(timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = this.screen();
      const m = /__DONE__ (\d+)/.exec(s);
      if (m) return s;
      if (Date.now() > deadline) throw new Error(`the terminal did not finish:\n${s}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  close(): void {
    try {
      this.#tmux('kill-server');
    } catch {
      // already gone
    }
  }

  #tmux(...args: string[]): string {
    return execFileSync('tmux', ['-S', this.#sock, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  }
}

describe('CLIs on a real TTY (tmux)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tty-'));
  const tpms: TestTpm[] = [];
  let term: Terminal;

  beforeAll(async () => {
    for (let i = 0; i < 3; i++) tpms.push(await startTpm());
    term = new Terminal(dir);
  });
  afterAll(async () => {
    term?.close();
    await Promise.all(tpms.map((t) => t.stop()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('station provision draws a progress bar in place; bridge logs are pretty on the terminal and JSON in a file', { timeout: 90_000 }, async () => {
    const root = join(dir, 'vendor-root.pem');
    const inter = join(dir, 'vendor-inter.pem');
    writeFileSync(root, tpms[0]!.manufacturerRootPem);
    writeFileSync(inter, tpms[0]!.manufacturerIntermediatePem);
    const manifest = join(dir, 'line.jsonl');
    writeFileSync(manifest, tpms.map((t, i) => JSON.stringify({ deviceId: `tty-${i}`, tcti: t.tcti, metadata: { model: 'm1' } })).join('\n') + '\n');
    const station = (out: string, exp: string) =>
      `node dist/station.mjs provision --manifest ${manifest} --out ${out} --roots ${root} --intermediates ${inter} ` +
      `--enroll-url mqtts://localhost:8883 --device-url mqtts://localhost:8884 --trust-bundle ${join(dir, 'ca/root.pem')} --export ${exp}`;
    term.start(
      [
        `node dist/bridge.mjs ca init --dir ${join(dir, 'ca')} --trust-domain tty.example`,
        `node dist/bridge.mjs ca init --dir ${join(dir, 'ca2')} --trust-domain tty.example 2> ${join(dir, 'ca2.log')}`,
        station(join(dir, 'out'), join(dir, 'reg.jsonl')),
        // The same batch piped: not a terminal.
        `${station(join(dir, 'out-piped'), join(dir, 'reg-piped.jsonl'))} 2>&1 | cat`,
      ].join(' && '),
    );
    const screen = await term.done(80_000);
    expect(screen, screen).toMatch(/__DONE__ 0/);

    // Pretty log line on the terminal (level name, message, fields on their own lines), no JSON.
    expect(screen).toMatch(/INFO.*CA created; keep root-key\.pem offline/);
    expect(screen).not.toMatch(/"msg":"CA created/);
    // The same command with stderr in a file: JSON lines.
    const fileLog = JSON.parse(readFileSync(join(dir, 'ca2.log'), 'utf8').trim()) as { msg: string; program: string };
    expect(fileLog).toMatchObject({ msg: 'CA created; keep root-key.pem offline', program: 'broker-bridge' });

    // The bar: on screen it ends full, once; in the raw bytes it was redrawn in place (\r ESC[K).
    expect(screen).toMatch(/\[#{30}\] 3\/3/);
    const raw = readFileSync(term.raw, 'latin1');
    const redraws = raw.split('\r\x1b[K[').length - 1;
    expect(redraws).toBeGreaterThanOrEqual(4);
    expect(raw).toMatch(/\[#{10}\.{20}\] 1\/3/);
    // Piped: one plain line per device, no bar.
    for (let i = 0; i < 3; i++) expect(screen).toMatch(new RegExp(`\\[station\\] \\d/3 tty-${i} provisioned`));
    expect(existsSync(join(dir, 'out/devices/tty-2.json'))).toBe(true);
  });
});
