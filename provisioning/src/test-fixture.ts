import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createManufacturer, manufactureTpm, SwtpmProcess, type Manufacturer } from '../../sim/src/swtpm.js';

/**
 * Test helper: a factory line of real swtpm TPMs from one or more manufacturers, all manufactured and
 * started in parallel (swtpm_localca locks its CA directory, so one vendor's TPMs can be made at once).
 * `stop` stops every swtpm it started and removes the state.
 */
export class TpmLine {
  readonly dir: string;
  readonly #vendors = new Map<string, { manufacturer: Manufacturer; tpms: SwtpmProcess[] }>();

  private constructor(dir: string) {
    this.dir = dir;
  }

  static async start(plan: Readonly<Record<string, number>>): Promise<TpmLine> {
    const line = new TpmLine(mkdtempSync(join(tmpdir(), 'station-tpms-')));
    try {
      const jobs = Object.entries(plan).flatMap(([vendor, count]) => {
        const manufacturer = createManufacturer(join(line.dir, vendor), `vendor-${vendor}`);
        const tpms: SwtpmProcess[] = [];
        line.#vendors.set(vendor, { manufacturer, tpms });
        return Array.from({ length: count }, async (_, i) => {
          const state = join(line.dir, `${vendor}-tpm-${i}`);
          await manufactureTpm(state, manufacturer);
          tpms[i] = await startSwtpm(state);
        });
      });
      const results = await Promise.allSettled(jobs);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
      return line;
    } catch (e) {
      await line.stop();
      throw e;
    }
  }

  manufacturer(vendor: string): Manufacturer {
    return this.#vendor(vendor).manufacturer;
  }

  tpms(vendor: string): readonly SwtpmProcess[] {
    return this.#vendor(vendor).tpms;
  }

  pids(): number[] {
    return [...this.#vendors.values()].flatMap((v) => v.tpms.flatMap((t) => (t?.pid === undefined ? [] : [t.pid])));
  }

  async stop(): Promise<void> {
    await Promise.allSettled([...this.#vendors.values()].flatMap((v) => v.tpms.map((t) => t?.stop())));
    rmSync(this.dir, { recursive: true, force: true });
  }

  #vendor(vendor: string) {
    const v = this.#vendors.get(vendor);
    if (!v) throw new Error(`no vendor ${vendor} on this line`);
    return v;
  }
}

/** Parallel starts may race for the same free ports; a lost race is simply tried again. */
async function startSwtpm(state: string): Promise<SwtpmProcess> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await SwtpmProcess.start(state);
    } catch (e) {
      if (attempt >= 3) throw e;
    }
  }
}
