import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_AGENT_CONFIG, type AgentRuntimeConfig } from '../../../agent/src/agent-config.js';
import type { AgentState, AgentStatus } from '../../../agent/src/agent.js';
import type { BootstrapConfig } from '../../../agent/src/config.js';
import { DEFAULT_OPERATOR, EmbeddedFleet, type EmbeddedFleetOptions } from '../../../broker-bridge/src/embedded-fleet.js';
import { DefaultEnrollmentPolicy, type EnrollmentPolicy, type PolicyDecision, type PolicyRequest } from '../../../broker-bridge/src/enrollment/policy.js';
import { systemClock } from '../../../common/clock.js';
import { CodedError } from '../../../common/coded-error.js';
import { OperatorClient } from '../../../operator/src/client.js';
import { TpmFactory, type ManufacturedTpm } from '../factory.js';
import type { SwtpmProcess } from '../swtpm.js';
import type { FromWorker, ToWorker } from './ipc.js';
import { TpmLatencyProxy } from './tpm-latency.js';
import type { TpmProxyRule, TpmProxyStats } from './tpm-proxy.js';
import { registerDevice } from './register-device.js';

/**
 * The simulator's coordinator: a real fleet (EmbeddedFleet: CA, LevelDB inventory, mosquitto with the
 * generated config, the bridge), N devices each with its own swtpm manufactured with EK certificates by
 * the simulator's TPM manufacturer, registered as the factory station does, and a few worker processes
 * hosting the devices' agents as library instances (worker.ts). It records every device's state timeline
 * as the workers report it; scenarios drive it and check their invariants against the agents and the
 * inventory.
 */
export interface SimFleetOptions {
  readonly dir: string;
  readonly devices: number;
  /** Worker processes hosting agents; default one per CPU, at most 4, at most one per device. */
  readonly workers?: number;
  /** Device ids are `<prefix>-0000`…; default `sim`. */
  readonly prefix?: string;
  readonly agentConfig?: AgentRuntimeConfig;
  readonly fleet?: Partial<Pick<EmbeddedFleetOptions, 'certificateLifetimeSec' | 'crlNextUpdateSec' | 'rateLimit' | 'challengeTtlMs' | 'rotationTtlMs'>>;
  /** Progress lines (stderr in the CLI). */
  readonly log?: (line: string) => void;
  /**
   * Hardware-speed TPMs: every TPM command of every device waits this long (tpm-latency.ts, one proxy
   * per device in front of its swtpm). Default 0: swtpm's own speed.
   */
  readonly tpmLatencyMs?: number;
  /** Every device reaches its TPM through the faulty-TPM proxy even without latency, so a scenario can inject TPM faults (setTpmFaults). */
  readonly tpmProxy?: boolean;
}

export type SimErrorCode = 'SIM_TIMEOUT' | 'SIM_WORKER_FAILED' | 'SIM_SETUP_FAILED';

/** What the coordinator knows about one device. */
export interface SimDevice {
  readonly deviceId: string;
  readonly tpm: SwtpmProcess;
  readonly bootstrap: BootstrapConfig;
  readonly dataDir: string;
  /** Index of the worker process hosting the device's agent. */
  readonly worker: number;
  /** The device's clock runs this far from real time (set at power-on; kept for power-ons after a crash). */
  clockOffsetMs: number;
  /** Every state the agent reported, with the real time it changed. */
  readonly timeline: { state: AgentState; at: number; code?: string }[];
  /** Fleet CRL numbers the agent took, with when. */
  readonly crls: { crlNumber: bigint; at: number }[];
  poweredOnAt?: number;
  running: boolean;
}

/**
 * Agents in the simulator retry quickly (the storm is what is measured, not default backoff caps). The
 * supervisor's tick is the shipped default: it only bounds a sleep that already ends at the next timing
 * decision or when something happens, and a shorter one made 1,000 idle agents cost ~0.6 of a core.
 */
export const SIM_AGENT_CONFIG: AgentRuntimeConfig = {
  ...DEFAULT_AGENT_CONFIG,
  backoff: { baseMs: 100, capMs: 5_000 },
  revocation: { ...DEFAULT_AGENT_CONFIG.revocation, reportDelayMs: 1_000 },
};

/** How the simulated fleet issues certificates (the bridge's policy); see SimFleet.setCertificatePolicy. */
export interface SimCertificatePolicy {
  readonly lifetimeSec: number;
  /** notBefore = issuance − backdate (the bridge's default is 300 s, for device clocks a little behind). */
  readonly backdateSec: number;
}

