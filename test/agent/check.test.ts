import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Level } from 'level';
import type { Clock } from '../../common/clock.js';
import type { Agent } from '../../agent/src/agent.js';
import { runCheck } from '../../agent/src/check/check-cli.js';
import type { CheckResult } from '../../agent/src/check/check-result.js';
import { expectUserError, runProgram } from '../harness/cli.js';
import { eventually, startFleetFixture, type FleetFixture } from './fleet-fixture.js';
import type { TestTpm } from '../harness/index.js';

interface CheckJson {
  readonly result: 'ok' | 'warn' | 'fail';
  readonly agentRunning: boolean;
  readonly checks: readonly CheckResult[];
}

const NAMES = ['tpm', 'identity-key', 'certificate', 'clock', 'crl', 'enroll-listener', 'device-listener'];
const DAY = 86_400_000;

/**
 * `agent check` against a real fleet (mosquitto with the generated config, bridge with its time
 * service) and a device enrolled on its own swtpm: healthy with the agent stopped and running, then
 * each broken condition failing its own check with its code. The fleet's clock is injected (an offset
 * on the system clock) so the device can be made to disagree with it.
 */
describe('agent check', () => {
  let fx: FleetFixture;
  let fleetOffsetMs = 0;
  const fleetClock: Clock = { now: () => Date.now() + fleetOffsetMs };
  let tpm: TestTpm;
  let dataDir: string;
  let agent: Agent;
  let boot: string;
  let cfg: string;

  const cli = (args: string[] = [], config = cfg) => runProgram('agent', ['check', '--bootstrap', boot, '--data', dataDir, '--config', config, ...args]);
  const json = async (args: string[] = []) => {
    const r = await cli(['--json', ...args]);
    expect(r.err).toBe('');
    return { code: r.code, doc: JSON.parse(r.out) as CheckJson };
  };
  const byName = (doc: { checks: readonly CheckResult[] }, name: string) => doc.checks.find((c) => c.name === name)!;
  /**
   * The check in this process with its clock (injected) `shiftMs` ahead, and the fleet's clock moved
   * as far, so device and fleet agree on a later time.
   */
  const later = async (shiftMs: number, config: object) => {
    const file = join(fx.dir, `agent-${shiftMs}.json`);
    writeFileSync(file, JSON.stringify(config));
    const out: string[] = [];
    fleetOffsetMs = shiftMs;
    try {
      const code = await runCheck(['--bootstrap', boot, '--data', dataDir, '--config', file, '--json'], {
        out: (l) => out.push(l),
        err: (l) => out.push(l),
        clock: { now: () => Date.now() + shiftMs },
        defaultConfig: '/nonexistent',
        timeoutMs: 5_000,
      });
      return { code, doc: JSON.parse(out.join('\n')) as CheckJson };
    } finally {
      fleetOffsetMs = 0;
    }
  };

  beforeAll(async () => {
    fx = await startFleetFixture({ clock: fleetClock });
    const d = await fx.device('check-dev-1');
    tpm = d.tpm;
    dataDir = d.dataDir;
    boot = join(fx.dir, 'bootstrap.json');
    writeFileSync(boot, JSON.stringify(d.bootstrap), { mode: 0o600 });
    cfg = join(fx.dir, 'agent.json');
    writeFileSync(cfg, JSON.stringify({ v: 1 }));
    agent = fx.agent(d);
    await agent.start();
    // Online, and holding the fleet CRL (sent retained on its device connection).
    await eventually(() => agent.status().crl, 10_000, 'the CRL');
  });
  afterAll(async () => {
    await fx?.stop();
  });

  it('passes every check while the agent runs, without touching its session', async () => {
    const handshakes = agent.status().tlsHandshakes;
    const { code, doc } = await json();
    expect(doc.checks.map((c) => c.name)).toEqual(NAMES);
    expect(doc.checks.filter((c) => c.result !== 'ok'), JSON.stringify(doc, null, 1)).toEqual([]);
    expect(code).toBe(0);
    expect(doc).toMatchObject({ result: 'ok', agentRunning: true });
    // The running agent kept its one session: the check did not open a second one with its identity.
    expect(agent.status().online).toBe(true);
    expect(agent.status().tlsHandshakes).toBe(handshakes);
    expect(byName(doc, 'clock').detail).toMatch(/agent is running/);
    expect(byName(doc, 'certificate').detail).toContain(agent.status().certSerial);
  });

  it('follows a rotation of the running agent (its snapshot names the new certificate)', async () => {
    const before = agent.status().certSerial!;
    agent.rotateNow();
    await eventually(() => agent.status().rotations === 1 && agent.state === 'online', 15_000, 'the rotation');
    const after = agent.status().certSerial!;
    expect(after).not.toBe(before);
    const { code, doc } = await json();
    expect(code, JSON.stringify(doc, null, 1)).toBe(0);
    expect(byName(doc, 'identity-key')).toMatchObject({ result: 'ok', detail: expect.stringContaining(after) });
    expect(byName(doc, 'certificate').detail).toContain(after);
  });

  it('passes every check with the agent stopped: one line per check, and the same in --json', async () => {
    await agent.stop();
    const r = await cli();
    expect(r.code, r.out).toBe(0);
    const lines = r.out.trim().split('\n');
    expect(lines).toHaveLength(NAMES.length);
    lines.forEach((l, i) => expect(l).toMatch(new RegExp(`^ok {4}${NAMES[i]} +\\S`)));
    expect(r.out).toMatch(/mutual TLS as check-dev-1 with the TPM key/);
    expect(r.out).toMatch(/device clock within \d+ ms of the fleet/);

    const { code, doc } = await json();
    expect(code).toBe(0);
    expect(doc.result).toBe('ok');
    expect(doc.agentRunning).toBe(false);
    for (const c of doc.checks) {
      expect(Object.keys(c).sort()).toEqual(['code', 'detail', 'name', 'result']);
      expect(c).toMatchObject({ result: 'ok', code: 'OK' });
      expect(c.detail.length).toBeGreaterThan(0);
    }
  });

  it('clock skew: warns above 30 s and fails above 5 min against the fleet clock', async () => {
    try {
      fleetOffsetMs = 10 * 60_000;
      const far = await json();
      expect(far.code).toBe(1);
      expect(byName(far.doc, 'clock')).toMatchObject({ result: 'fail', code: 'CHECK_CLOCK_SKEW' });
      expect(byName(far.doc, 'clock').detail).toMatch(/behind the fleet/);
      expect(far.doc.checks.filter((c) => c.result !== 'ok').map((c) => c.name)).toEqual(['clock']);
      fleetOffsetMs = -60_000;
      const near = await json();
      expect(near.code).toBe(0);
      expect(byName(near.doc, 'clock')).toMatchObject({ result: 'warn', code: 'CHECK_CLOCK_SKEW' });
      expect(near.doc.result).toBe('warn');
    } finally {
      fleetOffsetMs = 0;
    }
  });

  it('certificate expired: fails with CHECK_CERT_EXPIRED (device clock past notAfter)', async () => {
    // 31 days on, the 30-day certificate has expired; a CRL grace of a year keeps the CRL from failing
    // too (it is past its nextUpdate: a warning).
    const { code, doc } = await later(31 * DAY, { v: 1, revocation: { graceSec: 366 * 86_400 } });
    expect(code).toBe(1);
    expect(byName(doc, 'certificate')).toMatchObject({ result: 'fail', code: 'CHECK_CERT_EXPIRED' });
    expect(doc.checks.filter((c) => c.result === 'fail').map((c) => c.name)).toEqual(['certificate']);
    expect(byName(doc, 'crl')).toMatchObject({ result: 'warn', code: 'CHECK_CRL_OVERDUE' });
  });

  it('certificate inside the renewal window: warns with CHECK_CERT_RENEWAL_DUE', async () => {
    const { code, doc } = await later(25 * DAY, { v: 1, revocation: { graceSec: 366 * 86_400 } });
    expect(byName(doc, 'certificate')).toMatchObject({ result: 'warn', code: 'CHECK_CERT_RENEWAL_DUE' });
    expect(doc.checks.filter((c) => c.result === 'fail')).toEqual([]);
    expect(code).toBe(0);
  });

  it('stale CRL: fails with CHECK_CRL_STALE once past nextUpdate plus the grace', async () => {
    // The fleet's CRL says nextUpdate = +24 h; with no grace it is stale a day and an hour on.
    const { code, doc } = await later(DAY + 3_600_000, { v: 1, revocation: { graceSec: 0 } });
    expect(code).toBe(1);
    expect(byName(doc, 'crl')).toMatchObject({ result: 'fail', code: 'CHECK_CRL_STALE' });
    expect(doc.checks.filter((c) => c.result !== 'ok').map((c) => c.name)).toEqual(['crl']);
  });

  it('key does not match the certificate: fails with CHECK_KEY_MISMATCH', async () => {
    const db = new Level<string, unknown>(join(dataDir, 'state'), { valueEncoding: 'json' });
    const active = (await db.get('active')) as string;
    const slot = (await db.get(`slot:${active}`)) as { key: { private: string; public: string } };
    const ak = (await db.get('ak')) as { blobs: { public: string } };
    // Another key of this TPM (the AK) in place of the identity key's public area.
    await db.put(`slot:${active}`, { ...slot, key: { ...slot.key, public: ak.blobs.public } });
    await db.close();
    try {
      const { code, doc } = await json();
      expect(code).toBe(1);
      expect(byName(doc, 'identity-key')).toMatchObject({ result: 'fail', code: 'CHECK_KEY_MISMATCH' });
      // Nothing is tried with a key that is not the certificate's; the listener is still checked.
      expect(byName(doc, 'device-listener').result).toBe('ok');
      expect(byName(doc, 'clock')).toMatchObject({ result: 'warn', code: 'CHECK_CLOCK_NOT_MEASURED' });
    } finally {
      const restore = new Level<string, unknown>(join(dataDir, 'state'), { valueEncoding: 'json' });
      await restore.put(`slot:${active}`, slot);
      await restore.close();
    }
  });

  it('broker down: both listeners fail with CHECK_LISTENER_DOWN', async () => {
    await fx.fleet.stopBroker();
    try {
      const { code, doc } = await json();
      expect(code).toBe(1);
      expect(byName(doc, 'enroll-listener')).toMatchObject({ result: 'fail', code: 'CHECK_LISTENER_DOWN' });
      expect(byName(doc, 'device-listener')).toMatchObject({ result: 'fail', code: 'CHECK_LISTENER_DOWN' });
      expect(byName(doc, 'tpm').result).toBe('ok');
    } finally {
      await fx.fleet.startBroker();
    }
  });

  it('a device that has not enrolled: CHECK_NO_IDENTITY, and nothing is created in its data directory', async () => {
    const fresh = await fx.provision('check-dev-2', tpm);
    const freshBoot = join(fx.dir, 'bootstrap-2.json');
    writeFileSync(freshBoot, JSON.stringify(fresh), { mode: 0o600 });
    const freshData = join(fx.dir, 'devices', 'check-dev-2');
    const r = await runProgram('agent', ['check', '--bootstrap', freshBoot, '--data', freshData, '--config', cfg, '--json']);
    expect(r.code).toBe(1);
    const doc = JSON.parse(r.out) as CheckJson;
    expect(byName(doc, 'identity-key')).toMatchObject({ result: 'fail', code: 'CHECK_NO_IDENTITY' });
    expect(byName(doc, 'certificate')).toMatchObject({ result: 'fail', code: 'CHECK_NO_IDENTITY' });
    expect(byName(doc, 'crl')).toMatchObject({ result: 'warn', code: 'CHECK_CRL_MISSING' });
    expect(byName(doc, 'tpm').result).toBe('ok');
    expect(byName(doc, 'enroll-listener').result).toBe('ok');
    expect(existsSync(freshData)).toBe(false);
  });

  it('TPM unreachable: fails with CHECK_TPM_UNREACHABLE', async () => {
    await tpm.stop();
    const { code, doc } = await json();
    expect(code).toBe(1);
    expect(byName(doc, 'tpm')).toMatchObject({ result: 'fail', code: 'CHECK_TPM_UNREACHABLE' });
    // The stored identity is still judged; the device session needs the TPM and is not tried.
    expect(byName(doc, 'identity-key').result).toBe('ok');
    expect(byName(doc, 'device-listener').result).toBe('ok');
  });

  it('--help, usage errors and broken configuration: one coded line, exit 2, no stack trace', async () => {
    const help = await runProgram('agent', ['check', '--help']);
    expect(help.code).toBe(0);
    expect(help.out).toMatch(/^usage: agent check --bootstrap FILE --data DIR/);
    expect(help.out).toMatch(/Exit codes:/);
    expectUserError(await runProgram('agent', ['check', '--bogus']), 'agent', 'AGENT_USAGE');
    expectUserError(await runProgram('agent', ['check', '--data', dataDir]), 'agent', 'AGENT_USAGE');
    expectUserError(await runProgram('agent', ['check', '--bootstrap', boot, '--data', dataDir, 'extra']), 'agent', 'AGENT_USAGE');
    const notJson = join(fx.dir, 'broken-bootstrap.json');
    writeFileSync(notJson, '{ "v": 1,', { mode: 0o600 });
    expectUserError(await runProgram('agent', ['check', '--bootstrap', notJson, '--data', dataDir]), 'agent', 'AGENT_CONFIG_INVALID');
    chmodSync(notJson, 0o644);
    expectUserError(await runProgram('agent', ['check', '--bootstrap', notJson, '--data', dataDir]), 'agent', 'AGENT_CONFIG_PERMISSIONS');
    const badConfig = join(fx.dir, 'bad-agent.json');
    writeFileSync(badConfig, JSON.stringify({ v: 1, tickMs: 'soon' }));
    expectUserError(await cli([], badConfig), 'agent', 'AGENT_CONFIG_INVALID');
    expectUserError(await cli([], join(fx.dir, 'missing.json')), 'agent', 'AGENT_CONFIG_UNREADABLE');
  });
});
