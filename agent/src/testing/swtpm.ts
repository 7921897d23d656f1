import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createManufacturer, manufactureTpm, SwtpmProcess, type Manufacturer } from '../../../sim/src/swtpm.js';

/** A freshly manufactured swtpm (ECC + RSA EKs with certificates) for agent tests; `stop()` kills it. */
export interface TestSwtpm {
  readonly tcti: string;
  readonly manufacturer: Manufacturer;
  stop(): Promise<void>;
}

export async function startSwtpm(): Promise<TestSwtpm> {
  const dir = mkdtempSync(join(tmpdir(), 'agent-swtpm-'));
  try {
    const manufacturer = createManufacturer(join(dir, 'manufacturer'));
    await manufactureTpm(join(dir, 'state'), manufacturer);
    const proc = await SwtpmProcess.start(join(dir, 'state'));
    return {
      tcti: proc.tcti,
      manufacturer,
      stop: async () => {
        await proc.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
