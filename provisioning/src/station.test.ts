import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { X509Certificate, createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../common/clock.js';
import { hashEnrollmentToken } from '../../common/enrollment-token.js';
import { LevelInventory } from '../../broker-bridge/src/inventory/level-inventory.js';
import { parseBootstrap } from '../../agent/src/config.js';
import { provisionBatch, type BatchOptions } from './batch.js';
import { runStation } from './cli.js';
import { importRegistrations } from './import.js';
import { ExportFileSink, InventorySink } from './sinks.js';
import { TpmLine } from './test-fixture.js';

const BOOTSTRAP_KEYS = ['baseTopic', 'deviceId', 'deviceUrl', 'ekKind', 'enrollUrl', 'tcti', 'token', 'tokenExpiresAt', 'trustBundle', 'v'];
const TTL_SEC = 3600;

describe('factory station (real swtpm, real LevelDB)', () => {
  let line: TpmLine;
  let dir: string;
  let inventory: LevelInventory;
  let trustBundle: string[];
  // Set once the TPMs exist: their EK certificates are valid from the moment they were manufactured.
  const clock = new ManualClock(0);

  beforeAll(async () => {
    line = await TpmLine.start({ acme: 3, rogue: 1 });
    clock.set(Date.now());
    dir = mkdtempSync(join(tmpdir(), 'station-'));
    // Any real certificate will do as the fleet's trust bundle here.
    trustBundle = [line.manufacturer('rogue').rootPem()];
    inventory = new LevelInventory(join(dir, 'inventory'));
    await inventory.open();
    const devices = [
      ...line.tpms('acme').map((t, i) => ({ deviceId: `line-${i}`, tcti: t.tcti, metadata: { model: 'gw-1', serial: `SN-${i}`, owner: 'plant-7' } })),
      { deviceId: 'line-rogue', tcti: line.tpms('rogue')[0]!.tcti },
    ];
    writeFileSync(join(dir, 'manifest.jsonl'), devices.map((d) => JSON.stringify(d)).join('\n') + '\n');
  }, 30_000);

  afterAll(async () => {
    const pids = line?.pids() ?? [];
    await inventory?.close();
    await line?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
    for (const pid of pids) expect(isAlive(pid), `swtpm ${pid} still running`).toBe(false);
  });

  const fleet = () => ({ enrollUrl: 'mqtts://fleet.example:8883', deviceUrl: 'mqtts://fleet.example:8884', trustBundle, baseTopic: 'fleet/v1' });
  const options = (over: Partial<BatchOptions> = {}): BatchOptions => ({
    manifestPath: join(dir, 'manifest.jsonl'),
    outDir: join(dir, 'out'),
    manufacturers: { roots: [line.manufacturer('acme').rootPem()], intermediates: [line.manufacturer('acme').intermediatePem()] },
    fleet: fleet(),
    sink: new InventorySink(inventory),
    clock,
    tokenTtlSec: TTL_SEC,
    ...over,
  });
  const bootstrapOf = (outDir: string, id: string) => JSON.parse(readFileSync(join(outDir, 'devices', `${id}.json`), 'utf8')) as Record<string, unknown> & { token: string };
  const auditOf = (outDir: string) =>
    readFileSync(join(outDir, 'audit.jsonl'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  it('provisions a batch into the inventory and refuses the TPM of an untrusted manufacturer', async () => {
    const outDir = join(dir, 'out');
    const summary = await provisionBatch(options({ concurrency: 4 }));
    expect(summary).toMatchObject({ total: 4, provisioned: 3, refused: 1, skipped: 0 });
    expect(summary.entries.map((e) => e.deviceId)).toEqual(['line-0', 'line-1', 'line-2', 'line-rogue']);

    for (const [i, tpm] of line.tpms('acme').entries()) {
      const id = `line-${i}`;
      const path = join(outDir, 'devices', `${id}.json`);
      expect(statSync(path).mode & 0o777).toBe(0o600);
      const boot = bootstrapOf(outDir, id);
      expect(Object.keys(boot).sort()).toEqual(BOOTSTRAP_KEYS);
      expect(boot).toMatchObject({ v: 1, deviceId: id, tcti: tpm.tcti, ...fleet(), tokenExpiresAt: clock.now() + TTL_SEC * 1000 });
      expect(parseBootstrap(boot).token).toBe(boot.token);

      const device = inventory.getDevice(id)!;
      // The agent attests with the EK the station verified and registered.
      expect(boot.ekKind).toBe(device.ekKind);
      const cert = new X509Certificate(Buffer.from(device.ekCertificate!, 'base64'));
      const ekHash = createHash('sha256').update(cert.publicKey.export({ type: 'spki', format: 'der' })).digest('hex');
      expect(device).toMatchObject({ ekPublicHash: ekHash, ekKind: 'ecc', registeredAt: clock.now(), metadata: { model: 'gw-1', serial: `SN-${i}`, owner: 'plant-7' } });
      expect(inventory.getToken(hashEnrollmentToken(boot.token))).toEqual({
        tokenHash: hashEnrollmentToken(boot.token),
        deviceId: id,
        ekPublicHash: ekHash,
        createdAt: clock.now(),
        expiresAt: clock.now() + TTL_SEC * 1000,
      });
    }
    expect(new Set(inventory.listDevices().map((d) => d.ekPublicHash)).size).toBe(3);

    const audit = auditOf(outDir);
    expect(audit).toHaveLength(4);
    expect(audit.find((e) => e.deviceId === 'line-rogue')).toMatchObject({ result: 'refused', code: 'STATION_EK_UNTRUSTED' });
    for (let i = 0; i < 3; i++) {
      expect(audit.find((e) => e.deviceId === `line-${i}`)).toEqual({
        at: clock.now(),
        deviceId: `line-${i}`,
        result: 'provisioned',
        ekPublicHash: inventory.getDevice(`line-${i}`)!.ekPublicHash,
        bootstrapPath: join(outDir, 'devices', `line-${i}.json`),
      });
    }

    // Nothing registered for the foreign TPM, and no bootstrap file.
    expect(inventory.getDevice('line-rogue')).toBeUndefined();
    expect(await inventory.listAudit({ deviceId: 'line-rogue' })).toEqual([]);
    expect(existsSync(join(outDir, 'devices', 'line-rogue.json'))).toBe(false);

    // The tokens exist in the bootstrap files only: not in the audit manifest, not in the inventory.
    const elsewhere = [join(outDir, 'audit.jsonl'), ...filesUnder(join(dir, 'inventory'))].map((f) => readFileSync(f));
    for (let i = 0; i < 3; i++) {
      const token = bootstrapOf(outDir, `line-${i}`).token;
      for (const bytes of elsewhere) expect(bytes.includes(token)).toBe(false);
    }
  });

  it('resumes: a re-run skips the provisioned devices, changes nothing, and retries the refused one', async () => {
    const outDir = join(dir, 'out');
    const state = async () => ({
      devices: inventory.listDevices(),
      tokens: [0, 1, 2].map((i) => inventory.getToken(hashEnrollmentToken(bootstrapOf(outDir, `line-${i}`).token))),
      fleetAudit: (await inventory.listAudit()).length,
      files: [0, 1, 2].map((i) => {
        const p = join(outDir, 'devices', `line-${i}.json`);
        return [readFileSync(p, 'utf8'), statSync(p).mtimeMs];
      }),
    });
    const before = await state();
    clock.advance(60_000);
    const summary = await provisionBatch(options());
    expect(summary).toMatchObject({ provisioned: 0, skipped: 3, refused: 1 });
    expect(await state()).toEqual(before);
    const audit = auditOf(outDir);
    expect(audit).toHaveLength(8);
    expect(audit.slice(4).map((e) => [e.deviceId, e.result])).toEqual([
      ['line-0', 'skipped'],
      ['line-1', 'skipped'],
      ['line-2', 'skipped'],
      ['line-rogue', 'refused'],
    ]);
  });

  it('refuses a second device id for a TPM that is already registered', async () => {
    const manifest = join(dir, 'clone.jsonl');
    writeFileSync(manifest, JSON.stringify({ deviceId: 'clone-0', tcti: line.tpms('acme')[0]!.tcti }) + '\n');
    const summary = await provisionBatch(options({ manifestPath: manifest, outDir: join(dir, 'clone-out') }));
    expect(summary.entries).toEqual([expect.objectContaining({ deviceId: 'clone-0', result: 'refused', code: 'STATION_CONFLICT' })]);
    expect(inventory.getDevice('clone-0')).toBeUndefined();
    expect(existsSync(join(dir, 'clone-out', 'devices', 'clone-0.json'))).toBe(false);
  });

  it('exports registrations for an offline line; import is idempotent, keeps the newest token, reports conflicts and bad lines', async () => {
    const outDir = join(dir, 'offline');
    const exportPath = join(dir, 'registrations.jsonl');
    const batch = () => provisionBatch(options({ outDir, sink: new ExportFileSink(exportPath) }));
    expect(await batch()).toMatchObject({ provisioned: 3, refused: 1 });
    expect(statSync(exportPath).mode & 0o777).toBe(0o600);
    const exported = readFileSync(exportPath, 'utf8');
    expect(exported.trimEnd().split('\n')).toHaveLength(3);
    for (let i = 0; i < 3; i++) expect(exported).not.toContain(bootstrapOf(outDir, `line-${i}`).token);

    const fleetInv = new LevelInventory(join(dir, 'fleet-inventory'));
    await fleetInv.open();
    try {
      const snapshot = async () => JSON.stringify({ d: fleetInv.listDevices(), a: (await fleetInv.listAudit()).length });
      expect(await importRegistrations(exportPath, fleetInv)).toEqual({ lines: 3, imported: 3, unchanged: 0, superseded: 0, conflicts: [], refused: [], invalid: [] });
      for (let i = 0; i < 3; i++) {
        const token = fleetInv.getToken(hashEnrollmentToken(bootstrapOf(outDir, `line-${i}`).token));
        expect(token).toMatchObject({ deviceId: `line-${i}`, ekPublicHash: fleetInv.getDevice(`line-${i}`)!.ekPublicHash });
      }
      const once = await snapshot();
      expect(await importRegistrations(exportPath, fleetInv)).toMatchObject({ imported: 0, unchanged: 3 });
      expect(await snapshot()).toBe(once);

      // The bootstrap file of line-1 is lost: the re-run mints a new token and exports a second line.
      const oldToken = bootstrapOf(outDir, 'line-1').token;
      unlinkSync(join(outDir, 'devices', 'line-1.json'));
      expect(await batch()).toMatchObject({ provisioned: 1, skipped: 2, refused: 1 });
      const newToken = bootstrapOf(outDir, 'line-1').token;
      expect(await importRegistrations(exportPath, fleetInv)).toMatchObject({ lines: 4, imported: 1, unchanged: 2, superseded: 1 });
      expect(fleetInv.getToken(hashEnrollmentToken(newToken))).toMatchObject({ deviceId: 'line-1' });
      expect(fleetInv.getToken(hashEnrollmentToken(oldToken))).toBeUndefined();
      const twice = await snapshot();
      expect(await importRegistrations(exportPath, fleetInv)).toMatchObject({ imported: 0, unchanged: 3, superseded: 1 });
      expect(await snapshot()).toBe(twice);

      // Lines 5-8: line-0 with line-1's EK, line-2's EK under a new id, not JSON, a schema violation.
      const [, l1, l2] = exported.trimEnd().split('\n').map((l) => JSON.parse(l) as { device: Record<string, unknown>; token: Record<string, unknown> });
      const renamed = (l: typeof l1, id: string) =>
        JSON.stringify({ v: 1, device: { ...l!.device, deviceId: id }, token: { ...l!.token, deviceId: id, tokenHash: 'ab'.repeat(32) } });
      writeFileSync(exportPath, [renamed(l1, 'line-0'), renamed(l2, 'line-9'), '{"v":1,', '{"v":1,"device":{}}', ''].join('\n'), { flag: 'a' });
      const s = await importRegistrations(exportPath, fleetInv);
      expect(s).toMatchObject({ imported: 0, unchanged: 3 });
      expect(s.conflicts).toEqual([
        { line: 5, deviceId: 'line-0', reason: expect.stringContaining('another EK') },
        { line: 6, deviceId: 'line-9', reason: expect.stringContaining('line-2') },
      ]);
      expect(s.invalid).toEqual([
        { line: 7, reason: expect.stringContaining('not valid JSON') },
        { line: 8, reason: expect.stringContaining('device.deviceId') },
      ]);
      expect(await snapshot()).toBe(twice);
    } finally {
      await fleetInv.close();
    }
  });

  it('runs from the command line: provision --export, import, exit codes', async () => {
    const files = mkdtempSync(join(dir, 'cli-'));
    const pem = (name: string, text: string) => {
      writeFileSync(join(files, name), text);
      return join(files, name);
    };
    const manifest = pem('m.jsonl', line.tpms('acme').map((t, i) => JSON.stringify({ deviceId: `cli-${i}`, tcti: t.tcti })).join('\n'));
    const io = () => {
      const out = { stdout: '', stderr: '' };
      return { out, io: { stdout: { write: (s: string) => (out.stdout += s) }, stderr: { write: (s: string) => (out.stderr += s) }, clock } };
    };
    const args = [
      'provision', '--manifest', manifest, '--out', join(files, 'out'),
      '--roots', pem('roots.pem', line.manufacturer('acme').rootPem()),
      '--intermediates', pem('int.pem', line.manufacturer('acme').intermediatePem()),
      '--enroll-url', 'mqtts://fleet.example:8883', '--device-url', 'mqtts://fleet.example:8884',
      '--trust-bundle', pem('bundle.pem', trustBundle[0]!), '--token-ttl', '2d', '--parallel', '3',
      '--export', join(files, 'reg.jsonl'),
    ];
    const p = io();
    expect(await runStation(args, p.io)).toBe(0);
    expect(p.out.stdout).toBe('provisioned 3, skipped 0, refused 0 of 3\n');
    expect(p.out.stderr.split('\n').filter(Boolean)).toHaveLength(3);
    expect(bootstrapOf(join(files, 'out'), 'cli-0').tokenExpiresAt).toBe(clock.now() + 2 * 86_400_000);

    const imp = io();
    const importArgs = ['import', '--file', join(files, 'reg.jsonl'), '--inventory', join(files, 'inv')];
    expect(await runStation(importArgs, imp.io)).toBe(0);
    expect(imp.out.stdout).toBe('imported 3, unchanged 0, superseded 0, conflicts 0, refused 0, invalid 0\n');
    const again = io();
    expect(await runStation(importArgs, again.io)).toBe(0);
    expect(again.out.stdout).toBe('imported 0, unchanged 3, superseded 0, conflicts 0, refused 0, invalid 0\n');
    // While another process (here: this one) holds the inventory, import says so in one coded line.
    const holder = new LevelInventory(join(files, 'inv'));
    await holder.open();
    try {
      const locked = io();
      expect(await runStation(importArgs, locked.io)).toBe(1);
      expect(locked.out.stdout).toBe('');
      expect(locked.out.stderr).toMatch(/^station: INVENTORY_LOCKED: the inventory .* is in use by another process.*--bridge registers through a running bridge\)\n$/);
      expect(locked.out.stderr.trim().split('\n')).toHaveLength(1);
    } finally {
      await holder.close();
    }

    // Trusting only the rogue vendor refuses every device: exit code 1, each refusal named.
    const refused = io();
    const rogueArgs = args.map((a) => (a === join(files, 'out') ? join(files, 'out-2') : a));
    rogueArgs[rogueArgs.indexOf('--roots') + 1] = pem('rogue.pem', line.manufacturer('rogue').rootPem());
    expect(await runStation(rogueArgs, refused.io)).toBe(1);
    expect(refused.out.stdout).toBe('provisioned 0, skipped 0, refused 3 of 3\n');
    expect(refused.out.stderr).toContain('cli-0 refused [STATION_EK_UNTRUSTED]');
    // Nothing of a refused device reaches the disk: no bootstrap file, not even a temporary one.
    expect(readdirSync(join(files, 'out-2', 'devices'))).toEqual([]);
  });
});

function filesUnder(root: string): string[] {
  return readdirSync(root, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(join(root, e.name)) : [join(root, e.name)]));
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
