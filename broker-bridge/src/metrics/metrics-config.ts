import { int, object, optional, str, type Infer } from '../../../common/protocol/schema.js';

/**
 * The `metrics` block of bridge.json: `{ "port": 9464, "host": "127.0.0.1" }`. Absent, or port 0:
 * no metrics endpoint (a scrape target needs a port the operator knows). `host` defaults to loopback;
 * a host name or an IPv4/IPv6 literal (`0.0.0.0` / `::` to listen everywhere, an operator's decision).
 */
export const metricsConfigSchema = object({
  port: int({ min: 0, max: 65_535 }),
  host: optional(str({ min: 1, max: 253, pattern: /^(?:[A-Za-z0-9.-]+|[0-9A-Fa-f:.]+)$/ })),
});

export type MetricsConfig = Infer<typeof metricsConfigSchema>;

export const DEFAULT_METRICS_HOST = '127.0.0.1';

/** Where to listen, or undefined when metrics are off. */
export function metricsListen(cfg: MetricsConfig | undefined): { port: number; host: string } | undefined {
  if (!cfg || cfg.port === 0) return undefined;
  return { port: cfg.port, host: cfg.host ?? DEFAULT_METRICS_HOST };
}
