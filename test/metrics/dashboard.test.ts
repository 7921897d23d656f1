import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { ManualClock } from '../../common/clock.js';
import { FleetMetrics } from '../../broker-bridge/src/metrics/fleet-metrics.js';
import { MetricsServer } from '../../broker-bridge/src/metrics/metrics-server.js';
import { parseExposition } from './exposition.js';

interface Panel {
  id: number;
  type: string;
  title: string;
  datasource: { type: string; uid: string };
  targets: { refId: string; expr: string }[];
}

const dashboard = JSON.parse(readFileSync(new URL('../../docs/grafana/fleet-dashboard.json', import.meta.url), 'utf8')) as {
  schemaVersion: number;
  uid: string;
  templating: { list: { name: string; type: string; query: string }[] };
  panels: Panel[];
};

/** The dashboard cannot drift from the code: every series it queries is one the bridge serves. */
describe('docs/grafana/fleet-dashboard.json', () => {
  it('is a Grafana dashboard with a Prometheus data source variable that every panel uses', () => {
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(39);
    expect(dashboard.templating.list).toContainEqual(expect.objectContaining({ name: 'datasource', type: 'datasource', query: 'prometheus' }));
    expect(new Set(dashboard.panels.map((p) => p.id)).size).toBe(dashboard.panels.length);
    for (const p of dashboard.panels) {
      expect(p.datasource, p.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(p.targets.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets) expect(t.expr, p.title).toMatch(/fleet_/);
    }
  });

  it('queries only series that /metrics serves (scraped over HTTP from a fresh fleet\'s metrics)', async () => {
    const metrics = new FleetMetrics({
      inventory: { listDevices: () => [], listCertificates: () => [] },
      clock: new ManualClock(),
      crl: { current: undefined },
    });
    const server = new MetricsServer({ source: metrics });
    await server.start();
    let text: string;
    try {
      text = await (await fetch(server.url!)).text();
    } finally {
      await server.stop();
    }
    const served = new Set([...parseExposition(text).values.keys()].map((k) => k.replace(/\{.*$/, '')));
    const used = new Set(dashboard.panels.flatMap((p) => p.targets.flatMap((t) => t.expr.match(/\bfleet_[a-z0-9_]+/g) ?? [])));
    expect(used.size).toBeGreaterThan(10);
    expect([...used].filter((name) => !served.has(name))).toEqual([]);
  });
});
