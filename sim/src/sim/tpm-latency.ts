import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { CodedError } from '../../../common/coded-error.js';
import { freePorts } from '../../../common/managed-process.js';

/**
 * A TPM at hardware speed in front of a fast swtpm: a TCP proxy for swtpm's two ports (the command
 * port P and the platform/control port P+1, as the `swtpm:` TCTI uses them) that holds every response on
 * the command port for `latencyMs` before passing it on. One proxy per device, all driven by the
 * coordinator's event loop with timers, so one device's slow TPM never delays another's: real chips take
 * about 200–600 ms per signature.
 *
 * What this exposes honestly: the agent signs its TLS handshake synchronously inside OpenSSL (the
 * native signing hook), so while one agent's handshake waits for its slow TPM, every other agent in the
 * same worker process waits too. A real device runs one agent per process, where that is harmless; in
 * the simulator it means handshake bursts serialise per worker (see sim/README.md).
 */
export type TpmLatencyErrorCode = 'TPM_LATENCY_INVALID';

export class TpmLatencyProxy {
  readonly port: number;
  readonly latencyMs: number;
  readonly #servers: Server[];
  readonly #sockets = new Set<Socket>();

  private constructor(port: number, latencyMs: number, servers: Server[], sockets: Set<Socket>) {
    this.port = port;
    this.latencyMs = latencyMs;
    this.#servers = servers;
    this.#sockets = sockets;
  }

  /** The TCTI a device uses to reach its TPM through this proxy. */
  get tcti(): string {
    return `swtpm:host=127.0.0.1,port=${this.port}`;
  }

  /** Listens on two free consecutive loopback ports, forwarding to swtpm's `targetPort` and `targetPort + 1`. */
  static async start(targetPort: number, latencyMs: number): Promise<TpmLatencyProxy> {
    if (!Number.isFinite(latencyMs) || latencyMs < 0 || latencyMs > 60_000) {
      throw new CodedError<TpmLatencyErrorCode>('TPM_LATENCY_INVALID', `TPM latency must be 0–60000 ms, not ${latencyMs}`);
    }
    const sockets = new Set<Socket>();
    for (let attempt = 0; ; attempt++) {
      const port = await freePorts(2);
      const servers: Server[] = [];
      try {
        servers.push(await listen(port, targetPort, latencyMs, sockets));
        servers.push(await listen(port + 1, targetPort + 1, 0, sockets));
        return new TpmLatencyProxy(port, latencyMs, servers, sockets);
      } catch (e) {
        await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
        if (attempt >= 5) throw e; // someone took a port between the check and the listen: new ports
      }
    }
  }

  async stop(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await Promise.all(this.#servers.map((s) => new Promise((r) => s.close(r))));
  }
}

function listen(port: number, target: number, latencyMs: number, sockets: Set<Socket>): Promise<Server> {
  const server = createServer((client) => {
    const upstream = createConnection({ host: '127.0.0.1', port: target });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.setNoDelay(true);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.on('data', (d) => upstream.write(d));
    // Responses keep their order: each waits its latency after the one before it was released.
    let releaseAt = 0;
    upstream.on('data', (d) => {
      if (latencyMs === 0) return void client.write(d);
      releaseAt = Math.max(Date.now() + latencyMs, releaseAt);
      setTimeout(() => {
        if (!client.destroyed) client.write(d);
      }, releaseAt - Date.now());
    });
    client.on('end', () => upstream.end());
    upstream.on('end', () => setTimeout(() => client.end(), latencyMs));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}
