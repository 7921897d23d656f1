import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../common/clock.js';
import { toPem } from '../../common/der.js';
import { ManagedProcess, freePorts } from '../../common/managed-process.js';
import { writeFileAtomic } from '../../common/atomic-file.js';
import { lookupUser } from '../../broker-bridge/src/broker/broker-file-access.js';
import { withRevokedIdentities } from '../../broker-bridge/src/broker/mosquitto-config.js';
import { CrlSigner } from '../../broker-bridge/src/ca/crl.js';
import { FileKeyCa } from '../../broker-bridge/src/ca/file-key-ca.js';
import { testCa } from '../../native/lib/ek-test-pki.js';
import { expectUserError as expectCliUserError, runProgram, type CliResult } from '../harness/cli.js';

/**
 * `bridge broker-config` as an operator runs it, as root, with mosquitto dropping to user `mosquitto`:
 * the generated files and the ones it is given are usable by that user (no "Permission denied"), the key
 * is readable by nobody else, the broker serves both listeners over TLS with the access the ACLs grant,
 * and its log has no warnings but the two documented ACL ones. Also bridge.json's refusal of unknown keys.
 */
const run = promisify(execFile);
const BASE = 'fleet/v1';
const MOSQUITTO = existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto';
const CLIENTID_PREFIXES_NOTICE = "The 'clientid_prefixes' option is now deprecated and will be removed in a future version.";
/** The only warnings mosquitto 2.0.11 logs for the generated config (see the device ACL's comment). */
const EXPECTED_WARNINGS = [`Warning: ACL pattern '${BASE}/trust-bundle' does not contain '%c' or '%u'.`, `Warning: ACL pattern '${BASE}/crl/#' does not contain '%c' or '%u'.`];

const bridge = (args: string[]) => runProgram('bridge', args);
const expectUserError = (r: CliResult, code: string) => expectCliUserError(r, 'bridge', code);

const tool = (cmd: string, args: string[]): Promise<CliResult> =>
  run(cmd, args).then(
    (r) => ({ code: 0, out: r.stdout, err: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout ?? '', err: e.stderr ?? '' }),
  );

/** Lines of a mosquitto log without their timestamps. */
const logLines = (file: string) =>
  readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.replace(/^\d+: /, ''));

