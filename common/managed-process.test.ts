import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NativeTpm } from '../native/lib/native-tpm.js';
import { startTpm, type TestTpm } from '../test/harness/index.js';
import { ManagedProcess, freePorts } from './managed-process.js';

/** fd → what it points to, for a process. */
function fds(pid: number | 'self'): Map<number, string> {
  const out = new Map<number, string>();
  for (const n of readdirSync(`/proc/${pid}/fd`)) {
    try {
      out.set(Number(n), readlinkSync(`/proc/${pid}/fd/${n}`));
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

/**
 * Descriptors must not leak into the children we start: libtss2 (its swtpm TCTI connects for every
 * command) and LevelDB open theirs without close-on-exec. A broker or swtpm started while a TPM command
 * is in flight would inherit that connection and keep it open after we close ours; swtpm serves one
 * connection at a time, so every later command of that TPM waits forever (seen as agents hanging in a
 * TPM call after a broker restart in the same process). LevelDB's files stand in for the socket here:
 * they are never close-on-exec, so the check does not depend on catching a command in flight.
 */
describe('no descriptor leaks into child processes', () => {
  let dir: string;
  let tpm: TestTpm;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fd-leak-'));
    tpm = await startTpm();
  });
  afterAll(async () => {
    await tpm?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a managed child inherits neither LevelDB files nor a TPM socket; the next TPM context after closing one answers', async () => {
    const db = new Level(join(dir, 'db'));
    await db.open();
    const first = await NativeTpm.open(tpm.tcti);
    const port = await freePorts(1);
    const child = await ManagedProcess.start({
      name: 'listener',
      command: 'python3',
      args: ['-c', `import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',${port}))\ns.listen()\ntime.sleep(60)`],
      ports: [port],
    });
    try {
      const leaked = [...fds(child.pid!).entries()].filter(([fd, target]) => fd > 2 && (target.includes(join(dir, 'db')) || target.startsWith('socket:')));
      // The child's own listening socket is the only socket it may hold.
      expect(leaked.filter(([, t]) => !t.startsWith('socket:'))).toEqual([]);
      expect(leaked.filter(([, t]) => t.startsWith('socket:')).length).toBeLessThanOrEqual(1);
      // Closing our context really ends the swtpm connection: the next one is served.
      await first.close();
      const second = await NativeTpm.open(tpm.tcti);
      try {
        const r = await Promise.race([second.getRandom(8), new Promise<never>((_, rej) => setTimeout(() => rej(new Error('swtpm never answered the second connection')), 5_000))]);
        expect(r.length).toBe(8);
      } finally {
        await second.close();
      }
    } finally {
      await child.stop();
      await db.close();
    }
  });
});
