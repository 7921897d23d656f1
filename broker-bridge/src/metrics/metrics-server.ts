import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MetricsError } from './errors.js';

/**
 * Serves one scrape endpoint over plain HTTP: `GET /metrics` (also with a query string) answers the
 * exposition text, anything else 404. Bound to loopback unless told otherwise: the numbers say how big
 * the fleet is and how it is doing, so exposing them is an operator's decision (put a reverse proxy
 * with TLS in front, or run Prometheus on the same host).
 */
export interface MetricsSource {
  readonly contentType: string;
  metrics(): Promise<string>;
}

export interface MetricsServerOptions {
  readonly source: MetricsSource;
  /** 0 (default) picks a free port; `port` tells which. */
  readonly port?: number;
  /** Default 127.0.0.1. */
  readonly host?: string;
  /** A failed scrape (the 500 it answers says nothing more). */
  readonly onError?: (err: unknown) => void;
}

export class MetricsServer {
  readonly #o: MetricsServerOptions;
  #server: Server | undefined;
  #address: AddressInfo | undefined;

  constructor(o: MetricsServerOptions) {
    this.#o = o;
  }

  /** Binds the port; rejects METRICS_LISTEN_FAILED (port in use, host not local, ...). */
  async start(): Promise<void> {
    if (this.#server) return;
    const server = createServer((req, res) => {
      const path = (req.url ?? '').split('?')[0];
      if (req.method !== 'GET' || path !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found\n');
        return;
      }
      this.#o.source.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.#o.source.contentType }).end(text),
        (err: unknown) => {
          this.#o.onError?.(err);
          res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end('scrape failed\n');
        },
      );
    });
    // Scrapes are short; an idle keep-alive connection must not hold up stop().
    server.keepAliveTimeout = 5_000;
    await new Promise<void>((resolve, reject) => {
      const fail = (e: NodeJS.ErrnoException) =>
        reject(new MetricsError('METRICS_LISTEN_FAILED', `cannot serve metrics on ${this.#o.host ?? '127.0.0.1'}:${this.#o.port ?? 0}: ${e.code ?? e.message}`, { cause: e }));
      server.once('error', fail);
      server.listen(this.#o.port ?? 0, this.#o.host ?? '127.0.0.1', () => {
        server.off('error', fail);
        resolve();
      });
    });
    this.#server = server;
    this.#address = server.address() as AddressInfo;
  }

  /** The bound port (after `start()`). */
  get port(): number | undefined {
    return this.#address?.port;
  }

  /** `http://host:port/metrics` (IPv6 hosts in brackets), after `start()`. */
  get url(): string | undefined {
    const a = this.#address;
    if (!a) return undefined;
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
    return `http://${host}:${a.port}/metrics`;
  }

  /** Stops listening and closes every connection, idle or not; resolves once the port is free. */
  async stop(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    this.#address = undefined;
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    await closed;
  }
}
