import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NativeTpm } from '../../../native/lib/native-tpm.js';
import { TpmFactory, type ManufacturedTpm } from '../factory.js';
import { TpmLatencyProxy } from './tpm-latency.js';

/** A slow TPM in front of a real swtpm: every command takes at least the latency; devices do not wait for each other. */
describe('TPM latency proxy (real swtpm)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tpm-latency-'));
  const LATENCY = 150;
  let tpms: ManufacturedTpm[] = [];
  let proxies: TpmLatencyProxy[] = [];

  beforeAll(async () => {
    const factory = await TpmFactory.create();
    tpms = await factory.manufactureMany(4, (i) => join(dir, `tpm-${i}`));
    proxies = await Promise.all(tpms.map((t) => TpmLatencyProxy.start(t.tpm.port, LATENCY)));
  });
  afterAll(async () => {
    await Promise.all(proxies.map((p) => p.stop()));
    await Promise.all(tpms.map((t) => t.tpm.stop()));
    rmSync(dir, { recursive: true, force: true });
  });

  /** Reads the EK certificate and creates the EK: several TPM commands through the proxy. */
  const work = async (p: TpmLatencyProxy) => {
    const t0 = Date.now();
    const tpm = await NativeTpm.open(p.tcti);
    try {
      expect(await tpm.readEkCertificate('ecc')).not.toBeNull();
      await tpm.flush(await tpm.createEk('ecc'));
    } finally {
      await tpm.close();
    }
    return Date.now() - t0;
  };

  it('delays every command response by the latency, and answers correctly', async () => {
    const slow = await work(proxies[0]!);
    // At least four commands (NV read-public, NV read, CreatePrimary, FlushContext), each held LATENCY.
    expect(slow).toBeGreaterThanOrEqual(4 * LATENCY);
  });

  it('does not serialise devices: four in parallel take about as long as one', async () => {
    const one = await work(proxies[1]!);
    const t0 = Date.now();
    await Promise.all(proxies.map(work));
    const four = Date.now() - t0;
    // Serialised they would take 4x; in parallel about 1x (bounded generously at 2x).
    expect(four).toBeLessThan(2 * one);
  });

  it('refuses an impossible latency', async () => {
    await expect(TpmLatencyProxy.start(1, -1)).rejects.toMatchObject({ code: 'TPM_LATENCY_INVALID' });
  });
});
