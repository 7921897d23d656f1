import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../common/clock.js';
import { LevelInventory } from '../../broker-bridge/src/inventory/level-inventory.js';
import { TPM_CC, TPM_RC, TpmProxy } from '../../sim/src/sim/tpm-proxy.js';
import { provisionBatch, type BatchOptions } from './batch.js';
import { InventorySink } from './sinks.js';
import { TpmLine } from './test-fixture.js';

/**
 * The factory station on a TPM that behaves like a chip (issue 13): the faulty-TPM proxy between the
 * station's ESAPI and a real swtpm answers busy codes in bursts, then a hard failure.
 */
describe('factory station on a faulty TPM (proxy in front of swtpm, real LevelDB)', () => {
  let line: TpmLine;
  let proxy: TpmProxy;
  let dir: string;
  let inventory: LevelInventory;
  const clock = new ManualClock(0);

  beforeAll(async () => {
    line = await TpmLine.start({ acme: 1 });
    clock.set(Date.now());
    proxy = await TpmProxy.start(line.tpms('acme')[0]!.port);
    dir = mkdtempSync(join(tmpdir(), 'station-faulty-'));
    inventory = new LevelInventory(join(dir, 'inventory'));
    await inventory.open();
  }, 30_000);
  afterAll(async () => {
    await inventory?.close();
    await proxy?.stop();
    await line?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const batch = (deviceId: string): BatchOptions => {
    const manifestPath = join(dir, `${deviceId}.jsonl`);
    writeFileSync(manifestPath, `${JSON.stringify({ deviceId, tcti: proxy.tcti })}\n`);
    return {
      manifestPath,
      outDir: join(dir, `out-${deviceId}`),
      manufacturers: { roots: [line.manufacturer('acme').rootPem()], intermediates: [line.manufacturer('acme').intermediatePem()] },
      fleet: { enrollUrl: 'mqtts://fleet.example:8883', deviceUrl: 'mqtts://fleet.example:8884', trustBundle: [line.manufacturer('acme').rootPem()], baseTopic: 'fleet/v1' },
      sink: new InventorySink(inventory),
      clock,
      tokenTtlSec: 3600,
    };
  };

  it('provisions through bursts of RETRY, YIELDED and TESTING on the commands it sends', async () => {
    proxy.setRules([
      { commandCode: TPM_CC.NV_ReadPublic, respond: { rc: TPM_RC.YIELDED, times: 3 } },
      { commandCode: TPM_CC.NV_Read, respond: { rc: TPM_RC.RETRY, times: 3 } },
      { commandCode: TPM_CC.CreatePrimary, respond: { rc: TPM_RC.TESTING, times: 3 } },
    ]);
    const summary = await provisionBatch(batch('faulty-busy'));
    expect(summary).toMatchObject({ total: 1, provisioned: 1, refused: 0 });
    expect(proxy.stats().injected).toBe(9);
    expect(inventory.getDevice('faulty-busy')?.ekKind).toBe('ecc');
  });

  it("refuses the device with STATION_TPM and the TPM's reason when the TPM fails, without retrying it", async () => {
    proxy.setRules([{ commandCode: TPM_CC.CreatePrimary, respond: { rc: TPM_RC.FAILURE } }]);
    const before = proxy.stats().commands.get(TPM_CC.CreatePrimary) ?? 0;
    const summary = await provisionBatch(batch('faulty-failed'));
    expect(summary).toMatchObject({ total: 1, provisioned: 0, refused: 1 });
    expect(summary.entries[0]).toMatchObject({ deviceId: 'faulty-failed', result: 'refused', code: 'STATION_TPM' });
    expect(summary.entries[0]!.message).toMatch(/createPrimary\(EK\).*a TPM failure/);
    // One CreatePrimary per EK kind tried at most: nothing retried.
    expect((proxy.stats().commands.get(TPM_CC.CreatePrimary) ?? 0) - before).toBeLessThanOrEqual(2);
    expect(inventory.getDevice('faulty-failed')).toBeUndefined();
    proxy.setRules([]);
  });
});
