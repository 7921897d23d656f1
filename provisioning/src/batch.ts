import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Clock } from '../../common/clock.js';
import { object, optional, parseMessage, str, type Infer } from '../../common/protocol/schema.js';
import { DEVICE_ID_PATTERN } from '../../common/protocol/topics.js';
import type { EkTrustStore } from '../../native/lib/ek-certificate.js';
import type { Tpm } from '../../native/lib/tpm.js';
import type { RegistrationSink } from './sinks.js';
import { StationError, provisionDevice, type FleetEndpoints } from './station.js';

/**
 * Batch provisioning from a manifest (JSON lines: { deviceId, tcti, metadata }). Resumable and
 * idempotent per device: outDir/audit.jsonl records every outcome (never a token), and a device whose
 * bootstrap file exists and whose last outcome is `provisioned` is skipped on a re-run; a refused or
 * failed device is tried again. One refused device does not stop the batch.
 */
const manifestLine = object({
  deviceId: str({ max: 64, pattern: DEVICE_ID_PATTERN }),
  tcti: str({ min: 1, max: 256 }),
  metadata: optional(object({ model: optional(str({ max: 128 })), serial: optional(str({ max: 128 })), owner: optional(str({ max: 128 })) })),
});
export type ManifestEntry = Infer<typeof manifestLine>;

export function readManifest(path: string): ManifestEntry[] {
  const entries: ManifestEntry[] = [];
  const seen = new Set<string>();
  readFileSync(path, 'utf8')
    .split('\n')
    .forEach((text, i) => {
      if (!text.trim()) return;
      let entry: ManifestEntry;
      try {
        entry = parseMessage(text, manifestLine, 4096);
      } catch (e) {
        throw new StationError('STATION_MANIFEST_INVALID', `${path}:${i + 1}: ${(e as Error).message}`, { cause: e });
      }
      if (seen.has(entry.deviceId)) throw new StationError('STATION_MANIFEST_INVALID', `${path}:${i + 1}: duplicate device ${entry.deviceId}`);
      seen.add(entry.deviceId);
      entries.push(entry);
    });
  return entries;
}

export interface AuditEntry {
  readonly at: number;
  readonly deviceId: string;
  readonly result: 'provisioned' | 'refused' | 'skipped';
  readonly code?: string;
  readonly message?: string;
  readonly ekPublicHash?: string;
  readonly bootstrapPath?: string;
}

export interface BatchOptions {
  readonly manifestPath: string;
  readonly outDir: string;
  readonly manufacturers: EkTrustStore;
  readonly fleet: FleetEndpoints;
  readonly sink: RegistrationSink;
  readonly clock: Clock;
  readonly tokenTtlSec: number;
  readonly openTpm: (tcti: string) => Promise<Tpm>;
  readonly progress?: (done: number, total: number, deviceId: string) => void;
}

export interface BatchSummary {
  readonly provisioned: number;
  readonly refused: number;
  readonly skipped: number;
  readonly entries: AuditEntry[];
}

export async function provisionBatch(o: BatchOptions): Promise<BatchSummary> {
  const entries = readManifest(o.manifestPath);
  mkdirSync(join(o.outDir, 'devices'), { recursive: true, mode: 0o700 });
  const auditPath = join(o.outDir, 'audit.jsonl');
  const last = new Map<string, AuditEntry>();
  if (existsSync(auditPath)) {
    for (const text of readFileSync(auditPath, 'utf8').split('\n')) {
      if (!text.trim()) continue;
      try {
        const e = JSON.parse(text) as AuditEntry;
        if (e.result !== 'skipped') last.set(e.deviceId, e);
      } catch {
        // a torn last line from an interrupted run: ignore it, the device is retried
      }
    }
  }
  const audit = (e: AuditEntry) => {
    appendFileSync(auditPath, `${JSON.stringify(e)}\n`, { mode: 0o600 });
    return e;
  };
  const out: AuditEntry[] = [];
  for (const [i, entry] of entries.entries()) {
    o.progress?.(i, entries.length, entry.deviceId);
    const bootstrapPath = join(o.outDir, 'devices', `${entry.deviceId}.json`);
    const prior = last.get(entry.deviceId);
    if (prior?.result === 'provisioned' && existsSync(bootstrapPath)) {
      out.push(audit({ at: o.clock.now(), deviceId: entry.deviceId, result: 'skipped', bootstrapPath }));
      continue;
    }
    let tpm: Tpm | undefined;
    try {
      tpm = await o.openTpm(entry.tcti);
      const p = await provisionDevice(tpm, { deviceId: entry.deviceId, tcti: entry.tcti, metadata: { ...(entry.metadata ?? {}) } as Record<string, string> }, o);
      await o.sink.register(p.device, p.token);
      writeFileSync(bootstrapPath, `${JSON.stringify(p.bootstrap, null, 2)}\n`, { mode: 0o600 });
      out.push(audit({ at: o.clock.now(), deviceId: entry.deviceId, result: 'provisioned', ekPublicHash: p.device.ekPublicHash, bootstrapPath }));
    } catch (e) {
      const err = e as { code?: string; message?: string };
      out.push(audit({ at: o.clock.now(), deviceId: entry.deviceId, result: 'refused', code: err.code ?? 'STATION_IO', message: err.message ?? String(e) }));
    } finally {
      await tpm?.close().catch(() => undefined);
    }
  }
  o.progress?.(entries.length, entries.length, '');
  return {
    provisioned: out.filter((e) => e.result === 'provisioned').length,
    refused: out.filter((e) => e.result === 'refused').length,
    skipped: out.filter((e) => e.result === 'skipped').length,
    entries: out,
  };
}
