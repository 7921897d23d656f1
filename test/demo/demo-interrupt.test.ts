/**
 * The shipped demo bundle on a real TTY (tmux), interrupted: every process it started (swtpm,
 * swtpm_setup, mosquitto) is gone afterwards, by PID, and so is its work directory (CA keys, tokens,
 * TPM state). The demo runs with TMPDIR pointing at a directory of this test's own, which must end up
 * empty. The processes are every descendant of the tmux pane seen while the demo ran (demo-pane.ts).
 */
import { readdirSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { alive, DemoPane } from './demo-pane.js';

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
    // The live one: the demo's outage step killed and restarted mosquitto before this point.
    const mosquitto = [...pane.seen.values()].find((p) => p.comm === 'mosquitto' && alive(p))!;
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