const TRUST_DOMAIN = 'sim.fleet.example';

/** The CA's clock: real time, moved by a scenario's fault (SimFleet.setIssuerClockSkew). */
class IssuerClock {
  skewMs = 0;
  now(): number {
    return Date.now() + this.skewMs;
  }
}

/**
 * The bridge's default policy with a lifetime a scenario may change while the fleet runs: certificates
 * issued from then on carry it (a scenario whose certificates must expire within the run).
 */
class SimEnrollmentPolicy implements EnrollmentPolicy {
  #current: SimCertificatePolicy;
  #policy: DefaultEnrollmentPolicy;

  constructor(p: SimCertificatePolicy) {
    this.#current = p;
    this.#policy = new DefaultEnrollmentPolicy({ trustDomain: TRUST_DOMAIN, ...p });
  }

  get current(): SimCertificatePolicy {
    return this.#current;
  }

  set(p: SimCertificatePolicy): void {
    this.#policy = new DefaultEnrollmentPolicy({ trustDomain: TRUST_DOMAIN, ...p }); // validates first
    this.#current = p;
  }

  decide(request: PolicyRequest): PolicyDecision {
    return this.#policy.decide(request);
  }
}

export class SimFleet {
  readonly fleet: EmbeddedFleet;
  readonly devices: ReadonlyMap<string, SimDevice>;
  /** The simulator's TPM vendor: its CA signs every device's EK certificate. */
  readonly factory: TpmFactory;
  readonly #o: SimFleetOptions;
  readonly #policy: SimEnrollmentPolicy;
  readonly #issuerClock: IssuerClock;
  readonly #workers: ChildProcess[];
  readonly #proxies: TpmLatencyProxy[];
  readonly #listeners = new Set<(m: FromWorker) => void>();
  readonly #logs: { deviceId: string; level: string; msg: string; code?: string }[] = [];
  #ref = 0;

