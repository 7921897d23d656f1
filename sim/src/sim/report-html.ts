import { percentile } from '../../../common/stats.js';
import { passed, type Scenario, type ScenarioOutcome, type ScenarioReport } from './scenario.js';

/**
 * The simulator's `--report FILE`: one self-contained HTML page for one or more scenario runs. Pure:
 * data in, a string out. No network and no script: inline CSS and server-drawn inline SVG, locked down
 * by a Content-Security-Policy (`default-src 'none'`), so the page renders the same offline, in a mail
 * client or as a CI artifact. Every value from the run is escaped.
 *
 * Each section: the scenario and its result, the invariants, the failure codes and figures, a
 * histogram of the latencies with p50/p95/p99, the fleet by state over time (stacked counts: readable
 * at any fleet size) and one timeline row per device coloured by agent state (rows shrink to 1 px for
 * large fleets; labels then go to every few rows, and each row's tooltip lists its transitions), and
 * the run's JSON line.
 *
 * Only what the types below name is read: a device's bootstrap (its one-time token) never reaches the page.
 */
export interface ReportDevice {
  readonly deviceId: string;
  readonly poweredOnAt?: number | undefined;
  /** Agent states with the real time (ms since the epoch) each began; in order. */
  readonly timeline: readonly { readonly state: string; readonly at: number; readonly code?: string | undefined }[];
  readonly crls: readonly { readonly crlNumber: bigint; readonly at: number }[];
}

/** A moment of the scenario worth a line across the timeline (e.g. "broker killed"). */
export interface ReportMark {
  readonly label: string;
  readonly at: number;
}

export interface ReportSection {
  readonly scenario: Pick<Scenario, 'name' | 'summary' | 'measures'>;
  /** Real times (ms) the scenario's run began and ended: the timeline's span. */
  readonly startedAt: number;
  readonly endedAt: number;
  readonly devices: readonly ReportDevice[];
  /** The run's result; absent when the run itself failed (then `error` says why). */
  readonly result?: { readonly outcome: ScenarioOutcome; readonly report: ScenarioReport };
  readonly error?: { readonly code: string; readonly message: string };
  readonly marks?: readonly ReportMark[];
}

export interface ReportInput {
  readonly version: string;
  readonly seed: number;
  /** When the page was written (ms since the epoch). */
  readonly generatedAt: number;
  readonly sections: readonly ReportSection[];
}

/**
 * Agent states in stacking order, with their colours; anything else draws as `other`. These and the
 * histogram's colour appear nowhere else on the page (the legend's swatches aside), so a screenshot's
 * pixels tell that the charts were drawn.
 */
