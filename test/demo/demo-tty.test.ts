/**
 * The shipped demo bundle on a real TTY (tmux) run to its end: the status table is live, redrawn in
 * place as the devices change state (one table on the screen and in the scrollback, never a second
 * copy), the narration of each step goes above it, the summary below it; exit 0 and nothing left.
 */
import { readdirSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { DemoPane } from './demo-pane.js';

const HEADER = /^ {2}DEVICE +STATE +SERIAL +EXPIRES \(UTC\) +SLOT +CRL +LAST EVENT$/;
const count = (screen: string, re: RegExp) => screen.split('\n').filter((l) => re.test(l)).length;
const row = (screen: string, id: string) => screen.split('\n').find((l) => l.startsWith(`  ${id} `));

describe('demo on a real TTY', () => {
  let pane: DemoPane | undefined;
  afterEach(() => {
    pane?.close();
    pane = undefined;
  });

  it('one live table, redrawn in place through every step, with the summary below it', async () => {
    pane = new DemoPane();
    pane.start('--devices 2');

    // While the revocation runs, the devices are past enrollment and rotation: still a single table.
    await pane.waitFor('[6] Revocation');
    let screen = pane.screen();
    expect(count(screen, HEADER), screen).toBe(1);
    expect(row(screen, 'demo-device-1'), screen).toMatch(/ B {4,}#\d+ /); // rotated: slot B

    expect(await pane.exitCode()).toBe(0);
    screen = pane.screen();
    expect(count(screen, HEADER), screen).toBe(1);
    const lines = screen.split('\n');
    const header = lines.findIndex((l) => HEADER.test(l));
    // Narration above the table, summary below it.
    expect(lines.findIndex((l) => l.startsWith('[7] Broker outage'))).toBeLessThan(header);
    expect(lines.findIndex((l) => l === 'Summary')).toBeGreaterThan(header);
    // The rows as the demo ended, each once: nothing of an earlier drawing is left.
    expect(count(screen, /^ {2}demo-device-1 /)).toBe(1);
    expect(count(screen, /^ {2}demo-device-2 /)).toBe(1);
    expect(row(screen, 'demo-device-1')).toMatch(/^ {2}demo-device-1 +online +[0-9a-f]{12}… +\d{4}-\d\d-\d\d \d\d:\d\dZ +B +#2 +reconnected after/);
    expect(row(screen, 'demo-device-2')).toMatch(/^ {2}demo-device-2 +revoked +[0-9a-f]{12}… .* B +#2 +revoked: cut off/);
    expect(screen).not.toMatch(/provisioned +-/); // the first drawing (before enrollment) was redrawn over
    expect(screen).toContain('Demo complete: every process stopped');
    expect(await pane.survivors()).toEqual([]);
    expect(readdirSync(pane.demoTmp)).toEqual([]);
  });
});
