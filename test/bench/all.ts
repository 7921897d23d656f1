/**
 * `npm run bench` (`node dist/bench.mjs [--quick] [--only STEPS]`): every benchmark of the project, one
 * after the other (they share the machine's cores, so never at once), each in its own process; then one
 * table of the headline figures next to their targets and the anchors (issue 9), then one JSON line with
 * every figure. Progress and the benchmarks' own tables go to stderr; stdout carries only the table and
 * the JSON line. docs/benchmarks.md has the results and how to reproduce them.
 *
 * Steps (`--only` takes their names, comma-separated):
 * - tpm, ca, agent, revocation, factory, enroll-cpu: the bundles dist/bench-<name>.mjs, unchanged; each
 *   ends with one JSON line, which is parsed. A bundle that is missing or ends without one leaves its
 *   figures null and the run's exit code 1; the table and the JSON line are printed all the same.
 * - agent-rss: `bench.mjs agent-rss`: the shipped agent bundle as its own process, enrolled against an
 *   embedded fleet on swtpm and left idle; its VmRSS (bench:agent runs agents in-process and reports none).
 * - fleet-enroll, fleet-rotation, fleet-revocation: `bench.mjs fleet SCENARIO N`: the simulator's fleet
 *   (sim/src/sim/sim-fleet.ts: N swtpm devices from the simulator's factory, agents in worker processes,
 *   the bridge, CA and inventory in this coordinator process, mosquitto) driven through the simulator's own
 *   scenarios, with CPU and memory read around the measured phase only (not the TPM manufacturing).
 *   N is 500 / 1,000 / 1,000 (issue 9's targets); `--quick` runs 100 devices each and smaller
 *   iteration counts for the other benchmarks (figures then are not comparable with the targets).
 *
 * Children run with TEST_BACKEND=process unless it is set: swtpm and mosquitto as local processes, as on
 * a device fleet's own box, and visible in /proc to the CPU accounting below.
 * Exit codes: 0 every step ran and every simulator invariant held (targets missed do not fail the run:
 * the table says so), 1 a step failed, 2 usage.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readEk, registerDevice } from '../../sim/src/sim/register-device.js';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { BUILD_VERSION } from '../../common/build-version.js';
import { systemClock } from '../../common/clock.js';
import { EmbeddedFleet } from '../../broker-bridge/src/embedded-fleet.js';
import { invariant, passed, pick, report, seededRandom, type ScenarioOutcome } from '../../sim/src/sim/scenario.js';
import { SCENARIOS } from '../../sim/src/sim/scenarios/index.js';
import { bringOnline } from '../../sim/src/sim/scenarios/common.js';
import { rotateAll } from '../../sim/src/sim/scenarios/rotation-campaign.js';
import { SimFleet } from '../../sim/src/sim/sim-fleet.js';
import { startTpm, stopAll } from '../harness/index.js';
import { round } from './stats.js';

const DIST = dirname(fileURLToPath(import.meta.url));
const MiB = 1024 * 1024;
const log = (line: string) => process.stderr.write(`[bench] ${line}\n`);

// ---------------------------------------------------------------------------------------------------
// The anchors (issue 9) and our targets.

/** Published limits of hosted services and the memory of comparable agents, as issue 9 lists them. */
const ANCHORS = {
  awsCsr: { perSec: 15, text: 'AWS IoT CreateCertificateFromCsr 15/s (AWS IoT Core quotas)' },
  azureDps: { perSec: 1000 / 60, text: 'Azure DPS 1,000 registrations/min = 16.7/s (DPS quotas)' },
  googleCas: { perSec: 25, text: 'Google CAS CreateCertificate 25/s per CA (DevOps tier quotas)' },
  thinEdge: { mib: 8, text: 'thin-edge.io agent 8 MiB RSS (project docs)' },
  awsDeviceClient: { mib: 7, text: 'AWS IoT Device Client 7 MiB RSS (project docs)' },
} as const;

const TARGET = { enrollPerSec: 80, bridgeCpuMsPerEnroll: 3, rotation1000Sec: 60, revocationPropagationP99Ms: 2000 } as const;

// ---------------------------------------------------------------------------------------------------
// /proc readers.

/** `/proc/<pid>/status` fields in KiB (VmRSS, VmHWM) or counts (Threads). */
function procStatus(pid: number | 'self'): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const m = /^(VmRSS|VmHWM|Threads):\s+(\d+)/.exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  } catch {
    return 100;
  }
})();

/** One process from /proc/<pid>/stat: its name, parent, and CPU time (utime + stime) in ms. */
function procStat(pid: number): { comm: string; ppid: number; cpuMs: number } | undefined {
  let s: string;
  try {
    s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined; // gone meanwhile
  }
  const close = s.lastIndexOf(')');
  const rest = s.slice(close + 2).split(' '); // state ppid … (field 3 onwards)
  return { comm: s.slice(s.indexOf('(') + 1, close), ppid: Number(rest[1]), cpuMs: ((Number(rest[11]) + Number(rest[12])) * 1000) / CLK_TCK };
}

/**
 * CPU ms of every descendant of this process, summed by kind: `node` (the simulator's agent workers),
 * `swtpm`, `mosquitto`, anything else. Processes that exit in between lose their share (none does in the
 * measured phases).
 */
