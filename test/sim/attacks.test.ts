import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import type { ScenarioReport } from '../../sim/src/sim/scenario.js';

/**
 * The `attacks` scenario as `npm run sim` runs it (dist/sim.mjs, 20 devices): beyond passing, every
 * attack was actually mounted and refused with its own code, counted in the JSON line, and has its own
 * row in the table.
 */
const ROOT = resolve(import.meta.dirname, '../..');

const ROWS = [
  'foreign token refused: TOKEN_MISMATCH',
  'foreign-manufacturer TPM refused: EK_UNTRUSTED',
  'activation by another TPM refused: ACTIVATION_FAILED',
  'replayed token refused: TOKEN_USED',
  "re-attestation with a public EK and another TPM's AK refused: AK_MISMATCH",
  'client-id takeover refused, nobody kicked',
  'cross-device topics: nothing delivered, victim unchanged',
  'junk enrolls refused, the device not locked out',
  're-attestation flood under a public EK: the device is not locked out',
  'attackers got no certificate and consumed no token',
];

describe('attacks scenario (dist/sim.mjs, 20 devices)', () => {
  it('refuses each attack with its code while every honest device enrolls, stays online and keeps one identity', { timeout: 120_000 }, async () => {
    const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>((res) =>
      execFile(process.execPath, ['dist/sim.mjs', '--devices', '20', '--scenario', 'attacks', '--seed', '11'], { cwd: ROOT, timeout: 110_000, maxBuffer: 16 << 20 }, (e, stdout, stderr) =>
        res({ code: e ? ((e as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      ),
    );
    expect(code, `${stdout}\n${stderr}`).toBe(0);
    const report = JSON.parse(stdout.trim().split('\n').at(-1)!) as ScenarioReport;
    expect(report).toMatchObject({ scenario: 'attacks', devices: 20, succeeded: 20, lost: 0 });
    // Refused by the bridge (enrollment rejections) and by the broker (CONNACK, PUBACK 0x87).
    expect(report.failures).toMatchObject({
      TOKEN_MISMATCH: 2,
      EK_UNTRUSTED: 1,
      ACTIVATION_FAILED: 1,
      TOKEN_USED: 1,
      AK_MISMATCH: expect.any(Number),
      BAD_REQUEST: 5,
      TOKEN_UNKNOWN: expect.any(Number),
      RATE_LIMITED: expect.any(Number),
      TRANSPORT_CONNECT_REFUSED: 3,
      TRANSPORT_PUBLISH_REFUSED: 8,
    });
    // The junk flood: 25 enrolls with unknown tokens, the one flooded token cut off by its rate limit; then
    // one re-attestation with another TPM's AK and a flood of 15 more in the attackers' own (EK, AK) bucket:
    // the first 10 (its burst) refused AK_MISMATCH, the rest AK_MISMATCH or RATE_LIMITED.
    const f = report.failures;
    expect(f.TOKEN_UNKNOWN! + f.RATE_LIMITED! + f.AK_MISMATCH!).toBe(25 + 16);
    expect(f.AK_MISMATCH).toBeGreaterThanOrEqual(11);
    expect(f.RATE_LIMITED).toBeGreaterThanOrEqual(5);
    for (const row of ROWS) expect(stdout).toContain(`  ok   ${row}: `);
    expect(stdout).not.toMatch(/^  FAIL /m);
  });
});
