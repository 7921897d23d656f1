import { CodedError } from '../../../common/coded-error.js';
import { TpmProxy, type TpmProxyRule, type TpmProxyStats } from './tpm-proxy.js';

/**
 * A TPM at hardware speed in front of a fast swtpm: the faulty-TPM proxy (tpm-proxy.ts) with one rule,
 * every response held `latencyMs` after swtpm answered, command by command, as a chip takes its time
 * inside the TPM. One proxy per device, on its own timers, so one device's slow TPM never delays
 * another's: real chips take about 200–600 ms per signature.
 *
 * What this exposes honestly: the agent signs its TLS handshake synchronously inside OpenSSL (the
 * native signing hook), so while one agent's handshake waits for its slow TPM, every other agent in the
 * same worker process waits too. A real device runs one agent per process, where that is harmless; in
 * the simulator it means handshake bursts serialise per worker (see sim/README.md).
 */
export type TpmLatencyErrorCode = 'TPM_LATENCY_INVALID';

export class TpmLatencyProxy {
  readonly latencyMs: number;
  readonly #proxy: TpmProxy;

  private constructor(proxy: TpmProxy, latencyMs: number) {
    this.#proxy = proxy;
    this.latencyMs = latencyMs;
  }

  get port(): number {
    return this.#proxy.port;
  }

  /** The TCTI a device uses to reach its TPM through this proxy. */
  get tcti(): string {
    return this.#proxy.tcti;
  }

  /** Listens on two free consecutive loopback ports, forwarding to swtpm's `targetPort` and `targetPort + 1`. */
  static async start(targetPort: number, latencyMs: number): Promise<TpmLatencyProxy> {
    if (!Number.isFinite(latencyMs) || latencyMs < 0 || latencyMs > 60_000) {
      throw new CodedError<TpmLatencyErrorCode>('TPM_LATENCY_INVALID', `TPM latency must be 0–60000 ms, not ${latencyMs}`);
    }
    return new TpmLatencyProxy(await TpmProxy.start(targetPort, [{ latencyMs }]), latencyMs);
  }

  /** Faults on top of the latency (first matching rule wins; the latency applies to everything else). [] clears them. */
  setFaults(rules: readonly TpmProxyRule[]): void {
    this.#proxy.setRules([...rules, { latencyMs: this.latencyMs }]);
  }

  stats(): TpmProxyStats {
    return this.#proxy.stats();
  }

  stop(): Promise<void> {
    return this.#proxy.stop();
  }
}