function descendantsCpuMs(): Record<string, number> {
  const all = new Map<number, { comm: string; ppid: number; cpuMs: number }>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const st = procStat(Number(e));
    if (st) all.set(Number(e), st);
  }
  const mine = new Set([process.pid]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const [pid, st] of all) {
      if (!mine.has(pid) && mine.has(st.ppid)) {
        mine.add(pid);
        grew = true;
      }
    }
  }
  const out: Record<string, number> = {};
  for (const pid of mine) {
    if (pid === process.pid) continue;
    const { comm, cpuMs } = all.get(pid)!;
    // Node 24 names its main thread, and so the process's comm, "MainThread".
    const kind = comm === 'node' || comm === 'MainThread' ? 'node' : comm === 'swtpm' || comm === 'mosquitto' ? comm : 'other';
    out[kind] = (out[kind] ?? 0) + cpuMs;
  }
  return out;
}

const IDLE_SETTLE_MS = 3_000;
const IDLE_MEASURE_MS = 5_000;

/**
 * The online fleet doing nothing (after IDLE_SETTLE_MS for the last status reports): cores used by the
 * coordinator and by each kind of descendant over IDLE_MEASURE_MS. The baseline the phase runs on top of.
 */
async function idleBaseline(): Promise<Record<string, number>> {
  await new Promise((r) => setTimeout(r, IDLE_SETTLE_MS));
  const others0 = descendantsCpuMs();
  const cpu0 = process.cpuUsage();
  await new Promise((r) => setTimeout(r, IDLE_MEASURE_MS));
  const cpu = process.cpuUsage(cpu0);
  const others1 = descendantsCpuMs();
  const out: Record<string, number> = { coordinator: round((cpu.user + cpu.system) / 1000 / IDLE_MEASURE_MS, 3) };
  for (const k of Object.keys(others1)) out[k] = round(((others1[k] ?? 0) - (others0[k] ?? 0)) / IDLE_MEASURE_MS, 3);
  return out;
}

/** Max of this process's RSS, sampled every 100 ms until stopped. */
function rssSampler(): { stop(): number } {
  let max = process.memoryUsage.rss();
  const t = setInterval(() => (max = Math.max(max, process.memoryUsage.rss())), 100);
  return {
    stop() {
      clearInterval(t);
      return Math.max(max, process.memoryUsage.rss());
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// `bench.mjs fleet SCENARIO N`: one simulator scenario with CPU and memory around the measured phase.

const FLEET_SCENARIOS = ['enroll-storm', 'rotation-campaign', 'revocation', 'revocation-propagation'] as const;
type FleetScenario = (typeof FLEET_SCENARIOS)[number];

/**
 * Starts a SimFleet of `devices` (TPM manufacturing and registration are set-up, not measured), then:
 * - enroll-storm: the simulator's scenario as is; the phase is power-on of all → every device settled.
 * - rotation-campaign: the fleet is brought online first (not measured), then the phase is the
 *   scenario's rotation wave (rotate-now to every device → every device online on its new certificate).
 *   The simulator CLI's durationSec for this scenario also counts the enrollment before it.
 * - revocation: the simulator's scenario as is: a tenth of the fleet revoked in one burst (one operator
 *   command after the other); its latencies run from the first command to each other device holding the
 *   CRL of the last one, so with 1,000 devices they include issuing 100 revocations.
 * - revocation-propagation (not a simulator scenario): issue 9's propagation time. Once the fleet is
 *   online, REVOCATIONS devices are revoked one at a time; each sample runs from that revoke command to
 *   one other online device holding the CRL it produced (the time the worker saw the agent take it), and
 *   the next revocation waits until every device has it.
 * Prints the scenario's ScenarioReport (durationSec = the phase) with the coordinator's CPU and peak RSS
 * in the phase and the CPU of its descendants by kind, as one JSON line.
 */
async function fleetRun(scenario: FleetScenario, devices: number, seed: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), `bench-fleet-${scenario}-`));
  const flog = (l: string) => process.stderr.write(`[bench:fleet] ${l}\n`);
  const load0 = loadavg();
  const t0 = performance.now();
  const sim = await SimFleet.start({ dir, devices, log: flog });
  let stopping = false;
  const interrupt = () => {
    if (stopping) process.exit(130);
    stopping = true;
    void sim.stop().finally(() => process.exit(130));
  };
  process.once('SIGINT', interrupt);
  process.once('SIGTERM', interrupt);
  try {
    const setupSec = (performance.now() - t0) / 1000;
    const ctx = { random: seededRandom(seed), log: (l: string) => flog(`${scenario}: ${l}`) };
    let phase: () => Promise<ScenarioOutcome>;
    let idle: Record<string, number> | undefined;
    if (scenario === 'rotation-campaign') {
      const ids = await bringOnline(sim);
      flog(`${ids.length} devices online; rotating`);
      phase = async () => ({ ...(await rotateAll(sim, ids, ctx.log)), figures: { commands: ids.length } });
    } else if (scenario === 'revocation-propagation') {
      const ids = await bringOnline(sim);
      idle = await idleBaseline();
      flog(`${ids.length} devices online (idle: ${JSON.stringify(idle)} cores); revoking ${REVOCATIONS} one at a time`);
      phase = () => revokeOneAtATime(sim, ids, ctx);
    } else {
      const s = SCENARIOS.get(scenario)!;
      phase = () => s.run(sim, ctx);
    }
    const rss = rssSampler();
    const others0 = descendantsCpuMs();
    const cpu0 = process.cpuUsage();
    const w0 = performance.now();
    const outcome = await phase();
    const phaseMs = performance.now() - w0;
    const cpu = process.cpuUsage(cpu0);
    const others1 = descendantsCpuMs();
    const peakRss = rss.stop();
    const coordinatorCpuMs = (cpu.user + cpu.system) / 1000;
    const cpuSec: Record<string, number> = { coordinator: round(coordinatorCpuMs / 1000, 2) };
    for (const k of Object.keys(others1)) cpuSec[k] = round(((others1[k] ?? 0) - (others0[k] ?? 0)) / 1000, 2);
    const r = report(scenario, devices, outcome, phaseMs);
    process.stdout.write(
      `${JSON.stringify({
        bench: 'fleet',
        ...r,
        seed,
        passed: passed(outcome),
        brokenInvariants: outcome.invariants.filter((i) => !i.ok).map((i) => `${i.name}: ${i.detail}`),
        figures: outcome.figures ?? {},
        setupSec: round(setupSec, 1),
        coordinatorCpuMsPerDevice: round(coordinatorCpuMs / Math.max(1, outcome.succeeded), 2),
        ...(idle ? { idleCores: idle } : {}),
        cpuSec,
        coordinatorPeakRssMiB: round(peakRss / MiB, 1),
        coordinatorVmHwmMiB: round((procStatus('self')['VmHWM'] ?? 0) / 1024, 1),
        loadAvgBefore: load0.map((l) => round(l, 2)),
        loadAvgAfter: loadavg().map((l) => round(l, 2)),
      })}\n`,
    );
  } finally {
    process.removeListener('SIGINT', interrupt);
    process.removeListener('SIGTERM', interrupt);
    await sim.stop();
  }
}

