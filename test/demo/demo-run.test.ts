/**
 * The shipped demo bundle (dist/demo.mjs) run to its end the way CI runs it: stdout and stderr on pipes,
 * not a terminal. From its output alone each lifecycle step is shown to have happened against the real
 * components: 5 devices enrolled, all rotated to new certificates in slot B, one revoked and cut off
 * while the other 4 advanced to the new CRL number, a broker outage every survivor noticed and
 * recovered from, a summary. It exits 0, every process it started (swtpm, mosquitto, the one it
 * restarted too) is gone by PID, and its temporary directory is removed. Also: its command line.
 */
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { expectUserError } from '../harness/cli.js';
import { comms, DemoPipe, ROOT } from './demo-pane.js';

const run = promisify(execFile);

interface Row {
  readonly id: string;
  readonly state: string;
  readonly serial: string;
  readonly slot: string;
  readonly crl: string;
  readonly event: string;
}

/** The table rows printed in `text` (snapshots: `demo-device-1   online   9285203e1be1…  2026-… 07:00Z  B  #2  …`). */
function tableRows(text: string): Row[] {
  const rows: Row[] = [];
  for (const line of text.split('\n')) {
    const m = /^ {2}(demo-device-\d+) +(\S+) +(\S+) +(\S+ \S+|-) +(\S+) +(\S+) +(.*)$/.exec(line);
    if (m) rows.push({ id: m[1]!, state: m[2]!, serial: m[3]!, slot: m[5]!, crl: m[6]!, event: m[7]! });
  }
  return rows;
}

/** The output of step `n` (from its `[n]` header to the next one, or to the summary). */
function section(out: string, n: number): string {
  const start = out.indexOf(`\n[${n}] `);
  expect(start, `step ${n} in the output`).toBeGreaterThan(-1);
  const next = out.indexOf(`\n[${n + 1}] `, start + 1);
  const end = next > -1 ? next : out.indexOf('\nSummary', start);
  return out.slice(start, end > -1 ? end : undefined);
}

const devices = (n: number) => Array.from({ length: n }, (_, i) => `demo-device-${i + 1}`);

