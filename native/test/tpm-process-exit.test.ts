import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTpm, type TestTpm } from '../../test/harness/index.js';
import { addonCandidates } from '../lib/binding.js';

/**
 * A process that exits while a TPM context is open (idle, or with work queued) must neither hang nor
 * crash: the addon's env cleanup hook finalizes the context.
 */
describe('process exit with an open TPM context', () => {
  let sw: TestTpm;
  let dir: string;
  beforeAll(async () => {
    sw = await startTpm();
    dir = mkdtempSync(join(tmpdir(), 'tpm-exit-'));
  });
  afterAll(async () => {
    await sw?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const runChild = (body: string) => {
    const script = join(dir, `child-${Math.random().toString(36).slice(2)}.cjs`);
    writeFileSync(
      script,
      `const addon = require(${JSON.stringify(addonCandidates()[0])});\n(async () => {\n const ctx = await addon.open(${JSON.stringify(sw.tcti)});\n${body}\n})();\n`,
    );
    return new Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>((resolve) => {
      const t0 = Date.now();
      const child = spawn(process.execPath, [script], { stdio: 'inherit' });
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, ms: Date.now() - t0 });
      });
    });
  };

  it('exits normally when the event loop empties with an idle open context', async () => {
    const r = await runChild(`await ctx.getRandom(16);`);
    expect(r).toMatchObject({ code: 0, signal: null });
  });

  it('exits cleanly on process.exit with 200 operations queued', async () => {
    const r = await runChild(`for (let i = 0; i < 200; i++) ctx.getRandom(32).catch(() => {});\n process.exit(3);`);
    expect(r).toMatchObject({ code: 3, signal: null });
  });
});