const REVOCATIONS = Number(process.env['BENCH_FLEET_REVOCATIONS'] ?? 5);

/** revocation-propagation: see fleetRun. Its invariants: each victim parks in `revoked`; every other device takes each CRL and stays online. */
async function revokeOneAtATime(sim: SimFleet, ids: readonly string[], ctx: { random: () => number; log: (l: string) => void }): Promise<ScenarioOutcome> {
  const victims = pick(ids, Math.min(REVOCATIONS, ids.length - 1), ctx.random);
  const samples: number[] = [];
  const notInformed: string[] = [];
  const op = await sim.operator();
  try {
    for (const [i, victim] of victims.entries()) {
      const others = ids.filter((id) => !victims.slice(0, i + 1).includes(id));
      const t0 = Date.now();
      const n = BigInt((await op.call('revoke', { deviceId: victim, reason: 'keyCompromise' })).crlNumber);
      const informed = (id: string) => sim.crlAt(id, n) !== undefined;
      await sim.until(() => others.every(informed) && sim.state(victim) === 'revoked', 60_000 + ids.length * 30, `CRL ${n} at every device`).catch(() => undefined);
      for (const id of others) {
        const at = sim.crlAt(id, n);
        if (at === undefined) notInformed.push(`${id} without CRL ${n}`);
        else samples.push(Math.max(0, at - t0));
      }
      ctx.log(`revoked ${victim}: CRL ${n} at ${others.filter(informed).length}/${others.length} other devices`);
    }
  } finally {
    await op.close();
  }
  const others = ids.filter((id) => !victims.includes(id));
  return {
    succeeded: victims.filter((id) => sim.state(id) === 'revoked').length + others.filter((id) => sim.state(id) === 'online').length,
    failures: {},
    lost: 0,
    latenciesMs: samples,
    invariants: [
      invariant('revoked devices parked in revoked', victims.filter((id) => sim.state(id) !== 'revoked').map((id) => `${id} is ${sim.state(id)}`), `${victims.length} revoked`),
      invariant('every other device took every CRL', notInformed, `${samples.length} samples`),
      invariant('every other device stays online', others.filter((id) => sim.state(id) !== 'online').map((id) => `${id} is ${sim.state(id)}`), `${others.length} online`),
    ],
    figures: { revocations: victims.length, samples: samples.length },
  };
}

// ---------------------------------------------------------------------------------------------------
// `bench.mjs agent-rss`: the agent bundle as a process, enrolled and idle.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * One device: a fresh swtpm (harness, EK certificate from its manufacturer CA), an embedded fleet, the
 * device registered with a one-time token, and `node dist/agent.mjs` started with the shipped defaults.
 * Once it logs `online`, it is left idle for `idleSec` (a real process settling: the only wait), then its
 * VmRSS, VmHWM and threads are read from /proc. Baseline in the same run: a bare `node` idling on a timer.
 */
