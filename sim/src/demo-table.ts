/**
 * The demo's live status table, one row per device: id, state, certificate serial, expiry, identity
 * slot, the CRL number the device holds, and its last event.
 *
 * On a terminal the table stays under everything printed and is redrawn in place (cursor up, clear to
 * the end of the screen, draw again) whenever a row changes; lines printed meanwhile go above it. When
 * the output is not a terminal (CI, a pipe, a file) nothing is redrawn: every change of a row is one
 * plain line (`+1.234s demo-device-1 state=online …`), and `snapshot()` prints the whole table.
 * `finish()` ends the live part: the terminal keeps the last drawing, and later lines go below it.
 */
export interface DeviceRow {
  readonly id: string;
  readonly state: string;
  readonly serial?: string;
  readonly notAfter?: number;
  readonly slot?: string;
  readonly crl?: string;
  readonly event?: string;
}

/** Where the table writes: `process.stdout` fits. */
export interface TableOutput {
  write(text: string): unknown;
  readonly isTTY?: boolean;
  readonly columns?: number;
}

const HEADER: DeviceRow = { id: 'DEVICE', state: 'STATE', serial: 'SERIAL', slot: 'SLOT', crl: 'CRL', event: 'LAST EVENT' };
const WIDTHS = { id: 14, state: 11, serial: 13, expires: 17, slot: 4, crl: 4 } as const;
const GAP = '  ';

const COLORS: Readonly<Record<string, string>> = { online: '32', revoked: '31', error: '31', connecting: '33', enrolling: '36', rotating: '36', reattesting: '36' };

export const shortSerial = (serial: string | undefined): string => (serial === undefined ? '-' : serial.length > 12 ? `${serial.slice(0, 12)}…` : serial);
/** `2026-12-31 23:59Z`: minutes are enough for certificates that live for days. */
export const shortTime = (ms: number | undefined): string => (ms === undefined ? '-' : `${new Date(ms).toISOString().slice(0, 16).replace('T', ' ')}Z`);

interface Cell {
  readonly text: string;
  readonly width?: number;
  readonly color?: string;
}

function cells(row: DeviceRow, header: boolean): Cell[] {
  return [
    { text: row.id, width: WIDTHS.id },
    { text: row.state, width: WIDTHS.state, ...(header ? {} : { color: COLORS[row.state] }) },
    { text: header ? row.serial! : shortSerial(row.serial), width: WIDTHS.serial },
    { text: header ? 'EXPIRES (UTC)' : shortTime(row.notAfter), width: WIDTHS.expires },
    { text: row.slot ?? '-', width: WIDTHS.slot },
    { text: row.crl ?? '-', width: WIDTHS.crl },
    { text: row.event ?? '' },
  ];
}

/**
 * One table line of at most `maxWidth` visible characters (a terminal must not wrap it, or the
 * redraw would miscount lines); colours only when `color`.
 */
export function renderLine(row: DeviceRow, opts: { maxWidth: number; color: boolean; header?: boolean }): string {
  let out = '';
  let visible = 0;
  for (const [i, c] of cells(row, opts.header === true).entries()) {
    const sep = i === 0 ? '' : GAP;
    let text = sep + (c.width === undefined ? c.text : c.text.padEnd(c.width));
    if (visible + text.length > opts.maxWidth) text = `${text.slice(0, Math.max(0, opts.maxWidth - visible - 1))}…`;
    const lead = text.slice(0, sep.length);
    const body = text.slice(sep.length);
    out += opts.color && c.color ? `${lead}\x1b[${c.color}m${body}\x1b[0m` : text;
    visible += text.length;
    if (visible >= opts.maxWidth) break;
  }
  return out.trimEnd();
}

/** The whole table as lines: header, rule, rows. */
export function renderTable(rows: readonly DeviceRow[], opts: { maxWidth: number; color: boolean }): string[] {
  const header = renderLine(HEADER, { ...opts, color: false, header: true });
  return [header, '-'.repeat(Math.min(opts.maxWidth, Math.max(header.length, 60))), ...rows.map((r) => renderLine(r, opts))];
}

/** One plain line for a changed row (no terminal): `+1.234s demo-device-1 state=online serial=… …`. */
export function changeLine(row: DeviceRow, elapsedMs: number): string {
  const fields = [`state=${row.state}`, `serial=${row.serial ?? '-'}`, `expires=${row.notAfter === undefined ? '-' : new Date(row.notAfter).toISOString()}`, `slot=${row.slot ?? '-'}`, `crl=${row.crl ?? '-'}`];
  return `+${(elapsedMs / 1000).toFixed(3)}s ${row.id} ${fields.join(' ')}${row.event ? ` event="${row.event}"` : ''}`;
}

const sameRow = (a: DeviceRow | undefined, b: DeviceRow) =>
  a !== undefined && a.state === b.state && a.serial === b.serial && a.notAfter === b.notAfter && a.slot === b.slot && a.crl === b.crl && a.event === b.event;

export class LiveTable {
  readonly #out: TableOutput;
  readonly #now: () => number;
  readonly #start: number;
  readonly #rows = new Map<string, DeviceRow>();
  /** Lines of the table on screen below the cursor's line start (terminal only). */
  #drawn = 0;
  #finished = false;

  /** `now` stamps the plain lines (milliseconds; the demo passes its Clock). */
  constructor(out: TableOutput, now: () => number) {
    this.#out = out;
    this.#now = now;
    this.#start = now();
  }

  get live(): boolean {
    return this.#out.isTTY === true;
  }

  rows(): DeviceRow[] {
    return [...this.#rows.values()];
  }

  row(id: string): DeviceRow | undefined {
    return this.#rows.get(id);
  }

  /** Adds or replaces a row; redraws (terminal) or prints the change (otherwise). Ignored after finish(). */
  set(row: DeviceRow): void {
    if (this.#finished) return;
    const before = this.#rows.get(row.id);
    if (sameRow(before, row)) return;
    this.#rows.set(row.id, row);
    if (this.live) this.#redraw('');
    else this.#out.write(`  ${changeLine(row, this.#now() - this.#start)}\n`);
  }

  /** Prints a line: above the live table on a terminal, plainly otherwise. */
  print(line: string): void {
    if (this.live && !this.#finished && this.#rows.size > 0) this.#redraw(`${line}\n`);
    else this.#out.write(`${line}\n`);
  }

  /** The whole table as plain lines (not on a terminal, where it is already on screen). */
  snapshot(): void {
    if (this.live && !this.#finished) return;
    const lines = renderTable(this.rows(), { maxWidth: 1000, color: false });
    this.#out.write(`${lines.map((l) => `  ${l}`).join('\n')}\n`);
  }

  /** Ends the live part: the last drawing stays on a terminal; a snapshot is printed otherwise. */
  finish(): void {
    if (this.#finished) return;
    if (!this.live) this.snapshot();
    this.#finished = true;
    this.#drawn = 0;
  }

  #redraw(above: string): void {
    // Two columns of indent, and one spare: a line filling the last column would wrap on some terminals.
    const maxWidth = Math.max(20, (this.#out.columns ?? 100) - 3);
    // A blank line first sets the table apart from the narration above it.
    const lines = ['', ...renderTable(this.rows(), { maxWidth, color: true }).map((l) => `  ${l}`)];
    // Cursor to the first line of the old drawing, clear everything below, write the news and the table.
    const erase = this.#drawn > 0 ? `\x1b[${this.#drawn}F\x1b[J` : '';
    this.#out.write(`${erase}${above}${lines.join('\n')}\n`);
    this.#drawn = lines.length;
  }
}
