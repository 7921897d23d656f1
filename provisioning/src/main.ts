/**
 * Factory station CLI.
 *   station provision --manifest m.jsonl --out DIR --roots roots.pem [--intermediates i.pem]
 *     --enroll-url mqtts://… --device-url mqtts://… --trust-bundle fleet-root.pem [--base-topic fleet/v1]
 *     [--token-ttl-days 7] (--export registrations.jsonl | --inventory DIR)
 *   station import --file registrations.jsonl --inventory DIR
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { systemClock } from '../../common/clock.js';
import { parseCertificates } from '../../native/lib/ek-certificate.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import { LevelInventory } from '../../broker-bridge/src/inventory/level-inventory.js';
import { provisionBatch } from './batch.js';
import { ExportFileSink, InventorySink, importRegistrations, type RegistrationSink } from './sinks.js';

const usage = `usage:
  station provision --manifest FILE --out DIR --roots PEM [--intermediates PEM] --enroll-url URL --device-url URL
                    --trust-bundle PEM [--base-topic fleet/v1] [--token-ttl-days 7] (--export FILE | --inventory DIR)
  station import --file FILE --inventory DIR`;

function fail(msg: string): never {
  process.stderr.write(`station: ${msg}\n${usage}\n`);
  process.exit(2);
}

function progressBar(done: number, total: number, id: string): void {
  if (!process.stderr.isTTY) {
    if (id) process.stderr.write(`[station] ${done + 1}/${total} ${id}\n`);
    return;
  }
  const width = 30;
  const filled = total ? Math.round((done / total) * width) : width;
  process.stderr.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${id.padEnd(24)}`);
  if (done === total) process.stderr.write('\n');
}

async function main(): Promise<number> {
  const [command, ...rest] = process.argv.slice(2);
  const { values: v } = parseArgs({
    args: rest,
    options: {
      manifest: { type: 'string' },
      out: { type: 'string' },
      roots: { type: 'string' },
      intermediates: { type: 'string' },
      'enroll-url': { type: 'string' },
      'device-url': { type: 'string' },
      'trust-bundle': { type: 'string' },
      'base-topic': { type: 'string', default: 'fleet/v1' },
      'token-ttl-days': { type: 'string', default: '7' },
      export: { type: 'string' },
      inventory: { type: 'string' },
      file: { type: 'string' },
    },
    strict: true,
  });
  const need = (k: keyof typeof v) => (v[k] as string | undefined) ?? fail(`--${k} is required`);
  if (command === 'import') {
    const inv = new LevelInventory(need('inventory'));
    await inv.open();
    try {
      const s = await importRegistrations(need('file'), inv);
      for (const c of s.conflicts) process.stderr.write(`line ${c.line}: ${c.deviceId}: ${c.reason}\n`);
      for (const i of s.invalid) process.stderr.write(`line ${i.line}: ${i.reason}\n`);
      process.stdout.write(`imported ${s.imported}, conflicts ${s.conflicts.length}, invalid ${s.invalid.length}\n`);
      return s.conflicts.length || s.invalid.length ? 1 : 0;
    } finally {
      await inv.close();
    }
  }
  if (command !== 'provision') fail(`unknown command ${command ?? '(none)'}`);
  const ttlDays = Number(v['token-ttl-days']);
  if (!(ttlDays > 0 && ttlDays <= 365)) fail('--token-ttl-days must be in (0, 365]');
  if (Boolean(v.export) === Boolean(v.inventory)) fail('give exactly one of --export or --inventory');
  const pem = (path: string) => readFileSync(path, 'utf8');
  let inventory: LevelInventory | undefined;
  let sink: RegistrationSink;
  if (v.inventory) {
    inventory = new LevelInventory(v.inventory);
    await inventory.open();
    sink = new InventorySink(inventory);
  } else {
    sink = new ExportFileSink(v.export!);
  }
  try {
    const summary = await provisionBatch({
      manifestPath: need('manifest'),
      outDir: need('out'),
      manufacturers: { roots: [pem(need('roots'))], intermediates: v.intermediates ? [pem(v.intermediates)] : [] },
      fleet: {
        enrollUrl: need('enroll-url'),
        deviceUrl: need('device-url'),
        trustBundle: parseCertificates([pem(need('trust-bundle'))]).map((c) => c.toString()),
        baseTopic: v['base-topic']!,
      },
      sink,
      clock: systemClock,
      tokenTtlSec: Math.round(ttlDays * 86_400),
      openTpm: (tcti) => NativeTpm.open(tcti),
      progress: progressBar,
    });
    for (const e of summary.entries.filter((x) => x.result === 'refused')) process.stderr.write(`refused ${e.deviceId}: [${e.code}] ${e.message}\n`);
    process.stdout.write(`provisioned ${summary.provisioned}, skipped ${summary.skipped}, refused ${summary.refused}\n`);
    return summary.refused ? 1 : 0;
  } finally {
    await inventory?.close();
  }
}

main().then(
  (code) => process.exit(code),
  (e: { code?: string; message?: string }) => {
    process.stderr.write(`station: ${e.code ? `[${e.code}] ` : ''}${e.message ?? String(e)}\n`);
    process.exit(1);
  },
);