  private constructor(
    o: SimFleetOptions,
    fleet: EmbeddedFleet,
    policy: SimEnrollmentPolicy,
    factory: TpmFactory,
    devices: Map<string, SimDevice>,
    workers: ChildProcess[],
    proxies: TpmLatencyProxy[],
    issuerClock: IssuerClock,
  ) {
    this.#o = o;
    this.#issuerClock = issuerClock;
    this.#proxies = proxies;
    this.fleet = fleet;
    this.#policy = policy;
    this.factory = factory;
    this.devices = devices;
    this.#workers = workers;
    workers.forEach((w) => this.#watch(w));
  }

  static async start(o: SimFleetOptions): Promise<SimFleet> {
    const log = o.log ?? (() => undefined);
    mkdirSync(o.dir, { recursive: true });
    const prefix = o.prefix ?? 'sim';
    const made: ManufacturedTpm[] = [];
    const proxies: TpmLatencyProxy[] = [];
    let fleet: EmbeddedFleet | undefined;
    const workers: ChildProcess[] = [];
    try {
      const t0 = Date.now();
      const factory = await TpmFactory.create({ name: 'TPM Fleet Simulator' });
      const ids = Array.from({ length: o.devices }, (_, i) => `${prefix}-${String(i).padStart(4, '0')}`);
      made.push(...(await factory.manufactureMany(ids.length, (i) => join(o.dir, 'tpm', ids[i]!), { concurrency: Math.max(2, 2 * cpus().length) })));
      log(`manufactured ${ids.length} TPMs with EK certificates in ${Date.now() - t0} ms`);
      if (o.tpmLatencyMs || o.tpmProxy) {
        for (const m of made) proxies.push(await TpmLatencyProxy.start(m.tpm.port, o.tpmLatencyMs ?? 0));
        log(o.tpmLatencyMs ? `every TPM command takes ${o.tpmLatencyMs} ms more (a latency proxy per device)` : 'every device reaches its TPM through the faulty-TPM proxy');
      }

      const policy = new SimEnrollmentPolicy({ lifetimeSec: o.fleet?.certificateLifetimeSec ?? DEFAULT_LIFETIME_SEC, backdateSec: DEFAULT_BACKDATE_SEC });
      const issuerClock = new IssuerClock();
      fleet = await EmbeddedFleet.start({
        dir: join(o.dir, 'fleet'),
        clock: systemClock,
        trustDomain: TRUST_DOMAIN,
        ekTrust: factory.ekTrust(),
        ...o.fleet,
        policy,
        issuerClock,
      });
      const f = fleet;
      const workerCount = Math.max(1, Math.min(o.workers ?? Math.min(4, cpus().length), ids.length));
      const devices = new Map<string, SimDevice>();
      await inParallel(ids, 8, async (id) => {
        const i = ids.indexOf(id);
        devices.set(id, { deviceId: id, tpm: made[i]!.tpm, bootstrap: await registerDevice(f, { deviceId: id, tcti: proxies[i]?.tcti ?? made[i]!.tpm.tcti, ekKind: 'ecc', ekCertificateDer: made[i]!.ekCertificateDer, ekPublicHash: made[i]!.ekPublicHash, metadata: { model: 'sim' }, tokenTtlMs: 86_400_000 }), dataDir: join(o.dir, 'devices', id), worker: i % workerCount, clockOffsetMs: 0, timeline: [], crls: [], running: false });
      });
      log(`fleet up (${f.broker.deviceUrl}), ${ids.length} devices registered with one-time tokens`);

      for (let w = 0; w < workerCount; w++) await spawnWorker(w, (child) => workers.push(child));
      return new SimFleet(o, f, policy, factory, new Map([...devices].sort(([a], [b]) => a.localeCompare(b))), workers, proxies, issuerClock);
    } catch (e) {
      for (const w of workers) w.kill('SIGKILL');
      await fleet?.stop().catch(() => undefined);
      await Promise.all(proxies.map((p) => p.stop()));
      await Promise.all(made.map((m) => m.tpm.stop().catch(() => undefined)));
      throw e;
    }
  }

  /**
   * TPM faults for device `id` from now on (the faulty-TPM proxy's rules, in front of the latency);
   * [] clears them. Needs `tpmProxy` (or a TPM latency).
   */
  setTpmFaults(id: string, rules: readonly TpmProxyRule[]): void {
    this.#proxyOf(id).setFaults(rules);
  }

  /** What device `id`'s TPM proxy saw: commands by code, faults injected. */
  tpmStats(id: string): TpmProxyStats {
    return this.#proxyOf(id).stats();
  }

  #proxyOf(id: string): TpmLatencyProxy {
    const tcti = this.#device(id).bootstrap.tcti;
    const proxy = this.#proxies.find((p) => p.tcti === tcti);
    if (!proxy) throw new CodedError<SimErrorCode>('SIM_SETUP_FAILED', `device ${id} has no TPM proxy (start the fleet with tpmProxy)`);
    return proxy;
  }

  /** Warnings and errors the agents logged (their codes make the failure table). */
  get logs(): readonly { deviceId: string; level: string; msg: string; code?: string }[] {
    return this.#logs;
  }

  /**
   * Powers devices on (all by default): their agents start in their workers. `clockOffsetMs` sets the
   * devices' clocks this far from real time (kept for later power-ons); otherwise they keep theirs.
   */
  powerOn(ids: readonly string[] = [...this.devices.keys()], opts: { clockOffsetMs?: number } = {}): void {
    const config = this.#o.agentConfig ?? SIM_AGENT_CONFIG;
    for (const id of ids) {
      const d = this.#device(id);
      if (opts.clockOffsetMs !== undefined) d.clockOffsetMs = opts.clockOffsetMs;
      d.poweredOnAt = Date.now();
      d.running = true;
      const clock = d.clockOffsetMs === 0 ? {} : { clockOffsetMs: d.clockOffsetMs };
      this.#send(d.worker, { type: 'start', device: { deviceId: id, bootstrap: d.bootstrap, dataDir: d.dataDir, config, ...clock } });
    }
  }

  /** Worker processes hosting the agents (indices 0…n−1). */
  get workerCount(): number {
    return this.#workers.length;
  }

  /** The devices whose agents worker `w` hosts. */
  devicesOf(w: number): string[] {
    return [...this.devices.values()].filter((d) => d.worker === w).map((d) => d.deviceId);
  }

