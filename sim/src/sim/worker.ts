/**
 * A simulator worker process (`dist/sim-worker.mjs`, forked by the coordinator): hosts many agents as
 * library instances and reports their state changes over the IPC channel (ipc.ts). Exits when the
 * channel closes (the coordinator died) or on `shutdown`, after stopping its agents.
 */
import { Agent, type AgentLogger } from '../../../agent/src/agent.js';
import type { Clock } from '../../../common/clock.js';
import type { FromWorker, SimDeviceSpec, ToWorker } from './ipc.js';

const agents = new Map<string, Agent>();

function send(m: FromWorker): void {
  if (process.connected) process.send!(m);
}

function loggerFor(deviceId: string): AgentLogger {
  const code = (o: object) => (o as { code?: unknown }).code;
  const forward = (level: 'warn' | 'error') => (o: object, msg: string) => {
    const c = code(o);
    send({ type: 'log', deviceId, level, msg, ...(typeof c === 'string' ? { code: c } : {}) });
  };
  // Info lines matter only when they carry a code (a refusal the agent waits out, e.g. RATE_LIMITED).
  const info = (o: object, msg: string) => {
    const c = code(o);
    if (typeof c === 'string') send({ type: 'log', deviceId, level: 'info', msg, code: c });
  };
  return { info, warn: forward('warn'), error: forward('error') };
}

function start(d: SimDeviceSpec): void {
  if (agents.has(d.deviceId)) {
    send({ type: 'started', deviceId: d.deviceId, at: Date.now(), error: 'already running' });
    return;
  }
  const offset = d.clockOffsetMs ?? 0;
  const clock: Clock = { now: () => Date.now() + offset };
  const agent = new Agent({ bootstrap: d.bootstrap, dataDir: d.dataDir, config: d.config, clock, logger: loggerFor(d.deviceId), responseTimeoutMs: 10_000 });
  agents.set(d.deviceId, agent);
  // Reported when the agent takes a newer CRL, with when it did (the revocation scenarios' propagation).
  agent.onCrlChange((crlNumber) => send({ type: 'crl', deviceId: d.deviceId, crlNumber, at: Date.now() }));
  agent.onStateChange((state) => {
    const code = agent.status().error?.code;
    send({ type: 'state', deviceId: d.deviceId, state, at: Date.now(), ...(code ? { code } : {}) });
  });
  // start() resolves at the first online (or rejects when the agent cannot start or is refused for good);
  // the state reports tell the coordinator everything in between.
  agent.start().then(
    () => send({ type: 'started', deviceId: d.deviceId, at: Date.now() }),
    (e: unknown) => send({ type: 'started', deviceId: d.deviceId, at: Date.now(), error: (e as { code?: string }).code ?? (e as Error).message }),
  );
}

async function stop(deviceId: string, ref: number): Promise<void> {
  const a = agents.get(deviceId);
  agents.delete(deviceId);
  await a?.stop().catch(() => undefined);
  send({ type: 'stopped', deviceId, ref });
}

async function shutdown(): Promise<void> {
  await Promise.all([...agents.values()].map((a) => a.stop().catch(() => undefined)));
  agents.clear();
  process.exit(0);
}

process.on('message', (m: ToWorker) => {
  switch (m.type) {
    case 'start':
      return start(m.device);
    case 'stop':
      return void stop(m.deviceId, m.ref);
    case 'statuses':
      return send({ type: 'statuses', ref: m.ref, statuses: [...agents.values()].map((a) => a.status()) });
    case 'shutdown':
      return void shutdown();
  }
});
process.on('disconnect', () => void shutdown());
send({ type: 'ready' });
