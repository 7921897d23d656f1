import { closeSync, existsSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs';
import type { StationErrorCode } from './errors.js';

/**
 * The batch's audit manifest (outDir/audit.jsonl): one JSON line per device per run, fsync'd, never
 * a token. It is also what makes a batch resumable: the last non-skipped outcome of each device says
 * whether a re-run must provision it again.
 */
export type AuditResult = 'provisioned' | 'refused' | 'skipped';

export interface AuditEntry {
  /** ms since the epoch. */
  readonly at: number;
  readonly deviceId: string;
  readonly result: AuditResult;
  readonly code?: StationErrorCode;
  /** Why a device was refused. */
  readonly message?: string;
  readonly ekPublicHash?: string;
  /** 'factory': registered under the factory-trusted EK policy (no EK certificate). */
  readonly ekTrust?: 'factory';
  readonly bootstrapPath?: string;
}

export class AuditLog {
  readonly path: string;
  readonly #fd: number;
  readonly #outcomes: Map<string, AuditEntry>;
  #tornTail: boolean;

  private constructor(path: string, fd: number, outcomes: Map<string, AuditEntry>, tornTail: boolean) {
    this.path = path;
    this.#fd = fd;
    this.#outcomes = outcomes;
    this.#tornTail = tornTail;
  }

  static open(path: string): AuditLog {
    const outcomes = new Map<string, AuditEntry>();
    let tornTail = false;
    if (existsSync(path)) {
      const text = readFileSync(path, 'utf8');
      tornTail = text.length > 0 && !text.endsWith('\n');
      for (const line of text.split('\n')) {
        if (!line.trim()) continue;
        let entry: AuditEntry;
        try {
          entry = JSON.parse(line) as AuditEntry;
        } catch {
          // a line torn by an interrupted run: that device is simply provisioned again
          continue;
        }
        if (entry.result !== 'skipped' && typeof entry.deviceId === 'string') outcomes.set(entry.deviceId, entry);
      }
    }
    return new AuditLog(path, openSync(path, 'a', 0o600), outcomes, tornTail);
  }

  /** The last provisioned/refused outcome recorded for a device, in any run. */
  lastOutcome(deviceId: string): AuditEntry | undefined {
    return this.#outcomes.get(deviceId);
  }

  append(entry: AuditEntry): AuditEntry {
    const line = `${JSON.stringify(entry)}\n`;
    writeSync(this.#fd, this.#tornTail ? `\n${line}` : line);
    fsyncSync(this.#fd);
    this.#tornTail = false;
    if (entry.result !== 'skipped') this.#outcomes.set(entry.deviceId, entry);
    return entry;
  }

  close(): void {
    closeSync(this.#fd);
  }
}
