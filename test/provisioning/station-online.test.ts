import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { systemClock } from '../../common/clock.js';
import { hashEnrollmentToken } from '../../common/enrollment-token.js';
import { decodeStationRegisterReply, encodeStationRegister, stationTopics, type StationDevice } from '../../common/protocol/station.js';
import { MqttTransport } from '../../common/transport/mqtt-transport.js';
import { EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { Agent } from '../../agent/src/agent.js';
import { parseBootstrap } from '../../agent/src/config.js';
import { runStation } from '../../provisioning/src/cli.js';
import { captureIo, provisionArgs as stationProvisionArgs, writeStationFiles } from './station-kit.js';
import { eventually, TEST_AGENT_CONFIG } from '../agent/fleet-fixture.js';
import { newManufacturer, startTpm, type TestTpm } from '../harness/index.js';

const run = promisify(execFile);

/**
 * The factory station registers devices through the running bridge over MQTT (role:station:<id>
 * certificates, common/protocol/station.ts) while the bridge serves enrollments: acknowledged,
 * idempotent, with coded refusals, and a station confined to its own topics.
 */
describe('station registers devices online through the bridge', () => {
  let dir: string;
  let fleet: EmbeddedFleet;
  let tpmA: TestTpm;
  let tpmB: TestTpm;
  let rogue: TestTpm;
  const agents: Agent[] = [];
  const file = (name: string, text: string) => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };
  const station = { line1: { cert: '', key: '' }, line2: { cert: '', key: '' } };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'station-online-'));
    [tpmA, tpmB, rogue] = await Promise.all([startTpm(), startTpm(), startTpm({ manufacturer: newManufacturer() })]);
    fleet = await EmbeddedFleet.start({
      dir: join(dir, 'fleet'),
      clock: systemClock,
      trustDomain: 'test.fleet',
      ekTrust: { roots: [tpmA.manufacturerRootPem], intermediates: [tpmA.manufacturerIntermediatePem] },
      stationIdentities: ['role:station:line1', 'role:station:line2'],
    });
    Object.assign(station, await writeStationFiles(fleet, dir, ['line1', 'line2'] as const));
    // The station trusts both manufacturers; the fleet only the first: the bridge must refuse the rogue TPM itself.
    file('vendors.pem', tpmA.manufacturerRootPem + rogue.manufacturerRootPem);
    file('vendor-int.pem', tpmA.manufacturerIntermediatePem + rogue.manufacturerIntermediatePem);
  });

  afterAll(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    await fleet?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const io = captureIo;
  const bridgeArgs = (who: 'line1' | 'line2' = 'line1') => ['--bridge', fleet.broker.deviceUrl, '--cert', station[who].cert, '--key', station[who].key, '--ca', join(dir, 'root.pem')];
  const provisionArgs = (name: string, devices: { deviceId: string; tcti: string }[], extra: string[] = bridgeArgs()) => stationProvisionArgs(fleet, dir, name, devices, 'gw-1', extra);
  const bootstrapOf = (out: string, id: string) => JSON.parse(readFileSync(join(dir, out, 'devices', `${id}.json`), 'utf8')) as { token: string };
  const devicesIn = (out: string) => (existsSync(join(dir, out, 'devices')) ? readdirSync(join(dir, out, 'devices')) : []);

  it('registers a device while the bridge runs; the agent enrolls with the token registered online', async () => {
    const p = io();
    expect(await runStation(provisionArgs('line', [{ deviceId: 'dev-a', tcti: tpmA.tcti }]), p.io), p.out.stderr).toBe(0);
    expect(p.out.stdout).toBe('provisioned 1, skipped 0, refused 0 of 1\n');
    const boot = parseBootstrap(bootstrapOf('line', 'dev-a'));
    expect(fleet.inventory.getDevice('dev-a')).toMatchObject({ deviceId: 'dev-a', metadata: { model: 'gw-1' } });
    expect(fleet.inventory.getToken(hashEnrollmentToken(boot.token))).toMatchObject({ deviceId: 'dev-a', tokenHash: hashEnrollmentToken(boot.token) });
    expect(JSON.stringify((await fleet.inventory.listAudit({ deviceId: 'dev-a' })))).not.toContain(boot.token);

    const agent = new Agent({ bootstrap: boot, dataDir: join(dir, 'agent-a'), config: TEST_AGENT_CONFIG, responseTimeoutMs: 5_000 });
    agents.push(agent);
    await agent.start();
    await eventually(() => agent.state === 'online', 20_000, 'dev-a online');
    expect(fleet.inventory.getDevice('dev-a')?.enrolledAt).toBeDefined();
    await agent.stop();

    // A re-run of the line skips the provisioned device and asks the bridge nothing.
    const again = io();
    expect(await runStation(provisionArgs('line', [{ deviceId: 'dev-a', tcti: tpmA.tcti }]), again.io)).toBe(0);
    expect(again.out.stdout).toBe('provisioned 0, skipped 1, refused 0 of 1\n');
  });

  it('is idempotent: a repeated request id gets the same answer byte for byte; a new id for the same registration is unchanged', async () => {
    const t = await connectStation('line1');
    try {
      const topic = stationTopics(fleet.topics, 'line1', 'register');
      const replies: Buffer[] = [];
      await t.subscribe(topic.reply, (m) => void replies.push(m.payload));
      const ask = async (payload: Buffer) => {
        const before = replies.length;
        await t.publish(topic.command, payload, { qos: 1 });
        await eventually(() => replies.length > before, 10_000, 'reply');
        return replies[replies.length - 1]!;
      };
      const d = fleet.inventory.getDevice('dev-a')!;
      const token = fleet.inventory.getToken(hashEnrollmentToken(bootstrapOf('line', 'dev-a').token))!;
      const device: StationDevice = {
        deviceId: 'dev-a',
        ekKind: d.ekKind,
        ekCertificate: Buffer.from(d.ekCertificate!, 'base64'),
        ekPublicHash: d.ekPublicHash,
        metadata: { model: 'gw-1' },
        tokenHash: token.tokenHash,
        tokenCreatedAt: token.createdAt,
        tokenExpiresAt: token.expiresAt,
      };
      const auditBefore = (await fleet.inventory.listAudit()).length;
      const first = await ask(encodeStationRegister('req-1', [device]));
      expect(decodeStationRegisterReply(first)).toEqual({ v: 1, requestId: 'req-1', ok: true, results: [{ deviceId: 'dev-a', ok: true, outcome: 'unchanged' }] });
      expect((await ask(encodeStationRegister('req-1', [device]))).equals(first)).toBe(true);
      expect(decodeStationRegisterReply(await ask(encodeStationRegister('req-1', [{ ...device, metadata: { model: 'other' } }])))).toMatchObject({ ok: false, code: 'REQUEST_ID_REUSED', retryable: false });
      expect(decodeStationRegisterReply(await ask(encodeStationRegister('req-2', [device])))).toMatchObject({ ok: true, results: [{ outcome: 'unchanged' }] });
      expect((await fleet.inventory.listAudit()).length).toBe(auditBefore);
      // A malformed command: refused by schema, without a request id.
      expect(decodeStationRegisterReply(await ask(Buffer.from('{"v":1,"requestId":"x","devices":[]}')))).toMatchObject({ ok: false, code: 'SCHEMA_INVALID' });
      expect(decodeStationRegisterReply(await ask(Buffer.from('not json')))).toEqual({ v: 1, ok: false, code: 'SCHEMA_NOT_JSON', message: expect.any(String), retryable: false });
    } finally {
      await t.close();
    }
  });

  it('refuses a second id for a registered EK with REGISTRATION_CONFLICT; the station writes nothing', async () => {
    const p = io();
    expect(await runStation(provisionArgs('clone', [{ deviceId: 'dev-clone', tcti: tpmA.tcti }]), p.io)).toBe(1);
    expect(p.out.stdout).toBe('provisioned 0, skipped 0, refused 1 of 1\n');
    expect(p.out.stderr).toMatch(/dev-clone refused \[STATION_CONFLICT\] .*REGISTRATION_CONFLICT: this EK is registered as device dev-a/);
    expect(fleet.inventory.getDevice('dev-clone')).toBeUndefined();
    expect(devicesIn('clone')).toEqual([]);
    const audit = readFileSync(join(dir, 'clone', 'audit.jsonl'), 'utf8');
    expect(JSON.parse(audit.trim())).toMatchObject({ deviceId: 'dev-clone', result: 'refused', code: 'STATION_CONFLICT' });
  });

  it("refuses a TPM whose manufacturer the fleet does not trust with EK_UNTRUSTED, though the station's roots accepted it", async () => {
    const p = io();
    expect(await runStation(provisionArgs('rogue', [{ deviceId: 'dev-rogue', tcti: rogue.tcti }]), p.io)).toBe(1);
    expect(p.out.stderr).toMatch(/dev-rogue refused \[STATION_EK_UNTRUSTED\] .*the bridge refused dev-rogue: EK_UNTRUSTED/);
    expect(fleet.inventory.getDevice('dev-rogue')).toBeUndefined();
    expect(devicesIn('rogue')).toEqual([]);
  });

  it('refuses bad input before any token is minted: nothing registered, nothing written', async () => {
    const devicesBefore = fleet.inventory.listDevices().length;
    for (const [flag, value] of [
      ['--enroll-url', 'notaurl'],
      ['--device-url', 'mqtts://fleet:0'],
      ['--bridge', 'mqtt://127.0.0.1:1883'],
      ['--trust-bundle', join(dir, 'line1.key')],
    ] as const) {
      const args = provisionArgs('bad', [{ deviceId: 'dev-b', tcti: tpmB.tcti }]);
      args[args.indexOf(flag) + 1] = value;
      const p = io();
      expect(await runStation(args, p.io), flag).toBe(2);
      expect(p.out.stderr).toMatch(new RegExp(`^station: STATION_USAGE: ${flag}: .*\\n$`));
      expect(p.out.stdout).toBe('');
    }
    // Another station's certificate paired with this one's key, and a certificate that is not a station's.
    const mixed = provisionArgs('bad', [{ deviceId: 'dev-b', tcti: tpmB.tcti }], ['--bridge', fleet.broker.deviceUrl, '--cert', station.line1.cert, '--key', station.line2.key, '--ca', join(dir, 'root.pem')]);
    const m = io();
    expect(await runStation(mixed, m.io)).toBe(2);
    expect(m.out.stderr).toMatch(/^station: STATION_USAGE: --key: .* is not the key of the certificate/);
    expect(existsSync(join(dir, 'bad'))).toBe(false);
    expect(fleet.inventory.listDevices()).toHaveLength(devicesBefore);
  });

  it('waits for the acknowledgment: with the bridge away the device is refused STATION_BRIDGE_UNAVAILABLE, no bootstrap file; provisioned once it is back', async () => {
    await fleet.stopBridge();
    try {
      const p = io({ bridge: { attempts: 2, backoff: { baseMs: 10, capMs: 10 } } });
      expect(await runStation(provisionArgs('away', [{ deviceId: 'dev-b', tcti: tpmB.tcti }], [...bridgeArgs(), '--bridge-timeout', '1s']), p.io)).toBe(1);
      expect(p.out.stderr).toMatch(/^station: STATION_BRIDGE_UNAVAILABLE: no acknowledgment from the bridge after 2 attempts/m);
      expect(p.out.stdout).toBe('');
      expect(devicesIn('away')).toEqual([]);
    } finally {
      await fleet.startBridge();
    }
    const p = io();
    expect(await runStation(provisionArgs('away', [{ deviceId: 'dev-b', tcti: tpmB.tcti }]), p.io), p.out.stderr).toBe(0);
    const token = bootstrapOf('away', 'dev-b').token;
    // The token the bridge holds is the one in the bootstrap file (requests queued while it was away came earlier and were superseded).
    await eventually(() => fleet.inventory.getToken(hashEnrollmentToken(token))?.deviceId === 'dev-b', 5_000, 'dev-b token');
  });

  it('imports an offline export through the bridge; a second import counts everything unchanged', async () => {
    // dev-b again, exported by an offline line under another id would conflict; export it as itself.
    const offline = io();
    expect(await runStation(provisionArgs('offline', [{ deviceId: 'dev-b', tcti: tpmB.tcti }], ['--export', join(dir, 'export.jsonl')]), offline.io)).toBe(0);
    const args = ['import', '--file', join(dir, 'export.jsonl'), ...bridgeArgs()];
    const first = io();
    expect(await runStation(args, first.io), first.out.stderr).toBe(0);
    expect(first.out.stdout).toBe('imported 1, unchanged 0, superseded 0, conflicts 0, refused 0, invalid 0\n');
    expect(fleet.inventory.getToken(hashEnrollmentToken(bootstrapOf('offline', 'dev-b').token))).toMatchObject({ deviceId: 'dev-b' });
    const second = io();
    expect(await runStation(args, second.io)).toBe(0);
    expect(second.out.stdout).toBe('imported 0, unchanged 1, superseded 0, conflicts 0, refused 0, invalid 0\n');
  });

  it("confines a station to its own topics: line2 reads none of line1's replies and cannot send on line1's command topic", async () => {
    const reply = stationTopics(fleet.topics, 'line1', 'register').reply;
    const command = stationTopics(fleet.topics, 'line1', 'register').command;
    const tls = (who: 'line1' | 'line2') => ['-h', '127.0.0.1', '-p', String(fleet.broker.devicePort), '--cafile', join(dir, 'root.pem'), '--cert', station[who].cert, '--key', station[who].key, '-V', 'mqttv5'];
    // One connection per identity (the broker names sessions by CN: a second one would take the first over).
    // line2 subscribes to line1's replies and to the retained trust bundle, whose arrival says it is subscribed.
    const bundle = fleet.topics.fleet('trustBundle');
    const child = spawn('mosquitto_sub', [...tls('line2'), '-i', 'enr-sub-line2', '-t', bundle, '-t', reply, '-v', '-W', '3']);
    let seen = '';
    child.stdout.on('data', (d: Buffer) => (seen += d.toString()));
    const done = new Promise<number>((resolve) => child.on('exit', (c) => resolve(c ?? -1)));
    await eventually(() => seen.startsWith(`${bundle} `), 5_000, 'line2 subscribed');
    // line1 asks (a malformed command is enough to get a reply) and gets its answer.
    const t = await connectStation('line1');
    try {
      const answers: Buffer[] = [];
      await t.subscribe(reply, (m) => void answers.push(m.payload));
      await t.publish(command, Buffer.from('{}'), { qos: 1 });
      await eventually(() => answers.length > 0, 5_000, "line1's reply");
      expect(decodeStationRegisterReply(answers[0]!)).toMatchObject({ ok: false, code: 'SCHEMA_INVALID' });
    } finally {
      await t.close();
    }
    await done;
    expect(seen).toContain(`${bundle} `);
    expect(seen).not.toContain(reply);
    // Under MQTT 5 the broker refuses line2's publish on line1's command topic (0x87).
    const denied = await run('mosquitto_pub', [...tls('line2'), '-i', 'enr-pub-line2', '-t', command, '-m', '{}', '-q', '1', '-d']).catch((e: { stdout: string; stderr: string }) => e);
    expect(denied.stdout + denied.stderr).toMatch(/not authori[sz]ed/i);
  });

  async function connectStation(who: 'line1' | 'line2'): Promise<MqttTransport> {
    const t = new MqttTransport({
      url: fleet.broker.deviceUrl,
      clientId: `enr-test-${who}`,
      tls: { ca: fleet.ca.rootCertificatePem, cert: readFileSync(station[who].cert, 'utf8'), key: readFileSync(station[who].key, 'utf8') },
      reconnectPeriodMs: 0,
    });
    await t.connect();
    return t;
  }
});
