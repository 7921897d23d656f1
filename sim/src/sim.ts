/**
 * `npm run sim -- --devices N --scenario NAME [--workers W] [--tpm-latency-ms X] [--seed S] [--json] [--keep] [--report FILE]`:
 * the fleet simulator. A real fleet (CA, inventory, mosquitto, bridge) and N devices, each with its own
 * swtpm and a real agent (library instances spread over worker processes), driven through one failure scenario
 * whose invariants decide the exit code. Prints a table and ends with one JSON line (scenario.ts
 * ScenarioReport). Progress goes to stderr. `--report FILE` writes one self-contained HTML page
 * (sim/report-html.ts) with a section per scenario run, rewritten after each run (so with `--scenario
 * all` the runs finished so far are there even when a later one fails; a run that throws gets a
 * section with its error code and the timelines up to then).
 */
import { mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { BUILD_VERSION } from '../../common/build-version.js';
import { CodedError, isCodedError } from '../../common/coded-error.js';
import { passed, report, seededRandom, type Scenario, type ScenarioOutcome } from './sim/scenario.js';
import { renderReport, type ReportDevice, type ReportSection } from './sim/report-html.js';
import { SCENARIOS } from './sim/scenarios/index.js';
import { SimFleet } from './sim/sim-fleet.js';

const USAGE = `usage: sim --devices N --scenario NAME [--workers W] [--tpm-latency-ms X] [--seed S] [--json] [--keep] [--report FILE]
  --devices N      simulated devices, each with its own swtpm (1-2000)
  --scenario NAME  ${[...SCENARIOS.keys()].join(', ')}, or all
  --workers W      worker processes hosting the agents (default: one per CPU, at most 4)
  --tpm-latency-ms X  every TPM command of every device takes X ms more (0-60000; real chips: about
                   200-600 ms per signature); the TLS handshake signature blocks its worker meanwhile
  --seed S         seed for the scenario's choices (default: random, printed)
  --json           only the JSON line(s) on stdout (progress stays on stderr)
  --keep           keep the run's directory (TPM states, fleet data) and print where it is
  --report FILE    write a self-contained HTML report (latency histogram, device state timelines):
                   one file, a section per scenario, rewritten after each run
Exit codes: 0 every invariant held, 1 an invariant broke or the run failed, 2 usage.`;

function usage(msg: string): never {
  process.stderr.write(`sim: SIM_USAGE: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

function options() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        devices: { type: 'string' },
        scenario: { type: 'string' },
        workers: { type: 'string' },
        'tpm-latency-ms': { type: 'string' },
        seed: { type: 'string' },
        json: { type: 'boolean', default: false },
        keep: { type: 'boolean', default: false },
        report: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    return usage((e as Error).message);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (values.version) {
    process.stdout.write(`${BUILD_VERSION}\n`);
    process.exit(0);
  }
  const int = (name: string, v: string | undefined, min: number, max: number) => {
    const n = Number(v);
    if (v === undefined || !/^\d+$/.test(v) || n < min || n > max) usage(`--${name} must be an integer from ${min} to ${max}${v === undefined ? '' : `, not ${JSON.stringify(v)}`}`);
    return n;
  };
  const devices = int('devices', values.devices, 1, 2000);
  const name = values.scenario ?? usage('--scenario is required');
  const scenarios = name === 'all' ? [...SCENARIOS.values()] : [SCENARIOS.get(name) ?? usage(`unknown scenario ${JSON.stringify(name)}`)];
  return {
    devices,
    scenarios,
    workers: values.workers === undefined ? undefined : int('workers', values.workers, 1, 64),
    tpmLatencyMs: values['tpm-latency-ms'] === undefined ? 0 : int('tpm-latency-ms', values['tpm-latency-ms'], 0, 60_000),
    seed: values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : int('seed', values.seed, 0, 2 ** 31 - 1),
    json: values.json,
    keep: values.keep,
    report: values.report === undefined ? undefined : reportPath(values.report),
  };
}

/** `--report FILE`: its directory must exist (checked before the run, not after it). */
function reportPath(file: string): string {
  if (file === '' || file.endsWith('/')) usage(`--report needs a file name, not ${JSON.stringify(file)}`);
  const path = resolve(file);
  let dir;
  try {
    dir = statSync(dirname(path));
  } catch {
    return usage(`--report: directory ${JSON.stringify(dirname(path))} does not exist`);
  }
  if (!dir.isDirectory()) usage(`--report: ${JSON.stringify(dirname(path))} is not a directory`);
  return path;
}

/**
 * The devices as the report draws them: id, state timeline, CRLs, power-on. Copied, because the fleet goes
 * on changing them while it stops; and nothing else, so no bootstrap token reaches the page.
 */
function reportDevices(sim: SimFleet): ReportDevice[] {
  return [...sim.devices.values()].map((d) => ({ deviceId: d.deviceId, poweredOnAt: d.poweredOnAt, timeline: d.timeline.map((t) => ({ ...t })), crls: d.crls.map((c) => ({ ...c })) }));
}

/** Writes the report through a temporary file, so a reader never sees half a page. */
function writeReport(path: string, o: ReturnType<typeof options>, sections: readonly ReportSection[]): void {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, renderReport({ version: BUILD_VERSION, seed: o.seed, generatedAt: Date.now(), sections }));
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new CodedError<'SIM_REPORT_FAILED'>('SIM_REPORT_FAILED', `cannot write the report ${path}: ${(e as Error).message}`);
  }
}

const fmt = (n: number) => (Number.isFinite(n) ? String(n) : '-');

function table(s: Scenario, o: ScenarioOutcome, r: ReturnType<typeof report>): string {
  const lines = [
    `scenario   ${s.name}: ${s.summary}`,
    `devices    ${r.devices}, succeeded ${r.succeeded}, lost ${r.lost}, ${r.durationSec} s`,
    `latency    ${s.measures}: p50 ${fmt(r.p50Ms)} ms, p95 ${fmt(r.p95Ms)} ms, p99 ${fmt(r.p99Ms)} ms (${o.latenciesMs.length} samples)`,
    ...(Object.keys(r.failures).length ? [`codes      ${Object.entries(r.failures).map(([c, n]) => `${c}×${n}`).join(', ')}`] : []),
    ...(o.figures ? [`figures    ${Object.entries(o.figures).map(([k, v]) => `${k} ${v}`).join(', ')}`] : []),
    'invariants',
    ...o.invariants.map((i) => `  ${i.ok ? 'ok  ' : 'FAIL'} ${i.name}: ${i.detail}`),
  ];
  return lines.join('\n');
}

async function runOne(s: Scenario, o: ReturnType<typeof options>, log: (l: string) => void, record: (section: ReportSection) => void): Promise<boolean> {
  const dir = mkdtempSync(join(tmpdir(), `tpm-fleet-sim-${s.name}-`));
  log(`${s.name}: ${o.devices} devices, seed ${o.seed}, in ${dir}`);
  const sim = await SimFleet.start({
    dir,
    devices: o.devices,
    ...(o.workers ? { workers: o.workers } : {}),
    ...(o.tpmLatencyMs ? { tpmLatencyMs: o.tpmLatencyMs } : {}),
    ...(s.tpmProxy ? { tpmProxy: true } : {}),
    log,
  });
  let stopping = false;
  const interrupt = () => {
    if (stopping) process.exit(130);
    stopping = true;
    log('interrupted: stopping the fleet');
    void sim.stop({ keepDir: o.keep }).finally(() => process.exit(130));
  };
  process.once('SIGINT', interrupt);
  process.once('SIGTERM', interrupt);
  try {
    const t0 = Date.now();
    let outcome;
    try {
      outcome = await s.run(sim, { random: seededRandom(o.seed), log: (l) => log(`${s.name}: ${l}`) });
    } catch (e) {
      const error = { code: isCodedError(e) ? e.code : 'SIM_FAILED', message: (e as Error).message };
      try {
        record({ scenario: s, startedAt: t0, endedAt: Date.now(), devices: reportDevices(sim), error });
      } catch (w) {
        log((w as Error).message); // the run's own failure is the one to report
      }
      throw e;
    }
    const t1 = Date.now();
    const r = report(s.name, o.devices, outcome, t1 - t0);
    const section: ReportSection = { scenario: s, startedAt: t0, endedAt: t1, devices: reportDevices(sim), result: { outcome, report: r } };
    if (!o.json) process.stdout.write(`${table(s, outcome, r)}\n`);
    process.stdout.write(`${JSON.stringify(r)}\n`);
    record(section);
    return passed(outcome);
  } finally {
    process.removeListener('SIGINT', interrupt);
    process.removeListener('SIGTERM', interrupt);
    await sim.stop({ keepDir: o.keep });
    if (o.keep) log(`kept ${dir}`);
  }
}

async function main(): Promise<void> {
  const o = options();
  const log = (l: string) => process.stderr.write(`[sim] ${l}\n`);
  const sections: ReportSection[] = [];
  const record = (section: ReportSection) => {
    if (!o.report) return;
    sections.push(section);
    writeReport(o.report, o, sections);
    log(`report: ${o.report}`);
  };
  let ok = true;
  for (const s of o.scenarios) ok = (await runOne(s, o, log, record)) && ok;
  process.exit(ok ? 0 : 1);
}

main().catch((e: unknown) => {
  process.stderr.write(`sim: ${isCodedError(e) ? e.code : 'SIM_FAILED'}: ${(e as Error).message}\n`);
  process.exit(1);
});