export const STATE_COLOURS: Readonly<Record<string, string>> = {
  stopped: '#bdbdbd',
  starting: '#90a4ae',
  enrolling: '#1e88e5',
  reattesting: '#5e35b1',
  connecting: '#fbc02d',
  online: '#2e7d32',
  rotating: '#00acc1',
  stopping: '#8d6e63',
  revoked: '#e53935',
  error: '#c2185b',
  other: '#212121',
};
const STATES = Object.keys(STATE_COLOURS);
const stateOf = (s: string) => (s !== 'other' && s in STATE_COLOURS ? s : 'other');
export const HISTOGRAM_COLOUR = '#3f51b5';

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
/** Text and attribute values alike. */
export const escapeHtml = (v: unknown): string => String(v).replace(/[&<>"']/g, (c) => ESCAPES[c]!);
const slug = (s: string) => s.toLowerCase().replace(/[^a-z0-9-]+/g, '-');
const n1 = (v: number) => String(Math.round(v * 10) / 10);

export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return '–';
  const a = Math.abs(ms);
  if (a < 1000) return `${Math.round(ms)} ms`;
  if (a < 60_000) return `${(ms / 1000).toFixed(a < 10_000 ? 2 : 1)} s`;
  return `${(ms / 60_000).toFixed(1)} min`;
}

/** 1, 2 or 5 times a power of ten, at least `raw`. */
export function niceStep(raw: number): number {
  if (!(raw > 0) || !Number.isFinite(raw)) return 1;
  const e = 10 ** Math.floor(Math.log10(raw));
  const f = raw / e;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * e;
}

/** Equal-width bins on round numbers, about 2·n^⅓ of them (5–40); `counts[i]` covers [lo + i·step, lo + (i+1)·step). */
export function histogram(samples: readonly number[]): { lo: number; step: number; counts: number[] } {
  const xs = samples.filter((v) => Number.isFinite(v));
  if (xs.length === 0) return { lo: 0, step: 1, counts: [] };
  let min = Infinity;
  let max = -Infinity;
  for (const v of xs) [min, max] = [Math.min(min, v), Math.max(max, v)];
  const k = Math.min(40, Math.max(5, Math.ceil(2 * Math.cbrt(xs.length))));
  const step = niceStep(Math.max(max - min, 1) / k);
  const lo = Math.floor(min / step) * step;
  const counts = new Array<number>(Math.floor((max - lo) / step) + 1).fill(0);
  for (const v of xs) counts[Math.min(counts.length - 1, Math.floor((v - lo) / step))]! += 1;
  return { lo, step, counts };
}

/** One run of a device in one state: [from, to). */
export interface Segment {
  readonly state: string;
  readonly from: number;
  readonly to: number;
  readonly code?: string | undefined;
}

/** A device's timeline as consecutive segments up to `end`; repeats of a state merge. */
export function segments(d: ReportDevice, end: number): Segment[] {
  const out: Segment[] = [];
  d.timeline.forEach((t, i) => {
    const to = Math.max(t.at, d.timeline[i + 1]?.at ?? end);
    const last = out.at(-1);
    if (last && last.state === t.state && !t.code) out[out.length - 1] = { ...last, to };
    else out.push({ state: t.state, from: t.at, to, ...(t.code ? { code: t.code } : {}) });
  });
  return out;
}

/** How many devices are in each state at each of `columns` instants spread over [lo, hi] (no state yet: not counted). */
export function stateCounts(devices: readonly ReportDevice[], lo: number, hi: number, columns: number): Record<string, number>[] {
  const cols = Array.from({ length: columns }, () => ({}) as Record<string, number>);
  const dt = (hi - lo) / columns;
  for (const d of devices) {
    let i = -1;
    for (let c = 0; c < columns; c++) {
      const t = lo + (c + 0.5) * dt;
      while (i + 1 < d.timeline.length && d.timeline[i + 1]!.at <= t) i++;
      if (i < 0) continue;
      const s = stateOf(d.timeline[i]!.state);
      cols[c]![s] = (cols[c]![s] ?? 0) + 1;
    }
  }
  return cols;
}

export function renderReport(input: ReportInput): string {
  const sections = input.sections;
  const overview = sections
    .map((s) => {
      const r = s.result?.report;
      return `<tr><td><a href="#${slug(s.scenario.name)}">${escapeHtml(s.scenario.name)}</a></td><td>${badge(s)}</td><td>${r ? `${r.succeeded}/${r.devices}` : s.devices.length}</td><td>${r ? r.lost : '–'}</td><td>${r ? formatMs(r.p50Ms) : '–'}</td><td>${r ? formatMs(r.p99Ms) : '–'}</td><td>${formatMs((s.endedAt - s.startedAt))}</td></tr>`;
    })
    .join('');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Fleet simulator: ${escapeHtml(sections.map((s) => s.scenario.name).join(', ') || 'no runs')}</title>
<style>${CSS}</style></head><body>
<header><h1>Fleet simulator report</h1>
<p class="meta">version ${escapeHtml(input.version)} · seed ${escapeHtml(input.seed)} · written ${escapeHtml(new Date(input.generatedAt).toISOString())}</p>
<table class="overview"><thead><tr><th>scenario</th><th>result</th><th>succeeded</th><th>lost</th><th>p50</th><th>p99</th><th>run</th></tr></thead><tbody>${overview}</tbody></table></header>
${sections.map((s) => section(s, input.seed)).join('\n')}
</body></html>
`;
}

function badge(s: ReportSection): string {
  if (!s.result) return `<span class="badge fail">FAILED ${escapeHtml(s.error?.code ?? '')}</span>`;
  return passed(s.result.outcome) ? '<span class="badge ok">PASS</span>' : '<span class="badge fail">FAIL</span>';
}

function section(s: ReportSection, seed: number): string {
  const r = s.result;
  const parts = [
    `<section class="scenario" id="${slug(s.scenario.name)}" data-scenario="${escapeHtml(s.scenario.name)}">`,
    `<h2>${escapeHtml(s.scenario.name)} ${badge(s)}</h2><p class="summary">${escapeHtml(s.scenario.summary)}</p>`,
    `<p class="meta">again: <code>npm run sim -- --devices ${s.devices.length} --scenario ${escapeHtml(s.scenario.name)} --seed ${escapeHtml(seed)}</code></p>`,
  ];
  if (s.error) parts.push(`<p class="error">The run failed: <code>${escapeHtml(s.error.code)}</code> ${escapeHtml(s.error.message)}</p>`);
  if (r) {
    const o = r.outcome;
    parts.push(
      `<p class="facts">${r.report.devices} devices · ${r.report.succeeded} succeeded · ${r.report.lost} lost · ${escapeHtml(r.report.durationSec)} s · latency: ${escapeHtml(s.scenario.measures)}</p>`,
      '<div class="cols"><div>',
      `<h3>Invariants</h3><table class="invariants">${o.invariants.map((i) => `<tr class="${i.ok ? 'ok' : 'fail'}"><td class="verdict">${i.ok ? 'ok' : 'FAIL'}</td><td>${escapeHtml(i.name)}</td><td>${escapeHtml(i.detail)}</td></tr>`).join('')}</table>`,
      `<h3>Failure codes</h3>${counts('failures', o.failures, 'none')}`,
      `<h3>Codes on state changes</h3>${counts('state-codes', stateCodes(s.devices), 'none')}`,
      ...(o.figures ? [`<h3>Figures</h3>${counts('figures', o.figures, 'none')}`] : []),
      '</div><div>',
      `<h3>Latency (${escapeHtml(s.scenario.measures)})</h3>${latencyChart(o.latenciesMs, r.report)}`,
      '</div></div>',
    );
  }
  const { lo, hi } = span(s);
  parts.push(
    `<h3>Fleet by state over time</h3>${legend(s.devices)}${stateChart(s.devices, lo, hi, s.marks ?? [])}`,
    `<h3>Device timelines</h3>${timeline(s.devices, lo, hi, s.marks ?? [])}`,
    `<h3>Final states</h3>${counts('final-states', finalStates(s.devices), 'no device reported a state')}`,
  );
  if (r) parts.push(`<h3>JSON report</h3><pre class="json">${escapeHtml(JSON.stringify(r.report))}</pre>`);
  parts.push('</section>');
  return parts.join('\n');
}

function counts(cls: string, m: Readonly<Record<string, string | number>>, empty: string): string {
  const rows = Object.entries(m).sort(([, a], [, b]) => (typeof a === 'number' && typeof b === 'number' ? b - a : 0));
  if (rows.length === 0) return `<p class="none ${cls}">${escapeHtml(empty)}</p>`;
  return `<table class="${cls}">${rows.map(([k, v]) => `<tr><td><code>${escapeHtml(k)}</code></td><td class="num">${escapeHtml(v)}</td></tr>`).join('')}</table>`;
}

function stateCodes(devices: readonly ReportDevice[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const d of devices) for (const t of d.timeline) if (t.code) out[t.code] = (out[t.code] ?? 0) + 1;
  return out;
}

function finalStates(devices: readonly ReportDevice[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const d of devices) {
    const s = d.timeline.at(-1)?.state;
    if (s !== undefined) out[s] = (out[s] ?? 0) + 1;
  }
  return out;
}

/** The time span drawn: the run, widened to every recorded event. */
function span(s: ReportSection): { lo: number; hi: number } {
  let lo = s.startedAt;
  let hi = s.endedAt;
  for (const d of s.devices) {
    for (const t of d.timeline) [lo, hi] = [Math.min(lo, t.at), Math.max(hi, t.at)];
    for (const c of d.crls) [lo, hi] = [Math.min(lo, c.at), Math.max(hi, c.at)];
  }
  return { lo, hi: Math.max(hi, lo + 1) };
}

/** Grid lines and labels at round values of [lo, hi]; `x` places a value. */
function ticks(lo: number, hi: number, x: (v: number) => number, y0: number, y1: number, target = 8): string {
  const step = niceStep((hi - lo) / target);
  const out: string[] = [];
  for (let i = Math.ceil(lo / step); i * step <= hi + step * 1e-9; i++) {
    const px = n1(x(i * step));
    out.push(`<line class="grid" x1="${px}" x2="${px}" y1="${y0}" y2="${y1}"/><text class="tick" x="${px}" y="${y1 + 12}" text-anchor="middle">${escapeHtml(formatMs(i * step))}</text>`);
  }
  return out.join('');
}

/** Time since the start of the drawn span, on a plot `PLOT.w` wide. */
function timeAxis(lo: number, hi: number) {
  const x = (t: number) => PLOT.l + ((t - lo) / (hi - lo)) * PLOT.w;
  return { x, ticks: (y0: number, y1: number) => ticks(0, hi - lo, (v) => x(lo + v), y0, y1) };
}

const HIST = { w: 560, h: 230, l: 44, r: 28, t: 52, b: 30 };

function latencyChart(samples: readonly number[], r: ScenarioReport): string {
  if (samples.length === 0) return '<p class="none latency">no latency samples</p>';
  const { lo, step, counts: bins } = histogram(samples);
  const hi = lo + bins.length * step;
  const top = Math.max(...bins);
  const pw = HIST.w - HIST.l - HIST.r;
  const ph = HIST.h - HIST.t - HIST.b;
  const x = (v: number) => HIST.l + ((v - lo) / (hi - lo)) * pw;
  const y = (c: number) => HIST.t + ph - (c / top) * ph;
  const bars = bins
    .map((c, i) => {
      if (c === 0) return '';
      const x0 = x(lo + i * step);
      return `<rect class="bar" data-count="${c}" x="${n1(x0 + 0.5)}" y="${n1(y(c))}" width="${n1(Math.max(1, x(lo + (i + 1) * step) - x0 - 1))}" height="${n1(HIST.t + ph - y(c))}" fill="${HISTOGRAM_COLOUR}"><title>${escapeHtml(`${formatMs(lo + i * step)} – ${formatMs(lo + (i + 1) * step)}: ${c}`)}</title></rect>`;
    })
    .join('');
  const pcts = [
    { name: 'p50', v: r.p50Ms, colour: '#111111' },
    { name: 'p95', v: r.p95Ms, colour: '#ef6c00' },
    { name: 'p99', v: r.p99Ms, colour: '#b71c1c' },
  ];
  const marks = pcts
    .map((p, i) => {
      const px = n1(Math.min(HIST.l + pw, Math.max(HIST.l, x(p.v))));
      const ly = 14 + i * 13;
      return `<g class="percentile" data-p="${p.name}"><line x1="${px}" x2="${px}" y1="${ly + 2}" y2="${HIST.t + ph}" stroke="${p.colour}" stroke-dasharray="4 3"/><text x="${px}" y="${ly}" text-anchor="${Number(px) > HIST.w / 2 ? 'end' : 'start'}" fill="${p.colour}">${p.name} ${escapeHtml(formatMs(p.v))}</text></g>`;
    })
    .join('');
  const yTicks = [0, top].map((c) => `<text class="tick" x="${HIST.l - 4}" y="${n1(y(c) + 4)}" text-anchor="end">${c}</text>`).join('');
  const svg = `<svg class="histogram" role="img" aria-label="latency histogram" width="${HIST.w}" height="${HIST.h}" viewBox="0 0 ${HIST.w} ${HIST.h}">${ticks(lo, hi, x, HIST.t, HIST.t + ph, 6)}${yTicks}<line class="axis" x1="${HIST.l}" x2="${HIST.l + pw}" y1="${HIST.t + ph}" y2="${HIST.t + ph}"/>${bars}${marks}</svg>`;
  const min = Math.min(...samples);
  const max = Math.max(...samples);
  const table = `<table class="percentiles"><tr><th>n</th><th>min</th><th>p50</th><th>p95</th><th>p99</th><th>max</th><th>mean</th></tr><tr><td>${samples.length}</td><td>${formatMs(min)}</td><td>${formatMs(r.p50Ms)}</td><td>${formatMs(r.p95Ms)}</td><td>${formatMs(r.p99Ms)}</td><td>${formatMs(max)}</td><td>${formatMs(samples.reduce((a, b) => a + b, 0) / samples.length)}</td></tr></table>`;
  return svg + table;
}

function legend(devices: readonly ReportDevice[]): string {
  const seen = new Set(devices.flatMap((d) => d.timeline.map((t) => stateOf(t.state))));
  const items = STATES.filter((s) => seen.has(s)).map((s) => `<span class="key"><i style="background:${STATE_COLOURS[s]}"></i>${s}</span>`);
  if (devices.some((d) => d.crls.length)) items.push('<span class="key"><i class="crl-key"></i>new CRL held</span>');
  return `<p class="legend">${items.join('')}</p>`;
}

const PLOT = { l: 112, w: 900, r: 16 };
const COLUMNS = 200;

function markLines(marks: readonly ReportMark[], x: (t: number) => number, y0: number, y1: number): string {
  return marks
    .map((m) => `<g class="mark"><line x1="${n1(x(m.at))}" x2="${n1(x(m.at))}" y1="${y0}" y2="${y1}"/><text x="${n1(x(m.at) + 3)}" y="${y0 + 10}">${escapeHtml(m.label)}</text></g>`)
    .join('');
}

function stateChart(devices: readonly ReportDevice[], lo: number, hi: number, marks: readonly ReportMark[]): string {
  if (devices.length === 0) return '<p class="none">no devices</p>';
  const h = 150;
  const t = 8;
  const width = PLOT.l + PLOT.w + PLOT.r;
  const { x, ticks: grid } = timeAxis(lo, hi);
  const cw = PLOT.w / COLUMNS;
  const cols = stateCounts(devices, lo, hi, COLUMNS);
  const unit = h / devices.length;
  const paths: Record<string, string[]> = {};
  cols.forEach((col, c) => {
    let base = t + h;
    for (const s of STATES) {
      const n = col[s] ?? 0;
      if (n === 0) continue;
      const hgt = n * unit;
      base -= hgt;
      (paths[s] ??= []).push(`M${n1(PLOT.l + c * cw)} ${n1(base)}h${n1(cw)}v${n1(hgt)}h-${n1(cw)}z`);
    }
  });
  const areas = STATES.filter((s) => paths[s]).map((s) => `<path class="area s-${s}" fill="${STATE_COLOURS[s]}" d="${paths[s]!.join('')}"/>`).join('');
  const yTicks = [0, devices.length].map((c) => `<text class="tick" x="${PLOT.l - 4}" y="${n1(t + h - c * unit + 4)}" text-anchor="end">${c}</text>`).join('');
  return `<svg class="states" role="img" aria-label="devices by state over time" width="${width}" height="${t + h + 20}" viewBox="0 0 ${width} ${t + h + 20}">${grid(t, t + h)}${areas}${yTicks}${markLines(marks, x, t, t + h)}</svg>`;
}

function timeline(devices: readonly ReportDevice[], lo: number, hi: number, marks: readonly ReportMark[]): string {
  if (devices.length === 0) return '<p class="none">no devices</p>';
  const rowH = Math.max(1, Math.min(14, Math.floor(720 / devices.length)));
  const bar = rowH >= 6 ? rowH - 2 : rowH;
  const labelEvery = rowH >= 10 ? 1 : Math.ceil(12 / rowH);
  const top = 4;
  const height = top + devices.length * rowH;
  const width = PLOT.l + PLOT.w + PLOT.r;
  const { x, ticks: grid } = timeAxis(lo, hi);
  const rows = devices.map((d, i) => {
    const y = top + i * rowH;
    const segs = segments(d, hi);
    const rects = segs
      .map((g) => `<rect class="s-${stateOf(g.state)}" x="${n1(x(g.from))}" y="${y}" width="${n1(Math.max(0.3, x(g.to) - x(g.from)))}" height="${bar}" fill="${STATE_COLOURS[stateOf(g.state)]}"/>`)
      .join('');
    const crls = d.crls.map((c) => `<rect class="crl" x="${n1(x(c.at) - 0.75)}" y="${y}" width="1.5" height="${bar}"/>`).join('');
    const label = i % labelEvery === 0 ? `<text class="label" x="${PLOT.l - 6}" y="${n1(y + Math.max(bar, 9) - 1)}" text-anchor="end">${escapeHtml(d.deviceId)}</text>` : '';
    return `<g class="row" data-device="${escapeHtml(d.deviceId)}"><title>${escapeHtml(describe(d, segs, lo))}</title>${label}${rects}${crls}</g>`;
  });
  return `<div class="scroll"><svg class="timeline" role="img" aria-label="device timelines" width="${width}" height="${height + 20}" viewBox="0 0 ${width} ${height + 20}">${grid(top, height)}${rows.join('')}${markLines(marks, x, top, height)}</svg></div>`;
}

/** A row's tooltip: the device's transitions and CRLs, relative to the start of the run (at most 40 of each). */
function describe(d: ReportDevice, segs: readonly Segment[], lo: number): string {
  const cap = <T>(xs: readonly T[], f: (x: T) => string) => xs.slice(0, 40).map(f).join(', ') + (xs.length > 40 ? `, … (${xs.length - 40} more)` : '');
  const states = cap(segs, (g) => `${g.state}${g.code ? ` (${g.code})` : ''} at ${formatMs(g.from - lo)}`);
  const crls = d.crls.length ? `; CRL ${cap(d.crls, (c) => `#${c.crlNumber} at ${formatMs(c.at - lo)}`)}` : '';
  const power = d.poweredOnAt === undefined ? 'never powered on' : `powered on at ${formatMs(d.poweredOnAt - lo)}`;
  return `${d.deviceId}: ${power}; ${states || 'no state reported'}${crls}`;
}

const CSS = `
body{margin:0;padding:16px 24px 40px;background:#fafafa;color:#212121;font:13px/1.45 "DejaVu Sans",Arial,sans-serif}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:0 0 2px}h3{font-size:13px;margin:16px 0 6px;color:#424242}
.meta{color:#616161;margin:0 0 10px}code{font:12px "DejaVu Sans Mono",monospace}
table{border-collapse:collapse;margin:0 0 6px}td,th{padding:2px 10px 2px 0;text-align:left;vertical-align:top}th{color:#616161;font-weight:600}
td.num{text-align:right}.overview td,.overview th{padding-right:18px}
section.scenario{background:#fff;border:1px solid #e0e0e0;border-radius:4px;padding:14px 18px;margin:16px 0}
.summary{margin:0;color:#424242}.facts{margin:6px 0 0;color:#424242}.error{color:#b71c1c;font-weight:600}
.badge{display:inline-block;padding:0 7px;border-radius:3px;font-size:12px;font-weight:700;color:#fff;vertical-align:middle}
.badge.ok{background:#1b5e20}.badge.fail{background:#b71c1c}
.invariants .verdict{font-weight:700}.invariants .ok .verdict{color:#1b5e20}.invariants .fail .verdict{color:#b71c1c}.invariants .fail{background:#ffebee}
.none{color:#757575;margin:0}.cols{display:flex;flex-wrap:wrap;gap:8px 36px}.cols>div{flex:1 1 420px;min-width:0}
.legend{margin:0 0 4px}.key{margin-right:14px;white-space:nowrap}.key i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}
.crl-key{background:#000;width:2px!important}
svg{display:block;font:10px "DejaVu Sans",Arial,sans-serif}svg .tick,svg .label{fill:#616161}svg .grid{stroke:#eeeeee}svg .axis{stroke:#9e9e9e}
svg .crl{fill:#000}svg .mark line{stroke:#000;stroke-dasharray:2 3}svg .mark text{fill:#000}
svg .percentile text{font-weight:700}.scroll{overflow-x:auto}
pre.json{background:#f5f5f5;padding:8px;white-space:pre-wrap;word-break:break-all;margin:0}
`;
