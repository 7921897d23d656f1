/**
 * The three output forms of every command: an aligned table (default, for people), `--json` (the
 * bridge's data, timestamps as ms since the epoch) and `--csv` (RFC 4180, a header row, timestamps
 * as ISO 8601). A table shows '-' for an absent value; CSV leaves the field empty.
 */
export type OutputFormat = 'table' | 'json' | 'csv';

export interface Column<R> {
  readonly header: string;
  value(row: R): string | number | boolean | undefined;
  /** Rendered as an ISO 8601 time. */
  readonly time?: boolean;
}

/** A list: one line per row. `note` (table only) follows the rows, e.g. "showing 10 of 12". */
export interface ListView<R> {
  readonly kind: 'list';
  readonly columns: readonly Column<R>[];
  readonly rows: readonly R[];
  readonly json: unknown;
  readonly note?: string;
}

/** One record: FIELD VALUE lines in a table, one header and one value row in CSV. */
export interface RecordView {
  readonly kind: 'record';
  readonly fields: readonly (readonly [string, string | number | boolean | undefined, { time?: boolean }?])[];
  readonly json: unknown;
}

export type View = ListView<unknown> | RecordView;

/** ISO 8601 UTC to the second. */
export function isoTime(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 19)}Z`;
}

function cell(v: string | number | boolean | undefined, time: boolean | undefined): string | undefined {
  if (v === undefined) return undefined;
  if (time && typeof v === 'number') return isoTime(v);
  return String(v);
}

function csvField(s: string | undefined): string {
  if (s === undefined) return '';
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function table(headers: readonly string[], rows: readonly (readonly (string | undefined)[])[]): string {
  const shown = rows.map((r) => r.map((c) => (c === undefined || c === '' ? '-' : c.replace(/[\r\n\t]/g, ' '))));
  const widths = headers.map((h, i) => Math.max(h.length, ...shown.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(headers), ...shown.map(line)].join('\n') + '\n';
}

export function render(view: View, format: OutputFormat): string {
  if (format === 'json') return `${JSON.stringify(view.json, null, 2)}\n`;
  if (view.kind === 'record') {
    const values = view.fields.map(([, v, o]) => cell(v, o?.time));
    if (format === 'csv') return `${view.fields.map(([k]) => csvField(k)).join(',')}\r\n${values.map(csvField).join(',')}\r\n`;
    return table(['FIELD', 'VALUE'], view.fields.map(([k], i) => [k, values[i]]));
  }
  const rows = view.rows.map((r) => view.columns.map((c) => cell(c.value(r), c.time)));
  if (format === 'csv') return [view.columns.map((c) => csvField(c.header)), ...rows.map((r) => r.map(csvField))].map((r) => r.join(',')).join('\r\n') + '\r\n';
  return table(view.columns.map((c) => c.header), rows) + (view.note ? `${view.note}\n` : '');
}
