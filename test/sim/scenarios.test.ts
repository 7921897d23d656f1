import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { SCENARIOS } from '../../sim/src/sim/scenarios/index.js';
import type { ScenarioReport } from '../../sim/src/sim/scenario.js';

/**
 * Every simulator scenario at 20 devices, as `npm run sim` runs it (the built dist/sim.mjs): a real
 * fleet, 20 swtpm devices and their agents in worker processes. The run's own invariants decide its
 * exit code; this checks that, and the JSON line every run ends with.
 */
const ROOT = resolve(import.meta.dirname, '../..');
const DEVICES = 20;

function sim(args: string[], timeoutMs = 240_000): Promise<{ code: number; out: string; err: string }> {
  return new Promise((res) => {
    execFile(process.execPath, ['dist/sim.mjs', ...args], { cwd: ROOT, timeout: timeoutMs, maxBuffer: 16 << 20 }, (e, out, err) =>
      res({ code: e ? ((e as { code?: number }).code ?? 1) : 0, out, err }),
    );
  });
}

describe('fleet simulator scenarios (dist/sim.mjs, 20 devices each)', () => {
  it.each([...SCENARIOS.keys()])('%s: every invariant holds, nothing lost', { timeout: 300_000 }, async (name) => {
    const r = await sim(['--devices', String(DEVICES), '--scenario', name, '--seed', '7']);
    expect(r.code, `${r.out}\n${r.err}`).toBe(0);
    const report = JSON.parse(r.out.trim().split('\n').at(-1)!) as ScenarioReport;
    expect(report).toMatchObject({ scenario: name, devices: DEVICES, succeeded: DEVICES, lost: 0 });
    expect(report.p50Ms).toBeGreaterThan(0);
    expect(report.p99Ms).toBeGreaterThanOrEqual(report.p50Ms);
    expect(r.out).not.toMatch(/^  FAIL /m);
    expect(r.out).toMatch(/invariants\n(  ok .*\n)+/);
  });

  it('--tpm-latency-ms: at hardware speed every invariant still holds, and each rotation takes at least its TPM commands', { timeout: 180_000 }, async () => {
    const r = await sim(['--devices', '5', '--scenario', 'rotation-campaign', '--tpm-latency-ms', '200', '--seed', '7']);
    expect(r.code, `${r.out}\n${r.err}`).toBe(0);
    const report = JSON.parse(r.out.trim().split('\n').at(-1)!) as ScenarioReport;
    expect(report).toMatchObject({ succeeded: 5, lost: 0 });
    // A rotation runs at least five TPM commands (create, load, certify, sign the CSR, the handshake
    // signature), each held 200 ms by the proxy.
    expect(report.p50Ms).toBeGreaterThanOrEqual(5 * 200);
    expect(r.err).toMatch(/every TPM command takes 200 ms more/);
  });

  it('usage errors: one coded line, exit 2', async () => {
    for (const args of [[], ['--devices', '0', '--scenario', 'enroll-storm'], ['--devices', '3'], ['--devices', '3', '--scenario', 'nope'], ['--devices', '3', '--scenario', 'enroll-storm', '--bogus'], ['--devices', '3', '--scenario', 'enroll-storm', '--tpm-latency-ms', '-5']]) {
      const r = await sim(args, 30_000);
      expect(r.code, JSON.stringify(args)).toBe(2);
      expect(r.err.split('\n')[0]).toMatch(/^sim: SIM_USAGE: \S/);
      expect(r.out).toBe('');
    }
  });
});
