import { describe, expect, it } from 'vitest';
import { createServer } from 'node:net';
import { MetricsServer } from '../../broker-bridge/src/metrics/metrics-server.js';
import { metricsListen, metricsConfigSchema } from '../../broker-bridge/src/metrics/metrics-config.js';
import { SchemaError } from '../../common/protocol/schema.js';

const source = (text = 'x_total 1\n') => ({ contentType: 'text/plain; version=0.0.4; charset=utf-8', metrics: async () => text });

describe('MetricsServer', () => {
  it('answers GET /metrics (query strings allowed) and 404 to everything else', async () => {
    const s = new MetricsServer({ source: source('fleet_x 1\n') });
    await s.start();
    try {
      expect(s.url).toBe(`http://127.0.0.1:${s.port}/metrics`);
      const ok = await fetch(s.url!);
      expect(ok.status).toBe(200);
      expect(ok.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
      expect(await ok.text()).toBe('fleet_x 1\n');
      expect((await fetch(`${s.url}?name[]=x`)).status).toBe(200);
      for (const [path, method] of [['/', 'GET'], ['/metricsx', 'GET'], ['/metrics', 'POST'], ['/metrics', 'DELETE']] as const) {
        const res = await fetch(s.url!.replace('/metrics', path), { method });
        expect(res.status, `${method} ${path}`).toBe(404);
      }
      // HEAD is not GET.
      expect((await fetch(s.url!, { method: 'HEAD' })).status).toBe(404);
    } finally {
      await s.stop();
    }
  });

  it('a failing scrape answers 500 with nothing from the error, and reports it', async () => {
    const errors: unknown[] = [];
    const s = new MetricsServer({ source: { contentType: 'text/plain', metrics: async () => Promise.reject(new Error('secret details')) }, onError: (e) => errors.push(e) });
    await s.start();
    try {
      const res = await fetch(s.url!);
      expect(res.status).toBe(500);
      expect(await res.text()).toBe('scrape failed\n');
      expect(errors).toHaveLength(1);
    } finally {
      await s.stop();
    }
  });

  it('a port in use is refused with METRICS_LISTEN_FAILED; stop frees the port, even with a keep-alive connection open', async () => {
    const a = new MetricsServer({ source: source() });
    await a.start();
    const port = a.port!;
    await expect(new MetricsServer({ source: source(), port }).start()).rejects.toMatchObject({ code: 'METRICS_LISTEN_FAILED' });
    await fetch(a.url!, { keepalive: true }).then((r) => r.text());
    await a.stop();
    expect(a.url).toBeUndefined();
    // The port is free again.
    await new Promise<void>((resolve, reject) => {
      const probe = createServer().once('error', reject);
      probe.listen(port, '127.0.0.1', () => probe.close(() => resolve()));
    });
  });
});

describe('the bridge.json `metrics` block', () => {
  it('port 0 or absent means off; host defaults to loopback; unknown keys and bad ports are refused', () => {
    expect(metricsListen(undefined)).toBeUndefined();
    expect(metricsListen(metricsConfigSchema.parse({ port: 0 }, 'metrics'))).toBeUndefined();
    expect(metricsListen(metricsConfigSchema.parse({ port: 9464 }, 'metrics'))).toEqual({ port: 9464, host: '127.0.0.1' });
    expect(metricsListen(metricsConfigSchema.parse({ port: 9464, host: '::1' }, 'metrics'))).toEqual({ port: 9464, host: '::1' });
    const refused = (v: unknown) => {
      try {
        metricsConfigSchema.parse(v, 'metrics');
      } catch (e) {
        expect(e).toBeInstanceOf(SchemaError);
        return (e as SchemaError).message;
      }
      return 'accepted';
    };
    expect(refused({ port: 9464, bind: 'x' })).toMatch(/metrics\.bind/);
    expect(refused({ port: 70_000 })).toMatch(/metrics\.port/);
    expect(refused({ port: 9464, host: 'http://x/' })).toMatch(/metrics\.host/);
    expect(refused({})).toMatch(/metrics\.port/);
  });
});
