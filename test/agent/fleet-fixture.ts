import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { systemClock } from '../../common/clock.js';
import { EmbeddedFleet, type EmbeddedFleetOptions } from '../../broker-bridge/src/embedded-fleet.js';
import { readEk, registerDevice } from '../../sim/src/sim/register-device.js';
import { Agent, type AgentLogger, type AgentOptions } from '../../agent/src/agent.js';
import { DEFAULT_AGENT_CONFIG, type AgentRuntimeConfig } from '../../agent/src/agent-config.js';
import type { BootstrapConfig } from '../../agent/src/config.js';
import { startTpm, type TestTpm } from '../harness/index.js';

/**
 * A real fleet (mosquitto with the generated config, bridge, CA, LevelDB inventory) and real agents,
 * each on its own freshly manufactured swtpm, for the agent lifecycle suites.
 */
export interface FleetFixture {
  readonly dir: string;
  readonly fleet: EmbeddedFleet;
  /** Registers `deviceId` with `tpm`'s EK and a fresh token, as the factory station does. */
  provision(deviceId: string, tpm: TestTpm): Promise<BootstrapConfig>;
  /** A device: its own swtpm, registered. */
  /** A device with its own swtpm, registered; `beforeRegister` may change the TPM first (e.g. its NV). */
  device(deviceId: string, opts?: { beforeRegister?: (tpm: TestTpm) => Promise<void> }): Promise<{ tpm: TestTpm; bootstrap: BootstrapConfig; dataDir: string }>;
  agent(d: { bootstrap: BootstrapConfig; dataDir: string }, extra?: Partial<AgentOptions>): Agent;
  stop(): Promise<void>;
}

/** Quick retries for tests: first retry within 50 ms, never more than 2 s apart. */
export const TEST_AGENT_CONFIG: AgentRuntimeConfig = {
  ...DEFAULT_AGENT_CONFIG,
  backoff: { baseMs: 50, capMs: 2_000 },
  tickMs: 200,
  revocation: { ...DEFAULT_AGENT_CONFIG.revocation, reportDelayMs: 200 },
};

export async function startFleetFixture(opts: Partial<Omit<EmbeddedFleetOptions, 'dir' | 'ekTrust' | 'trustDomain'>> = {}): Promise<FleetFixture> {
  const dir = mkdtempSync(join(tmpdir(), 'agent-fleet-'));
  const first = await startTpm();
  const tpms: TestTpm[] = [first];
  const agents: Agent[] = [];
  const fleet = await EmbeddedFleet.start({
    dir: join(dir, 'fleet'),
    clock: systemClock,
    trustDomain: 'test.fleet',
    ekTrust: { roots: [first.manufacturerRootPem], intermediates: [first.manufacturerIntermediatePem] },
    // Tests rotate many times a minute; production keeps the default (10 burst, then 1/s per device).
    rateLimit: { perDevice: { ratePerSec: 50, burst: 200 }, global: { ratePerSec: 1000, burst: 2000 } },
    ...opts,
  });
  let spare: TestTpm | undefined = first;

  async function provision(deviceId: string, t: TestTpm): Promise<BootstrapConfig> {
    return registerDevice(fleet, { deviceId, tcti: t.tcti, ...(await readEk(t.tcti)), metadata: { model: 'sim' } });
  }

  return {
    dir,
    fleet,
    provision,
    async device(deviceId, o = {}) {
      const tpm = spare ?? (await startTpm());
      spare = undefined;
      if (!tpms.includes(tpm)) tpms.push(tpm);
      await o.beforeRegister?.(tpm);
      return { tpm, bootstrap: await provision(deviceId, tpm), dataDir: join(dir, 'devices', deviceId) };
    },
    agent(d, extra = {}) {
      const a = new Agent({
        bootstrap: d.bootstrap,
        dataDir: d.dataDir,
        config: TEST_AGENT_CONFIG,
        responseTimeoutMs: 5_000,
        // AGENT_TEST_LOG=1 prints every agent log line (debugging a failing suite).
        ...(process.env['AGENT_TEST_LOG'] ? { logger: consoleLogger } : {}),
        ...extra,
      });
      agents.push(a);
      return a;
    },
    async stop() {
      // A stop that hangs is a bug; name the part that hangs (agent and its state, or the fleet) so the
      // failing run says where to look instead of only "hook timed out".
      await Promise.all(agents.map((a) => watchdog(a.stop().catch(() => undefined), () => `agent ${a.deviceId} stop (${JSON.stringify({ ...a.diagnostics(), state: a.state, serial: a.status().certSerial, handshakes: a.status().tlsHandshakes })})`)));
      await watchdog(fleet.stop(), () => 'fleet stop');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Resolves with `p`; logs `what()` every 20 s while `p` is pending. */
async function watchdog<T>(p: Promise<T>, what: () => string): Promise<T> {
  const started = Date.now();
  const timer = setInterval(() => console.error(`[fleet-fixture] still waiting after ${Math.round((Date.now() - started) / 1000)} s: ${what()}`), 20_000);
  try {
    return await p;
  } finally {
    clearInterval(timer);
  }
}

const consoleLogger: AgentLogger = {
  info: (o, m) => console.log('INFO', m, JSON.stringify(o)),
  warn: (o, m) => console.log('WARN', m, JSON.stringify(o)),
  error: (o, m) => console.log('ERROR', m, JSON.stringify(o)),
};

/** A logger that keeps every line, for asserting what an agent logged. */
export function recordingLogger(): AgentLogger & { lines: { level: string; msg: string; fields: Record<string, unknown> }[] } {
  const lines: { level: string; msg: string; fields: Record<string, unknown> }[] = [];
  const at = (level: string) => (fields: object, msg: string) => {
    lines.push({ level, msg, fields: fields as Record<string, unknown> });
  };
  return { lines, info: at('info'), warn: at('warn'), error: at('error') };
}

/** Polls `check` until it returns a value other than undefined/false, or fails after `timeoutMs`. */
export async function eventually<T>(check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 20_000, what = 'condition'): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