  /**
   * SIGKILLs worker `w`: every agent in it dies wherever it was (a power cut of a group of devices; no
   * offline status, no TPM flush, no store close). Their timelines get `stopped` with code SIM_CRASHED.
   * The worker stays dead until `respawnWorker(w)`.
   */
  async crashWorker(w: number): Promise<string[]> {
    const child = this.#workers[w];
    if (!child) throw new CodedError<SimErrorCode>('SIM_SETUP_FAILED', `no worker ${w}`);
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGKILL');
      await exited;
    }
    const at = Date.now();
    const ids = this.devicesOf(w).filter((id) => this.#device(id).running);
    for (const id of ids) {
      const d = this.#device(id);
      d.running = false;
      d.timeline.push({ state: 'stopped', at, code: 'SIM_CRASHED' });
    }
    return ids;
  }

  /** A fresh process for worker `w` (after `crashWorker`); its devices stay off until powered on. */
  async respawnWorker(w: number): Promise<void> {
    const old = this.#workers[w];
    if (!old) throw new CodedError<SimErrorCode>('SIM_SETUP_FAILED', `no worker ${w}`);
    if (old.exitCode === null && old.signalCode === null) throw new CodedError<SimErrorCode>('SIM_WORKER_FAILED', `worker ${w} is still running`);
    const child = await spawnWorker(w, () => undefined);
    this.#workers[w] = child;
    this.#watch(child);
  }

  /** What the bridge issues now (lifetime, backdate). */
  get certificatePolicy(): SimCertificatePolicy {
    return this.#policy.current;
  }

  /**
   * Changes the lifetime (and backdate) of certificates the bridge issues from now on, for scenarios
   * whose certificates must expire within the run. Certificates already issued keep theirs.
   */
  setCertificatePolicy(p: SimCertificatePolicy): void {
    this.#policy.set(p);
  }

  /**
   * Moves the CA's clock (only the issuer's; the bridge's own stays right): certificates issued from
   * now on are dated by it. Ahead by more than the backdate, they are not valid yet and the broker
   * (OpenSSL, real time) refuses them: a fault for scenarios. 0 puts it right.
   */
  setIssuerClockSkew(ms: number): void {
    this.#issuerClock.skewMs = ms;
  }

  /** Stops a device's agent in an orderly way (offline status published). */
  async powerOff(id: string): Promise<void> {
    const d = this.#device(id);
    const ref = ++this.#ref;
    const done = this.#next((m) => m.type === 'stopped' && m.ref === ref, 30_000, `stop of ${id}`);
    this.#send(d.worker, { type: 'stop', deviceId: id, ref });
    await done;
    d.running = false;
  }

