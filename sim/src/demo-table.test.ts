import { describe, expect, it } from 'vitest';
import { changeLine, LiveTable, renderLine, renderTable, type DeviceRow, type TableOutput } from './demo-table.js';

const ROW: DeviceRow = {
  id: 'demo-device-1',
  state: 'online',
  serial: '9285203e1be1ae83151290b3eb896cf4',
  notAfter: Date.UTC(2026, 11, 31, 7, 0, 8),
  slot: 'B',
  crl: '#2',
  event: 'rotated: cc794481… → 9285203e…',
};

class Capture implements TableOutput {
  text = '';
  constructor(
    readonly isTTY: boolean,
    readonly columns = 120,
  ) {}
  write(s: string): void {
    this.text += s;
  }
}

// eslint-disable-next-line no-control-regex
const visible = (s: string) => s.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');

describe('table lines', () => {
  it('renders every column, the serial and expiry shortened', () => {
    expect(renderLine(ROW, { maxWidth: 200, color: false })).toBe('demo-device-1   online       9285203e1be1…  2026-12-31 07:00Z  B     #2    rotated: cc794481… → 9285203e…');
    expect(renderLine({ id: 'demo-device-2', state: 'provisioned' }, { maxWidth: 200, color: false })).toBe('demo-device-2   provisioned  -              -                  -     -');
  });

  it('never exceeds the width (a wrapped line would break the redraw), colours or not', () => {
    for (const w of [20, 35, 60, 90]) {
      expect(renderLine(ROW, { maxWidth: w, color: false }).length).toBeLessThanOrEqual(w);
      expect(visible(renderLine(ROW, { maxWidth: w, color: true })).length).toBeLessThanOrEqual(w);
    }
    expect(renderLine(ROW, { maxWidth: 60, color: false })).toMatch(/…$/);
  });

  it('colours the state only', () => {
    const line = renderLine(ROW, { maxWidth: 200, color: true });
    expect(line).toContain('\x1b[32monline     \x1b[0m');
    expect(visible(line)).toBe(renderLine(ROW, { maxWidth: 200, color: false }));
    expect(renderLine({ ...ROW, state: 'revoked' }, { maxWidth: 200, color: true })).toContain('\x1b[31mrevoked');
  });

  it('a table is header, rule and rows', () => {
    const t = renderTable([ROW], { maxWidth: 200, color: false });
    expect(t).toHaveLength(3);
    expect(t[0]).toMatch(/^DEVICE +STATE +SERIAL +EXPIRES \(UTC\) +SLOT +CRL +LAST EVENT$/);
    expect(t[1]).toMatch(/^-+$/);
  });

  it('a change line has every field in full', () => {
    expect(changeLine(ROW, 3312)).toBe(
      '+3.312s demo-device-1 state=online serial=9285203e1be1ae83151290b3eb896cf4 expires=2026-12-31T07:00:08.000Z slot=B crl=#2 event="rotated: cc794481… → 9285203e…"',
    );
  });
});

describe('LiveTable', () => {
  it('on a terminal: redraws in place below what is printed', () => {
    const out = new Capture(true);
    const table = new LiveTable(out, () => 0);
    table.print('[1] before any row');
    expect(out.text).toBe('[1] before any row\n');
    out.text = '';
    table.set({ id: 'demo-device-1', state: 'provisioned' });
    // First drawing: no cursor movement; a blank line, header, rule, one row.
    expect(out.text.startsWith('\x1b[')).toBe(false);
    expect(visible(out.text).split('\n')).toHaveLength(5);
    out.text = '';
    table.set(ROW);
    // Up the 4 lines drawn, clear to the end, draw again.
    expect(out.text.startsWith('\x1b[4F\x1b[J\n')).toBe(true);
    expect(visible(out.text)).toContain('demo-device-1   online');
    out.text = '';
    table.print('    a line of narration');
    expect(out.text.startsWith('\x1b[4F\x1b[J    a line of narration\n\n  DEVICE')).toBe(true);
    out.text = '';
    table.set(ROW); // unchanged: nothing drawn
    table.snapshot(); // on screen already: nothing printed
    expect(out.text).toBe('');
    table.finish();
    table.set({ ...ROW, state: 'stopping' }); // after finish: ignored
    table.print('Summary');
    expect(out.text).toBe('Summary\n');
    expect(table.row('demo-device-1')?.state).toBe('online');
  });

  it('keeps lines within the terminal width', () => {
    const out = new Capture(true, 50);
    const table = new LiveTable(out, () => 0);
    table.set(ROW);
    for (const line of visible(out.text).split('\n')) expect(line.length).toBeLessThan(50);
  });

  it('not on a terminal: one plain line per change, a plain snapshot, no escape codes', () => {
    const out = new Capture(false);
    let now = 1000;
    const table = new LiveTable(out, () => now);
    table.print('[4] Enrollment');
    now = 1250;
    table.set({ id: 'demo-device-1', state: 'enrolling' });
    table.set({ id: 'demo-device-1', state: 'enrolling' }); // no change, no line
    now = 2000;
    table.set(ROW);
    table.snapshot();
    table.finish(); // prints the last snapshot
    const lines = out.text.split('\n');
    expect(lines[0]).toBe('[4] Enrollment');
    expect(lines[1]).toBe('  +0.250s demo-device-1 state=enrolling serial=- expires=- slot=- crl=-');
    expect(lines[2]).toMatch(/^ {2}\+1\.000s demo-device-1 state=online serial=9285/);
    expect(lines.filter((l) => /^ {2}DEVICE/.test(l))).toHaveLength(2);
    expect(lines.filter((l) => l.startsWith('  demo-device-1   online'))).toHaveLength(2);
    expect(out.text).not.toContain('\x1b[');
  });
});