describe('the demo, run to its end without a terminal', () => {
  let pipe: DemoPipe | undefined;
  afterEach(() => {
    pipe?.close();
    pipe = undefined;
  });

  it('shows enrollment, rotation, revocation and a broker outage for 5 devices, then leaves nothing behind', async () => {
    pipe = new DemoPipe();
    const r = await pipe.run([]);
    expect(r.code, `${r.out}\n${r.err}`).toBe(0);
    expect(r.err).not.toMatch(/^demo: /m);
    expect(r.out).not.toContain('\x1b['); // plain lines: no cursor movement, no colours

    // Enrollment: all 5 online in slot A, each with its certificate, every token used.
    const enrolled = section(r.out, 4);
    expect(enrolled).toMatch(/enrolled 5\/5 devices in \d+ ms .*; 5 one-time tokens consumed/);
    const afterEnroll = tableRows(enrolled);
    expect(afterEnroll.map((x) => [x.id, x.state, x.slot])).toEqual(devices(5).map((id) => [id, 'online', 'A']));
    expect(afterEnroll.every((x) => /^[0-9a-f]{12}…$/.test(x.serial))).toBe(true);
    // The plain change lines show each device's way there.
    for (const id of devices(5)) expect(enrolled).toMatch(new RegExp(`s ${id} state=enrolling .*\\n(.*\\n)*.*s ${id} state=online `));

    // Rotation through the operator command: every device on a new certificate, now in slot B.
    const rotated = section(r.out, 5);
    expect(rotated).toMatch(/rotate-now accepted by the bridge for 5 devices/);
    expect(rotated).toMatch(/rotated 5\/5 devices in \d+ ms: .*, 5 old certificates retired/);
    for (const id of devices(5)) expect(rotated).toMatch(new RegExp(`s ${id} state=rotating .*event="running rotate-now"`));
    const afterRotation = tableRows(rotated);
    expect(afterRotation.map((x) => [x.id, x.state, x.slot])).toEqual(devices(5).map((id) => [id, 'online', 'B']));
    for (const [i, x] of afterRotation.entries()) expect(x.serial).not.toBe(afterEnroll[i]!.serial);

    // Revocation of device 5: its agent ends revoked; the other 4 hold and report the next CRL number.
    const revoked = section(r.out, 6);
    const [, after, before] = /the others learned it: 4\/4 hold CRL #(\d+) \(was #(\d+)\)/.exec(revoked) ?? [];
    expect(Number(after)).toBeGreaterThan(Number(before));
    expect(revoked).toMatch(/demo-device-5 revoked \(keyCompromise\).*broker reloaded its CRL and ACLs/);
    expect(revoked).toMatch(/demo-device-5 cut off: its agent is revoked \d+ ms after the revoke/);
    expect(revoked).toMatch(/their retained status says so after \d+ ms/);
    const afterRevocation = tableRows(revoked);
    expect(afterRevocation.map((x) => [x.id, x.state, x.crl])).toEqual([
      ...devices(4).map((id) => [id, 'online', `#${after}`]),
      ['demo-device-5', 'revoked', `#${after}`],
    ]);
    expect(afterEnroll.every((x) => x.crl === `#${before}`)).toBe(true);

    // Broker outage: each survivor goes to connecting and comes back online on its own.
    const outage = section(r.out, 7);
    expect(outage).toMatch(/mosquitto killed \(SIGKILL\)/);
    for (const id of devices(4)) expect(outage).toMatch(new RegExp(`s ${id} state=connecting .*\\n(.*\\n)*.*s ${id} state=online .*event="reconnected after`));
    expect(outage).not.toMatch(/demo-device-5 state=(connecting|online)/);
    expect(outage).toMatch(/4\/4 agents back online by themselves \d+ ms after the restart/);
    const final = tableRows(outage);
    expect(final.map((x) => [x.id, x.state])).toEqual([...devices(4).map((id) => [id, 'online']), ['demo-device-5', 'revoked']]);

    // Summary, where the data lived, and that it is gone.
    const summary = r.out.slice(r.out.indexOf('\nSummary'));
    for (const label of ['manufactured', 'fleet started', 'provisioned', 'enrolled', 'rotated', 'revoked', 'broker outage', 'total']) {
      expect(summary).toMatch(new RegExp(`^  ${label} +\\d+\\.\\d\\d s`, 'm'));
    }
    expect(summary).toMatch(/Data \(all under .*tpm-fleet-demo-\w+\)/);
    expect(summary).toMatch(/Removed when the demo exits/);
    expect(summary).toMatch(/Demo complete: every process stopped/);

    // Nothing left: the 5 swtpm, both mosquitto processes (killed one and restarted one), by PID.
    const seen = comms(pipe.seen.values());
    expect(seen.filter((c) => c === 'swtpm').length).toBeGreaterThanOrEqual(5);
    expect(seen.filter((c) => c === 'mosquitto').length).toBeGreaterThanOrEqual(2);
    expect(await pipe.survivors()).toEqual([]);
    expect(readdirSync(pipe.demoTmp)).toEqual([]);
  });

  it('--help, --version, and usage errors (exit 2, one coded line, nothing started)', async () => {
    const demo = (...args: string[]) =>
      run(process.execPath, ['dist/demo.mjs', ...args], { cwd: ROOT }).then(
        (x) => ({ code: 0, out: x.stdout, err: x.stderr }),
        (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout, err: e.stderr }),
      );
    const [help, version, ...refused] = await Promise.all([
      demo('--help'),
      demo('--version'),
      demo('--devices', '0'),
      demo('--devices', '11'),
      demo('--devices', '2x'),
      demo('--bogus'),
    ]);
    expect(help.code).toBe(0);
    expect(help.out).toMatch(/^usage: demo \[--devices N\] \[--keep-running\]/);
    expect(help.out).toContain('default 5');
    expect(version.code).toBe(0);
    expect(version.out.trim()).toMatch(/^\d+\.\d+\.\d+\+\w+$/);
    for (const r of refused) expectUserError(r, 'demo', 'DEMO_USAGE');
  });
});
