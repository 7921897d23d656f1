/**
 * The agent under a service manager, with real processes: the built agent CLI (dist/agent.mjs) runs
 * against a real fleet (swtpm, mosquitto, the bridge) with NOTIFY_SOCKET pointing at a python3 AF_UNIX
 * datagram receiver that stands in for systemd's notification socket (test/harness/notify-receiver.ts).
 * systemd itself does not run on these machines; the unit is checked with systemd-analyze
 * (test/deploy/package.test.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, startFleetFixture, type FleetFixture } from '../agent/fleet-fixture.js';
import { freePort } from '../harness/ports.js';
import { startNotifyReceiver, type NotifyMessage } from '../harness/notify-receiver.js';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
const AGENT = join(ROOT, 'dist/agent.mjs');
/** WatchdogSec=2s: a ping every second; start-up extended by 3 s at a time. */
const WATCHDOG_USEC = '2000000';
const PERIOD_MS = 1000;

const isWatchdog = (m: NotifyMessage) => m.text === 'WATCHDOG=1';
const field = (m: NotifyMessage, name: string) => m.text.split('\n').find((l) => l.startsWith(`${name}=`))?.slice(name.length + 1);

type Device = Awaited<ReturnType<FleetFixture['device']>>;

interface RunningAgent {
  readonly child: ChildProcess;
  output(): string;
  /** SIGTERM; resolves the exit code. */
  stop(): Promise<number | null>;
}