async function agentRss(idleSec: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-agent-rss-'));
  const sw = await startTpm();
  const fleet = await EmbeddedFleet.start({
    dir: join(dir, 'fleet'),
    clock: systemClock,
    trustDomain: 'bench.fleet',
    ekTrust: { roots: [sw.manufacturerRootPem], intermediates: [sw.manufacturerIntermediatePem] },
  });
  const children: ChildProcess[] = [];
  try {
    const deviceId = 'bench-rss';
    const boot = await registerDevice(fleet, { deviceId, tcti: sw.tcti, ...(await readEk(sw.tcti)) });
    const bootstrap = join(dir, 'bootstrap.json');
    writeFileSync(
      bootstrap,
      JSON.stringify(boot),
      { mode: 0o600 },
    );
    const agent = spawn(process.execPath, [join(DIST, 'agent.mjs'), '--bootstrap', bootstrap, '--data', join(dir, 'agent')], { stdio: ['ignore', 'ignore', 'pipe'] });
    children.push(agent);
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`the agent was not online within 60 s:\n${out.slice(-2000)}`)), 60_000);
      agent.stderr!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('"msg":"online"')) {
          clearTimeout(timer);
          resolve();
        }
      });
      agent.once('exit', (code) => reject(new Error(`the agent exited (${code}) before going online:\n${out.slice(-2000)}`)));
    });
    const bare = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    children.push(bare);
    await sleep(idleSec * 1000);
    const a = procStatus(agent.pid!);
    const b = procStatus(bare.pid!);
    process.stdout.write(
      `${JSON.stringify({
        bench: 'agent-rss',
        idleSec,
        agentVmRssMiB: round((a['VmRSS'] ?? 0) / 1024, 1),
        agentVmHwmMiB: round((a['VmHWM'] ?? 0) / 1024, 1),
        agentThreads: a['Threads'] ?? 0,
        bareNodeVmRssMiB: round((b['VmRSS'] ?? 0) / 1024, 1),
      })}\n`,
    );
  } finally {
    for (const c of children) {
      if (c.exitCode !== null || c.signalCode !== null) continue;
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGTERM');
      await Promise.race([exited, sleep(10_000)]);
      c.kill('SIGKILL');
    }
    await fleet.stop();
    await sw.stop();
    await stopAll();
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------------
// The aggregator.

type Json = Record<string, unknown>;

interface Step {
  readonly name: string;
  /** A bundle in dist/ and its arguments. */
  readonly bundle: string;
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
}

interface StepResult {
  readonly json?: Json;
  readonly error?: string;
  readonly wallSec: number;
}

const STEP_NAMES = ['tpm', 'ca', 'agent', 'agent-rss', 'revocation', 'factory', 'enroll-cpu', 'fleet-enroll', 'fleet-rotation', 'fleet-propagation', 'fleet-revocation'] as const;
type StepName = (typeof STEP_NAMES)[number];

/** Devices per fleet run, and each benchmark's own knobs in `--quick` mode (its defaults otherwise). */
function plan(quick: boolean, seed: number): Step[] {
  const q = (env: Record<string, string>) => (quick ? env : {});
  const storm = quick ? 100 : 500;
  const big = quick ? 100 : 1000;
  const fleet = (scenario: FleetScenario, n: number) => ['fleet', scenario, String(n), '--seed', String(seed)];
  const steps: Record<StepName, Omit<Step, 'name'>> = {
    tpm: { bundle: 'bench-tpm.mjs', args: [], env: q({ BENCH_TOOLS_ITERATIONS: '5' }) },
    ca: { bundle: 'bench-ca.mjs', args: [], env: q({ BENCH_ENROLLMENTS_PER_TPM: '3' }) },
    agent: { bundle: 'bench-agent.mjs', args: [], env: q({ BENCH_ROTATIONS: '5', BENCH_RESTARTS: '2', BENCH_EVENTS: '500' }) },
    'agent-rss': { bundle: 'bench.mjs', args: ['agent-rss', '--idle-sec', quick ? '5' : '20'], env: {} },
    revocation: { bundle: 'bench-revocation.mjs', args: [], env: q({ BENCH_DEVICES: '40', BENCH_REVOCATIONS: '3', BENCH_REVOKED_SERIALS: '20000', BENCH_LOOKUPS: '50000' }) },
    factory: { bundle: 'bench-factory.mjs', args: [], env: q({ BENCH_FACTORY_TPMS: '50', BENCH_FACTORY_BASELINE_TPMS: '2' }) },
    'enroll-cpu': { bundle: 'bench-enroll-cpu.mjs', args: [], env: q({ BENCH_ENROLLMENTS: '100', BENCH_WARMUP: '20' }) },
    'fleet-enroll': { bundle: 'bench.mjs', args: fleet('enroll-storm', storm), env: {} },
    'fleet-rotation': { bundle: 'bench.mjs', args: fleet('rotation-campaign', big), env: {} },
    'fleet-propagation': { bundle: 'bench.mjs', args: fleet('revocation-propagation', big), env: q({ BENCH_FLEET_REVOCATIONS: '3' }) },
    'fleet-revocation': { bundle: 'bench.mjs', args: fleet('revocation', big), env: {} },
  };
  return STEP_NAMES.map((name) => ({ name, ...steps[name] }));
}

let current: ChildProcess | undefined;

/**
 * Runs one step as a child: its stdout is copied to our stderr (its own table shows as progress) and
 * kept; its last stdout line that is a JSON object is its result. No JSON line → an error.
 */
function runStep(step: Step): Promise<StepResult> {
  const t0 = performance.now();
  const bundle = join(DIST, step.bundle);
  if (!existsSync(bundle)) return Promise.resolve({ error: `${bundle} is not built (npm run build)`, wallSec: 0 });
  return new Promise((resolve) => {
    const env = { ...process.env, TEST_BACKEND: process.env['TEST_BACKEND'] ?? 'process', ...step.env };
    const child = spawn(process.execPath, [bundle, ...step.args], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    current = child;
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      process.stderr.write(d);
    });
    const done = (error: string | undefined) => {
      current = undefined;
      const wallSec = round((performance.now() - t0) / 1000, 1);
      const json = lastJsonLine(out);
      if (json && !error) resolve({ json, wallSec });
      else resolve({ ...(json ? { json } : {}), error: error ?? 'it printed no JSON line', wallSec });
    };
    child.once('error', (e) => done(e.message));
    child.once('exit', (code, signal) => done(code === 0 ? undefined : `it exited with ${code ?? signal}`));
  });
}

function lastJsonLine(out: string): Json | undefined {
  for (const line of out.trim().split('\n').reverse()) {
    if (!line.startsWith('{')) continue;
    try {
      const v: unknown = JSON.parse(line);
      if (v && typeof v === 'object' && !Array.isArray(v)) return v as Json;
    } catch {
      // a table line that happens to start with a brace
    }
  }
  return undefined;
}

