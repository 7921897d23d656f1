import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePorts } from '../../common/managed-process.js';
import { createManufacturer, manufactureTpm, type Manufacturer } from '../../sim/src/swtpm.js';
import { runner } from './select.js';
import { track } from './registry.js';
import { startTracked } from './backend.js';

/** A manufactured software TPM (RSA + ECC EKs with certificates in NV) served by swtpm. */
export interface TestTpm {
  readonly tcti: string;
  readonly host: string;
  readonly port: number;
  readonly ctrlPort: number;
  readonly stateDir: string;
  /** Root of the manufacturer CA that signed the EK certificates (generated for this test run). */
  readonly manufacturerRootPem: string;
  readonly manufacturerIntermediatePem: string;
  readonly manufacturer: Manufacturer;
  readonly pid: number | undefined;
  stop(): Promise<void>;
  /** Stops and starts the same TPM state on the same ports. */
  restart(): Promise<void>;
}

let defaultManufacturer: Manufacturer | undefined;

/** A TPM manufacturer of its own (e.g. one the fleet does not trust). */
export function newManufacturer(): Manufacturer {
  const dir = mkdtempSync(join(tmpdir(), 'tpm-manufacturer-'));
  track({ stop: async () => rmSync(dir, { recursive: true, force: true }) });
  return createManufacturer(dir);
}

export async function startTpm(opts?: { manufacturer?: Manufacturer }): Promise<TestTpm> {
  const manufacturer = opts?.manufacturer ?? (defaultManufacturer ??= newManufacturer());
  const stateDir = mkdtempSync(join(tmpdir(), 'swtpm-state-'));
  // Each TPM is manufactured fresh: distinct EKs, and no dictionary-attack counter carried over.
  await manufactureTpm(stateDir, manufacturer);
  const r = await runner();
  let port = 0;
  const svc = await startTracked(
    r,
    async () => {
      port = await freePorts(2);
      return {
        name: 'swtpm',
        command: 'swtpm',
        args: ['socket', '--tpm2', '--server', `type=tcp,port=${port},bindaddr={bind}`, '--ctrl', `type=tcp,port=${port + 1},bindaddr={bind}`,
          '--flags', 'not-need-init,startup-clear', '--tpmstate', `dir=${stateDir}`],
        ports: [port, port + 1],
        mounts: [stateDir],
      };
    },
    stateDir,
  );
  return {
    tcti: `swtpm:host=127.0.0.1,port=${port}`,
    host: '127.0.0.1',
    port,
    ctrlPort: port + 1,
    stateDir,
    manufacturerRootPem: manufacturer.rootPem(),
    manufacturerIntermediatePem: manufacturer.intermediatePem(),
    manufacturer,
    get pid() {
      return svc.pid;
    },
    stop: () => svc.stop(),
    restart: () => svc.restart(),
  };
}
