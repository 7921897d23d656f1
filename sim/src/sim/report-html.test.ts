import { describe, expect, it } from 'vitest';
import { escapeHtml, formatMs, histogram, niceStep, renderReport, segments, stateCounts, type ReportDevice, type ReportInput, type ReportSection } from './report-html.js';
import { invariant, report, type ScenarioOutcome } from './scenario.js';

const T0 = 1_764_000_000_000;
const device = (id: string, steps: [string, number, string?][], crls: [number, number][] = []): ReportDevice => ({
  deviceId: id,
  poweredOnAt: T0,
  timeline: steps.map(([state, at, code]) => ({ state, at: T0 + at, ...(code ? { code } : {}) })),
  crls: crls.map(([n, at]) => ({ crlNumber: BigInt(n), at: T0 + at })),
});
const DEVICES = [
  device('sim-0000', [['starting', 0], ['enrolling', 10], ['connecting', 300], ['online', 320]], [[2, 900]]),
  device('sim-0001', [['starting', 5], ['enrolling', 20], ['error', 200, 'ENROLL_RATE_LIMITED'], ['enrolling', 400], ['online', 700]]),
  device('sim-0002', [['starting', 2], ['enrolling', 12], ['online', 500], ['revoked', 800]]),
];
const outcome = (o: Partial<ScenarioOutcome> = {}): ScenarioOutcome => ({
  succeeded: 3,
  failures: { ENROLL_RATE_LIMITED: 1 },
  lost: 0,
  latenciesMs: [320, 700, 500],
  invariants: [invariant('every device online', [], '3/3 online'), invariant('one identity each', ['sim-0002: 0 active certificates'], 'one each')],
  figures: { crlNumber: 2 },
  ...o,
});
const section = (o: Partial<ReportSection> = {}): ReportSection => {
  const out = outcome();
  return {
    scenario: { name: 'enroll-storm', summary: 'all devices power on at once', measures: 'power-on → online' },
    startedAt: T0,
    endedAt: T0 + 1000,
    devices: DEVICES,
    result: { outcome: out, report: report('enroll-storm', 3, out, 1000) },
    ...o,
  };
};
const input = (sections: ReportSection[] = [section()]): ReportInput => ({ version: '0.1.0+abc', seed: 7, generatedAt: T0, sections });
const all = (html: string, re: RegExp) => [...html.matchAll(re)];

