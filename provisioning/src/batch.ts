import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { systemClock, type Clock } from '../../common/clock.js';
import type { EkTrustStore } from '../../native/lib/ek-certificate.js';
import { NativeTpm } from '../../native/lib/native-tpm.js';
import type { Tpm } from '../../native/lib/tpm.js';
import { AuditLog, type AuditEntry } from './audit.js';
import { writeBootstrapFile } from './bootstrap.js';
import { BATCH_FATAL, StationError, toStationError } from './errors.js';
import { readManifest, type ManifestEntry } from './manifest.js';
import type { ProgressEvent } from './progress.js';
import type { RegistrationSink } from './sinks.js';
import { DEFAULT_TOKEN_TTL_SEC, provisionDevice, type FleetEndpoints, type Provisioned, type StationPolicy } from './station.js';

/**
 * Batch provisioning from a manifest. Resumable and idempotent per device: a device whose bootstrap
 * file exists and whose last recorded outcome is `provisioned` is skipped; any other is provisioned
 * (again). A refused device never stops the batch; only a manifest error (before any TPM is touched),
 * a failure to write the audit manifest, or a registration target that would fail every device
 * (BATCH_FATAL: the bridge unreachable or refusing this station; that device is audited first) does.
 *
 * Layout of outDir: `audit.jsonl`, and `devices/<deviceId>.json` (bootstrap configs, mode 0600).
 */
export interface BatchOptions {
  readonly manifestPath: string;
  readonly outDir: string;
  readonly manufacturers: EkTrustStore;
  readonly fleet: FleetEndpoints;
  readonly sink: RegistrationSink;
  readonly clock?: Clock;
  /** Enrollment token lifetime; default 7 days. */
  readonly tokenTtlSec?: number;
  readonly openTpm?: (tcti: string) => Promise<Tpm>;
  /** Devices worked on at once, each on its own TPM; default 1. Registrations stay one at a time. */
  readonly concurrency?: number;
  readonly progress?: (event: ProgressEvent) => void;
  /** The factory-trusted EK policy (StationPolicy.factoryTrustedEk); default off. */
  readonly factoryTrustedEk?: boolean;
  /** StationPolicy.stationName. */
  readonly stationName?: string;
}

export interface BatchSummary {
  readonly total: number;
  readonly provisioned: number;
  readonly refused: number;
  readonly skipped: number;
  /** This run's outcomes, in manifest order. */
  readonly entries: readonly AuditEntry[];
}

export function bootstrapPathFor(outDir: string, deviceId: string): string {
  return join(outDir, 'devices', `${deviceId}.json`);
}

export async function provisionBatch(o: BatchOptions): Promise<BatchSummary> {
  const concurrency = o.concurrency ?? 1;
  const tokenTtlSec = o.tokenTtlSec ?? DEFAULT_TOKEN_TTL_SEC;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new StationError('STATION_USAGE', 'concurrency must be a positive integer');
  if (!Number.isFinite(tokenTtlSec) || tokenTtlSec <= 0) throw new StationError('STATION_USAGE', 'token lifetime must be positive');
  const entries = readManifest(o.manifestPath);
  let audit: AuditLog;
  try {
    mkdirSync(join(o.outDir, 'devices'), { recursive: true, mode: 0o700 });
    audit = AuditLog.open(join(o.outDir, 'audit.jsonl'));
  } catch (e) {
    throw toStationError(e, `cannot use output directory ${o.outDir}`);
  }
  const policy: StationPolicy = {
    manufacturers: o.manufacturers,
    fleet: o.fleet,
    clock: o.clock ?? systemClock,
    tokenTtlSec,
    ...(o.factoryTrustedEk ? { factoryTrustedEk: true } : {}),
    ...(o.stationName ? { stationName: o.stationName } : {}),
  };
  const device = new DeviceRun(o, policy, audit);
  const outcomes: AuditEntry[] = [];
  let next = 0;
  let done = 0;
  let fatal: unknown;
  const worker = async () => {
    while (next < entries.length && fatal === undefined) {
      const index = next++;
      const entry = entries[index]!;
      o.progress?.({ type: 'start', done, total: entries.length, deviceId: entry.deviceId });
      try {
        outcomes[index] = await device.run(entry);
      } catch (e) {
        fatal ??= e;
        return;
      }
      done++;
      o.progress?.({ type: 'outcome', done, total: entries.length, entry: outcomes[index]! });
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, entries.length) }, worker));
  } finally {
    audit.close();
  }
  if (fatal !== undefined) throw toStationError(fatal, `writing the audit manifest ${audit.path}`);
  o.progress?.({ type: 'end', done, total: entries.length });
  const count = (r: AuditEntry['result']) => outcomes.filter((e) => e.result === r).length;
  return { total: entries.length, provisioned: count('provisioned'), refused: count('refused'), skipped: count('skipped'), entries: outcomes };
}

