/**
 * The simulator's TPM factory (sim/src/factory.ts): how fast it makes TPMs with EK certificates, for the
 * issue's "1,000 devices in under 60 s" on a 2-core machine.
 * For each concurrency in BENCH_FACTORY_CONCURRENCY (default "2,4"), BENCH_FACTORY_TPMS (200) TPMs are
 * manufactured into fresh state directories and kept running until the run ends (as the simulator keeps
 * them); then they are stopped (not timed). Reported per run: TPMs/s, the time 1,000 would take at that
 * rate, CPU per TPM of this process and of the swtpm processes (utime + stime from /proc, which includes
 * the bash that execs swtpm), and the mean RSS of a running swtpm.
 * Baseline in the same run: swtpm_setup + swtpm_localca (sim/src/swtpm.ts manufactureTpm, the demo's and
 * test harness's way), BENCH_FACTORY_BASELINE_TPMS (6) TPMs two at a time, plus starting each swtpm.
 * Ends with one JSON line.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TpmFactory, type ManufacturedTpm } from '../../sim/src/factory.js';
import { createManufacturer, manufactureTpm, SwtpmProcess } from '../../sim/src/swtpm.js';

const TPMS = Number(process.env['BENCH_FACTORY_TPMS'] ?? 200);
const CONCURRENCY = (process.env['BENCH_FACTORY_CONCURRENCY'] ?? '2,4').split(',').map(Number);
const BASELINE_TPMS = Number(process.env['BENCH_FACTORY_BASELINE_TPMS'] ?? 6);
const CLOCK_TICK_MS = 10; // USER_HZ 100 on Linux

interface Run {
  readonly concurrency: number;
  readonly tpms: number;
  readonly perSec: number;
  readonly projected1000Sec: number;
  readonly nodeCpuMsPerTpm: number;
  readonly swtpmCpuMsPerTpm: number;
  readonly swtpmRssMiB: number;
}

/** utime + stime (ms) and VmRSS (KiB) of a live process. */
function procUsage(pid: number): { cpuMs: number; rssKiB: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const rss = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return { cpuMs: (Number(fields[11]) + Number(fields[12])) * CLOCK_TICK_MS, rssKiB: Number(rss?.[1] ?? 0) };
}

async function measure(factory: TpmFactory, dir: string, concurrency: number): Promise<Run> {
  const runDir = join(dir, `c${concurrency}`);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let made: ManufacturedTpm[] = [];
  try {
    made = await factory.manufactureMany(TPMS, (i) => join(runDir, String(i)), { concurrency });
    const sec = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const usage = made.map((m) => procUsage(m.tpm.pid!));
    const perSec = TPMS / sec;
    return {
      concurrency,
      tpms: TPMS,
      perSec: round(perSec, 1),
      projected1000Sec: round(1000 / perSec, 1),
      nodeCpuMsPerTpm: round((cpu.user + cpu.system) / 1000 / TPMS, 2),
      swtpmCpuMsPerTpm: round(usage.reduce((s, u) => s + u.cpuMs, 0) / TPMS, 2),
      swtpmRssMiB: round(usage.reduce((s, u) => s + u.rssKiB, 0) / TPMS / 1024, 1),
    };
  } finally {
    await Promise.all(made.map((m) => m.tpm.stop()));
    rmSync(runDir, { recursive: true, force: true });
  }
}

/** swtpm_setup + swtpm_localca, then start: what the simulator did before the factory. */
async function baseline(dir: string): Promise<number> {
  const manufacturer = createManufacturer(join(dir, 'localca'));
  await manufactureTpm(join(dir, 'base', 'warm'), manufacturer); // creates the CA; not timed
  const t0 = performance.now();
  const started: SwtpmProcess[] = [];
  try {
    let next = 0;
    await Promise.all(
      [0, 1].map(async () => {
        while (next < BASELINE_TPMS) {
          const stateDir = join(dir, 'base', String(next++));
          await manufactureTpm(stateDir, manufacturer);
          started.push(await SwtpmProcess.start(stateDir));
        }
      }),
    );
    return BASELINE_TPMS / ((performance.now() - t0) / 1000);
  } finally {
    await Promise.all(started.map((t) => t.stop()));
  }
}

const round = (n: number, digits: number) => Math.round(n * 10 ** digits) / 10 ** digits;

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-factory-'));
  try {
    const factory = await TpmFactory.create();
    await (await factory.manufacture(join(dir, 'warm'))).tpm.stop(); // loads the addon, warms the JIT
    const runs: Run[] = [];
    for (const c of CONCURRENCY) runs.push(await measure(factory, dir, c));
    const baselinePerSec = await baseline(dir);
    const pad = (s: string | number, n: number) => String(s).padStart(n);
    console.log(`${'concurrency'.padEnd(12)}${pad('TPMs', 6)}${pad('TPMs/s', 9)}${pad('1000 in s', 11)}${pad('node ms/TPM', 13)}${pad('swtpm ms/TPM', 14)}${pad('swtpm MiB', 11)}`);
    for (const r of runs) {
      console.log(`${String(r.concurrency).padEnd(12)}${pad(r.tpms, 6)}${pad(r.perSec, 9)}${pad(r.projected1000Sec, 11)}${pad(r.nodeCpuMsPerTpm, 13)}${pad(r.swtpmCpuMsPerTpm, 14)}${pad(r.swtpmRssMiB, 11)}`);
    }
    console.log(`baseline swtpm_setup + swtpm_localca (2 at a time, ${BASELINE_TPMS} TPMs): ${baselinePerSec.toFixed(2)} TPMs/s, 1000 in ${Math.round(1000 / baselinePerSec)} s`);
    const best = runs.reduce((a, b) => (b.perSec > a.perSec ? b : a));
    if (best.projected1000Sec >= 60) process.stderr.write(`[bench:factory] 1000 TPMs would take ${best.projected1000Sec} s, target < 60 s\n`);
    console.log(
      JSON.stringify({
        bench: 'factory',
        tpmsPerSec: best.perSec,
        factory1000Sec: best.projected1000Sec,
        bestConcurrency: best.concurrency,
        runs,
        baselineSwtpmSetupPerSec: round(baselinePerSec, 2),
      }),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