describe('HTML report', () => {
  it('is one self-contained page: no script, nothing fetched, a CSP that forbids both', () => {
    const html = renderReport(input());
    expect(html.startsWith('<!doctype html>')).toBe(true);
    expect(html).toContain(`<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">`);
    expect(html).not.toMatch(/<script|<link|<img|<iframe|\bsrc=|url\(|@import|https?:\/\//i);
    expect(html).toMatch(/<style>[^]*<\/style>/);
  });

  it('shows the scenario, its invariants (ok/FAIL), failure codes, figures and its JSON line', () => {
    const html = renderReport(input());
    expect(html).toContain('<h2>enroll-storm <span class="badge fail">FAIL</span></h2>');
    expect(html).toContain('all devices power on at once');
    expect(html).toContain('<code>npm run sim -- --devices 3 --scenario enroll-storm --seed 7</code>');
    expect(html).toContain('version 0.1.0+abc · seed 7 · written 2025-11-24T16:00:00.000Z');
    expect(all(html, /<tr class="ok"><td class="verdict">ok<\/td><td>every device online<\/td><td>3\/3 online<\/td>/g)).toHaveLength(1);
    expect(all(html, /<tr class="fail"><td class="verdict">FAIL<\/td><td>one identity each<\/td><td>1 failing: sim-0002: 0 active certificates<\/td>/g)).toHaveLength(1);
    expect(html).toMatch(/<table class="failures"><tr><td><code>ENROLL_RATE_LIMITED<\/code><\/td><td class="num">1<\/td>/);
    expect(html).toMatch(/<table class="state-codes"><tr><td><code>ENROLL_RATE_LIMITED<\/code><\/td><td class="num">1<\/td>/);
    expect(html).toMatch(/<table class="figures"><tr><td><code>crlNumber<\/code><\/td><td class="num">2<\/td>/);
    const json = /<pre class="json">([^<]*)<\/pre>/.exec(html)![1]!.replaceAll('&quot;', '"');
    expect(JSON.parse(json)).toEqual(report('enroll-storm', 3, outcome(), 1000));
    const passing = renderReport(input([section({ result: { outcome: outcome({ invariants: [invariant('x', [], 'fine')] }), report: report('enroll-storm', 3, outcome(), 1000) } })]));
    expect(passing).toContain('<span class="badge ok">PASS</span>');
  });

  it('draws the latency histogram (every sample in a bar) with p50/p95/p99 from the JSON line', () => {
    const html = renderReport(input());
    const bars = all(html, /<rect class="bar" data-count="(\d+)"/g).map((m) => Number(m[1]));
    expect(bars.reduce((a, b) => a + b, 0)).toBe(3);
    for (const [p, v] of [['p50', '500 ms'], ['p95', '700 ms'], ['p99', '700 ms']]) expect(html).toMatch(new RegExp(`<g class="percentile" data-p="${p}">.*?>${p} ${v}</text>`));
    expect(html).toMatch(/<td>3<\/td><td>320 ms<\/td><td>500 ms<\/td><td>700 ms<\/td><td>700 ms<\/td><td>700 ms<\/td><td>507 ms<\/td>/);
    const none = renderReport(input([section({ result: { outcome: outcome({ latenciesMs: [] }), report: report('x', 3, outcome({ latenciesMs: [] }), 1) } })]));
    expect(none).toContain('no latency samples');
    expect(none).not.toContain('class="bar"');
  });

  it('draws one timeline row per device, a segment per state, CRL ticks, and the fleet by state over time', () => {
    const html = renderReport(input());
    const rows = all(html, /<g class="row" data-device="([^"]+)"><title>([^<]*)<\/title>(.*?)<\/g>/g);
    expect(rows.map((r) => r[1])).toEqual(['sim-0000', 'sim-0001', 'sim-0002']);
    expect(all(rows[0]![3]!, /<rect class="s-(\w+)"/g).map((m) => m[1])).toEqual(['starting', 'enrolling', 'connecting', 'online']);
    expect(all(rows[1]![3]!, /<rect class="s-(\w+)"/g).map((m) => m[1])).toEqual(['starting', 'enrolling', 'error', 'enrolling', 'online']);
    expect(all(rows[0]![3]!, /<rect class="crl"/g)).toHaveLength(1);
    expect(rows[1]![2]).toBe('sim-0001: powered on at 0 ms; starting at 5 ms, enrolling at 20 ms, error (ENROLL_RATE_LIMITED) at 200 ms, enrolling at 400 ms, online at 700 ms');
    expect(rows[0]![2]).toContain('; CRL #2 at 900 ms');
    for (const s of ['starting', 'enrolling', 'connecting', 'online', 'error', 'revoked']) expect(html).toContain(`<path class="area s-${s}"`);
    expect(html).toMatch(/<td><code>online<\/code><\/td><td class="num">2<\/td>/); // final states
    expect(html).toContain('<span class="key"><i class="crl-key"></i>new CRL held</span>');
  });

  it('marks scenario moments across the charts', () => {
    const html = renderReport(input([section({ marks: [{ label: 'broker killed', at: T0 + 400 }] })]));
    expect(all(html, /<g class="mark"><line x1="([\d.]+)"[^>]*\/><text[^>]*>broker killed<\/text><\/g>/g)).toHaveLength(2);
  });

  it('escapes every value from the run', () => {
    const evil = `<script>alert("x")</script>&'`;
    const html = renderReport(
      input([
        section({
          scenario: { name: evil, summary: evil, measures: evil },
          devices: [device(evil, [['starting', 0], [evil, 5, evil]])],
          marks: [{ label: evil, at: T0 }],
          result: { outcome: outcome({ failures: { [evil]: 1 }, invariants: [invariant(evil, [evil], evil)], figures: { [evil]: evil } }), report: report(evil, 1, outcome(), 1) },
        }),
      ]),
    );
    expect(html).not.toContain('<script');
    expect(html).not.toContain('"x"');
    expect(html).toContain('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;');
    expect(html).toContain('<rect class="s-other"'); // an unknown state draws, classed safely
    expect(escapeHtml(`a<b>&"c'`)).toBe('a&lt;b&gt;&amp;&quot;c&#39;');
  });

  it('reads only what it draws: a device record carrying its bootstrap token leaks nothing', () => {
    const token = 'Zm9vYmFyYmF6cXV4cXV1eHRva2VudG9rZW50b2tlbnRv';
    const leaky = { ...DEVICES[0]!, bootstrap: { token, trustBundle: '-----BEGIN CERTIFICATE-----' }, dataDir: '/secret/dir' } as ReportDevice;
    const html = renderReport(input([section({ devices: [leaky] })]));
    expect(html).not.toContain(token);
    expect(html).not.toContain('BEGIN');
    expect(html).not.toContain('/secret/dir');
  });

  it('a run that failed gets a section with its code and the timelines so far', () => {
    const { result: _, ...rest } = section();
    const html = renderReport(input([section({ scenario: { name: 'revocation', summary: 's', measures: 'm' } }), { ...rest, error: { code: 'SIM_TIMEOUT', message: 'timed out after 60000 ms waiting for 3 devices' } }]));
    expect(all(html, /<section class="scenario" id="([\w-]+)"/g).map((m) => m[1])).toEqual(['revocation', 'enroll-storm']);
    expect(html).toContain('<span class="badge fail">FAILED SIM_TIMEOUT</span>');
    expect(html).toContain('The run failed: <code>SIM_TIMEOUT</code> timed out after 60000 ms waiting for 3 devices');
    expect(all(html, /<g class="row" data-device=/g)).toHaveLength(6);
    expect(all(html, /<pre class="json">/g)).toHaveLength(1);
    expect(all(html, /<tr><td><a href="#(revocation|enroll-storm)">/g)).toHaveLength(2); // the overview links each section
  });

  it('scales the timeline for large fleets: 1 px rows, a label every 12 rows', () => {
    const many = Array.from({ length: 2000 }, (_, i) => device(`sim-${String(i).padStart(4, '0')}`, [['starting', i % 50], ['online', 100 + (i % 300)]]));
    const html = renderReport(input([section({ devices: many })]));
    expect(all(html, /<g class="row" data-device=/g)).toHaveLength(2000);
    expect(all(html, /<text class="label"/g)).toHaveLength(Math.ceil(2000 / 12));
    expect(html).toMatch(/<svg class="timeline"[^>]* height="2024"/);
    expect(html).toMatch(/<rect class="s-online" x="[\d.]+" y="2003" width="[\d.]+" height="1"/);
    expect(html.length).toBeLessThan(1_500_000);
  });
});

describe('report helpers', () => {
  it('histogram: round bin edges, every sample counted once, 5-40 bins', () => {
    const h = histogram([405, 409, 423, 434, 421]);
    expect(h).toEqual({ lo: 400, step: 10, counts: [2, 0, 2, 1] });
    const big = histogram(Array.from({ length: 100_000 }, (_, i) => (i * 7919) % 5000));
    expect(big.counts.length).toBeLessThanOrEqual(41);
    expect(big.counts.reduce((a, b) => a + b)).toBe(100_000);
    expect(histogram([])).toEqual({ lo: 0, step: 1, counts: [] });
    expect(histogram([250, 250])).toEqual({ lo: 250, step: 0.2, counts: [2] });
    expect(histogram([Number.NaN, 3]).counts).toEqual([1]);
  });

  it('niceStep and formatMs', () => {
    expect([0.3, 1, 1.5, 3, 7, 12, 4999].map(niceStep)).toEqual([0.5, 1, 2, 5, 10, 20, 5000]);
    expect(niceStep(0)).toBe(1);
    expect([0, 999.4, 1234, 12_345, 90_000, Number.NaN].map(formatMs)).toEqual(['0 ms', '999 ms', '1.23 s', '12.3 s', '1.5 min', '–']);
  });

  it('segments: a state runs until the next one, repeats merge, the last runs to the end', () => {
    expect(segments(device('d', [['starting', 0], ['online', 10], ['online', 20], ['error', 30, 'E'], ['error', 40, 'E']]), T0 + 50)).toEqual([
      { state: 'starting', from: T0, to: T0 + 10 },
      { state: 'online', from: T0 + 10, to: T0 + 30 },
      { state: 'error', from: T0 + 30, to: T0 + 40, code: 'E' },
      { state: 'error', from: T0 + 40, to: T0 + 50, code: 'E' },
    ]);
    expect(segments(device('d', []), T0)).toEqual([]);
  });

  it('stateCounts: devices per state at each instant, none before a device reports', () => {
    const cols = stateCounts(DEVICES, T0, T0 + 1000, 4); // instants 125, 375, 625, 875 ms
    expect(cols).toEqual([{ enrolling: 3 }, { online: 1, error: 1, enrolling: 1 }, { online: 2, enrolling: 1 }, { online: 2, revoked: 1 }]);
    expect(stateCounts([device('late', [['starting', 900]])], T0, T0 + 1000, 2)).toEqual([{}, {}]);
  });
});
