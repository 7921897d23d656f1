import type { AgentRuntimeConfig } from '../../../agent/src/agent-config.js';
import type { AgentStatus } from '../../../agent/src/agent.js';
import type { BootstrapConfig } from '../../../agent/src/config.js';

/**
 * The simulator's coordinator and its worker processes talk over Node's IPC channel (child_process.fork):
 * the coordinator owns the fleet, the TPMs and the scenario; each worker hosts many agents as library
 * instances (one Agent per device, each with its own swtpm) and reports what they do.
 */

/** One simulated device as a worker runs it. */
export interface SimDeviceSpec {
  readonly deviceId: string;
  readonly bootstrap: BootstrapConfig;
  readonly dataDir: string;
  /** The device's clock runs this far from real time (clock-skew scenario). */
  readonly clockOffsetMs?: number;
  readonly config: AgentRuntimeConfig;
}

export type ToWorker =
  | { readonly type: 'start'; readonly device: SimDeviceSpec }
  | { readonly type: 'stop'; readonly deviceId: string; readonly ref: number }
  | { readonly type: 'statuses'; readonly ref: number }
  | { readonly type: 'shutdown' };

/** What the coordinator learns; `at` is the worker's real clock (same host, same clock). */
export type FromWorker =
  | { readonly type: 'ready' }
  | { readonly type: 'state'; readonly deviceId: string; readonly state: AgentStatus['state']; readonly at: number; readonly code?: string }
  | { readonly type: 'started'; readonly deviceId: string; readonly at: number; readonly error?: string }
  | { readonly type: 'stopped'; readonly deviceId: string; readonly ref: number }
  | { readonly type: 'statuses'; readonly ref: number; readonly statuses: readonly AgentStatus[] }
  /** The agent holds a newer fleet CRL (polled every 50 ms by the worker). */
  | { readonly type: 'crl'; readonly deviceId: string; readonly crlNumber: string; readonly at: number }
  | { readonly type: 'log'; readonly deviceId: string; readonly level: 'info' | 'warn' | 'error'; readonly msg: string; readonly code?: string };
