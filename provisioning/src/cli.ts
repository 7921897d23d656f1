import type { Clock } from '../../common/clock.js';
import { isCodedError } from '../../common/coded-error.js';
import { LevelInventory } from '../../broker-bridge/src/inventory/level-inventory.js';
import type { Tpm } from '../../native/lib/tpm.js';
import { provisionBatch } from './batch.js';
import { StationError } from './errors.js';
import { importRegistrations } from './import.js';
import { parseCommand, USAGE, type StationCommand } from './options.js';
import { progressRenderer, type ProgressStream } from './progress.js';
import { ExportFileSink, InventorySink, type RegistrationSink } from './sinks.js';
import { BUILD_VERSION } from '../../common/build-version.js';

/**
 * The station's commands, runnable in-process (tests) or from main.ts. Resolves the exit code:
 * 0 all done; 1 a device refused, an import line in conflict or malformed, or a failure; 2 bad usage
 * or a bad manifest. Never rejects, and never prints a stack trace for a user error.
 */
export interface StationIo {
  readonly stdout: ProgressStream;
  readonly stderr: ProgressStream;
  readonly openTpm?: (tcti: string) => Promise<Tpm>;
  readonly clock?: Clock;
}

export async function runStation(argv: readonly string[], io: StationIo): Promise<number> {
  try {
    if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
      io.stdout.write(`${BUILD_VERSION}\n`);
      return 0;
    }
    const command = parseCommand(argv);
    if (command.kind === 'help') {
      io.stdout.write(`${USAGE}\n`);
      return 0;
    }
    return command.kind === 'import' ? await runImport(command, io) : await runProvision(command, io);
  } catch (e) {
    if (e instanceof StationError && e.code === 'STATION_USAGE') {
      io.stderr.write(`station: ${e.message}\n${USAGE}\n`);
      return 2;
    }
    if (isCodedError(e)) {
      io.stderr.write(`station: [${e.code}] ${e.message}\n`);
      return e.code === 'STATION_MANIFEST_INVALID' ? 2 : 1;
    }
    io.stderr.write(`station: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    return 1;
  }
}

async function openInventory(dir: string): Promise<LevelInventory> {
  const inventory = new LevelInventory(dir);
  try {
    await inventory.open();
  } catch (e) {
    if (isCodedError(e) && e.code === 'INVENTORY_LOCKED') throw e; // says which process to stop
    throw new StationError('STATION_IO', `cannot open the inventory at ${dir}: ${(e as Error).message}`, { cause: e });
  }
  return inventory;
}

async function runImport(c: Extract<StationCommand, { kind: 'import' }>, io: StationIo): Promise<number> {
  const inventory = await openInventory(c.inventory);
  try {
    const s = await importRegistrations(c.file, inventory);
    for (const x of s.invalid) io.stderr.write(`${c.file}:${x.line}: invalid: ${x.reason}\n`);
    for (const x of s.conflicts) io.stderr.write(`${c.file}:${x.line}: conflict: ${x.deviceId}: ${x.reason}\n`);
    io.stdout.write(`imported ${s.imported}, unchanged ${s.unchanged}, superseded ${s.superseded}, conflicts ${s.conflicts.length}, invalid ${s.invalid.length}\n`);
    return s.conflicts.length > 0 || s.invalid.length > 0 ? 1 : 0;
  } finally {
    await inventory.close();
  }
}

async function runProvision(c: Extract<StationCommand, { kind: 'provision' }>, io: StationIo): Promise<number> {
  const inventory = 'inventory' in c.sink ? await openInventory(c.sink.inventory) : undefined;
  const sink: RegistrationSink = inventory ? new InventorySink(inventory) : new ExportFileSink((c.sink as { export: string }).export);
  try {
    const s = await provisionBatch({
      manifestPath: c.manifest,
      outDir: c.out,
      manufacturers: { roots: c.roots, intermediates: c.intermediates, ekValidity: c.ekValidity },
      fleet: c.fleet,
      sink,
      tokenTtlSec: c.tokenTtlSec,
      concurrency: c.parallel,
      progress: progressRenderer(io.stderr),
      ...(io.clock ? { clock: io.clock } : {}),
      ...(io.openTpm ? { openTpm: io.openTpm } : {}),
    });
    io.stdout.write(`provisioned ${s.provisioned}, skipped ${s.skipped}, refused ${s.refused} of ${s.total}\n`);
    return s.refused > 0 ? 1 : 0;
  } finally {
    await inventory?.close();
  }
}
