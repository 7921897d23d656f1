import { existsSync, rmSync } from 'node:fs';
import { startProcess } from './processes.js';
import { track } from './registry.js';

/**
 * How the harness runs swtpm and mosquitto. `process`: local processes on loopback ports (always
 * available). `container`: the same programs in a locally built image through testcontainers, when a
 * Docker engine is reachable (global-setup.ts starts one where it can). Selected by TEST_BACKEND
 * (process | container | auto, default auto); see docs/testing.md.
 */
export type Backend = 'process' | 'container';

export interface RunningService {
  readonly pid?: number;
  stop(): Promise<void>;
}

export interface ServiceSpec {
  readonly name: string;
  readonly command: string;
  /** Arguments; `{bind}` is replaced by the address to listen on (127.0.0.1, or 0.0.0.0 in a container). */
  readonly args: readonly string[];
  /** Host ports the service listens on (the container backend maps the same numbers). */
  readonly ports: readonly number[];
  /** Host directories the service reads or writes (bind-mounted at the same path in a container). */
  readonly mounts: readonly string[];
}

export interface ServiceRunner {
  readonly backend: Backend;
  /** Address services bind to, as seen by the service. */
  readonly bindAddress: string;
  start(spec: ServiceSpec): Promise<RunningService>;
}

export const processRunner: ServiceRunner = {
  backend: 'process',
  bindAddress: '127.0.0.1',
  async start(spec) {
    const command = spec.command === 'mosquitto' && existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : spec.command;
    const proc = await startProcess({
      name: spec.name,
      command,
      args: spec.args.map((a) => a.replaceAll('{bind}', '127.0.0.1')),
      ports: spec.ports,
    });
    return { ...(proc.pid === undefined ? {} : { pid: proc.pid }), stop: () => proc.stop() };
  },
};

export function requestedBackend(): 'process' | 'container' | 'auto' {
  const v = (process.env['TEST_BACKEND'] ?? 'auto').toLowerCase();
  if (v === 'process' || v === 'container' || v === 'auto') return v;
  throw new Error(`TEST_BACKEND must be process, container or auto, not ${JSON.stringify(v)}`);
}

/** Starts a service on freshly chosen ports, choosing again when a port was taken meanwhile. */
export async function startWithFreshPorts<T>(attempt: () => Promise<T>, tries = 4): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await attempt();
    } catch (e) {
      const msg = String((e as Error).message);
      if (i >= tries || !/address already in use|EADDRINUSE|port is already allocated|did not open port|exited during start/i.test(msg)) throw e;
    }
  }
}

export interface TrackedService {
  readonly pid: number | undefined;
  /** Host ports of the running service (the same across restart). */
  readonly ports: readonly number[];
  /** Stops the service and removes `ownedDir`; idempotent. */
  stop(): Promise<void>;
  /** Stops and starts the same spec (same ports, same files). */
  restart(): Promise<void>;
}

/**
 * Starts `spec()` (which chooses ports; retried with new ones when a port was taken meanwhile) and
 * registers it for teardown, so every harness service stops once and cleans up after itself.
 * `beforeStop` runs before every stop and restart (swtpm: an orderly TPM2_Shutdown); it must not throw.
 */
export async function startTracked(
  r: ServiceRunner,
  spec: () => Promise<ServiceSpec>,
  ownedDir: string,
  beforeStop?: (spec: ServiceSpec) => Promise<void>,
): Promise<TrackedService> {
  let chosen!: ServiceSpec;
  let svc = await startWithFreshPorts(async () => {
    chosen = await spec();
    return r.start(chosen);
  });
  let stopped = false;
  const service: TrackedService = {
    get pid() {
      return svc.pid;
    },
    get ports() {
      return chosen.ports;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await beforeStop?.(chosen);
      await svc.stop();
      rmSync(ownedDir, { recursive: true, force: true });
    },
    async restart() {
      if (stopped) throw new Error(`${chosen.name} was stopped; start a new one instead of restarting`);
      await beforeStop?.(chosen);
      await svc.stop();
      svc = await r.start(chosen);
    },
  };
  track(service);
  return service;
}
