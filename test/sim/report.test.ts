import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { inflateSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { HISTOGRAM_COLOUR, STATE_COLOURS, formatMs } from '../../sim/src/sim/report-html.js';
import type { ScenarioReport } from '../../sim/src/sim/scenario.js';

/**
 * `npm run sim -- --report FILE` as shipped (dist/sim.mjs): a real 5-device enroll-storm writes its HTML
 * report, and Debian's headless Chromium (package chromium-headless-shell; CHROMIUM overrides the
 * binary, as in test/metrics/render-dashboard.ts) renders it: the DOM Chromium built holds the drawn
 * charts and one timeline row per device, and a screenshot shows the histogram's and the states'
 * colours painted. The page must not carry anything that looks like a token or a key.
 */
const ROOT = resolve(import.meta.dirname, '../..');
const CHROMIUM = process.env['CHROMIUM'] ?? 'chromium-headless-shell';
const work = mkdtempSync(join(tmpdir(), 'sim-report-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

interface Run {
  code: number;
  out: string;
  err: string;
}
function exec(file: string, args: string[], timeoutMs: number): Promise<Run & { missing: boolean }> {
  return new Promise((res) => {
    execFile(file, args, { cwd: ROOT, timeout: timeoutMs, maxBuffer: 64 << 20 }, (e, out, err) => {
      const code = (e as { code?: number | string } | null)?.code;
      res({ code: e ? (typeof code === 'number' ? code : 1) : 0, out, err, missing: code === 'ENOENT' });
    });
  });
}
const chromium = (args: string[]) => exec(CHROMIUM, ['--headless', '--disable-gpu', '--no-sandbox', '--hide-scrollbars', ...args], 30_000);

describe('sim --report: a self-contained HTML report that headless Chromium renders', () => {
  it('5-device enroll-storm: the charts and device rows are in the rendered DOM and painted', { timeout: 90_000 }, async () => {
    const version = await exec(CHROMIUM, ['--version'], 15_000);
    expect(version.missing, `${CHROMIUM} not found: install Debian's chromium-headless-shell (scripts/setup.sh --test) or set CHROMIUM`).toBe(false);
    expect(version.code, version.err).toBe(0);

    const file = join(work, 'r.html');
    const sim = await exec(process.execPath, ['dist/sim.mjs', '--devices', '5', '--scenario', 'enroll-storm', '--seed', '11', '--report', file], 60_000);
    expect(sim.code, `${sim.out}\n${sim.err}`).toBe(0);
    expect(sim.err).toContain(`[sim] report: ${file}`);
    const line = JSON.parse(sim.out.trim().split('\n').at(-1)!) as ScenarioReport;
    const html = readFileSync(file, 'utf8');
    // Nothing secret: no base64url run as long as a one-time token (43 chars), no PEM, no run directory.
    expect(html).not.toMatch(/[A-Za-z0-9_-]{40,}|BEGIN|PRIVATE|tpm-fleet-sim-/);
    expect(html).not.toMatch(/<script|https?:\/\//);

    const dom = await chromium(['--dump-dom', `file://${file}`]);
    expect(dom.code, dom.err).toBe(0);
    const d = dom.out;
    const count = (re: RegExp) => [...d.matchAll(re)].length;
    expect([...d.matchAll(/<g class="row" data-device="([^"]+)">/g)].map((m) => m[1])).toEqual(['sim-0000', 'sim-0001', 'sim-0002', 'sim-0003', 'sim-0004']);
    expect(count(/<g class="row" data-device="[^"]+"><title>sim-\d{4}: powered on at \d+ ms; starting at \d+ ms, enrolling at [^<]*online at [^<]*<\/title>/g)).toBe(5);
    expect(count(/<rect class="s-online" /g)).toBe(5);
    const bars = [...d.matchAll(/<rect class="bar" data-count="(\d+)"/g)].map((m) => Number(m[1]));
    expect(bars.reduce((a, b) => a + b, 0)).toBe(5);
    for (const p of ['p50', 'p95', 'p99'] as const) expect(d).toMatch(new RegExp(`<g class="percentile" data-p="${p}">.*?>${p} ${formatMs(line[`${p}Ms`])}</text>`));
    expect(d).toMatch(/<path class="area s-online" fill="#2e7d32" d="M/);
    expect(count(/<tr class="ok"><td class="verdict">ok<\/td>/g)).toBe(3);
    expect(d).not.toContain('FAIL');
    expect(JSON.parse(/<pre class="json">([^<]*)<\/pre>/.exec(d)![1]!.replaceAll('&quot;', '"'))).toEqual(line);

    const png = join(work, 'r.png');
    const shot = await chromium(['--window-size=1280,1400', `--screenshot=${png}`, `file://${file}`]);
    expect(shot.code, shot.err).toBe(0);
    expect(statSync(png).size).toBeGreaterThan(10_000);
    const pixels = colourCounts(readFileSync(png));
    expect(pixels.width).toBe(1280);
    // The histogram's bars and the devices' enrolling segments (most of an enroll-storm) are painted.
    expect(pixels.count(HISTOGRAM_COLOUR)).toBeGreaterThan(2_000);
    expect(pixels.count(STATE_COLOURS['enrolling']!)).toBeGreaterThan(2_000);
    expect(pixels.count(STATE_COLOURS['online']!)).toBeGreaterThan(11 * 11); // more than the legend's swatch
  });

  it('--report into a directory that does not exist: a usage error before anything runs', async () => {
    const r = await exec(process.execPath, ['dist/sim.mjs', '--devices', '1', '--scenario', 'enroll-storm', '--report', join(work, 'nope', 'r.html')], 30_000);
    expect(r.code).toBe(2);
    expect(r.err.split('\n')[0]).toBe(`sim: SIM_USAGE: --report: directory ${JSON.stringify(join(work, 'nope'))} does not exist`);
    expect(r.out).toBe('');
  });
});

/** Decodes an 8-bit RGB/RGBA PNG (what Chromium writes) and counts exact colours. */
function colourCounts(png: Buffer): { width: number; count: (hex: string) => number } {
  expect(png.subarray(0, 8).toString('hex')).toBe('89504e470d0a1a0a');
  let width = 0;
  let height = 0;
  let bpp = 0;
  const idat: Buffer[] = [];
  for (let off = 8; off < png.length; ) {
    const len = png.readUInt32BE(off);
    const type = png.toString('latin1', off + 4, off + 8);
    const data = png.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      [width, height] = [data.readUInt32BE(0), data.readUInt32BE(4)];
      expect({ depth: data[8], interlace: data[12] }).toEqual({ depth: 8, interlace: 0 });
      bpp = data[9] === 6 ? 4 : data[9] === 2 ? 3 : 0;
      expect(bpp, `PNG colour type ${data[9]}`).toBeGreaterThan(0);
    }
    if (type === 'IDAT') idat.push(data);
    off += 12 + len;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * bpp;
  const img = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const src = y * (stride + 1) + 1;
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? img[y * stride + x - bpp]! : 0;
      const b = y > 0 ? img[(y - 1) * stride + x]! : 0;
      const c = x >= bpp && y > 0 ? img[(y - 1) * stride + x - bpp]! : 0;
      const p = a + b - c;
      const [pa, pb, pc] = [Math.abs(p - a), Math.abs(p - b), Math.abs(p - c)];
      const pred = [0, a, b, (a + b) >> 1, pa <= pb && pa <= pc ? a : pb <= pc ? b : c][filter]!;
      img[y * stride + x] = (raw[src + x]! + pred) & 0xff;
    }
  }
  const counts = new Map<string, number>();
  for (let i = 0; i < img.length; i += bpp) {
    const key = img.toString('hex', i, i + 3);
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return { width, count: (hex) => counts.get(hex.replace('#', '').toLowerCase()) ?? 0 };
}
