import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FleetFixture } from '../agent/fleet-fixture.js';
import { spawnUntil } from '../harness/spawn-until.js';

/** What /proc says about one process's memory. */
export interface ProcessMemory {
  /** Resident set (VmRSS), MiB. */
  readonly rssMiB: number;
  /** Peak resident set (VmHWM), MiB. */
  readonly peakRssMiB: number;
  readonly threads: number;
}

export function processMemory(pid: number): ProcessMemory {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status);
    if (!m) throw new Error(`/proc/${pid}/status has no ${field}`);
    return Number(m[1]);
  };
  const threads = /^Threads:\s+(\d+)$/m.exec(status);
  return { rssMiB: kib('VmRSS') / 1024, peakRssMiB: kib('VmHWM') / 1024, threads: Number(threads?.[1] ?? Number.NaN) };
}

/**
 * How the package's `/usr/bin/agent` starts Node: the runtime, its flags and environment defaults, read
 * from the wrapper itself so the bare-Node baseline runs exactly the same way.
 */
export function packagedRuntime(packageRoot: string): { node: string; flags: string[]; env: Record<string, string> } {
  const wrapper = readFileSync(join(packageRoot, 'usr/bin/agent'), 'utf8');
  const exec = /^exec "\$lib\/node" (.*)"\$lib\/agent\.mjs" "\$@"$/m.exec(wrapper);
  if (!exec) throw new Error('usr/bin/agent: no exec line of the expected form');
  const env = Object.fromEntries([...wrapper.matchAll(/^([A-Z_]+)=\$\{\1:-([^}]*)\}$/gm)].map((m) => [m[1]!, m[2]!]));
  return { node: join(packageRoot, 'usr/lib/tpm-fleet-agent/node'), flags: exec[1]!.trim().split(/\s+/).filter(Boolean), env };
}

export interface IdleFootprint {
  readonly agent: ProcessMemory;
  readonly bareNode: ProcessMemory;
  readonly idleMs: number;
}

/**
 * The packaged agent's idle footprint: `packageRoot` is an extracted tpm-fleet-agent package. One device
 * of `fx` enrolls with the packaged `agent run` and its default config (the agent on the Node runtime
 * the package carries, started by the package's own `/usr/bin/agent`), stays connected for `idleMs`
 * with its certificate, trust bundle and revocation cache loaded, then /proc is read. Bare Node (the
 * same packaged binary with the same flags and environment, `setInterval` only) is measured the same
 * way in the same run, as the baseline.
 */
export async function idleFootprint(fx: FleetFixture, packageRoot: string, idleMs: number, deviceId = 'footprint'): Promise<IdleFootprint> {
  const d = await fx.device(deviceId);
  const bootstrap = join(fx.dir, `${deviceId}-bootstrap.json`);
  writeFileSync(bootstrap, JSON.stringify(d.bootstrap), { mode: 0o600 });
  const runtime = packagedRuntime(packageRoot);
  const agent = await spawnUntil(join(packageRoot, 'usr/bin/agent'), ['run', '--bootstrap', bootstrap, '--data', d.dataDir, '--config', join(packageRoot, 'etc/tpm-fleet/agent.json')], (o) => o.includes('"msg":"online"'));
  const bare = await spawnUntil(runtime.node, [...runtime.flags, '-e', 'setInterval(() => {}, 1000); console.log("ready")'], (o) => o.includes('ready'), 30_000, { ...runtime.env, ...process.env });
  try {
    await new Promise((r) => setTimeout(r, idleMs));
    return { agent: processMemory(agent.child.pid!), bareNode: processMemory(bare.child.pid!), idleMs };
  } finally {
    const code = await agent.stop();
    await bare.stop();
    if (code !== 0) throw new Error(`the packaged agent exited ${code} on SIGTERM:\n${agent.output()}`);
  }
}