/** A number from a result, or null when the step or the figure is missing. */
function num(r: StepResult | undefined, key: string): number | null {
  const v = r?.json?.[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function machine() {
  const model = /model name\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
  return { nproc: cpus().length, memGiB: round(totalmem() / 1024 ** 3, 1), cpuModel: model, node: process.version, kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim() };
}

interface Row {
  readonly figure: string;
  readonly ours: string;
  readonly target?: string;
  /** true met, false missed, undefined no target or no figure. */
  readonly met?: boolean | undefined;
  readonly anchors?: readonly string[];
  /** The step the figure comes from: rows of steps not run (`--only`) are left out. */
  readonly from: StepName;
}

const f = (v: number | null, digits = 1, unit = '') => (v === null ? 'missing' : `${Number(v.toFixed(digits))}${unit}`);
const meets = (v: number | null, ok: (v: number) => boolean) => (v === null ? undefined : ok(v));

/** The headline figures (flat, for the JSON line) and the table rows. */
function summarize(results: ReadonlyMap<StepName, StepResult>, quick: boolean) {
  const r = (n: StepName) => results.get(n);
  const storm = r('fleet-enroll');
  const rot = r('fleet-rotation');
  const rev = r('fleet-propagation');
  const burst = r('fleet-revocation');
  const invalid = (x: StepResult | undefined) => x?.json !== undefined && x.json['passed'] !== true;
  const fleetFigure = (x: StepResult | undefined, key: string) => (invalid(x) ? null : num(x, key));
  const stormDur = fleetFigure(storm, 'durationSec');
  const stormOk = fleetFigure(storm, 'succeeded');
  const cpuSec = (storm?.json?.['cpuSec'] ?? {}) as Record<string, number>;
  // CPU ms per enrolled device in the storm, by side: the fleet (bridge + CA in the coordinator, which
  // also runs the simulator's bookkeeping, and mosquitto) and the simulated devices (agents, swtpm).
  const perDevice = (...kinds: string[]) =>
    stormOk ? round((kinds.reduce((a, k) => a + (cpuSec[k] ?? 0), 0) * 1000) / stormOk, 1) : null;
  const fleetSideMs = perDevice('coordinator', 'mosquitto');

  const figures = {
    enrollStormDevices: num(storm, 'devices'),
    enrollPerSec: stormDur && stormOk !== null ? round(stormOk / stormDur, 1) : null,
    enrollP50Ms: fleetFigure(storm, 'p50Ms'),
    enrollP99Ms: fleetFigure(storm, 'p99Ms'),
    fleetSideCpuMsPerEnroll: fleetSideMs,
    deviceSideCpuMsPerEnroll: perDevice('node', 'swtpm'),
    fleetSideEnrollCapacityPerSec: fleetSideMs ? round((cpus().length * 1000) / fleetSideMs, 0) : null,
    bridgeCpuMsPerEnroll: num(r('enroll-cpu'), 'serviceCpuMsPerEnrollP384'),
    p384MakeCredentialFloorMs: num(r('enroll-cpu'), 'p384MakeCredentialFloorMs'),
    bridgeCpuMsPerEnrollRsa: num(r('enroll-cpu'), 'serviceCpuMsPerEnrollRsa2048'),
    bridgeCpuMsPerEnrollFleet: fleetFigure(storm, 'coordinatorCpuMsPerDevice'),
    bridgePeakRssMiB: fleetFigure(storm, 'coordinatorPeakRssMiB'),
    rotationDevices: num(rot, 'devices'),
    rotation1000Sec: fleetFigure(rot, 'durationSec'),
    rotationP50Ms: fleetFigure(rot, 'p50Ms'),
    rotationP99Ms: fleetFigure(rot, 'p99Ms'),
    revocationDevices: num(rev, 'devices'),
    revocationPropagationP50Ms: fleetFigure(rev, 'p50Ms'),
    revocationPropagationP99Ms: fleetFigure(rev, 'p99Ms'),
    revocationBurst: (burst?.json?.['figures'] as Json | undefined)?.['revoked'] ?? null,
    revocationBurstP99Ms: fleetFigure(burst, 'p99Ms'),
    agentIdleRssMiB: num(r('agent-rss'), 'agentVmRssMiB'),
  };

  const tpm = r('tpm');
  const ratios = ['signRatio', 'createRatio', 'certifyRatio', 'quoteRatio', 'activateRatio'].map((k) => num(tpm, k)).filter((v): v is number => v !== null);
  const minRatio = ratios.length === 5 ? Math.min(...ratios) : null;
  const ca = r('ca');
  const ag = r('agent');
  const rv = r('revocation');
  const fa = r('factory');
  const n = (x: number | null) => (x === null ? '?' : String(x));
  const tag = quick ? ' (quick)' : '';
  const invalidNote = (x: StepResult | undefined) => (invalid(x) ? ' — run invalid: an invariant broke' : '');

  const rows: { section: string; rows: Row[] }[] = [
    {
      section: `Fleet: the simulator, every device its own swtpm, all on this box${tag}`,
      rows: [
        {
          from: 'fleet-enroll',
          figure: `enrollPerSec (storm of ${n(figures.enrollStormDevices)})${invalidNote(storm)}`,
          ours: f(figures.enrollPerSec, 1, ' /s'),
          target: `≥ ${TARGET.enrollPerSec} /s`,
          met: meets(figures.enrollPerSec, (v) => v >= TARGET.enrollPerSec),
          anchors: [ANCHORS.awsCsr.text, ANCHORS.azureDps.text, ANCHORS.googleCas.text],
        },
        { from: 'fleet-enroll', figure: 'enrollP50Ms / enrollP99Ms (power-on → online)', ours: `${f(figures.enrollP50Ms, 0)} / ${f(figures.enrollP99Ms, 0)} ms` },
        {
          from: 'fleet-enroll',
          figure: `  storm CPU (s): bridge ${n(cpuSec['coordinator'] ?? null)}, agents ${n(cpuSec['node'] ?? null)}, swtpm ${n(cpuSec['swtpm'] ?? null)}, mosquitto ${n(cpuSec['mosquitto'] ?? null)}`,
          ours: `in ${f(stormDur, 1, ' s')}`,
        },
        { from: 'fleet-enroll', figure: '  CPU per enrollment, fleet side (bridge + mosquitto)', ours: f(figures.fleetSideCpuMsPerEnroll, 1, ' ms') },
        { from: 'fleet-enroll', figure: '  CPU per enrollment, simulated device (agent + swtpm)', ours: f(figures.deviceSideCpuMsPerEnroll, 1, ' ms') },
        {
          from: 'fleet-enroll',
          figure: `  fleet side's capacity on ${cpus().length} cores from its CPU per enrollment (derived, devices elsewhere)`,
          ours: f(figures.fleetSideEnrollCapacityPerSec, 0, ' /s'),
          target: `≥ ${TARGET.enrollPerSec} /s`,
          met: meets(figures.fleetSideEnrollCapacityPerSec, (v) => v >= TARGET.enrollPerSec),
        },
        {
          from: 'enroll-cpu',
          figure: 'bridgeCpuMsPerEnroll, P-384 EK (bench:enroll-cpu)',
          ours: f(figures.bridgeCpuMsPerEnroll, 2, ' ms'),
          target: `≤ ${TARGET.bridgeCpuMsPerEnroll} ms`,
          met: meets(figures.bridgeCpuMsPerEnroll, (v) => v <= TARGET.bridgeCpuMsPerEnroll),
        },
        { from: 'enroll-cpu', figure: '  floor: P-384 MakeCredential EC work alone, node:crypto (same run)', ours: f(figures.p384MakeCredentialFloorMs, 2, ' ms') },
        { from: 'enroll-cpu', figure: 'bridgeCpuMsPerEnroll, RSA-2048 EK (bench:enroll-cpu)', ours: f(figures.bridgeCpuMsPerEnrollRsa, 2, ' ms') },
        {
          from: 'fleet-enroll',
          figure: '  cross-check: bridge process in the storm (P-256)',
          ours: f(figures.bridgeCpuMsPerEnrollFleet, 2, ' ms'),
          target: `≤ ${TARGET.bridgeCpuMsPerEnroll} ms`,
          met: meets(figures.bridgeCpuMsPerEnrollFleet, (v) => v <= TARGET.bridgeCpuMsPerEnroll),
        },
        { from: 'fleet-enroll', figure: 'bridge peak RSS (during the storm)', ours: f(figures.bridgePeakRssMiB, 0, ' MiB') },
        {
          from: 'fleet-rotation',
          figure: `rotation1000Sec (wave of ${n(figures.rotationDevices)})${invalidNote(rot)}`,
          ours: f(figures.rotation1000Sec, 1, ' s'),
          target: `< ${TARGET.rotation1000Sec} s`,
          met: meets(figures.rotation1000Sec, (v) => v < TARGET.rotation1000Sec),
        },
        { from: 'fleet-rotation', figure: '  per device p50 / p99 (rotate-now → online)', ours: `${f(figures.rotationP50Ms, 0)} / ${f(figures.rotationP99Ms, 0)} ms` },
        {
          from: 'fleet-propagation',
          figure: `revocationPropagationP99Ms (${n(figures.revocationDevices)} online)${invalidNote(rev)}`,
          ours: f(figures.revocationPropagationP99Ms, 0, ' ms'),
          target: `≤ ${TARGET.revocationPropagationP99Ms} ms`,
          met: meets(figures.revocationPropagationP99Ms, (v) => v <= TARGET.revocationPropagationP99Ms),
        },
        {
          from: 'fleet-revocation',
          figure: `  burst: ${n(figures.revocationBurst as number | null)} revoked at once, p99 to the last CRL${invalidNote(burst)}`,
          ours: f(figures.revocationBurstP99Ms, 0, ' ms'),
        },
        {
          from: 'agent-rss',
          figure: 'agent idle RSS, dist/agent.mjs (bare node)',
          ours: `${f(figures.agentIdleRssMiB, 0, ' MiB')} (${f(num(r('agent-rss'), 'bareNodeVmRssMiB'), 0, ' MiB')})`,
          anchors: [ANCHORS.thinEdge.text, ANCHORS.awsDeviceClient.text],
        },
      ],
    },
    {
      section: `Components: bench:tpm, ca, agent, revocation, factory${tag}`,
      rows: [
        { from: 'tpm', figure: 'TPM sign p50 through the addon (swtpm)', ours: f(num(tpm, 'signP50Ms'), 2, ' ms') },
        { from: 'tpm', figure: 'tpm2-tools / addon time, worst op', ours: f(minRatio, 1, '×'), target: '≥ 10×', met: meets(minRatio, (v) => v >= 10) },
        { from: 'ca', figure: 'CA issuance, key file, one core', ours: f(num(ca, 'fileCertsPerSec'), 0, ' /s'), target: '≥ 1000 /s', met: meets(num(ca, 'fileCertsPerSec'), (v) => v >= 1000), anchors: [ANCHORS.googleCas.text] },
        { from: 'ca', figure: 'CA issuance, PKCS#11 SoftHSM2, one core', ours: f(num(ca, 'pkcs11CertsPerSec'), 0, ' /s'), target: '≥ 500 /s', met: meets(num(ca, 'pkcs11CertsPerSec'), (v) => v >= 500) },
        { from: 'ca', figure: 'enrollment p50 / p99, one at a time', ours: `${f(num(ca, 'enrollP50Ms'), 0)} / ${f(num(ca, 'enrollP99Ms'), 0)} ms` },
        { from: 'agent', figure: 'rotation p50 / p99, one agent', ours: `${f(num(ag, 'rotationP50Ms'), 0)} / ${f(num(ag, 'rotationP99Ms'), 0)} ms` },
        { from: 'agent', figure: 'TPM signatures per rotation', ours: f(num(ag, 'tpmSignaturesPerRotation'), 0), target: '≤ 3', met: meets(num(ag, 'tpmSignaturesPerRotation'), (v) => v <= 3) },
        { from: 'agent', figure: 'reconnect after broker restart p50 (mqtt.js)', ours: `${f(num(ag, 'reconnectAfterBrokerRestartP50Ms'), 0)} ms (${f(num(ag, 'baselineReconnectP50Ms'), 0)} ms)` },
        { from: 'agent', figure: 'outbox drain (plain QoS1)', ours: `${f(num(ag, 'outboxEventsPerSec'), 0)} /s (${f(num(ag, 'baselineQos1PerSec'), 0)} /s)` },
        {
          from: 'agent',
          figure: `event loop stalled by a TLS handshake, ${n(num(ag, 'chipSignMs'))} ms TPM signature (swtpm)`,
          ours: `${f(num(ag, 'tlsLoopStallMaxMs'), 0, ' ms')} (${f(num(ag, 'baselineLoopStallMaxMs'), 0, ' ms')})`,
        },
        {
          from: 'revocation',
          figure: `revocation propagation p99 (${n(num(rv, 'devices'))} in-process)`,
          ours: f(num(rv, 'propagationP99Ms'), 0, ' ms'),
          target: '≤ 2000 ms',
          met: meets(num(rv, 'propagationP99Ms'), (v) => v <= 2000),
        },
        { from: 'revocation', figure: 'revoked session cut, max', ours: f(num(rv, 'sessionCutMs'), 0, ' ms'), target: '≤ 2000 ms', met: meets(num(rv, 'sessionCutMs'), (v) => v <= 2000) },
        { from: 'revocation', figure: 'CRL status() lookup p99', ours: f(num(rv, 'lookupP99Us'), 2, ' µs'), target: '< 50 µs', met: meets(num(rv, 'lookupP99Us'), (v) => v < 50) },
        { from: 'factory', figure: 'factory: 1,000 TPMs with EK certs', ours: `${f(num(fa, 'factory1000Sec'), 0, ' s')} (${f(num(fa, 'tpmsPerSec'), 1, ' /s')})`, target: '< 60 s', met: meets(num(fa, 'factory1000Sec'), (v) => v < 60) },
      ],
    },
  ];
  return { figures, rows };
}

function printTable(all: ReturnType<typeof summarize>['rows'], ran: ReadonlySet<StepName>): void {
  const sections = all.map((s) => ({ ...s, rows: s.rows.filter((r) => ran.has(r.from)) })).filter((s) => s.rows.length);
  const rows = sections.flatMap((s) => s.rows);
  const w = { figure: Math.max(...rows.map((r) => r.figure.length), 6), ours: Math.max(...rows.map((r) => r.ours.length), 4), target: Math.max(...rows.map((r) => (r.target ?? '').length), 6) };
  const verdict = (r: Row) => (r.target === undefined ? '' : r.met === undefined ? '?' : r.met ? 'met' : 'MISSED');
  const line = (a: string, b: string, c: string, d: string, e: string) => `${a.padEnd(w.figure)}  ${b.padStart(w.ours)}  ${c.padEnd(w.target)}  ${d.padEnd(6)}  ${e}`.trimEnd();
  const out: string[] = [line('figure', 'ours', 'target', '', 'anchor')];
  for (const s of sections) {
    out.push('', s.section);
    for (const r of s.rows) {
      const anchors = r.anchors ?? [];
      out.push(line(r.figure, r.ours, r.target ?? '', verdict(r), anchors[0] ?? ''));
      for (const a of anchors.slice(1)) out.push(line('', '', '', '', a));
    }
  }
  process.stdout.write(`${out.join('\n')}\n`);
}

async function aggregate(quick: boolean, only: readonly StepName[] | undefined, seed: number): Promise<void> {
  const started = new Date();
  const load0 = loadavg();
  const steps = plan(quick, seed).filter((s) => !only || only.includes(s.name as StepName));
  log(`${steps.length} steps${quick ? ' (quick)' : ''}: ${steps.map((s) => s.name).join(', ')}; load average ${load0.map((l) => l.toFixed(2)).join(' ')}`);
  const results = new Map<StepName, StepResult>();
  for (const step of steps) {
    log(`${step.name}: node ${step.bundle} ${step.args.join(' ')}${Object.keys(step.env).length ? ` (${Object.entries(step.env).map(([k, v]) => `${k}=${v}`).join(' ')})` : ''}`);
    const res = await runStep(step);
    results.set(step.name as StepName, res);
    log(`${step.name}: ${res.error ? `FAILED: ${res.error}` : 'done'} in ${res.wallSec} s`);
    if (interrupted) break;
  }
  const { figures, rows } = summarize(results, quick);
  const failed = [...results].filter(([, r]) => r.error).map(([n, r]) => `${n}: ${r.error}`);
  const invalid = [...results].filter(([, r]) => r.json?.['bench'] === 'fleet' && r.json['passed'] !== true).map(([n]) => n);
  printTable(rows, new Set(results.keys()));
  if (failed.length) process.stdout.write(`\nfailed steps (their figures are missing): ${failed.join('; ')}\n`);
  if (invalid.length) process.stdout.write(`simulator runs with a broken invariant (their figures are withheld): ${invalid.join(', ')}\n`);
  const load1 = loadavg();
  process.stdout.write(`machine: ${JSON.stringify(machine())}; load average before ${load0.map((l) => l.toFixed(2)).join(' ')}, after ${load1.map((l) => l.toFixed(2)).join(' ')}\n`);
  process.stdout.write(
    `${JSON.stringify({
      bench: 'all',
      version: BUILD_VERSION,
      date: started.toISOString(),
      quick,
      seed,
      machine: machine(),
      loadAvgBefore: load0.map((l) => round(l, 2)),
      loadAvgAfter: load1.map((l) => round(l, 2)),
      ...figures,
      failed,
      invalid,
      steps: Object.fromEntries([...results].map(([n, r]) => [n, { wallSec: r.wallSec, ...(r.error ? { error: r.error } : {}), result: r.json ?? null }])),
    })}\n`,
  );
  process.exitCode = failed.length || invalid.length ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------------
// Command line.

const USAGE = `usage: bench [--quick] [--only STEPS] [--seed S]
  every benchmark, one after the other, then one table against the targets and anchors and one JSON line
  --quick        100 simulated devices instead of 500/1,000, fewer iterations elsewhere (a try-out; not
                 comparable with the targets)
  --only STEPS   comma-separated subset of: ${STEP_NAMES.join(', ')}
  --seed S       seed for the simulator's choices (default 1)
usage: bench fleet SCENARIO DEVICES [--seed S]
  one simulator scenario (${FLEET_SCENARIOS.join(', ')}) with CPU and memory of the measured phase; one JSON line
usage: bench agent-rss [--idle-sec N]
  the agent bundle enrolled against an embedded fleet, idle N s (default 20), then its VmRSS; one JSON line
Exit codes: 0 all ran, 1 a step failed or a simulator invariant broke, 2 usage.`;

function usage(msg: string): never {
  process.stderr.write(`bench: BENCH_USAGE: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

function intArg(name: string, v: string | undefined, min: number, max: number, fallback?: number): number {
  if (v === undefined && fallback !== undefined) return fallback;
  const n = Number(v);
  if (v === undefined || !/^\d+$/.test(v) || n < min || n > max) usage(`${name} must be an integer from ${min} to ${max}${v === undefined ? '' : `, not ${JSON.stringify(v)}`}`);
  return n;
}

let interrupted = false;

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        quick: { type: 'boolean', default: false },
        only: { type: 'string' },
        seed: { type: 'string' },
        'idle-sec': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
      strict: true,
      allowPositionals: true,
    });
  } catch (e) {
    return usage((e as Error).message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (values.version) {
    process.stdout.write(`${BUILD_VERSION}\n`);
    return;
  }
  const seed = intArg('--seed', values.seed, 0, 2 ** 31 - 1, 1);
  const [command, ...rest] = positionals;
  const refuse = (what: string) => usage(`${what} does not apply to ${command ?? 'the aggregator'}`);
  if (command === 'fleet') {
    if (values.quick || values.only !== undefined || values['idle-sec'] !== undefined) refuse('--quick/--only/--idle-sec');
    const [scenario, devices, ...extra] = rest;
    if (extra.length) usage(`unexpected ${JSON.stringify(extra[0])}`);
    if (!FLEET_SCENARIOS.includes(scenario as FleetScenario)) usage(`SCENARIO must be one of ${FLEET_SCENARIOS.join(', ')}${scenario === undefined ? '' : `, not ${JSON.stringify(scenario)}`}`);
    return fleetRun(scenario as FleetScenario, intArg('DEVICES', devices, 1, 2000), seed);
  }
  if (command === 'agent-rss') {
    if (values.quick || values.only !== undefined || values.seed !== undefined) refuse('--quick/--only/--seed');
    if (rest.length) usage(`unexpected ${JSON.stringify(rest[0])}`);
    return agentRss(intArg('--idle-sec', values['idle-sec'], 0, 3600, 20));
  }
  if (command !== undefined) usage(`unknown command ${JSON.stringify(command)}`);
  if (values['idle-sec'] !== undefined) refuse('--idle-sec');
  let only: StepName[] | undefined;
  if (values.only !== undefined) {
    only = values.only.split(',').map((s) => s.trim()) as StepName[];
    const unknown = only.filter((s) => !STEP_NAMES.includes(s));
    if (unknown.length || only.length === 0) usage(`--only takes ${STEP_NAMES.join(', ')}; not ${JSON.stringify(unknown.join(','))}`);
  }
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.once(signal, () => {
      interrupted = true;
      log(`${signal}: stopping the running step`);
      // A terminal's Ctrl-C reaches the child too (same process group); `kill` of this process alone does not.
      current?.kill(signal);
      process.exitCode = code;
    });
  }
  await aggregate(values.quick, only, seed);
}

// Explicit exit, as the simulator's CLI does: a stopped fleet may leave a handle or two behind.
main().then(() => process.exit(process.exitCode ?? 0), (e: unknown) => {
  process.stderr.write(`bench: BENCH_FAILED: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