/** One device's turn in a batch; `run` resolves its audited outcome and throws only if auditing fails. */
class DeviceRun {
  readonly #o: BatchOptions;
  readonly #policy: StationPolicy;
  readonly #audit: AuditLog;
  readonly #openTpm: (tcti: string) => Promise<Tpm>;
  #commits: Promise<unknown> = Promise.resolve();

  constructor(o: BatchOptions, policy: StationPolicy, audit: AuditLog) {
    this.#o = o;
    this.#policy = policy;
    this.#audit = audit;
    this.#openTpm = o.openTpm ?? ((tcti) => NativeTpm.open(tcti));
  }

  async run(entry: ManifestEntry): Promise<AuditEntry> {
    const { deviceId } = entry;
    const bootstrapPath = bootstrapPathFor(this.#o.outDir, deviceId);
    const prior = this.#audit.lastOutcome(deviceId);
    const at = () => this.#policy.clock.now();
    if (prior?.result === 'provisioned' && existsSync(bootstrapPath)) {
      return this.#audit.append({ at: at(), deviceId, result: 'skipped', ...(prior.ekPublicHash ? { ekPublicHash: prior.ekPublicHash } : {}), bootstrapPath });
    }
    let outcome: AuditEntry;
    let fatal: StationError | undefined;
    try {
      const p = await this.#withTpm(entry.tcti, (tpm) => provisionDevice(tpm, entry, this.#policy));
      await this.#serialized(() => this.#commit(p, bootstrapPath));
      outcome = { at: at(), deviceId, result: 'provisioned', ekPublicHash: p.device.ekPublicHash, ...(p.device.ekTrust ? { ekTrust: p.device.ekTrust } : {}), bootstrapPath };
    } catch (e) {
      const err = toStationError(e, `${deviceId} (${entry.tcti})`);
      outcome = { at: at(), deviceId, result: 'refused', code: err.code, message: err.message };
      if (BATCH_FATAL.has(err.code)) fatal = err;
    }
    const audited = this.#audit.append(outcome);
    if (fatal) throw fatal;
    return audited;
  }

  /** One context per TPM, closed before the next device: swtpm serves a single connection at a time. */
  async #withTpm<T>(tcti: string, fn: (tpm: Tpm) => Promise<T>): Promise<T> {
    const tpm = await this.#openTpm(tcti);
    try {
      // Without a resource manager (swtpm, /dev/tpm0) an interrupted earlier run may still hold
      // transient slots; a failure here only means createEk will report the full TPM itself.
      await tpm.reclaimSlots().catch(() => undefined);
      return await fn(tpm);
    } finally {
      await tpm.close().catch(() => undefined);
    }
  }

  /**
   * The token reaches the disk only after the fleet acknowledged the registration (the bridge's reply,
   * the fsync'd export line, the inventory write): an existing bootstrap file always belongs to a
   * registered device, and a refused device leaves no token behind. A write failing after the
   * acknowledgment only strands a token nobody holds; the re-run mints one that supersedes it.
   */
  async #commit(p: Provisioned, bootstrapPath: string): Promise<void> {
    await this.#o.sink.register(p.device, p.token);
    try {
      writeBootstrapFile(bootstrapPath, p.bootstrap);
    } catch (e) {
      throw toStationError(e, `registered, but cannot write ${bootstrapPath}`);
    }
  }

  #serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#commits.then(fn);
    this.#commits = run.catch(() => undefined);
    return run;
  }
}
