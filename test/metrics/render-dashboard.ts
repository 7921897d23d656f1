/**
 * `npm run docs:dashboard` (scripts/render-dashboard.sh): a picture of docs/grafana/fleet-dashboard.json
 * with real numbers, without Grafana (not packaged for Debian).
 *
 * 1. A real fleet with metrics on (mosquitto, bridge, CA, inventory) and Debian's Prometheus scraping
 *    it every second from a free loopback port.
 * 2. A known story: devices on swtpm enroll, some rotate (twice), enrollments with unknown tokens are
 *    refused, one device is revoked, one goes offline.
 * 3. Every panel's PromQL, exactly as in the dashboard JSON (Grafana's `$__rate_interval` replaced by
 *    a fixed window), evaluated through Prometheus's HTTP API: instant queries for stat and bar gauge
 *    panels, range queries for time series.
 * 4. A static HTML page laid out by the panels' gridPos, screenshotted by headless Chromium into
 *    docs/grafana/dashboard.png.
 * Everything it started is stopped, and its temporary directory removed, on success, failure and Ctrl-C.
 *
 * Environment: PROMETHEUS (default `prometheus`), CHROMIUM (default `chromium-headless-shell`), OUT
 * (default docs/grafana/dashboard.png), DEVICES (default 6).
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { Agent } from '../../agent/src/agent.js';
import { eventually, startFleetFixture, type FleetFixture } from '../agent/fleet-fixture.js';
import { enrollWithUnknownToken } from './unknown-token.js';
import { freePort, stopAll } from '../harness/index.js';

const run = promisify(execFile);
const PROMETHEUS = process.env['PROMETHEUS'] ?? 'prometheus';
const CHROMIUM = process.env['CHROMIUM'] ?? 'chromium-headless-shell';
const OUT = resolve(process.env['OUT'] ?? 'docs/grafana/dashboard.png');
const DEVICES = Number(process.env['DEVICES'] ?? 6);
const DASHBOARD = resolve('docs/grafana/fleet-dashboard.json');
const RATE_INTERVAL = '30s';
const log = (s: string) => process.stderr.write(`[render-dashboard] ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Threshold {
  color: string;
  value: number | null;
}
interface Panel {
  type: 'stat' | 'bargauge' | 'timeseries';
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  targets: { expr: string; legendFormat?: string }[];
  fieldConfig: {
    defaults: { unit?: string; min?: number; max?: number; thresholds?: { steps: Threshold[] } };
    overrides: { matcher: { options: string }; properties: { id: string; value: unknown }[] }[];
  };
}
interface Series {
  name: string;
  value: number;
  points: [number, number][];
  unit: string;
  decimals: number | undefined;
  color: string;
}

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'render-dashboard-'));
  let fx: FleetFixture | undefined;
  let prom: ChildProcess | undefined;
  const cleanup = async () => {
    prom?.kill('SIGTERM');
    await fx?.stop().catch(() => undefined);
    await stopAll().catch(() => undefined);
    rmSync(work, { recursive: true, force: true });
  };
  process.once('SIGINT', () => void cleanup().then(() => process.exit(130)));
  try {
    fx = await startFleetFixture({ metrics: { port: 0 } });
    const target = new URL(fx.fleet.metricsUrl!);
    const promPort = await freePort();
    const promUrl = `http://127.0.0.1:${promPort}`;
    writeFileSync(
      join(work, 'prometheus.yml'),
      [
        'global:',
        '  scrape_interval: 1s',
        '  evaluation_interval: 1s',
        'scrape_configs:',
        '  - job_name: fleet-bridge',
        '    metrics_path: /metrics',
        '    static_configs:',
        `      - targets: ['${target.host}']`,
        '',
      ].join('\n'),
    );
    prom = spawn(PROMETHEUS, [`--config.file=${join(work, 'prometheus.yml')}`, `--storage.tsdb.path=${join(work, 'tsdb')}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn'], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    // Refused until Prometheus listens; then `up` is 1 once it scraped the bridge.
    const up = () => instant(promUrl, 'up{job="fleet-bridge"}').then((r) => r[0]?.value === 1, () => false);
    await eventually(up, 30_000, 'Prometheus scraping the bridge');
    const started = Date.now() / 1000;
    log(`Prometheus on ${promUrl} scrapes ${fx.fleet.metricsUrl}`);

    // The story.
    const agents: Agent[] = [];
    for (let i = 1; i <= DEVICES; i++) {
      const a = fx.agent(await fx.device(`gw-${String(i).padStart(2, '0')}`));
      await a.start();
      agents.push(a);
      await sleep(1000);
    }
    log(`${DEVICES} devices enrolled`);
    for (let round = 1; round <= 2; round++) {
      for (const a of agents.slice(0, Math.ceil(DEVICES / 2))) {
        a.rotateNow();
        await eventually(() => a.status().rotations === round && a.state === 'online', 30_000, `rotation of ${a.deviceId}`);
        await sleep(500);
      }
    }
    log('rotations done');
    for (let i = 0; i < 2; i++) await enrollWithUnknownToken(fx.fleet);
    await sleep(2000);
    await fx.fleet.revokeDevice(agents.at(-1)!.deviceId, 'keyCompromise');
    await agents.at(-2)!.stop();
    log('refusals, a revocation and a device gone offline');
    await eventually(() => fx!.fleet.inventory.getDevice(agents.at(-2)!.deviceId)?.online === false, 10_000, 'offline status ingested');
    await sleep(4000); // a few more scrapes

    const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { title: string; panels: Panel[] };
    const end = Date.now() / 1000;
    const rendered: string[] = [];
    for (const p of dashboard.panels) rendered.push(renderPanel(p, await evaluate(promUrl, p, started, end)));
    const version = (await run(PROMETHEUS, ['--version'])).stdout.split('\n')[0]!.replace(/\s*\(.*$/, '');
    const html = page(dashboard.title, rendered, version);
    const htmlFile = join(work, 'dashboard.html');
    writeFileSync(htmlFile, html);
    const height = 80 + Math.max(...dashboard.panels.map((p) => p.gridPos.y + p.gridPos.h)) * (ROW_PX + GAP_PX) + 24;
    await run(CHROMIUM, ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', `--window-size=1440,${height}`, `--screenshot=${OUT}`, `file://${htmlFile}`], { timeout: 60_000 });
    log(`wrote ${OUT}`);
  } finally {
    await cleanup();
  }
}

interface PromResult {
  metric: Record<string, string>;
  value?: [number, string];
  values?: [number, string][];
}

async function api(promUrl: string, path: string, params: Record<string, string>): Promise<PromResult[]> {
  const res = await fetch(`${promUrl}${path}?${new URLSearchParams(params)}`);
  const body = (await res.json()) as { status: string; error?: string; data: { result: PromResult[] } };
  if (body.status !== 'success') throw new Error(`${params['query']}: ${body.error}`);
  return body.data.result;
}

async function instant(promUrl: string, query: string): Promise<{ metric: Record<string, string>; value: number }[]> {
  return (await api(promUrl, '/api/v1/query', { query })).map((r) => ({ metric: r.metric, value: Number(r.value![1]) }));
}

async function evaluate(promUrl: string, p: Panel, start: number, end: number): Promise<Series[]> {
  const out: Series[] = [];
  for (const t of p.targets) {
    const query = t.expr.replaceAll('$__rate_interval', RATE_INTERVAL);
    const results =
      p.type === 'timeseries'
        ? await api(promUrl, '/api/v1/query_range', { query, start: String(start), end: String(end), step: '1' })
        : await api(promUrl, '/api/v1/query', { query, time: String(end) });
    for (const r of results) {
      const name = (t.legendFormat ?? query).replace(/\{\{\s*(\w+)\s*\}\}/g, (_, l: string) => (l === 'le' ? humanLe(r.metric[l] ?? '') : (r.metric[l] ?? '')));
      const points = (r.values ?? (r.value ? [r.value] : [])).map(([ts, v]) => [ts, Number(v)] as [number, number]);
      const value = points.at(-1)?.[1] ?? NaN;
      const override = p.fieldConfig.overrides.find((o) => o.matcher.options === name);
      const unit = (override?.properties.find((x) => x.id === 'unit')?.value as string | undefined) ?? p.fieldConfig.defaults.unit ?? 'none';
      const decimals = override?.properties.find((x) => x.id === 'decimals')?.value as number | undefined;
      const fixed = (override?.properties.find((x) => x.id === 'color')?.value as { fixedColor?: string } | undefined)?.fixedColor;
      // A series with no value at all (no re-attestation happened: quantile of nothing) is left out.
      if (p.type === 'timeseries' && points.every(([, v]) => Number.isNaN(v))) continue;
      out.push({ name, value, points, unit, decimals, color: fixed ? (COLORS[fixed] ?? fixed) : thresholdColor(p.fieldConfig.defaults.thresholds?.steps, value) });
    }
  }
  // Histogram buckets and expiry windows in numeric order; the rest as Prometheus returned them.
  if (out.length && out.every((s) => s.name.startsWith('≤ '))) out.sort((a, b) => leSeconds(a.name) - leSeconds(b.name));
  if (out.length && out.every((s) => /^\d+d$/.test(s.name))) out.sort((a, b) => parseInt(a.name) - parseInt(b.name));
  return out;
}

const COLORS: Record<string, string> = { green: '#73bf69', orange: '#ff9830', red: '#f2495c', blue: '#5794f2' };
const PALETTE = ['#73bf69', '#f2cc0c', '#5794f2', '#ff9830', '#f2495c', '#b877d9', '#8ab8ff', '#fade2a'];

function thresholdColor(steps: Threshold[] | undefined, v: number): string {
  let color = 'green';
  for (const s of steps ?? []) if (s.value === null || v >= s.value) color = s.color;
  return COLORS[color] ?? color;
}

function humanLe(le: string): string {
  if (le === '+Inf') return '≤ ∞';
  const s = Number(le);
  return `≤ ${s >= 86_400 ? `${s / 86_400} d` : s >= 3600 ? `${s / 3600} h` : s >= 60 ? `${s / 60} min` : `${s} s`}`;
}
const leSeconds = (name: string) => {
  const [n, u] = name.slice(2).split(' ');
  if (n === '∞') return Infinity;
  return Number(n) * ({ d: 86_400, h: 3600, min: 60, s: 1 }[u ?? 's'] ?? 1);
};

function format(v: number, unit: string, decimals?: number): string {
  if (Number.isNaN(v)) return 'N/A';
  if (decimals !== undefined && unit === 'none') return v.toFixed(decimals);
  switch (unit) {
    case 'percentunit':
      return `${(v * 100).toFixed(1)}%`;
    case 's':
      if (Math.abs(v) < 1) return `${(v * 1000).toFixed(v < 0.01 ? 2 : 1)} ms`;
      if (Math.abs(v) < 120) return `${v.toFixed(1)} s`;
      if (Math.abs(v) < 7200) return `${(v / 60).toFixed(1)} min`;
      return `${(v / 3600).toFixed(1)} h`;
    case 'reqps':
      return `${v.toFixed(3)} req/s`;
    default:
      return Number.isInteger(v) ? String(v) : v.toFixed(2);
  }
}

const ROW_PX = 30;
const GAP_PX = 8;
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function renderPanel(p: Panel, series: Series[]): string {
  const g = p.gridPos;
  const style = `grid-column:${g.x + 1} / span ${g.w};grid-row:${g.y + 1} / span ${g.h}`;
  let body: string;
  if (series.length === 0) body = '<div class="empty">No data</div>';
  else if (p.type === 'stat') {
    body = `<div class="stats">${series
      .map((s) => `<div class="stat"><div class="value" style="color:${s.color}">${esc(format(s.value, s.unit, s.decimals))}</div><div class="label">${esc(s.name)}</div></div>`)
      .join('')}</div>`;
  } else if (p.type === 'bargauge') {
    const max = p.fieldConfig.defaults.max ?? Math.max(1, ...series.map((s) => (Number.isFinite(s.value) ? s.value : 0)));
    body = series
      .map((s) => {
        const pct = Number.isFinite(s.value) ? Math.max(0, Math.min(100, (s.value / max) * 100)) : 0;
        return `<div class="bar"><span class="name">${esc(s.name)}</span><span class="track"><span class="fill" style="width:${pct}%;background:${s.color}"></span></span><span class="num" style="color:${s.color}">${esc(format(s.value, s.unit, s.decimals))}</span></div>`;
      })
      .join('');
  } else {
    body = sparklines(series, g.w * 56 - 24, g.h * ROW_PX - 70);
  }
  return `<section class="panel" style="${style}"><h2>${esc(p.title)}</h2>${body}</section>`;
}

function sparklines(series: Series[], width: number, height: number): string {
  const finite = series.flatMap((s) => s.points.filter(([, v]) => Number.isFinite(v)));
  if (finite.length === 0) return '<div class="empty">No data</div>';
  const t0 = Math.min(...finite.map(([t]) => t));
  const t1 = Math.max(...finite.map(([t]) => t));
  const vmax = Math.max(...finite.map(([, v]) => v)) || 1;
  const x = (t: number) => ((t - t0) / Math.max(1, t1 - t0)) * width;
  const y = (v: number) => height - (v / vmax) * (height - 6) - 3;
  const lines = series.map((s, i) => {
    const d = s.points
      .filter(([, v]) => Number.isFinite(v))
      .map(([t, v], j) => `${j === 0 ? 'M' : 'L'}${x(t).toFixed(1)},${y(v).toFixed(1)}`)
      .join(' ');
    return `<path d="${d}" fill="none" stroke="${PALETTE[i % PALETTE.length]}" stroke-width="1.6"/>`;
  });
  const legend = series
    .map((s, i) => {
      const last = [...s.points].reverse().find(([, v]) => Number.isFinite(v))?.[1] ?? NaN;
      return `<span class="key"><i style="background:${PALETTE[i % PALETTE.length]}"></i>${esc(s.name)} <b>${esc(format(last, s.unit))}</b></span>`;
    })
    .join('');
  return `<svg width="${width}" height="${height}"><line x1="0" y1="${height - 0.5}" x2="${width}" y2="${height - 0.5}" stroke="#333"/>${lines.join('')}<text x="2" y="11" fill="#8e8e8e" font-size="10">${esc(format(vmax, series[0]!.unit))}</text></svg><div class="legend">${legend}</div>`;
}

function page(title: string, panels: string[], prometheusVersion: string): string {
  return `<!doctype html><html><head><meta charset="utf-8"><style>
body{margin:0;background:#111217;color:#ccccdc;font:13px "DejaVu Sans",sans-serif}
header{padding:14px 16px 4px}h1{font-size:18px;margin:0;color:#fff}header p{margin:4px 0 0;color:#8e8e8e;font-size:11px}
.grid{display:grid;grid-template-columns:repeat(24,1fr);grid-auto-rows:${ROW_PX}px;gap:${GAP_PX}px;padding:8px 16px}
.panel{background:#181b1f;border:1px solid #2a2d33;border-radius:3px;padding:8px 12px;overflow:hidden}
h2{font-size:13px;margin:0 0 8px;color:#d8d9da;font-weight:600}
.stats{display:flex;gap:18px;align-items:center;justify-content:space-around;height:calc(100% - 26px)}
.stat{text-align:center}.value{font-size:30px;font-weight:600}.label{color:#8e8e8e;font-size:11px;margin-top:2px}
.bar{display:flex;align-items:center;gap:8px;margin:5px 0}.name{width:95px;text-align:right;color:#aaa;font-size:11px}
.track{flex:1;height:14px;background:#22252b;border-radius:2px}.fill{display:block;height:100%;border-radius:2px}
.num{width:46px;font-weight:600}.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:11px;margin-top:4px}
.key i{display:inline-block;width:10px;height:3px;margin-right:4px;vertical-align:middle}.empty{color:#8e8e8e;padding:20px;text-align:center}
</style></head><body><header><h1>${esc(title)}</h1><p>Rendered from the PromQL of docs/grafana/fleet-dashboard.json, evaluated by ${esc(prometheusVersion)} scraping a real embedded fleet, on a static page by test/metrics/render-dashboard.ts (not by Grafana). ${esc(new Date().toISOString().slice(0, 16))}Z</p></header>
<main class="grid">${panels.join('\n')}</main></body></html>`;
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    log(`failed: ${(e as Error).stack ?? String(e)}`);
    process.exit(1);
  },
);
