import type { AuditEntry } from './audit.js';

/** What a batch reports while it runs. `done` counts devices with an outcome so far. */
export type ProgressEvent =
  | { readonly type: 'start'; readonly done: number; readonly total: number; readonly deviceId: string }
  | { readonly type: 'outcome'; readonly done: number; readonly total: number; readonly entry: AuditEntry }
  | { readonly type: 'end'; readonly done: number; readonly total: number };

export interface ProgressStream {
  write(text: string): unknown;
  readonly isTTY?: boolean;
}

const WIDTH = 30;

/**
 * One-line progress bar on a terminal (`[####....] 12/40 dev-012`, redrawn in place, refusals printed
 * above it); plain lines, one per outcome, anywhere else (CI logs, files).
 */
export function progressRenderer(out: ProgressStream): (event: ProgressEvent) => void {
  return out.isTTY ? barRenderer(out) : lineRenderer(out);
}

function describe(entry: AuditEntry): string {
  return entry.result === 'refused' ? `refused [${entry.code}] ${entry.message ?? ''}`.trimEnd() : entry.result;
}

function lineRenderer(out: ProgressStream): (event: ProgressEvent) => void {
  return (e) => {
    if (e.type === 'outcome') out.write(`[station] ${e.done}/${e.total} ${e.entry.deviceId} ${describe(e.entry)}\n`);
  };
}

function barRenderer(out: ProgressStream): (event: ProgressEvent) => void {
  let current = '';
  const bar = (done: number, total: number) => {
    const filled = total > 0 ? Math.floor((done / total) * WIDTH) : WIDTH;
    return `\r\x1b[K[${'#'.repeat(filled)}${'.'.repeat(WIDTH - filled)}] ${done}/${total} ${current}`;
  };
  return (e) => {
    if (e.type === 'start') {
      current = e.deviceId;
      out.write(bar(e.done, e.total));
    } else if (e.type === 'outcome') {
      if (e.entry.result === 'refused') out.write(`\r\x1b[K${e.entry.deviceId} ${describe(e.entry)}\n`);
      out.write(bar(e.done, e.total));
    } else {
      current = '';
      out.write(`${bar(e.done, e.total)}\n`);
    }
  };
}
