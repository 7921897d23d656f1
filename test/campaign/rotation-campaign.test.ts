import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Agent } from '../../agent/src/agent.js';
import { DEFAULT_AUDITOR, DEFAULT_OPERATOR } from '../../broker-bridge/src/embedded-fleet.js';
import type { Clock } from '../../common/clock.js';
import { eventually, startFleetFixture, type FleetFixture } from '../agent/fleet-fixture.js';
import { expectUserError, runProgram } from '../harness/cli.js';

const run = promisify(execFile);

/**
 * Rotation campaigns end to end: 5 real agents, each on its own swtpm, a real mosquitto with the
 * generated ACL, the bridge and its CA; the campaign driven with the shipped operator CLI
 * (dist/operator.mjs), what the broker holds checked with mosquitto_sub.
 *
 * The fault: the CA's clock (only the issuer's; the bridge's own is right) jumps two hours ahead while
 * the canary wave rotates, so the canary's new certificate is not valid yet and mosquitto (OpenSSL,
 * real time) refuses it; the agent rolls back to its old identity and reports rotation_failed.
 */
describe('rotation campaigns (real agents, swtpm, mosquitto, bridge; operator CLI)', () => {
  let fx: FleetFixture;
  let skewMs = 0;
  const caClock: Clock = { now: () => Date.now() + skewMs };
  const agents = new Map<string, Agent>();
  let flags: string[];

  const operator = async (args: string[]) => {
    const r = await runProgram('operator', [...args, ...flags, '--json']);
    expect(r.code, `${args.join(' ')}: ${r.err}`).toBe(0);
    return JSON.parse(r.out) as { state: string; wave: number; succeeded: number; failed: number; paused?: { by: string; reason: string }; waves: { size: number; gate: string; succeeded: number; failed: number; codes: Record<string, number> }[] };
  };
  const status = (id: string) => operator(['campaign', 'status', id]);
  /** Retained device commands on the broker, as an auditor sees them: device id → payload. */
  const retainedCommands = async (): Promise<Map<string, string>> => {
    const topic = fx.fleet.topics.allDevices('command');
    const { stdout, stderr } = await run('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(fx.fleet.broker.devicePort), '--cafile', join(fx.dir, 'root.pem'), '--cert', join(fx.dir, 'auditor.pem'), '--key', join(fx.dir, 'auditor-key.pem'),
      '-i', 'enr-campaign-audit', '-t', topic, '-v', '--retained-only', '-W', '2']).catch((e: { stdout?: string; stderr?: string; code?: number }) => {
      // -W: mosquitto_sub exits 27 when its time is up; anything else is a failure to say.
      if (e.code !== 27) throw new Error(`mosquitto_sub failed (${e.code}): ${e.stderr}`);
      return { stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
    });
    if (process.env['CAMPAIGN_DEBUG']) console.log('mosquitto_sub', JSON.stringify({ stdout, stderr }));
    const out = new Map<string, string>();
    for (const line of stdout.split('\n').filter(Boolean)) {
      const [t, ...rest] = line.split(' ');
      out.set(fx.fleet.topics.parseDevice(t!)!.deviceId, rest.join(' '));
    }
    return out;
  };
  const serials = () => new Map([...agents].map(([id, a]) => [id, a.status().certSerial!]));

  beforeAll(async () => {
    fx = await startFleetFixture({ issuerClock: caClock, campaignTickMs: 200 });
    for (let i = 1; i <= 5; i++) {
      const d = await fx.device(`camp-${i}`);
      const a = fx.agent(d);
      agents.set(d.bootstrap.deviceId, a);
    }
    await Promise.all([...agents.values()].map((a) => a.start()));
    writeFileSync(join(fx.dir, 'root.pem'), fx.fleet.ca.rootCertificatePem);
    for (const [name, cn] of [['ops', DEFAULT_OPERATOR], ['auditor', DEFAULT_AUDITOR]] as const) {
      const c = await fx.fleet.clientCertificate(cn);
      writeFileSync(join(fx.dir, `${name}.pem`), c.certPem);
      writeFileSync(join(fx.dir, `${name}-key.pem`), c.keyPem, { mode: 0o600 });
    }
    flags = ['--broker', fx.fleet.broker.deviceUrl, '--cert', join(fx.dir, 'ops.pem'), '--key', join(fx.dir, 'ops-key.pem'), '--ca', join(fx.dir, 'root.pem')];
  }, 180_000);

  // A failed test must not leave the CA's clock wrong for the next.
  afterEach(() => {
    skewMs = 0;
  });

  afterAll(async () => {
    await fx?.stop();
  });

  it('a canary wave whose certificates the broker refuses trips the gate: paused, no device loses service, the rest untouched; resumed once fixed, it completes', { timeout: 120_000 }, async () => {
    const before = serials();
    const created = await operator(['campaign', 'create', '--all', '--id', 'canary', '--waves', '20,100', '--window', '60', '--jitter', '0']);
    expect(created).toMatchObject({ state: 'planned', wave: -1 });
    expect(created.waves.map((w) => w.size)).toEqual([1, 4]);
    expect(await retainedCommands()).toEqual(new Map());

    skewMs = 2 * 3_600_000;
    await operator(['campaign', 'start', 'canary']);
    const paused = await eventually(async () => {
      const s = await status('canary');
      return s.state === 'paused' && s;
    }, 30_000, 'the canary gate trips');
    expect(paused.paused!.by).toBe('gate');
    expect(paused.paused!.reason).toMatch(/^wave 1 gate tripped: 1 failed, more than the 0 allowed \(TRANSPORT_\w+×1\)$/);
    expect(paused.waves[0]).toMatchObject({ gate: 'tripped', failed: 1 });
    expect(paused.waves[1]).toMatchObject({ gate: 'pending', succeeded: 0, failed: 0 });

    // No device lost service: every agent online, the canary back on its old certificate.
    const commanded = [...(await retainedCommands()).keys()];
    expect(commanded).toHaveLength(1);
    const canary = commanded[0]!;
    // (The canary reports its failure as it rolls back: give it the moment to reconnect.)
    for (const [id, a] of agents) {
      await eventually(() => a.state === 'online', 10_000, `${id} online`);
      expect(a.status().certSerial, id).toBe(before.get(id));
    }
    expect(agents.get(canary)!.status().lastRotation!.result).toMatch(/^TRANSPORT_/);
    // The other 90%: no command on the broker, no rotation attempted.
    for (const [id, a] of agents) if (id !== canary) expect(a.status().lastRotation, id).toBeUndefined();

    // The fault is fixed; the canary's own retry succeeds, and the campaign, still paused, records it.
    skewMs = 0;
    await eventually(async () => (await status('canary')).waves[0]!.succeeded === 1, 30_000, 'the canary rotated after the fault');
    expect((await status('canary')).state).toBe('paused');

    const resumed = await operator(['campaign', 'resume', 'canary']);
    expect(resumed).toMatchObject({ state: 'running', wave: 1 });
    const done = await eventually(async () => {
      const s = await status('canary');
      return s.state === 'completed' && s;
    }, 60_000, 'the campaign completes');
    expect(done).toMatchObject({ succeeded: 5, failed: 0 });
    expect(done.waves.map((w) => w.gate)).toEqual(['accepted', 'passed']);
    // Every device is on a new certificate, issued for a key its enrollment AK certified in its TPM.
    for (const [id, a] of agents) {
      await eventually(() => a.state === 'online' && a.status().certSerial !== before.get(id), 20_000, `${id} online on its new certificate`);
      const current = fx.fleet.inventory.getCertificate(a.status().certSerial!)!;
      expect(current).toMatchObject({ deviceId: id, kind: 'rotate' });
      expect(current.keySpkiHash).not.toBe(fx.fleet.inventory.getCertificate(before.get(id)!)!.keySpkiHash);
    }
    const list = JSON.parse((await runProgram('operator', ['campaign', 'list', ...flags, '--json'])).out) as { campaignId: string; state: string }[];
    expect(list).toEqual([expect.objectContaining({ campaignId: 'canary', state: 'completed' })]);
  });

  // What the restarted bridge finds is only what the inventory kept: the running campaign, its wave,
  // its commands. (Sending the unanswered commands again under the same ids: campaign-service.test.ts.)
  it('a bridge stopped mid-wave resumes the campaign where it stood when it starts again', { timeout: 120_000 }, async () => {
    const before = serials();
    await operator(['campaign', 'create', '--all', '--id', 'restart', '--waves', '40,100', '--window', '120', '--jitter', '5s']);
    // The bridge stops right after the first wave's commands are out: the devices get them and act
    // within 5 s, but cannot rotate (the rotation service is the bridge) until it is back.
    await operator(['campaign', 'start', 'restart']);
    await fx.fleet.stopBridge();
    expect(fx.fleet.inventory.getCampaign('restart')).toMatchObject({ state: 'running', wave: 0, waves: [expect.objectContaining({ gate: 'pending' }), expect.objectContaining({ gate: 'pending' })] });
    await new Promise((r) => setTimeout(r, 2_000));
    await fx.fleet.startBridge();
    const done = await eventually(async () => {
      const s = await status('restart');
      return s.state === 'completed' && s;
    }, 90_000, 'the campaign completes after the restart');
    expect(done).toMatchObject({ succeeded: 5, failed: 0 });
    for (const [id, a] of agents) await eventually(() => a.state === 'online' && a.status().certSerial !== before.get(id), 20_000, `${id} rotated`);
    // Each wave started once: the restarted bridge went on with the wave it found, it did not start it again.
    const starts = await fx.fleet.inventory.listAudit({ type: 'campaign.wave-started' });
    expect(starts.filter((e) => e.details?.['campaign'] === 'restart').map((e) => e.details?.['wave'])).toEqual([0, 1]);
  });

  it('refuses bad campaign input with one coded line and exit 2: usage before anything is sent, the bridge\'s refusals after', async () => {
    const cases: [string[], string][] = [
      [['campaign'], 'OPERATOR_USAGE'],
      [['campaign', 'launch', 'x'], 'OPERATOR_USAGE'],
      [['campaign', 'create'], 'OPERATOR_USAGE'],
      [['campaign', 'create', '--all', '--owner', 'acme'], 'OPERATOR_USAGE'],
      [['campaign', 'create', '--all', '--waves', '50,10,100'], 'OPERATOR_USAGE'],
      [['campaign', 'create', '--all', '--waves', '10,50'], 'OPERATOR_USAGE'],
      [['campaign', 'create', '--all', '--min-success', '1.5'], 'OPERATOR_USAGE'],
      [['campaign', 'create', '--all', '--window', 'soon'], 'OPERATOR_USAGE'],
      [['campaign', 'create', '--devices', 'ok,no/slash'], 'OPERATOR_USAGE'],
      [['campaign', 'create', '--all', '--id', '-bad'], 'OPERATOR_USAGE'],
      [['campaign', 'start'], 'OPERATOR_USAGE'],
      [['campaign', 'start', 'a', 'b'], 'OPERATOR_USAGE'],
      [['campaign-start', 'canary'], 'OPERATOR_USAGE'],
      [['campaign', 'create', '--all', '--kind', 'ca-rollover'], 'CAMPAIGN_KIND_UNSUPPORTED'],
      [['campaign', 'create', '--owner', 'nobody'], 'CAMPAIGN_EMPTY'],
      [['campaign', 'create', '--all', '--id', 'refusals'], 'CAMPAIGN_EXISTS'],
      [['campaign', 'create', '--all', '--window', '60', '--jitter', '5m'], 'CAMPAIGN_INVALID'],
      [['campaign', 'status', 'missing'], 'CAMPAIGN_NOT_FOUND'],
      [['campaign', 'resume', 'refusals'], 'CAMPAIGN_STATE'],
    ];
    // A planned campaign of its own: a second with its id exists already; a planned one cannot resume.
    expect((await operator(['campaign', 'create', '--all', '--id', 'refusals'])).state).toBe('planned');
    // Usage errors never connect: all at once. Refusals come from the bridge, one connection at a time
    // (two clients on one operator certificate take over each other's session).
    const usage = cases.filter(([, code]) => code === 'OPERATOR_USAGE');
    const results = await Promise.all(usage.map(([args]) => runProgram('operator', [...args, ...flags])));
    results.forEach((r, i) => expectUserError(r, 'operator', usage[i]![1]));
    for (const [args, code] of cases.filter(([, c]) => c !== 'OPERATOR_USAGE')) expectUserError(await runProgram('operator', [...args, ...flags]), 'operator', code);
    expect(await runProgram('operator', ['campaign', 'create', '--help'])).toMatchObject({ code: 0, out: expect.stringMatching(/^usage: operator campaign create \(--all/) });
  });
});
