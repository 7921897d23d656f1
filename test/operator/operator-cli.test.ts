import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../common/clock.js';
import { decode } from '../../common/protocol/messages.js';
import { DEFAULT_AUDITOR, DEFAULT_OPERATOR, EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { recordEnrolledDevice } from '../../broker-bridge/src/inventory/test-records.js';
import { eventually } from '../agent/fleet-fixture.js';
import { expectUserError, runProgram, type CliResult } from '../harness/cli.js';

const EVE = 'role:operator:eve';
const DAY = 86_400_000;

/**
 * The operator CLI as shipped (dist/operator.mjs) against a real fleet: mosquitto with the generated
 * ACL, the embedded bridge serving OperatorHandler next to its revoke handler, devices recorded in the
 * inventory (no TPM: these commands read and act on records). Outputs, refusals, usage, the retained
 * device command, the ACL between operators (seen with mosquitto_sub) and a bridge that does not answer.
 */
describe('operator CLI end to end (dist/operator.mjs, real broker and bridge)', () => {
  let dir: string;
  let fleet: EmbeddedFleet;
  let flags: string[];

  const files = (name: string, c: { certPem: string; keyPem: string }) => {
    writeFileSync(join(dir, `${name}.pem`), c.certPem);
    writeFileSync(join(dir, `${name}-key.pem`), c.keyPem, { mode: 0o600 });
    return { cert: join(dir, `${name}.pem`), key: join(dir, `${name}-key.pem`) };
  };
  // The harness runner knows the three older programs by name; the operator bundle sits next to them.
  const op = (args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> => runProgram('operator', args, env);
  const ok = async (args: string[]): Promise<string> => {
    const r = await op([...args, ...flags]);
    expect(r.code, r.err).toBe(0);
    expect(r.err).toBe('');
    return r.out;
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'operator-cli-'));
    fleet = await EmbeddedFleet.start({
      dir: join(dir, 'fleet'),
      clock: systemClock,
      trustDomain: 'test.fleet',
      ekTrust: { roots: [] },
      operatorIdentities: [DEFAULT_OPERATOR, EVE],
    });
    writeFileSync(join(dir, 'root.pem'), fleet.ca.rootCertificatePem);
    const ops = files('ops', await fleet.clientCertificate(DEFAULT_OPERATOR));
    files('eve', await fleet.clientCertificate(EVE));
    files('auditor', await fleet.clientCertificate(DEFAULT_AUDITOR));
    flags = ['--broker', fleet.broker.deviceUrl, '--cert', ops.cert, '--key', ops.key, '--ca', join(dir, 'root.pem')];
    const now = Date.now();
    const seed = [
      ['gw-1', '4a01', 'plant-7', 'edge, "v2"', 5],
      ['gw-2', '4a02', 'plant-7', 'sensor', 40],
      ['gw-3', undefined, 'plant-9', 'sensor', 0],
    ] as const;
    for (const [id, serial, owner, model, days] of seed) {
      await recordEnrolledDevice(fleet.inventory, { deviceId: id, at: now - DAY, ...(serial ? { serial, notAfter: now + days * DAY } : {}) });
      await fleet.inventory.registerDevice({ ...fleet.inventory.getDevice(id)!, metadata: { owner, model } });
    }
  });
  afterAll(async () => {
    await fleet?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('lists devices as a table, as JSON and as CSV, with filters', async () => {
    const table = await ok(['devices']);
    const lines = table.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^DEVICE\s+STATE\s+AGENT\s+ONLINE\s+OWNER\s+MODEL\s+SERIAL\s+EXPIRES\s+LAST SEEN$/);
    expect(lines.slice(1).map((l) => l.split(/\s+/).slice(0, 2))).toEqual([['gw-1', 'enrolled'], ['gw-2', 'enrolled'], ['gw-3', 'registered']]);
    expect(lines[3]).toMatch(/^gw-3\s+registered\s+-\s+-\s+plant-9\s+sensor\s+-\s+-\s+-$/);

    const json = JSON.parse(await ok(['devices', '--json'])) as { deviceId: string; certNotAfter?: number; owner?: string }[];
    expect(json.map((d) => d.deviceId)).toEqual(['gw-1', 'gw-2', 'gw-3']);
    expect(json[0]).toMatchObject({ deviceId: 'gw-1', state: 'enrolled', owner: 'plant-7', model: 'edge, "v2"', certSerial: '4a01' });
    expect(typeof json[0]!.certNotAfter).toBe('number');

    const csv = (await ok(['devices', '--csv'])).split('\r\n');
    expect(csv[0]).toBe('DEVICE,STATE,AGENT,ONLINE,OWNER,MODEL,SERIAL,EXPIRES,LAST SEEN');
    expect(csv[1]).toMatch(/^gw-1,enrolled,,,plant-7,"edge, ""v2""",4a01,\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ,$/);
    expect(csv).toHaveLength(5); // header, three rows, the final CRLF

    const ids = async (args: string[]) => (JSON.parse(await ok(['devices', '--json', ...args])) as { deviceId: string }[]).map((d) => d.deviceId);
    // One at a time: the broker names an operator's session by its certificate CN, so two concurrent
    // invocations with one certificate would take over each other's session.
    const filtered: string[][] = [];
    for (const args of [
      ['--owner', 'plant-7'],
      ['--model', 'sensor'],
      ['--state', 'registered'],
      ['--expiring-within', '30'],
      ['--stale', '1h'], // enrolled a day ago, never heard from
      ['--stale', '2d'],
      ['--page-size', '1'], // the CLI follows the pages: one device per request, the same list
    ]) filtered.push(await ids(args));
    expect(filtered).toEqual([['gw-1', 'gw-2'], ['gw-2', 'gw-3'], ['gw-3'], ['gw-1'], ['gw-1', 'gw-2'], [], ['gw-1', 'gw-2', 'gw-3']]);
  });

  it('shows a device, its certificates and its history', async () => {
    const shown = await ok(['device', 'gw-1']);
    expect(shown).toMatch(/^FIELD\s+VALUE\n/);
    expect(shown).toMatch(/\nmetadata\.owner\s+plant-7\n/);
    expect(shown).toMatch(/\ncertificate\.serial\s+4a01\n/);
    const json = JSON.parse(await ok(['device', 'gw-1', '--json']));
    expect(json).toMatchObject({ device: { deviceId: 'gw-1', state: 'enrolled' }, certificate: { serial: '4a01', pem: 'PEM', current: true } });
    const csv = (await ok(['device', 'gw-3', '--csv'])).split('\r\n');
    expect(csv[0]!.split(',').slice(0, 4)).toEqual(['deviceId', 'state', 'metadata.owner', 'metadata.model']);
    expect(csv[1]!.split(',').slice(0, 4)).toEqual(['gw-3', 'registered', 'plant-9', 'sensor']);

    expect(await ok(['certificates', 'gw-1'])).toMatch(/^SERIAL\s+KIND\s+STATE\s+CURRENT.*\n4a01\s+enroll\s+active\s+yes\s/);
    const history = await ok(['history', 'gw-1']);
    expect(history).toMatch(/^TIME\s+SOURCE\s+TYPE\s+DETAILS\n/);
    expect(history).toMatch(/\s+fleet\s+device\.registered\s/);
  });

  it('rotate-now publishes a retained device command an auditor can read; the reply names its id', async () => {
    const r = JSON.parse(await ok(['rotate-now', 'gw-1', '--jitter', '5m', '--expires-in', '2h', '--json'])) as { commandId: string; expiresAt: number; issuedAt: number };
    expect(r).toMatchObject({ deviceId: 'gw-1', command: 'rotate-now', jitterSec: 300, by: 'ops' });
    expect(r.expiresAt - r.issuedAt).toBe(2 * 3_600_000);
    const auditor = await mqtt.connectAsync(fleet.broker.deviceUrl, {
      clientId: 'enr-audit-cmd',
      ca: fleet.ca.rootCertificatePem,
      cert: readFileSync(join(dir, 'auditor.pem')),
      key: readFileSync(join(dir, 'auditor-key.pem')),
      reconnectPeriod: 0,
    });
    try {
      const got = new Promise<{ retain: boolean; payload: Buffer }>((resolve) => auditor.once('message', (_t, payload, packet) => resolve({ retain: packet.retain, payload })));
      await auditor.subscribeAsync('fleet/v1/devices/gw-1/commands', { qos: 1 });
      const msg = await got;
      expect(msg.retain).toBe(true);
      const cmd = decode('command', msg.payload);
      expect(cmd.requestId).toBe(r.commandId);
      expect(cmd.body).toMatchObject({ command: 'rotate-now', jitterSec: 300, by: 'ops', expiresAt: r.expiresAt });
    } finally {
      await auditor.endAsync();
    }
    const re = JSON.parse(await ok(['reattest', 'gw-2', '--json']));
    expect(re).toMatchObject({ deviceId: 'gw-2', command: 'reattest', jitterSec: 0 });
  });

  it('refuses with the bridge\'s code in one line: unknown, unenrolled, enrolled and revoked devices', async () => {
    expectUserError(await op(['device', 'gw-404', ...flags]), 'operator', 'DEVICE_NOT_FOUND');
    expectUserError(await op(['rotate-now', 'gw-3', ...flags]), 'operator', 'DEVICE_NOT_ENROLLED');
    expectUserError(await op(['token-reissue', 'gw-1', ...flags]), 'operator', 'DEVICE_ALREADY_ENROLLED');
    const revoked = JSON.parse(await ok(['revoke', 'gw-2', '--reason', 'keyCompromise', '--json']));
    expect(revoked).toMatchObject({ serials: ['4a02'], enforced: true });
    expectUserError(await op(['reattest', 'gw-2', ...flags]), 'operator', 'DEVICE_REVOKED');
    expect(JSON.parse(await ok(['devices', '--state', 'revoked', '--json'])).map((d: { deviceId: string }) => d.deviceId)).toEqual(['gw-2']);
  });

  it('reads its settings from a config file (paths relative to it) and from the environment', async () => {
    const cfg = join(dir, 'operator.json');
    writeFileSync(cfg, JSON.stringify({ broker: fleet.broker.deviceUrl, cert: 'ops.pem', key: 'ops-key.pem', ca: 'root.pem', timeoutSec: 10 }));
    const r = await op(['devices', '--json', '--config', cfg]);
    expect(r.code, r.err).toBe(0);
    expect(JSON.parse(r.out)).toHaveLength(3);
    const e = await op(['devices', '--csv'], { OPERATOR_BROKER: fleet.broker.deviceUrl, OPERATOR_CERT: join(dir, 'ops.pem'), OPERATOR_KEY: join(dir, 'ops-key.pem'), OPERATOR_CA: join(dir, 'root.pem') });
    expect(e.code, e.err).toBe(0);
    expect(e.out.split('\r\n')[0]).toMatch(/^DEVICE,/);
    writeFileSync(cfg, JSON.stringify({ broker: fleet.broker.deviceUrl, certificate: 'ops.pem' }));
    expectUserError(await op(['devices', '--config', cfg]), 'operator', 'OPERATOR_CONFIG_INVALID');
    expect((await op(['devices', '--config', cfg])).err).toMatch(/certificate: unknown property/);
  });

  it('answers --help per command and --version; usage errors are one coded line with exit 2', async () => {
    const commands = ['devices', 'device', 'certificates', 'history', 'token-reissue', 'rotate-now', 'reattest', 'revoke'];
    const [help, version, ...perCommand] = await Promise.all([op(['--help']), op(['--version']), ...commands.map((c) => op([c, '--help']))]);
    expect(help.code).toBe(0);
    expect(help.out).toMatch(/^usage: operator <command>/);
    expect(version.code).toBe(0);
    expect(version.out.trim()).toMatch(/^\d+\.\d+\.\d+(\+[0-9a-f]{7,})?$/);
    perCommand.forEach((h, i) => {
      expect(h.code, h.err).toBe(0);
      expect(h.out).toMatch(new RegExp(`^usage: operator ${commands[i]}`));
    });
    const auditorFlags = ['--broker', fleet.broker.deviceUrl, '--cert', join(dir, 'auditor.pem'), '--key', join(dir, 'auditor-key.pem'), '--ca', join(dir, 'root.pem')];
    const cases: [string[], string][] = [
      [[], 'OPERATOR_USAGE'],
      [['bogus'], 'OPERATOR_USAGE'],
      [['devices', '--frob', ...flags], 'OPERATOR_USAGE'],
      [['devices', '--state', 'sleepy', ...flags], 'OPERATOR_USAGE'],
      [['devices', '--stale', '5 parsecs', ...flags], 'OPERATOR_USAGE'],
      [['devices', '--json', '--csv', ...flags], 'OPERATOR_USAGE'],
      [['device', ...flags], 'OPERATOR_USAGE'],
      [['device', 'a/b', ...flags], 'OPERATOR_USAGE'],
      [['revoke', 'gw-1', ...flags], 'OPERATOR_USAGE'],
      [['token-reissue', 'gw-3', '--enroll-url', 'notaurl', '--bootstrap-out', join(dir, 'x.json'), ...flags], 'OPERATOR_USAGE'],
      [['devices'], 'OPERATOR_USAGE'],
      [['devices', '--broker', 'http://x:1', ...flags.slice(2)], 'OPERATOR_USAGE'],
      [['devices', ...flags, '--operator-id', 'eve'], 'OPERATOR_CERT_INVALID'],
      [['devices', ...flags.slice(0, 2), '--cert', join(dir, 'nope.pem'), ...flags.slice(4)], 'OPERATOR_FILE_UNREADABLE'],
      [['devices', ...auditorFlags], 'OPERATOR_CERT_INVALID'],
    ];
    const results = await Promise.all(cases.map(([args]) => op(args)));
    results.forEach((r, i) => expectUserError(r, 'operator', cases[i]![1]));
  });

  it('confines each operator to its own replies: eve, subscribed to ops\'s reply topics, receives nothing (mosquitto_sub)', async () => {
    const sub = (name: string) => {
      // stdbuf: mosquitto_sub's stdout is a pipe here; line buffering lets the test see its SUBACK as it happens.
      const p = spawn('stdbuf', ['-oL', 'mosquitto_sub', '-h', '127.0.0.1', '-p', String(fleet.broker.devicePort), '--cafile', join(dir, 'root.pem'), '--cert', join(dir, `${name}.pem`), '--key', join(dir, `${name}-key.pem`),
        '-i', `enr-sub-${name}`, '-t', 'fleet/v1/operators/ops/commands/+/reply', '-v', '-d', '-C', '1', '-W', '20']);
      let out = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
      return { output: () => out, exited, stop: () => p.kill('SIGTERM') };
    };
    const eve = sub('eve');
    const auditor = sub('auditor');
    await eventually(() => /SUBACK/.test(eve.output()) && /SUBACK/.test(auditor.output()), 5_000, 'both subscribed');
    await ok(['devices']);
    await auditor.exited;
    // Whatever reached the auditor reached eve's equal subscription at the same moment, had the ACL let it.
    await new Promise((r) => setTimeout(r, 300));
    eve.stop();
    await eve.exited;
    // The auditor (reads everything) saw ops's reply on that very topic while eve was subscribed to it.
    expect(auditor.output()).toMatch(/^fleet\/v1\/operators\/ops\/commands\/devices\/reply \{"v":1/m);
    expect(eve.output()).toMatch(/SUBACK/);
    expect(eve.output()).not.toMatch(/PUBLISH|fleet\/v1\/operators\/ops\/commands\/devices\/reply /);
  });

  it('times out with a coded line (exit 1) when the bridge does not answer', async () => {
    await fleet.stopBridge();
    try {
      const t0 = Date.now();
      const r = await op(['devices', ...flags, '--timeout', '1']);
      expect(r.code).toBe(1);
      expect(r.err.trim().split('\n')).toHaveLength(1);
      expect(r.err).toMatch(/^operator: OPERATOR_TIMEOUT: no answer from the bridge within 1 s/);
      expect(r.out).toBe('');
      expect(Date.now() - t0).toBeLessThan(8_000);
    } finally {
      await fleet.startBridge();
    }
  });
});