  /** Every running agent's status, from all live workers. */
  async statuses(): Promise<Map<string, AgentStatus>> {
    const out = new Map<string, AgentStatus>();
    await Promise.all(
      this.#workers.map(async (child, w) => {
        if (!child.connected) return;
        const ref = ++this.#ref;
        const reply = this.#next((m) => m.type === 'statuses' && m.ref === ref, 30_000, `statuses of worker ${w}`);
        this.#send(w, { type: 'statuses', ref });
        const m = (await reply) as Extract<FromWorker, { type: 'statuses' }>;
        for (const s of m.statuses) out.set(s.deviceId, s);
      }),
    );
    return out;
  }

  /** The latest state each device's agent reported (undefined: not started yet). */
  state(id: string): AgentState | undefined {
    return this.#device(id).timeline.at(-1)?.state;
  }

  /** First time at or after `since` that the device reported `state`. */
  reached(id: string, state: AgentState, since = 0): number | undefined {
    return this.#device(id).timeline.find((t) => t.state === state && t.at >= since)?.at;
  }

  /** When the device first held a CRL numbered `n` or higher. */
  crlAt(id: string, n: bigint): number | undefined {
    return this.#device(id).crls.find((c) => c.crlNumber >= n)?.at;
  }

  /** Resolves when `check` holds (checked on every worker message and every 250 ms). */
  async until(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
    if (await check()) return;
    await new Promise<void>((resolve, reject) => {
      let busy = false;
      const test = async () => {
        if (busy) return;
        busy = true;
        try {
          if (await check()) finish();
        } catch (e) {
          finish(e);
        } finally {
          busy = false;
        }
      };
      const timer = setInterval(() => void test(), 250);
      const deadline = setTimeout(() => finish(new CodedError<SimErrorCode>('SIM_TIMEOUT', `timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
      const listener = () => void test();
      this.#listeners.add(listener);
      const finish = (e?: unknown) => {
        clearInterval(timer);
        clearTimeout(deadline);
        this.#listeners.delete(listener);
        if (e) reject(e);
        else resolve();
      };
    });
  }

  /** An operator session (`role:operator:ops`, the embedded fleet's default operator). */
  async operator(): Promise<OperatorClient> {
    const c = await this.fleet.clientCertificate(DEFAULT_OPERATOR);
    return OperatorClient.connect({
      broker: this.fleet.broker.deviceUrl,
      certPem: c.certPem,
      keyPem: c.keyPem,
      caPem: this.fleet.ca.rootCertificatePem,
      operatorId: DEFAULT_OPERATOR.split(':')[2]!,
      baseTopic: this.fleet.topics.base,
      timeoutMs: 15_000,
    });
  }

  /** Stops the workers (their agents publish offline status), the fleet and every swtpm; removes the directory. */
  async stop(opts: { keepDir?: boolean } = {}): Promise<void> {
    await Promise.all(
      this.#workers.map(
        (w, i) =>
          new Promise<void>((resolve) => {
            if (w.exitCode !== null || w.signalCode !== null) return resolve();
            const kill = setTimeout(() => w.kill('SIGKILL'), 20_000);
            w.once('exit', () => {
              clearTimeout(kill);
              resolve();
            });
            this.#send(i, { type: 'shutdown' });
          }),
      ),
    );
    await this.fleet.stop().catch(() => undefined);
    await Promise.all(this.#proxies.map((p) => p.stop()));
    await Promise.all([...this.devices.values()].map((d) => d.tpm.stop().catch(() => undefined)));
    if (!opts.keepDir) rmSync(this.#o.dir, { recursive: true, force: true });
  }

  #device(id: string): SimDevice {
    const d = this.devices.get(id);
    if (!d) throw new CodedError<SimErrorCode>('SIM_SETUP_FAILED', `no device ${id}`);
    return d;
  }

  #send(worker: number, m: ToWorker): void {
    const w = this.#workers[worker]!;
    if (!w.connected) throw new CodedError<SimErrorCode>('SIM_WORKER_FAILED', `worker ${worker} is gone`);
    w.send(m);
  }

  #next(match: (m: FromWorker) => boolean, timeoutMs: number, what: string): Promise<FromWorker> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#listeners.delete(listener);
        reject(new CodedError<SimErrorCode>('SIM_TIMEOUT', `no answer for ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      const listener = (m: FromWorker) => {
        if (!match(m)) return;
        clearTimeout(timer);
        this.#listeners.delete(listener);
        resolve(m);
      };
      this.#listeners.add(listener);
    });
  }

  #onMessage(m: FromWorker): void {
    if (m.type === 'state') this.devices.get(m.deviceId)?.timeline.push({ state: m.state, at: m.at, ...(m.code ? { code: m.code } : {}) });
    if (m.type === 'crl') this.devices.get(m.deviceId)?.crls.push({ crlNumber: BigInt(m.crlNumber), at: m.at });
    if (m.type === 'log') this.#logs.push({ deviceId: m.deviceId, level: m.level, msg: m.msg, ...(m.code ? { code: m.code } : {}) });
    for (const l of [...this.#listeners]) l(m);
  }

  #watch(w: ChildProcess): void {
    w.on('message', (m: FromWorker) => this.#onMessage(m));
    w.on('exit', (code) => {
      const i = this.#workers.indexOf(w);
      if (code !== 0 && code !== null) this.#o.log?.(`worker ${i} exited with ${code}`);
    });
  }
}

/** The bridge's defaults: 30-day certificates, notBefore backdated 300 s. */
const DEFAULT_LIFETIME_SEC = 30 * 86_400;
const DEFAULT_BACKDATE_SEC = 300;

/** Forks a worker and waits for its `ready`; `started` gets the child at once (so a failing start can be cleaned up). */
async function spawnWorker(w: number, started: (child: ChildProcess) => void): Promise<ChildProcess> {
  const script = fileURLToPath(new URL('./sim-worker.mjs', import.meta.url));
  const child = fork(script, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  started(child);
  await new Promise<void>((resolve, reject) => {
    child.once('message', (m: FromWorker) => (m.type === 'ready' ? resolve() : reject(new CodedError<SimErrorCode>('SIM_WORKER_FAILED', `worker ${w} said ${m.type} first`))));
    child.once('exit', (code, signal) => reject(new CodedError<SimErrorCode>('SIM_WORKER_FAILED', `worker ${w} exited with ${code ?? signal} at start`)));
  });
  return child;
}


/** Runs `fn` over `items`, at most `limit` at a time. */
export async function inParallel<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}
