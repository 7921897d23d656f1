import { hostname } from 'node:os';
import type { Clock } from '../../common/clock.js';
import { isCodedError } from '../../common/coded-error.js';
import { LevelInventory } from '../../broker-bridge/src/inventory/level-inventory.js';
import type { Tpm } from '../../native/lib/tpm.js';
import { provisionBatch } from './batch.js';
import { BridgeClient, type BridgeClientOptions } from './bridge-client.js';
import { StationError } from './errors.js';
import { importRegistrations, importThroughBridge, type ImportSummary } from './import.js';
import { HELP, OVERVIEW, parseCommand, type BridgeSettings, type StationCommand } from './options.js';
import { progressRenderer, type ProgressStream } from './progress.js';
import { BridgeSink, ExportFileSink, InventorySink, type RegistrationSink } from './sinks.js';
import { BUILD_VERSION } from '../../common/build-version.js';

/**
 * The station's commands, runnable in-process (tests) or from main.ts. Resolves the exit code:
 * 0 all done; 1 a device refused, an import line in conflict, refused or malformed, the bridge
 * unavailable, or another failure; 2 bad usage or bad input (flags, files, the manifest). Never
 * rejects. Every error is one stderr line `station: CODE: message`, never a stack trace.
 */
export interface StationIo {
  readonly stdout: ProgressStream;
  readonly stderr: ProgressStream;
  readonly openTpm?: (tcti: string) => Promise<Tpm>;
  readonly clock?: Clock;
  /** Retry tuning of online registration (tests). */
  readonly bridge?: BridgeClientOptions;
}

/** Codes that mean the input was wrong (exit 2), as opposed to a failure while working (exit 1). */
const INPUT_ERRORS: ReadonlySet<string> = new Set(['STATION_USAGE', 'STATION_MANIFEST_INVALID']);

export async function runStation(argv: readonly string[], io: StationIo): Promise<number> {
  try {
    const command = parseCommand(argv);
    if (command.kind === 'version') {
      io.stdout.write(`${BUILD_VERSION}\n`);
      return 0;
    }
    if (command.kind === 'help') {
      io.stdout.write(`${command.command ? HELP[command.command] : OVERVIEW}\n`);
      return 0;
    }
    return command.kind === 'import' ? await runImport(command, io) : await runProvision(command, io);
  } catch (e) {
    const code = isCodedError(e) ? e.code : 'INTERNAL';
    let message = e instanceof Error ? e.message : String(e);
    if (code === 'INVENTORY_LOCKED') message += ' (station provision/import --bridge registers through a running bridge)';
    io.stderr.write(`station: ${code}: ${oneLine(message)}\n`);
    return INPUT_ERRORS.has(code) ? 2 : 1;
  }
}

/** Multi-line messages (a manifest's bad lines) joined into the one line a user error gets. */
function oneLine(text: string): string {
  return text.split('\n').map((l) => l.trim()).filter(Boolean).join('; ');
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

async function withBridge<T>(s: BridgeSettings, io: StationIo, fn: (client: BridgeClient) => Promise<T>): Promise<T> {
  const client = await BridgeClient.connect(s, io.bridge);
  try {
    return await fn(client);
  } finally {
    await client.close().catch(() => undefined);
  }
}

async function runImport(c: Extract<StationCommand, { kind: 'import' }>, io: StationIo): Promise<number> {
  let s: ImportSummary;
  if ('bridge' in c.target) {
    s = await withBridge(c.target.bridge, io, (client) => importThroughBridge(c.file, client));
  } else {
    const inventory = await openInventory(c.target.inventory);
    try {
      s = await importRegistrations(c.file, inventory);
    } finally {
      await inventory.close();
    }
  }
  for (const x of s.invalid) io.stderr.write(`${c.file}:${x.line}: invalid: ${x.reason}\n`);
  for (const x of s.conflicts) io.stderr.write(`${c.file}:${x.line}: conflict: ${x.deviceId}: ${x.reason}\n`);
  for (const x of s.refused) io.stderr.write(`${c.file}:${x.line}: refused: ${x.deviceId}: ${x.code}: ${x.reason}\n`);
  io.stdout.write(
    `imported ${s.imported}, unchanged ${s.unchanged}, superseded ${s.superseded}, conflicts ${s.conflicts.length}, refused ${s.refused.length}, invalid ${s.invalid.length}\n`,
  );
  return s.conflicts.length > 0 || s.refused.length > 0 || s.invalid.length > 0 ? 1 : 0;
}

async function runProvision(c: Extract<StationCommand, { kind: 'provision' }>, io: StationIo): Promise<number> {
  const run = async (sink: RegistrationSink, stationName: string) => {
    const s = await provisionBatch({
      factoryTrustedEk: c.factoryTrustedEk,
      stationName,
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
  };
  const target = c.sink;
  // Who vouches for factory-trusted EKs: the bridge records the station id itself; offline, this host.
  const local = `station@${hostname()}`;
  if ('bridge' in target) return withBridge(target.bridge, io, (client) => run(new BridgeSink(client), target.bridge.stationId));
  if ('export' in target) return run(new ExportFileSink(target.export), local);
  const inventory = await openInventory(target.inventory);
  try {
    return await run(new InventorySink(inventory), local);
  } finally {
    await inventory.close();
  }
}