describe('bridge broker-config, mosquitto started as root and dropping to user mosquitto', () => {
  let dir: string;
  let caDir: string;
  const path = (name: string) => join(dir, name);
  let ports: { enroll: number; device: number };
  const mosquittoUser = lookupUser('mosquitto');

  beforeAll(async () => {
    // The suite runs as root (CI, this machine); the Debian package creates the `mosquitto` user.
    expect(process.geteuid?.()).toBe(0);
    expect(mosquittoUser).toBeDefined();
    dir = mkdtempSync(join(tmpdir(), 'broker-config-'));
    chmodSync(dir, 0o755); // as /etc is: the broker's user must be able to enter it
    caDir = path('ca');
    expect((await bridge(['ca', 'init', '--dir', caDir, '--trust-domain', 'deploy.fleet'])).code).toBe(0);
    const issue = (args: string[]) => bridge(['cert', 'issue', '--ca-dir', caDir, ...args]);
    expect((await issue(['--kind', 'server', '--dns', 'localhost', '--ip', '127.0.0.1', '--out', path('broker')])).code).toBe(0);
    expect((await issue(['--kind', 'role', '--role', 'bridge', '--out', path('bridge')])).code).toBe(0);
    // A device certificate (CN = device id) from the issuing CA, as enrollment would issue it.
    await run('openssl', ['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', path('dev.key')]);
    await run('openssl', ['req', '-new', '-key', path('dev.key'), '-subj', '/CN=dev-001', '-out', path('dev.csr')]);
    writeFileSync(path('dev.ext'), 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n');
    await run('openssl', ['x509', '-req', '-in', path('dev.csr'), '-CA', join(caDir, 'issuing.pem'), '-CAkey', join(caDir, 'issuing-key.pem'), '-set_serial', '0x1234', '-days', '2', '-extfile', path('dev.ext'), '-out', path('dev.crt')]);
    // The issuing CA's CRL, written root-only as a careless operator might: broker-config makes it readable.
    const backend = await FileKeyCa.open({ keyPath: join(caDir, 'issuing-key.pem') });
    const crl = await new CrlSigner({ backend, issuingCertificate: readFileSync(join(caDir, 'issuing.pem')), clock: systemClock }).sign({ crlNumber: 1, nextUpdateSec: 3600, revoked: [] });
    await backend.close();
    writeFileSync(path('crl.pem'), toPem(crl.crlDer, 'X509 CRL'), { mode: 0o600 });
    ports = { enroll: await freePorts(1), device: await freePorts(1) };
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const brokerConfig = (out: string, extra: string[]) =>
    bridge([
      'broker-config', '--out', out, '--host', '127.0.0.1', '--enroll-port', String(ports.enroll), '--device-port', String(ports.device),
      '--server-cert', path('broker.crt'), '--server-key', path('broker.key'), '--client-ca', join(caDir, 'chain.pem'),
      '--persistence-dir', path('state/persistence'), '--crl-file', path('crl.pem'), ...extra,
    ]);

  const device = (who: string) => ['-h', '127.0.0.1', '-p', String(ports.device), '--cafile', join(caDir, 'root.pem'), '--cert', path(`${who}.crt`), '--key', path(`${who}.key`), '-V', 'mqttv5'];
  const enroll = () => ['-h', '127.0.0.1', '-p', String(ports.enroll), '--cafile', join(caDir, 'root.pem'), '-V', 'mqttv5'];

  /**
   * mosquitto as a service manager starts it: as root, its stderr (log_dest stderr) into `log`. Ready
   * when a real TLS client gets through on each listener (a bare TCP probe would leave TLS errors in the log).
   */
  async function startMosquitto(conf: string, log: string): Promise<ManagedProcess> {
    const proc = await ManagedProcess.start({ name: 'mosquitto', command: '/bin/sh', args: ['-c', `exec ${MOSQUITTO} -c "$0" 2>"$1"`, conf, log], ports: [] });
    const ready = async (args: string[], topic: string) => {
      if (!proc.running) throw new Error(`mosquitto exited: ${readFileSync(log, 'utf8')}`);
      return (await tool('mosquitto_pub', [...args, '-t', topic, '-m', 'x', '-q', '1'])).code;
    };
    await expect.poll(() => ready([...device('bridge'), '-i', 'enr-ready'], `${BASE}/ready`), { timeout: 10_000, interval: 50 }).toBe(0);
    await expect.poll(() => ready([...enroll(), '-i', 'enr-ready'], `${BASE}/enroll/enr-ready/request`), { timeout: 10_000, interval: 50 }).toBe(0);
    return proc;
  }

  it('refuses a user that does not exist, one line with a code, exit 2, writing nothing', async () => {
    const r = await brokerConfig(path('no-user'), ['--user', 'no-such-user-x']);
    expectUserError(r, 'BROKER_USER_UNKNOWN');
    expect(r.err).toContain('no-such-user-x');
    expect(existsSync(join(path('no-user'), 'mosquitto.conf'))).toBe(false);
    expect(statSync(path('broker.key')).uid).toBe(0); // nothing was handed over
  });

  it('refuses a file the user cannot reach, naming the directory, changing nothing', async () => {
    mkdirSync(path('locked'), { mode: 0o700 });
    writeFileSync(path('locked/ca.pem'), readFileSync(join(caDir, 'chain.pem')), { mode: 0o644 });
    const r = await bridge([
      'broker-config', '--out', path('locked-out'), '--host', '127.0.0.1', '--enroll-port', '1', '--device-port', '2',
      '--server-cert', path('broker.crt'), '--server-key', path('broker.key'), '--client-ca', path('locked/ca.pem'),
      '--persistence-dir', path('persistence-locked'), '--user', 'mosquitto',
    ]);
    expectUserError(r, 'BROKER_FILE_UNREACHABLE');
    expect(r.err).toContain(`directory ${path('locked')} `);
    expect(existsSync(path('persistence-locked'))).toBe(false);
    expect(statSync(path('broker.key')).uid).toBe(0);
  });

  it('refuses a private key given as a public file', async () => {
    const r = await brokerConfig(path('key-as-cert'), ['--client-ca', path('bridge.key')]);
    expectUserError(r, 'BROKER_FILE_HOLDS_KEY');
  });

  it('as root, defaults to user mosquitto', async () => {
    const r = await brokerConfig(path('default-user'), []);
    expect(r.code, r.err).toBe(0);
    expect(readFileSync(join(path('default-user'), 'mosquitto.conf'), 'utf8')).toMatch(/^user mosquitto$/m);
  });

  it('--user mosquitto: the broker (root → mosquitto) loads its key, serves both listeners over TLS with the ACLs\' access, rereads ACL and CRL on SIGHUP, and logs only the two ACL warnings', async () => {
    const out = path('mosquitto');
    const r = await brokerConfig(out, ['--user', 'mosquitto']);
    expect(r.code, r.err).toBe(0);
    const u = mosquittoUser!;
    const conf = join(out, 'mosquitto.conf');
    expect(readFileSync(conf, 'utf8')).toMatch(/^user mosquitto$/m);
    // The key: the broker's user only; the persistence directory: the broker's user's.
    const key = statSync(path('broker.key'));
    expect([key.uid, key.gid, key.mode & 0o777]).toEqual([u.uid, u.gid, 0o600]);
    expect(statSync(path('state')).mode & 0o777).toBe(0o755); // a parent it created stays enterable
    const persistence = statSync(path('state/persistence'));
    expect([persistence.uid, persistence.mode & 0o777]).toEqual([u.uid, 0o700]);
    // Public files stay root's and become (or stay) readable; nothing of the CA is handed over.
    expect(statSync(path('crl.pem')).mode & 0o444).toBe(0o444);
    expect(statSync(path('crl.pem')).uid).toBe(0);
    expect(statSync(join(caDir, 'chain.pem')).uid).toBe(0);
    expect(statSync(join(caDir, 'issuing-key.pem')).mode & 0o077).toBe(0);
    for (const f of ['mosquitto.conf', 'enroll.acl', 'device.acl']) expect(statSync(join(out, f)).mode & 0o777).toBe(0o644);

    const log = path('mosquitto.log');
    const broker = await startMosquitto(conf, log);
    try {
      // It dropped to the mosquitto user (and still serves: it loaded the key as that user).
      expect(readFileSync(`/proc/${broker.pid}/status`, 'utf8')).toMatch(new RegExp(`^Uid:\\s+${u.uid}\\s`, 'm'));
      const pub = (args: string[], topic: string, msg: string) => tool('mosquitto_pub', [...args, '-t', topic, '-m', msg, '-q', '1', '-r']);
      const readRetained = (args: string[], id: string, topics: string[]) =>
        tool('mosquitto_sub', [...args, '-i', id, ...topics.flatMap((t) => ['-t', t]), '-v', '-W', '2', '--retained-only']).then((x) => x.out.trim().split('\n').filter(Boolean).sort());
      const fleetTopics = [`${BASE}/trust-bundle`, `${BASE}/crl/#`];

      // The bridge (role:bridge) publishes the retained fleet-wide messages.
      expect((await pub([...device('bridge'), '-i', 'enr-b'], `${BASE}/trust-bundle`, 'TB1')).code).toBe(0);
      expect((await pub([...device('bridge'), '-i', 'enr-b'], `${BASE}/crl/delta`, 'CRL1')).code).toBe(0);
      // A device reads both; its own writes there are dropped (PUBACK 0x87 under MQTT 5: mosquitto_pub exits non-zero or the value stays).
      expect(await readRetained([...device('dev'), '-i', 'enr-d'], 'enr-d', fleetTopics)).toEqual([`${BASE}/crl/delta CRL1`, `${BASE}/trust-bundle TB1`]);
      await pub([...device('dev'), '-i', 'enr-d'], `${BASE}/trust-bundle`, 'EVIL');
      await pub([...device('dev'), '-i', 'enr-d'], `${BASE}/crl/delta`, 'EVIL');
      expect(await readRetained([...device('bridge'), '-i', 'enr-b'], 'enr-b', fleetTopics)).toEqual([`${BASE}/crl/delta CRL1`, `${BASE}/trust-bundle TB1`]);
      // An anonymous enrollment client reads neither (as before), but the listener serves TLS.
      expect(await readRetained(enroll(), 'enr-anon', fleetTopics)).toEqual([]);
      const own = await tool('mosquitto_pub', [...enroll(), '-i', 'enr-anon', '-t', `${BASE}/enroll/enr-anon/request`, '-m', '{}', '-q', '1']);
      expect(own.code, own.err).toBe(0);

      // SIGHUP, as the bridge sends it after replacing the CRL and the device ACL (new root-owned 0644
      // files): mosquitto, now the mosquitto user, rereads them. The device loses its rights; the bridge
      // still connects (a new handshake against the reread CRL).
      await writeFileAtomic(path('crl.pem'), readFileSync(path('crl.pem')));
      const deviceAcl = join(out, 'device.acl');
      await writeFileAtomic(deviceAcl, withRevokedIdentities(readFileSync(deviceAcl, 'utf8'), ['dev-001']));
      process.kill(broker.pid!, 'SIGHUP');
      await expect.poll(() => readRetained([...device('dev'), '-i', 'enr-d'], 'enr-d', [`${BASE}/trust-bundle`]), { timeout: 10_000 }).toEqual([]);
      expect(await readRetained([...device('bridge'), '-i', 'enr-b'], 'enr-b', [`${BASE}/trust-bundle`])).toEqual([`${BASE}/trust-bundle TB1`]);
      expect(broker.running).toBe(true);
    } finally {
      await broker.stop();
    }
    // Nothing went wrong (words only: the log has no levels; the warnings-only run below is the exact check).
    const lines = logLines(log);
    expect(lines.filter((l) => /error|denied|warning|unable/i.test(l) && !EXPECTED_WARNINGS.includes(l)), lines.join('\n')).toEqual([]);
    // mosquitto saved its database as the mosquitto user into the persistence directory.
    expect(statSync(join(path('state/persistence'), 'mosquitto.db')).uid).toBe(u.uid);

    // Same config, logging only warnings and errors: exactly the two documented ACL warnings, nothing else.
    const strict = path('mosquitto-warnings.conf');
    writeFileSync(strict, readFileSync(conf, 'utf8').replace(/^log_type .*\n/gm, '').replace(/^log_dest stderr$/m, 'log_dest stderr\nlog_type warning\nlog_type error'), { mode: 0o644 });
    const log2 = path('mosquitto-warnings.log');
    const again = await startMosquitto(strict, log2);
    await again.stop();
    // The deprecation line is a notice (mosquitto 2.0.11 src/conf.c, MOSQ_LOG_NOTICE) printed while the
    // config is read, before its log_type lines apply; ../shared/FACTS.md documents it.
    expect(logLines(log2)).toEqual([CLIENTID_PREFIXES_NOTICE, ...EXPECTED_WARNINGS]);
  });
});

describe('bridge.json', () => {
  let dir: string;
  let base: Record<string, unknown>;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'bridge-json-'));
    // A vendor root as STMicro ships it (serial not minimally encoded: OpenSSL cannot read it).
    const ekRoot = join(dir, 'ek-root.pem');
    writeFileSync(ekRoot, testCa({ name: [['CN', 'STM TPM EK Root CA']], serial: Buffer.from('0001', 'hex') }).pem);
    base = {
      dataDir: '/nonexistent/data',
      trustDomain: 'deploy.fleet',
      brokerUrl: 'mqtts://127.0.0.1:1',
      bridgeCert: '/nonexistent/bridge.crt',
      bridgeKey: '/nonexistent/bridge.key',
      caDir: '/nonexistent/ca',
      manufacturerRoots: [ekRoot],
    };
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const withConfig = (cfg: unknown, cmd: string[] = ['run']) => {
    const file = join(dir, `bridge-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(file, JSON.stringify(cfg));
    return bridge([...cmd, '--config', file]);
  };

  it('refuses unknown keys, naming the key, at the top level and nested (run and revoke)', async () => {
    const top = await withConfig({ ...base, rateLimits: {} });
    expectUserError(top, 'BRIDGE_CONFIG_INVALID');
    expect(top.err).toContain('rateLimits: unknown property');
    const nested = await withConfig({ ...base, rateLimit: { perDevice: { ratePerSec: 1, burst: 10, rate: 2 } } }, ['revoke', '--device', 'd', '--reason', 'unspecified']);
    expectUserError(nested, 'BRIDGE_CONFIG_INVALID');
    expect(nested.err).toContain('rateLimit.perDevice.rate: unknown property');
  });

  it('validates the tunables: a bad value is refused naming the field', async () => {
    for (const [cfg, field] of [
      [{ rateLimit: { global: { ratePerSec: 0, burst: 10 } } }, 'rateLimit.global.ratePerSec'],
      [{ rateLimit: { perDevice: { ratePerSec: 1, burst: 0.5 } } }, 'rateLimit.perDevice.burst'],
      [{ certificateBackdateSec: -1 }, 'certificateBackdateSec'],
      [{ revocationCheckSec: 1 }, 'revocationCheckSec'],
      [{ challengeTtlSec: '60' }, 'challengeTtlSec'],
      [{ rotationTtlSec: 100_000 }, 'rotationTtlSec'],
      [{ reconnectMs: 10 }, 'reconnectMs'],
      [{ factoryTrustedEkStations: ['line 1'] }, 'factoryTrustedEkStations[0]'],
    ] as const) {
      const r = await withConfig({ ...base, ...cfg });
      expectUserError(r, 'BRIDGE_CONFIG_INVALID');
      expect(r.err).toContain(`${field}:`);
    }
  });

  it('checks the manufacturer files when it starts: missing, without a certificate, or unreadable is refused naming the field and file', async () => {
    const garbage = join(dir, 'garbage.pem');
    writeFileSync(garbage, '-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n');
    const empty = join(dir, 'empty.pem');
    writeFileSync(empty, 'no certificates here\n');
    for (const [cfg, message] of [
      [{ manufacturerRoots: ['/nonexistent/ek-root.pem'] }, 'manufacturerRoots: cannot read /nonexistent/ek-root.pem: ENOENT'],
      [{ manufacturerRoots: [empty] }, `manufacturerRoots: ${empty} holds no PEM certificate`],
      [{ manufacturerIntermediates: [garbage] }, `manufacturerIntermediates: ${garbage} holds a certificate that cannot be read: not a readable X.509 certificate`],
    ] as const) {
      const r = await withConfig({ ...base, ...cfg });
      expectUserError(r, 'BRIDGE_CONFIG_INVALID');
      expect(r.err).toContain(message);
    }
  });

  it('accepts every documented tunable (the start then fails later, on the missing CA, not on the config)', async () => {
    const r = await withConfig({
      ...base,
      rateLimit: { perDevice: { ratePerSec: 0.2, burst: 5 }, global: { ratePerSec: 200, burst: 400 } },
      certificateLifetimeSec: 7 * 86_400,
      certificateBackdateSec: 120,
      challengeTtlSec: 60,
      rotationTtlSec: 60,
      revocationCheckSec: 30,
      crlNextUpdateSec: 3600,
      reconnectMs: 500,
      factoryTrustedEkStations: ['line1'],
    });
    expect(r.code).not.toBe(0);
    expect(r.err + r.out).not.toMatch(/CONFIG_INVALID|SCHEMA_/);
  });
});
