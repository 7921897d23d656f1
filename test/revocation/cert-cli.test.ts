import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { execFile, spawn } from 'node:child_process';
import { webcrypto } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../common/clock.js';
import { pemBlocks, toPem } from '../../common/der.js';
import { decodeOperatorRevokeReply, operatorTopics } from '../../common/protocol/operator.js';
import { Topics } from '../../common/protocol/topics.js';
import { EmbeddedBroker } from '../../broker-bridge/src/broker/embedded-broker.js';
import { CrlSigner } from '../../broker-bridge/src/ca/crl.js';
import { FileKeyCa } from '../../broker-bridge/src/ca/file-key-ca.js';
import { readIssuedRegistry } from '../../broker-bridge/src/ca/issued-registry.js';
import { EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { startSoftHsm } from '../harness/index.js';
import { recordEnrolledDevice } from '../../broker-bridge/src/inventory/test-records.js';
import { expectUserError as expectCliUserError, runProgram, type CliResult } from '../harness/cli.js';

x509.cryptoProvider.set(webcrypto as ReturnType<typeof x509.cryptoProvider.get>);
const run = promisify(execFile);
const BASE = 'fleet/v1';

/** The shipped bundle (dist/bridge.mjs, built by the global setup), as an operator runs it. */
const bridge = (args: string[], env?: NodeJS.ProcessEnv) => runProgram('bridge', args, env);
const expectUserError = (r: CliResult, code: string) => expectCliUserError(r, 'bridge', code);

const openssl = (args: string[]) =>
  run('openssl', args).then(
    (r) => ({ code: 0, out: r.stdout + r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }),
  );

describe('bridge cert issue', () => {
  let dir: string;
  let caDir: string;
  const out = (name: string) => join(dir, name);
  const issue = (args: string[], env?: NodeJS.ProcessEnv) => bridge(['cert', 'issue', '--ca-dir', caDir, ...args], env);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'cert-cli-'));
    caDir = join(dir, 'ca');
    const init = await bridge(['ca', 'init', '--dir', caDir, '--trust-domain', 'cli.fleet']);
    expect(init.code, init.err).toBe(0);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('issues the broker server certificate and role certificates from the issuing CA: openssl verifies them, the key is 0600, the registry has them', async () => {
    const server = await issue(['--kind', 'server', '--dns', 'localhost', '--dns', 'broker.cli.fleet', '--ip', '127.0.0.1', '--out', out('broker')]);
    expect(server.code, server.err).toBe(0);
    const serial = /^serial:\s+([0-9a-f]+)$/m.exec(server.out)?.[1];
    const notAfter = /^notAfter:\s+(\S+)$/m.exec(server.out)?.[1];
    expect(serial).toMatch(/^[0-9a-f]{32}$/);
    const blocks = pemBlocks(readFileSync(`${out('broker')}.crt`, 'utf8'), 'CERTIFICATE');
    // Leaf, then the issuing CA (never the root): a client that trusts the root builds the path.
    expect(blocks).toHaveLength(2);
    expect(toPem(blocks[1]!, 'CERTIFICATE')).toBe(readFileSync(join(caDir, 'issuing.pem'), 'utf8'));
    const leaf = new x509.X509Certificate(blocks[0]!);
    expect(leaf.serialNumber).toBe(serial);
    expect(leaf.notAfter.toISOString()).toBe(notAfter);
    expect(leaf.issuer).toBe(new x509.X509Certificate(readFileSync(join(caDir, 'issuing.pem'))).subject);
    // Default validity: 90 days (plus the 5-minute backdate).
    expect(leaf.notAfter.getTime() - leaf.notBefore.getTime()).toBe(90 * 86_400_000 + 300_000);
    expect(statSync(`${out('broker')}.key`).mode & 0o777).toBe(0o600);

    const roles = [['bridge', 'role:bridge'], ['operator:alice', 'role:operator:alice'], ['auditor:watch', 'role:auditor:watch'], ['station:line1', 'role:station:line1']] as const;
    for (const [role, cn] of roles) {
      const r = await issue(['--kind', 'role', '--role', role, '--out', out(role.replace(':', '-')), '--days', '30', '--json']);
      expect(r.code, r.err).toBe(0);
      const j = JSON.parse(r.out) as { commonName: string; serial: string; notAfter: string; kind: string };
      expect(j).toMatchObject({ commonName: cn, kind: 'role' });
      const c = new x509.X509Certificate(pemBlocks(readFileSync(`${out(role.replace(':', '-'))}.crt`, 'utf8'), 'CERTIFICATE')[0]!);
      expect(c.subject).toBe(`CN=${cn}`);
      expect(c.notAfter.getTime() - c.notBefore.getTime()).toBe(30 * 86_400_000 + 300_000);
      expect(c.serialNumber).toBe(j.serial);
    }
    const files = [out('broker'), ...roles.map(([r]) => out(r.replace(':', '-')))].map((f) => `${f}.crt`);
    for (const [purpose, file] of files.map((f, i) => [i === 0 ? 'sslserver' : 'sslclient', f] as const)) {
      const v = await openssl(['verify', '-purpose', purpose, '-CAfile', join(caDir, 'root.pem'), '-untrusted', join(caDir, 'issuing.pem'), file]);
      expect(v.out.trim()).toBe(`${file}: OK`);
    }
    // Signed by the issuing CA, not the root: without the issuing CA there is no path.
    expect((await openssl(['verify', '-CAfile', join(caDir, 'root.pem'), '-partial_chain', out('bridge.crt')])).code).not.toBe(0);

    const reg = await readIssuedRegistry(caDir);
    expect(reg.bySerial(serial!)).toMatchObject({ commonName: 'localhost', kind: 'server', notAfter: leaf.notAfter.getTime(), sans: ['dns:localhost', 'dns:broker.cli.fleet', 'ip:127.0.0.1'] });
    expect(reg.byCommonName('role:operator:alice')).toHaveLength(1);
    expect(reg.list()).toHaveLength(5);
  });

  it('connects with the issued certificates to mosquitto (crlfile set) as mosquitto_sub/mosquitto_pub; a revoked role serial from the registry is refused', async () => {
    // The deployment as documented: broker server certificate and client CA bundle from the CA
    // directory, the issuing CA's CRL as `crlfile`.
    const backend = await FileKeyCa.open({ keyPath: join(caDir, 'issuing-key.pem') });
    const crl = new CrlSigner({ backend, issuingCertificate: readFileSync(join(caDir, 'issuing.pem')), clock: systemClock });
    let broker: EmbeddedBroker | undefined;
    try {
      const first = await crl.sign({ crlNumber: 1, nextUpdateSec: 3600, revoked: [] });
      broker = await EmbeddedBroker.start({
        dir: join(dir, 'broker-run'),
        baseTopic: BASE,
        serverCertPem: readFileSync(`${out('broker')}.crt`, 'utf8'),
        serverKeyPem: readFileSync(`${out('broker')}.key`, 'utf8'),
        clientCaPem: readFileSync(join(caDir, 'chain.pem'), 'utf8'),
        crlPem: toPem(first.crlDer, 'X509 CRL'),
        operatorIdentities: ['role:operator:alice'],
        auditorIdentities: ['role:auditor:watch'],
      });
      const tls = (who: string) => ['-h', '127.0.0.1', '-p', String(broker!.devicePort), '--cafile', join(caDir, 'root.pem'), '--cert', `${out(who)}.crt`, '--key', `${out(who)}.key`, '-V', 'mqttv5'];
      const command = operatorTopics(new Topics(BASE), 'alice', 'revoke').command;
      // The auditor (read-only on everything) sees what the operator publishes on its own command topic.
      const sub = spawn('mosquitto_sub', [...tls('auditor-watch'), '-i', 'enr-cli-auditor', '-t', `${BASE}/operators/#`, '-C', '1', '-W', '10', '-v']);
      let subOut = '';
      sub.stdout.on('data', (d: Buffer) => (subOut += d.toString()));
      const subDone = new Promise<number>((resolve) => sub.on('exit', (c) => resolve(c ?? -1)));
      // Publish until the subscription is in place (mosquitto_sub gives no ready signal).
      for (let i = 0; i < 50 && subOut === '' && sub.exitCode === null; i++) {
        await run('mosquitto_pub', [...tls('operator-alice'), '-i', 'enr-cli-op', '-t', command, '-m', `{"n":${i}}`, '-q', '1']);
        await new Promise((r) => setTimeout(r, 100));
      }
      expect(await subDone).toBe(0);
      expect(subOut).toMatch(new RegExp(`^${command} \\{"n":\\d+\\}`));
      // The operator may not write another operator's topic: under MQTT 5 the broker says so (0x87).
      const denied = await run('mosquitto_pub', [...tls('operator-alice'), '-i', 'enr-cli-op', '-t', `${BASE}/operators/bob/commands/revoke`, '-m', '{}', '-q', '1', '-d']).catch(
        (e: { stdout: string; stderr: string }) => e,
      );
      expect(denied.stdout + denied.stderr).toMatch(/not authori[sz]ed/i);

      // Revoke the auditor by the serial the registry recorded for its CN: its next handshake fails.
      const auditor = (await readIssuedRegistry(caDir)).byCommonName('role:auditor:watch')[0]!;
      const second = await crl.sign({ crlNumber: 2, nextUpdateSec: 3600, revoked: [{ serialNumber: auditor.serial, revokedAt: new Date(), reason: 'privilegeWithdrawn' }] });
      writeFileSync(broker.crlFile!, toPem(second.crlDer, 'X509 CRL'));
      expect(broker.reload()).toBe(true);
      await expect
        .poll(async () => (await run('mosquitto_sub', [...tls('auditor-watch'), '-i', 'enr-cli-auditor', '-t', `${BASE}/x`, '-W', '1']).then(() => 0, (e: { code: number }) => e.code)), { timeout: 5000 })
        .not.toBe(27); // 27: -W timed out, i.e. connected
      const refused = await run('mosquitto_sub', [...tls('auditor-watch'), '-i', 'enr-cli-auditor', '-t', `${BASE}/x`, '-W', '2', '-d']).catch((e: { code: number; stdout: string; stderr: string }) => e);
      expect('code' in refused ? refused.code : 0).not.toBe(0);
      expect(refused.stdout + refused.stderr).not.toMatch(/CONNACK/);
      // The operator's certificate still connects.
      await run('mosquitto_pub', [...tls('operator-alice'), '-i', 'enr-cli-op', '-t', command, '-m', '{}', '-q', '1']);
    } finally {
      await broker?.stop();
      await backend.close();
    }
  });

  it('an operator certificate it issues into a running fleet\'s CA revokes a device over MQTT (mosquitto_rr) through the bridge', async () => {
    const fleetDir = join(dir, 'fleet');
    const fleet = await EmbeddedFleet.start({ dir: fleetDir, clock: systemClock, trustDomain: 'cli.fleet', ekTrust: { roots: [] }, operatorIdentities: ['role:operator:ops'] });
    try {
      const now = Date.now();
      await recordEnrolledDevice(fleet.inventory, { deviceId: 'gw-9', serial: '5a09', at: now });
      const r = await bridge(['cert', 'issue', '--ca-dir', join(fleetDir, 'ca'), '--kind', 'role', '--role', 'operator:ops', '--out', join(dir, 'ops')]);
      expect(r.code, r.err).toBe(0);
      const t = operatorTopics(fleet.topics, 'ops', 'revoke');
      const tls = ['-h', '127.0.0.1', '-p', String(fleet.broker.devicePort), '--cafile', join(fleetDir, 'ca', 'root.pem'), '--cert', join(dir, 'ops.crt'), '--key', join(dir, 'ops.key'), '-V', 'mqttv5'];
      // One certificate is one session (the broker names it by CN: a second connection would replace
      // the first), so the operator subscribes to its reply and publishes its command on one connection:
      // mosquitto_rr does exactly that.
      const cmd = JSON.stringify({ v: 1, requestId: 'cli-1', deviceId: 'gw-9', reason: 'keyCompromise' });
      const { stdout: reply } = await run('mosquitto_rr', [...tls, '-i', 'enr-ops', '-t', t.command, '-e', t.reply, '-m', cmd, '-q', '1', '-W', '10']);
      expect(decodeOperatorRevokeReply(reply.trim())).toMatchObject({ ok: true, requestId: 'cli-1', serials: ['5a09'], enforced: true });
      expect(fleet.inventory.getDevice('gw-9')?.revocationReason).toBe('keyCompromise');
    } finally {
      await fleet.stop();
    }
  });

  it('never overwrites a key or certificate without --force; --force replaces both atomically and records the new serial', async () => {
    const before = readFileSync(`${out('bridge')}.key`, 'utf8');
    const crt = readFileSync(`${out('bridge')}.crt`, 'utf8');
    const n = (await readIssuedRegistry(caDir)).list().length;
    expectUserError(await issue(['--kind', 'role', '--role', 'bridge', '--out', out('bridge')]), 'SERVICE_CERT_OUTPUT_EXISTS');
    expect(readFileSync(`${out('bridge')}.key`, 'utf8')).toBe(before);
    expect(readFileSync(`${out('bridge')}.crt`, 'utf8')).toBe(crt);
    expect((await readIssuedRegistry(caDir)).list()).toHaveLength(n);
    const forced = await issue(['--kind', 'role', '--role', 'bridge', '--out', out('bridge'), '--force', '--json']);
    expect(forced.code, forced.err).toBe(0);
    const { serial } = JSON.parse(forced.out) as { serial: string };
    expect(readFileSync(`${out('bridge')}.key`, 'utf8')).not.toBe(before);
    expect(statSync(`${out('bridge')}.key`).mode & 0o777).toBe(0o600);
    expect(new x509.X509Certificate(pemBlocks(readFileSync(`${out('bridge')}.crt`, 'utf8'), 'CERTIFICATE')[0]!).serialNumber).toBe(serial);
    expect((await readIssuedRegistry(caDir)).byCommonName('role:bridge').map((e) => e.serial)).toContain(serial);
  });

  it('keeps every entry when several cert issue processes run at once', async () => {
    const n = (await readIssuedRegistry(caDir)).list().length;
    const rs = await Promise.all([1, 2, 3, 4].map((i) => issue(['--kind', 'role', '--role', `station:par${i}`, '--out', out(`par${i}`)])));
    for (const r of rs) expect(r.code, r.err).toBe(0);
    const reg = await readIssuedRegistry(caDir);
    expect(reg.list()).toHaveLength(n + 4);
    for (const i of [1, 2, 3, 4]) expect(reg.byCommonName(`role:station:par${i}`)).toHaveLength(1);
  });

  it('refuses bad input with one coded line and exit 2, writing nothing', async () => {
    const n = (await readIssuedRegistry(caDir)).list().length;
    const cases: [string[], string][] = [
      [['--kind', 'role', '--role', 'admin', '--out', out('x')], 'SERVICE_CERT_BAD_REQUEST'],
      [['--kind', 'role', '--role', 'operator:a/b', '--out', out('x')], 'SERVICE_CERT_BAD_REQUEST'],
      [['--kind', 'role', '--role', 'bridge:x', '--out', out('x')], 'SERVICE_CERT_BAD_REQUEST'],
      [['--kind', 'role', '--out', out('x')], 'BRIDGE_USAGE'],
      [['--kind', 'role', '--role', 'bridge', '--dns', 'a.example', '--out', out('x')], 'BRIDGE_USAGE'],
      [['--kind', 'server', '--out', out('x')], 'BRIDGE_USAGE'],
      [['--kind', 'server', '--role', 'bridge', '--dns', 'a.example', '--out', out('x')], 'BRIDGE_USAGE'],
      [['--kind', 'server', '--dns', 'bad_name', '--out', out('x')], 'SERVICE_CERT_BAD_REQUEST'],
      [['--kind', 'server', '--ip', '999.1.1.1', '--out', out('x')], 'SERVICE_CERT_BAD_REQUEST'],
      [['--kind', 'device', '--out', out('x')], 'BRIDGE_USAGE'],
      [['--kind', 'role', '--role', 'bridge'], 'BRIDGE_USAGE'],
      [['--kind', 'role', '--role', 'bridge', '--out', out('x'), '--days', '0'], 'BRIDGE_USAGE'],
      [['--kind', 'role', '--role', 'bridge', '--out', out('x'), '--days', '1.5'], 'BRIDGE_USAGE'],
      // The issuing CA lives 5 years.
      [['--kind', 'role', '--role', 'bridge', '--out', out('x'), '--days', '3000'], 'CA_POLICY_DENIED'],
      [['--kind', 'role', '--role', 'bridge', '--out', out('x'), '--frobnicate'], 'BRIDGE_USAGE'],
      [['--kind', 'role', '--role', 'bridge', '--out', join(dir, 'no-such-dir', 'x')], 'SERVICE_CERT_BAD_REQUEST'],
      [['--kind', 'role', '--role', 'bridge', '--out', out('x'), '--issuing-key', join(dir, 'nope.pem')], 'CA_KEY_NOT_FOUND'],
      // The root's key is not the issuing CA's: refused, so the root never signs a service certificate.
      [['--kind', 'role', '--role', 'bridge', '--out', out('x'), '--issuing-key', join(caDir, 'root-key.pem')], 'CA_CONFIG_INVALID'],
    ];
    for (const [args, code] of cases) expectUserError(await issue(args), code);
    expectUserError(await bridge(['cert', 'issue', '--ca-dir', join(dir, 'nothing'), '--kind', 'role', '--role', 'bridge', '--out', out('x')]), 'CA_CONFIG_INVALID');
    expectUserError(await bridge(['cert', 'issue', '--kind', 'role', '--role', 'bridge', '--out', out('x')]), 'BRIDGE_USAGE');
    expectUserError(await bridge(['cert', 'frob']), 'BRIDGE_USAGE');
    expect(existsSync(`${out('x')}.key`) || existsSync(`${out('x')}.crt`)).toBe(false);
    expect((await readIssuedRegistry(caDir)).list()).toHaveLength(n);
  });

  it('issues from a CA whose issuing key is in a PKCS#11 token (SoftHSM2), with the same options as ca init', async () => {
    const hsm = await startSoftHsm({ tokenLabel: 'cli-ca' });
    try {
      const env = { ...hsm.env, CLI_CA_PIN: hsm.pin };
      const p11 = ['--pkcs11-module', hsm.modulePath, '--pkcs11-token', hsm.tokenLabel, '--pkcs11-pin-env', 'CLI_CA_PIN'];
      const hsmCa = join(dir, 'hsm-ca');
      const init = await bridge(['ca', 'init', '--dir', hsmCa, '--trust-domain', 'hsm.fleet', ...p11], env);
      expect(init.code, init.err).toBe(0);
      expect(existsSync(join(hsmCa, 'issuing-key.pem'))).toBe(false);
      const r = await bridge(['cert', 'issue', '--ca-dir', hsmCa, '--kind', 'role', '--role', 'operator:hsm', '--out', out('hsm-op'), '--json', ...p11], env);
      expect(r.code, r.err).toBe(0);
      const v = await openssl(['verify', '-purpose', 'sslclient', '-CAfile', join(hsmCa, 'root.pem'), '-untrusted', join(hsmCa, 'issuing.pem'), `${out('hsm-op')}.crt`]);
      expect(v.out.trim()).toBe(`${out('hsm-op')}.crt: OK`);
      expect((await readIssuedRegistry(hsmCa)).bySerial((JSON.parse(r.out) as { serial: string }).serial)?.commonName).toBe('role:operator:hsm');
      // Without the token options it looks for a key file, and says so.
      expectUserError(await bridge(['cert', 'issue', '--ca-dir', hsmCa, '--kind', 'role', '--role', 'bridge', '--out', out('hsm-x')], env), 'CA_KEY_NOT_FOUND');
      expectUserError(await bridge(['cert', 'issue', '--ca-dir', hsmCa, '--kind', 'role', '--role', 'bridge', '--out', out('hsm-x'), ...p11], { ...env, CLI_CA_PIN: '000000' }), 'CA_CONFIG_INVALID');
      expectUserError(await bridge(['cert', 'issue', '--ca-dir', hsmCa, '--kind', 'role', '--role', 'bridge', '--out', out('hsm-x'), ...p11.slice(0, 4), '--pkcs11-pin-env', 'UNSET_PIN_VAR'], env), 'BRIDGE_USAGE');
    } finally {
      await hsm.stop();
    }
  });
});
