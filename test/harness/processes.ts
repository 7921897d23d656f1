import { ManagedProcess } from '../../common/managed-process.js';

/**
 * Child processes the harness starts (swtpm, mosquitto for the process backend). They are spawned
 * attached (not detached), tracked by PID here, stopped with SIGTERM, a bounded wait (3 s), then
 * SIGKILL; and a process 'exit' hook SIGKILLs whatever is still tracked, synchronously, so no swtpm or
 * mosquitto outlives a crashed test worker. ManagedProcess (common/) does the spawning and waiting for
 * ports; this module adds the PID registry the harness and its self-test look at.
 */
const pids = new Set<number>();
let hooked = false;

function installExitHook(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

export interface StartedProcess {
  readonly pid: number | undefined;
  stop(): Promise<void>;
}

/** Spawns `command` and resolves once every port in `ports` accepts TCP connections on 127.0.0.1. */
export async function startProcess(opts: { name: string; command: string; args: readonly string[]; ports: readonly number[] }): Promise<StartedProcess> {
  installExitHook();
  const proc = await ManagedProcess.start(opts);
  const pid = proc.pid;
  if (pid !== undefined) pids.add(pid);
  return {
    pid,
    async stop() {
      await proc.stop(3000);
      if (pid !== undefined) pids.delete(pid);
    },
  };
}

/** PIDs of harness-started processes that have not been stopped yet (in this worker). */
export function trackedPids(): number[] {
  return [...pids];
}

/** True while a process with this PID exists (a zombie counts until reaped). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export { stopAll } from './registry.js';