/** The agent CLI as the unit runs it, with the service manager's variables in its environment. */
async function runAgent(fx: FleetFixture, device: string | Device, env: Record<string, string>): Promise<RunningAgent> {
  const d = typeof device === 'string' ? await fx.device(device) : device;
  const deviceId = d.bootstrap.deviceId;
  const bootstrap = join(fx.dir, `${deviceId}-bootstrap.json`);
  writeFileSync(bootstrap, JSON.stringify(d.bootstrap), { mode: 0o600 });
  const config = join(fx.dir, `${deviceId}-agent.json`);
  writeFileSync(config, JSON.stringify({ v: 1, backoff: { baseMs: 50, capMs: 2000 } }));
  const base = { ...process.env };
  for (const k of ['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID']) delete base[k];
  const child = spawn(process.execPath, [AGENT, 'run', '--bootstrap', bootstrap, '--data', d.dataDir, '--config', config], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...base, ...env },
  });
  let out = '';
  child.stdout!.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (out += b.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    child,
    output: () => out,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/**
 * A TCP port that refuses connections (no network yet) until open() forwards it to `target` (the
 * fleet's enrollment listener; TLS passes through unchanged).
 */
async function lateNetwork(target: string): Promise<{ url: string; open(): Promise<void>; close(): Promise<void> }> {
  const to = new URL(target);
  const port = await freePort();
  const server = createServer((client) => {
    const upstream = connect(Number(to.port), to.hostname);
    client.pipe(upstream).pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  const sockets = new Set<Socket>();
  server.on('connection', (c) => (sockets.add(c), c.once('close', () => sockets.delete(c))));
  const url = new URL(target);
  url.port = String(port);
  return {
    url: url.toString().replace(/\/$/, ''),
    open: () => new Promise<void>((ok) => server.listen(port, to.hostname, ok)),
    close: () => {
      for (const c of sockets) c.destroy();
      return new Promise<void>((ok) => (server.listening ? server.close(() => ok()) : ok()));
    },
  };
}

describe('the agent CLI notifies the service manager (NOTIFY_SOCKET, WATCHDOG_USEC)', () => {
  let fx: FleetFixture;
  const cleanup: (() => Promise<unknown>)[] = [];
  beforeAll(async () => {
    fx = await startFleetFixture();
  });
  afterAll(async () => {
    for (const c of cleanup.reverse()) await c().catch(() => undefined);
    await fx?.stop();
  });

  it('extends its start-up until online, says READY=1, pings the watchdog while live, none while hung (SIGSTOP), again after SIGCONT, and STOPPING=1 on SIGTERM', async () => {
    const receiver = await startNotifyReceiver(join(fx.dir, 'notify.sock'));
    cleanup.push(() => receiver.stop());
    // The device boots without network: its enrollment listener is unreachable for the first 4 s.
    const d = await fx.device('sdn-path');
    const network = await lateNetwork(d.bootstrap.enrollUrl);
    cleanup.push(() => network.close());
    const agent = await runAgent(fx, { ...d, bootstrap: { ...d.bootstrap, enrollUrl: network.url } }, { NOTIFY_SOCKET: receiver.address, WATCHDOG_USEC });
    cleanup.push(() => agent.stop());
    await new Promise((r) => setTimeout(r, 4 * PERIOD_MS));
    expect(receiver.messages.some((m) => m.text.startsWith('READY=1'))).toBe(false);
    await network.open();

    // Start-up: extensions with a status, then READY=1 with the online status once it is online.
    const ready = await receiver.next((m) => m.text.startsWith('READY=1'), { timeoutMs: 40_000 }).catch((e: Error) => {
      throw new Error(`${e.message}\nagent output:\n${agent.output()}`);
    });
    expect(field(ready, 'STATUS')).toBe('online');
    expect(fx.fleet.inventory.getDevice('sdn-path')?.certSerial).toBeDefined();
    await eventually(() => agent.output().includes('"msg":"online"'), 5_000, 'the online log line');
    const before = receiver.messages.slice(0, ready.index);
    expect(before[0]?.text).toBe('EXTEND_TIMEOUT_USEC=3000000\nSTATUS=starting: opening the store and the TPM');
    expect(before.every((m) => field(m, 'STATUS') !== undefined)).toBe(true);
    // While it waited for the network: an extension (3 s) every second, saying what it is doing.
    const extensions = before.filter((m) => m.text.startsWith('EXTEND_TIMEOUT_USEC=3000000\n'));
    expect(extensions.length).toBeGreaterThanOrEqual(3);
    expect(extensions.slice(1).map((m) => field(m, 'STATUS'))).toContain('enrolling with the fleet');
    for (let i = 1; i < extensions.length; i++) expect(extensions[i]!.at - extensions[i - 1]!.at).toBeLessThan(2 * PERIOD_MS);
    // No watchdog ping before start-up is over (systemd arms the watchdog at READY=1).
    expect(before.some(isWatchdog)).toBe(false);
    expect(receiver.messages.filter((m) => m.text.startsWith('READY=1'))).toHaveLength(1);

    // Live: a ping every half interval.
    await new Promise((r) => setTimeout(r, 3.5 * PERIOD_MS));
    const pings = receiver.messages.slice(ready.index).filter(isWatchdog);
    expect(pings.length).toBeGreaterThanOrEqual(3);
    for (let i = 1; i < pings.length; i++) expect(pings[i]!.at - pings[i - 1]!.at).toBeLessThan(2 * PERIOD_MS);

    // Hung (the whole process stopped): no ping for longer than the watchdog interval.
    agent.child.kill('SIGSTOP');
    const stoppedAt = Date.now();
    await new Promise((r) => setTimeout(r, 3 * PERIOD_MS));
    const contAt = Date.now();
    const during = receiver.messages.filter((m) => m.at > stoppedAt + 100 && m.at <= contAt);
    expect(during).toEqual([]);
    agent.child.kill('SIGCONT');
    const resumed = await receiver.next((m) => isWatchdog(m) && m.at > contAt, { timeoutMs: 3 * PERIOD_MS });
    expect(resumed.at - contAt).toBeLessThan(2 * PERIOD_MS);
    await receiver.next((m) => isWatchdog(m) && m.at > resumed.at, { timeoutMs: 3 * PERIOD_MS });

    // SIGTERM: STOPPING=1, then exit 0; nothing after it.
    const from = receiver.messages.length;
    expect(await agent.stop()).toBe(0);
    const stopping = await receiver.next((m) => m.text.startsWith('STOPPING=1'), { from, timeoutMs: 1000 });
    expect(field(stopping, 'STATUS')).toBe('stopping');
    expect(receiver.messages.slice(stopping.index + 1)).toEqual([]);
  }, 90_000);

  it("works the same with an abstract-namespace socket ('@name')", async () => {
    const receiver = await startNotifyReceiver(`@tpm-fleet-agent-notify-${process.pid}`);
    cleanup.push(() => receiver.stop());
    const agent = await runAgent(fx, 'sdn-abstract', { NOTIFY_SOCKET: receiver.address, WATCHDOG_USEC });
    cleanup.push(() => agent.stop());
    const ready = await receiver.next((m) => m.text.startsWith('READY=1'), { timeoutMs: 40_000 }).catch((e: Error) => {
      throw new Error(`${e.message}\nagent output:\n${agent.output()}`);
    });
    expect(receiver.messages[0]?.text).toMatch(/^EXTEND_TIMEOUT_USEC=3000000\nSTATUS=/);
    expect(field(ready, 'STATUS')).toBe('online');
    await receiver.next((m) => isWatchdog(m), { from: ready.index, timeoutMs: 3 * PERIOD_MS });
    expect(await agent.stop()).toBe(0);
    await receiver.next((m) => m.text.startsWith('STOPPING=1'), { timeoutMs: 1000 });
    expect(agent.output()).not.toMatch(/cannot notify the service manager/);
  }, 90_000);

  it('without NOTIFY_SOCKET (run by hand) runs as before: WATCHDOG_USEC alone changes nothing, nothing is logged about it', async () => {
    const agent = await runAgent(fx, 'sdn-none', { WATCHDOG_USEC });
    cleanup.push(() => agent.stop());
    await eventually(() => agent.output().includes('"msg":"online"'), 40_000, 'the online log line');
    await new Promise((r) => setTimeout(r, 2 * PERIOD_MS));
    expect(await agent.stop()).toBe(0);
    expect(agent.output()).not.toMatch(/notify the service manager|AGENT_WATCHDOG_OFF|AGENT_STALLED/);
  }, 90_000);
});

describe('Agent.liveness (the supervisor signal the watchdog uses)', () => {
  let fx: FleetFixture;
  beforeAll(async () => {
    fx = await startFleetFixture();
  });
  afterAll(async () => {
    await fx?.stop();
  });

  it('moves while the supervisor works, and says waiting while it idles until its next tick', async () => {
    const d = await fx.device('live-1');
    const agent = fx.agent(d);
    expect(agent.liveness()).toEqual({ moves: 0, waiting: false });
    await agent.start();
    const first = agent.liveness().moves;
    expect(first).toBeGreaterThan(0);
    // Online and idle: each tick (200 ms in tests) is a step and a wait.
    await eventually(() => agent.liveness().moves >= first + 6, 5_000, 'more supervisor moves');
    await eventually(() => agent.liveness().waiting, 5_000, 'a timed wait');
    await agent.stop();
    const after = agent.liveness();
    expect(after.waiting).toBe(false);
  }, 60_000);
});
