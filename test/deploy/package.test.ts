import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../common/clock.js';
import { EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { readEk, registerDevice } from '../../sim/src/sim/register-device.js';
import { Level } from 'level';
import { startTpm, type TestTpm } from '../harness/index.js';
import { spawnUntil } from '../harness/spawn-until.js';
import { buildPreviousPackage, PREVIOUS_BUILD_COMMIT } from './previous-build.js';
import { runPackageScript, type BuiltPackage } from './package-build.js';
import { STORE_SCHEMA } from '../../agent/src/store-migrations.js';
import { CHROOT_ENV, openDebianRoot, type DebianRoot } from './debian-root.js';

/** What the package depends on, preinstalled so the test needs no apt inside the root. */
const DEBIAN_ROOT_PACKAGES = ['adduser', 'libtss2-esys-3.0.2-0', 'libtss2-sys1', 'libtss2-mu0', 'libtss2-rc0', 'libtss2-tctildr0', 'libtss2-tcti-device0', 'libtss2-tcti-swtpm0', 'libstdc++6'];

const run = promisify(execFile);
const ROOT = resolve(import.meta.dirname, '../..');

/**
 * `npm run package` (scripts/package.sh) as a release build runs it: the Debian package, read back with
 * dpkg-deb (fields, files, maintainer scripts), its unit checked by systemd-analyze, the packaged agent
 * on the Node 24 runtime it carries enrolling a swtpm device against a real fleet from the extracted
 * package, and install, upgrade, remove and purge with dpkg in a clean Debian root.
 */
/** A real fleet (bridge, CA, mosquitto) trusting the manufacturer of one swtpm, for one packaged device. */
async function fleetWithTpm(dir: string, trustDomain: string): Promise<{ fleet: EmbeddedFleet; tpm: TestTpm; stop(): Promise<void> }> {
  const tpm = await startTpm();
  const fleet = await EmbeddedFleet.start({ dir, clock: systemClock, trustDomain, ekTrust: { roots: [tpm.manufacturerRootPem], intermediates: [tpm.manufacturerIntermediatePem] } });
  return { fleet, tpm, stop: async () => (await fleet.stop(), await tpm.stop()) };
}

/** Starts an agent process and resolves once it logged `online`; `stop()` sends SIGTERM and resolves its exit code. */
function agentOnline(command: string, args: readonly string[], env?: NodeJS.ProcessEnv): ReturnType<typeof spawnUntil> {
  return spawnUntil(command, args, (out) => out.includes('"msg":"online"'), 30_000, env);
}

/** Every record of a (closed) agent store, read with `level` itself. */
async function storeRecords(path: string): Promise<Record<string, unknown>> {
  const db = new Level<string, unknown>(path, { valueEncoding: 'json' });
  const out: Record<string, unknown> = {};
  for await (const [k, v] of db.iterator()) out[k] = v;
  await db.close();
  return out;
}

describe('the tpm-fleet-agent Debian package (scripts/package.sh)', () => {
  let built: BuiltPackage;
  let deb: string;
  let dir: string;
  let extracted: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agent-package-'));
    // xz at level 1: the release's format in seconds instead of the ~45 s level 6 takes.
    built = await runPackageScript(ROOT, { TPM_FLEET_DEB_COMPRESSION: 'xz 1' });
    deb = built.deb;
    extracted = join(dir, 'root');
    await run('dpkg-deb', ['-x', deb, extracted]);
  }, 330_000);
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const field = async (name: string) => (await run('dpkg-deb', ['--field', deb, name])).stdout.trim();

  it('is a Debian package with its dependencies, a conffile, maintainer scripts, and the sizes it reports', async () => {
    expect(await field('Package')).toBe('tpm-fleet-agent');
    expect(await field('Architecture')).toBe((await run('dpkg', ['--print-architecture'])).stdout.trim());
    expect(await field('Depends')).toMatch(/libtss2-esys-3\.0\.2-0.*libtss2-tctildr0.*libtss2-tcti-device0.*adduser/);
    expect(built.packageBytes).toBe(statSync(deb).size);
    const info = (await run('dpkg-deb', ['--info', deb])).stdout;
    for (const s of ['postinst', 'prerm', 'postrm', 'conffiles']) expect(info).toContain(` ${s}`);
    const control = async (file: string) => (await run('sh', ['-c', `dpkg-deb --ctrl-tarfile '${deb}' | tar -xO ./${file}`])).stdout;
    expect((await control('conffiles')).trim()).toBe('/etc/tpm-fleet/agent.json');
    // The purge warning says what is lost.
    expect(await control('postrm')).toMatch(/identity .* is lost/s);
  });

  it('carries the agent, its addon, Node 24 and only this architecture of the LevelDB binding; nothing of the fleet side', async () => {
    const lib = join(extracted, 'usr/lib/tpm-fleet-agent');
    for (const f of ['agent.mjs', 'tpm_native.node', 'node', 'node_modules/level/package.json', 'node_modules/classic-level/package.json']) expect(existsSync(join(lib, f)), f).toBe(true);
    expect(readdirSync(join(lib, 'node_modules/classic-level/prebuilds'))).toEqual([`linux-${process.arch}`]);
    expect(existsSync(join(lib, 'node_modules/pkcs11js'))).toBe(false);
    expect(built.node).toMatch(/^v24\./);
    expect((await run(join(lib, 'node'), ['--version'])).stdout.trim()).toBe(built.node);
    expect(existsSync(join(extracted, 'lib/systemd/system/tpm-fleet-agent.service'))).toBe(true);
    expect((await run(join(extracted, 'usr/bin/agent'), ['--version'])).stdout).toMatch(/\d+\.\d+\.\d+/);
  });

  it('is built for a small footprint: an ASCII bundle without comments or MQTT.js transports the agent never uses, run with the footprint settings', async () => {
    const lib = join(extracted, 'usr/lib/tpm-fleet-agent');
    const bundle = readFileSync(join(lib, 'agent.mjs'));
    // One byte per character in V8's heap: no byte outside ASCII.
    expect(bundle.findIndex((b) => b > 0x7f)).toBe(-1);
    const text = bundle.toString('latin1');
    expect(text).not.toMatch(/class WebSocket\b|SocksClient/);
    expect(text).toContain('AGENT_TRANSPORT_UNSUPPORTED');
    const wrapper = readFileSync(join(extracted, 'usr/bin/agent'), 'utf8');
    expect(wrapper).toMatch(/^exec "\$lib\/node" --max-semi-space-size=1 --lite-mode "\$lib\/agent\.mjs" "\$@"$/m);
    expect(wrapper).toMatch(/^MALLOC_ARENA_MAX=\$\{MALLOC_ARENA_MAX:-2\}$/m);
  });

  it('its unit passes systemd-analyze verify and rates an exposure of at most 2.5', async () => {
    expect(built.systemdExposure).toBeLessThanOrEqual(2.5);
    // The unit as packaged, with what the sandbox must not lose.
    const unit = (await run('cat', [join(extracted, 'lib/systemd/system/tpm-fleet-agent.service')])).stdout;
    for (const line of ['User=tpm-fleet-agent', 'SupplementaryGroups=tss', 'StateDirectoryMode=0700', 'DeviceAllow=/dev/tpmrm0 rw', 'ProtectSystem=strict', 'NoNewPrivileges=yes', 'SystemCallFilter=@system-service', 'CapabilityBoundingSet=', 'Restart=on-failure', 'Type=notify', 'NotifyAccess=main', 'WatchdogSec=60', 'DefaultDependencies=no', 'Conflicts=shutdown.target']) {
      expect(unit).toContain(line);
    }
  });

  describe('the packaged agent on its own Node 24 against a real fleet', () => {
    let f: Awaited<ReturnType<typeof fleetWithTpm>>;
    beforeAll(async () => {
      f = await fleetWithTpm(join(dir, 'fleet'), 'package.fleet');
    }, 60_000);
    afterAll(async () => {
      await f?.stop();
    });

    it('enrolls and goes online with its default config, then stops cleanly on SIGTERM', async () => {
      const boot = await registerDevice(f.fleet, { deviceId: 'pkg-1', tcti: f.tpm.tcti, ...(await readEk(f.tpm.tcti)) });
      const bootstrap = join(dir, 'bootstrap.json');
      writeFileSync(bootstrap, JSON.stringify(boot), { mode: 0o600 });
      const agent = await agentOnline(join(extracted, 'usr/bin/agent'), ['run', '--bootstrap', bootstrap, '--data', join(dir, 'state'), '--config', join(extracted, 'etc/tpm-fleet/agent.json')]);
      expect(f.fleet.inventory.getDevice('pkg-1')?.enrolledAt).toBeDefined();
      // The process is the packaged Node runtime, not the machine's.
      expect(readlinkSync(`/proc/${agent.child.pid}/exe`)).toBe(join(extracted, 'usr/lib/tpm-fleet-agent/node'));
      expect(await agent.stop()).toBe(0);
    }, 60_000);
  });

  describe('installed with dpkg in a clean Debian root (chroot), against a real fleet', () => {
    let f: Awaited<ReturnType<typeof fleetWithTpm>>;
    let debian: DebianRoot;
    let previous: string;
    beforeAll(async () => {
      const version = await field('Version');
      [f, debian, previous] = await Promise.all([
        fleetWithTpm(join(dir, 'fleet2'), 'install.fleet'),
        openDebianRoot(join(dir, 'debian'), DEBIAN_ROOT_PACKAGES),
        // The build before the store had a schema, under a lower Debian version ("~" sorts first).
        buildPreviousPackage(ROOT, PREVIOUS_BUILD_COMMIT, join(dir, 'previous'), `${version}~schema0`),
      ]);
    }, 600_000);
    afterAll(async () => {
      await f?.stop();
      await debian?.close();
    });

    const dpkg = (...args: string[]) => debian.chroot(['dpkg', ...args]);
    const inRoot = (p: string) => join(debian.dir, p);
    /** The packaged service's command, as systemd would run it, as the packaged user, in the root. */
    const runAgent = () =>
      agentOnline(
        'chroot',
        ['--userspec=tpm-fleet-agent:tpm-fleet-agent', '--groups=tss', debian.dir, '/usr/bin/agent', 'run', '--bootstrap', '/etc/tpm-fleet/bootstrap.json', '--data', '/var/lib/tpm-fleet-agent', '--config', '/etc/tpm-fleet/agent.json'],
        CHROOT_ENV,
      );

    it('installs the previous build (user in group tss, store 0700) and enrolls as the packaged user; the upgrade to this build migrates the store and keeps the identity; remove keeps the state, purge destroys it and says so', async () => {
      await run('cp', [previous, inRoot('tmp/previous.deb')]);
      await dpkg('-i', '/tmp/previous.deb');
      expect((await dpkg('-s', 'tpm-fleet-agent')).stdout).toMatch(/^Version: .*~schema0$/m);
      expect((await debian.chroot(['id', '-nG', 'tpm-fleet-agent'])).stdout.trim().split(' ')).toEqual(expect.arrayContaining(['tpm-fleet-agent', 'tss']));
      expect((await debian.chroot(['stat', '-c', '%U %a', '/var/lib/tpm-fleet-agent'])).stdout.trim()).toBe('tpm-fleet-agent 700');

      // The factory's bootstrap file, handed over as docs/install.md says.
      const boot = await registerDevice(f.fleet, { deviceId: 'inst-1', tcti: f.tpm.tcti, ...(await readEk(f.tpm.tcti)) });
      writeFileSync(inRoot('tmp/bootstrap.json'), JSON.stringify(boot));
      await debian.chroot(['install', '-o', 'tpm-fleet-agent', '-g', 'tpm-fleet-agent', '-m', '0600', '/tmp/bootstrap.json', '/etc/tpm-fleet/bootstrap.json']);
      const first = await runAgent();
      const enrolled = f.fleet.inventory.getDevice('inst-1');
      expect(enrolled?.certSerial).toBeDefined();
      expect(await first.stop()).toBe(0);
      // The previous build's layout: no schema record (version 0). Its slots already record notBefore
      // (older builds' did not: store-migrations.test.ts covers that part of migration 1).
      const store = inRoot('var/lib/tpm-fleet-agent/state');
      const old = await storeRecords(store);
      expect(old['schema']).toBeUndefined();
      const active = old[`slot:${String(old['active'])}`] as { certificate: string; notBefore?: number };

      // Upgrade to this checkout's build.
      await run('cp', [deb, inRoot('tmp/agent.deb')]);
      await dpkg('-i', '/tmp/agent.deb');
      expect((await dpkg('-s', 'tpm-fleet-agent')).stdout).toMatch(new RegExp(`^Version: ${(await field('Version')).replace(/[.+]/g, '\\$&')}$`, 'm'));
      const again = await runAgent();
      // The same identity: no new enrollment, no new certificate.
      const after = f.fleet.inventory.getDevice('inst-1');
      expect(after?.certSerial).toBe(enrolled!.certSerial);
      expect(after?.enrolledAt).toBe(enrolled!.enrolledAt);
      expect(f.fleet.inventory.listCertificates('inst-1')).toHaveLength(1);
      const migratedLine = again.output().split('\n').find((l) => l.includes('"msg":"store migrated"'));
      expect(migratedLine && JSON.parse(migratedLine)).toMatchObject({ from: 0, to: STORE_SCHEMA });
      expect(await again.stop()).toBe(0);
      // Migrated by the versioned migration: the schema recorded; the AK and the identity as they were.
      const migrated = await storeRecords(store);
      expect(migrated['schema']).toBe(STORE_SCHEMA);
      const slot = migrated[`slot:${String(migrated['active'])}`] as { certificate: string; notBefore?: number };
      expect(slot).toEqual(active);
      for (const key of ['ak', 'active', 'slot:A', 'slot:B', 'enrolled']) expect(migrated[key], key).toEqual(old[key]);
      expect(slot.notBefore).toBe(Date.parse(new X509Certificate(slot.certificate).validFrom));
      // The store still belongs to the service's user, 0700.
      expect((await debian.chroot(['stat', '-c', '%U %a', '/var/lib/tpm-fleet-agent'])).stdout.trim()).toBe('tpm-fleet-agent 700');

      await dpkg('-r', 'tpm-fleet-agent');
      expect(existsSync(inRoot('usr/bin/agent'))).toBe(false);
      expect(existsSync(inRoot('var/lib/tpm-fleet-agent'))).toBe(true);
      const purge = await dpkg('-P', 'tpm-fleet-agent');
      expect(purge.stderr).toMatch(/identity .* is lost/s);
      expect(existsSync(inRoot('var/lib/tpm-fleet-agent'))).toBe(false);
      expect(existsSync(inRoot('etc/tpm-fleet/agent.json'))).toBe(false);
      expect(existsSync(inRoot('etc/tpm-fleet/bootstrap.json'))).toBe(true);
    }, 240_000);
  });
});
