import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { systemClock } from '../../common/clock.js';
import { hashEnrollmentToken } from '../../common/enrollment-token.js';
import { LevelInventory } from '../../broker-bridge/src/inventory/level-inventory.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { parseBootstrap } from '../../agent/src/config.js';
import { newManufacturer, startTpm, type TestTpm } from '../../test/harness/index.js';
import { provisionBatch, readManifest, type BatchOptions } from './batch.js';
import { ExportFileSink, InventorySink, importRegistrations } from './sinks.js';

describe('factory station (real swtpm, real LevelDB)', () => {
  let dir: string;
  let tpms: TestTpm[];
  let rogue: TestTpm;
  let inventory: LevelInventory;
  const fleet = { enrollUrl: 'mqtts://127.0.0.1:18883', deviceUrl: 'mqtts://127.0.0.1:18884', trustBundle: ['-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'], baseTopic: 'fleet/v1' };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'station-'));
    tpms = await Promise.all([startTpm(), startTpm(), startTpm()]);
    rogue = await startTpm({ manufacturer: newManufacturer() });
    inventory = new LevelInventory(join(dir, 'inventory'));
    await inventory.open();
    const lines = [...tpms.map((t, i) => ({ deviceId: `line-${i}`, tcti: t.tcti, metadata: { model: 'm1', serial: `S${i}` } })), { deviceId: 'line-rogue', tcti: rogue.tcti }];
    writeFileSync(join(dir, 'manifest.jsonl'), lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  });
  afterAll(async () => {
    await inventory?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const options = (over: Partial<BatchOptions> = {}): BatchOptions => ({
    manifestPath: join(dir, 'manifest.jsonl'),
    outDir: join(dir, 'out'),
    manufacturers: { roots: [tpms[0]!.manufacturerRootPem], intermediates: [tpms[0]!.manufacturerIntermediatePem] },
    fleet,
    sink: new InventorySink(inventory),
    clock: systemClock,
    tokenTtlSec: 3600,
    openTpm: (tcti) => NativeTpm.open(tcti),
    ...over,
  });

  it('provisions a batch: registrations with hashed tokens, 0600 bootstrap files, an audit manifest; refuses an unknown manufacturer', async () => {
    const summary = await provisionBatch(options());
    expect(summary).toMatchObject({ provisioned: 3, refused: 1, skipped: 0 });
    expect(summary.entries.find((e) => e.deviceId === 'line-rogue')).toMatchObject({ result: 'refused', code: 'STATION_EK_UNTRUSTED' });
    expect(inventory.getDevice('line-rogue')).toBeUndefined();
    for (let i = 0; i < 3; i++) {
      const path = join(dir, 'out', 'devices', `line-${i}.json`);
      expect(statSync(path).mode & 0o777).toBe(0o600);
      const boot = parseBootstrap(JSON.parse(readFileSync(path, 'utf8')));
      expect(boot).toMatchObject({ deviceId: `line-${i}`, tcti: tpms[i]!.tcti, enrollUrl: fleet.enrollUrl });
      const token = inventory.getToken(hashEnrollmentToken(boot.token))!;
      expect(token).toMatchObject({ deviceId: `line-${i}`, ekPublicHash: inventory.getDevice(`line-${i}`)!.ekPublicHash });
      expect(inventory.getDevice(`line-${i}`)!.metadata).toEqual({ model: 'm1', serial: `S${i}` });
    }
    const audit = readFileSync(join(dir, 'out', 'audit.jsonl'), 'utf8');
    expect(audit.split('\n').filter(Boolean)).toHaveLength(4);
    for (let i = 0; i < 3; i++) {
      const boot = JSON.parse(readFileSync(join(dir, 'out', 'devices', `line-${i}.json`), 'utf8'));
      expect(audit).not.toContain(boot.token);
    }
  });

  it('resumes: a re-run skips provisioned devices, changes nothing, and retries the refused one', async () => {
    const before = JSON.stringify({ devices: inventory.listDevices(), audit: (await inventory.listAudit()).length });
    const summary = await provisionBatch(options());
    expect(summary).toMatchObject({ provisioned: 0, skipped: 3, refused: 1 });
    expect(JSON.stringify({ devices: inventory.listDevices(), audit: (await inventory.listAudit()).length })).toBe(before);
  });

  it('exports registrations for offline lines and imports them idempotently', async () => {
    const exportPath = join(dir, 'registrations.jsonl');
    const summary = await provisionBatch(options({ outDir: join(dir, 'offline'), sink: new ExportFileSink(exportPath) }));
    expect(summary.provisioned).toBe(3);
    expect(statSync(exportPath).mode & 0o777).toBe(0o600);
    const fleetInv = new LevelInventory(join(dir, 'fleet-inventory'));
    await fleetInv.open();
    try {
      expect(await importRegistrations(exportPath, fleetInv)).toMatchObject({ imported: 3, conflicts: [], invalid: [] });
      const snapshot = JSON.stringify({ d: fleetInv.listDevices(), a: (await fleetInv.listAudit()).length });
      expect((await importRegistrations(exportPath, fleetInv)).imported).toBe(3);
      expect(JSON.stringify({ d: fleetInv.listDevices(), a: (await fleetInv.listAudit()).length })).toBe(snapshot);
      writeFileSync(exportPath, '{"v":1,"device":{}}\n', { flag: 'a' });
      expect((await importRegistrations(exportPath, fleetInv)).invalid).toEqual([{ line: 4, reason: expect.stringContaining('device.deviceId') }]);
    } finally {
      await fleetInv.close();
    }
  });

  it('reports a malformed manifest line with its number', () => {
    const bad = join(dir, 'bad.jsonl');
    writeFileSync(bad, '{"deviceId":"ok-1","tcti":"swtpm:port=1"}\n{"deviceId":"bad id!","tcti":"x"}\n');
    expect(() => readManifest(bad)).toThrow(/bad\.jsonl:2: deviceId/);
  });
});
