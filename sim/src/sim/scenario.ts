import { Rng } from '../../../common/prng.js';
import { percentile } from '../../../common/stats.js';
import type { SimFleet } from './sim-fleet.js';

/**
 * A failure scenario: drives a started SimFleet, measures one latency per device (what "p50" means is
 * the scenario's: power-on to online, command to rotated, revocation to CRL held), and checks its
 * invariants against the agents and the inventory. Any broken invariant fails the run.
 */
export interface Scenario {
  readonly name: string;
  /** One line: what it does and what it proves. */
  readonly summary: string;
  /** What the latency samples measure (for the table). */
  readonly measures: string;
  /** Devices reach their TPMs through the faulty-TPM proxy, for SimFleet.setTpmFaults. */
  readonly tpmProxy?: boolean;
  run(sim: SimFleet, ctx: ScenarioContext): Promise<ScenarioOutcome>;
}

export interface ScenarioContext {
  /** Seeded [0, 1) source: which devices, when. */
  readonly random: () => number;
  readonly log: (line: string) => void;
}

export interface Invariant {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

export interface ScenarioOutcome {
  /** Devices that ended as the scenario requires. */
  readonly succeeded: number;
  /** Codes seen (refusals, agent errors, broken invariants), counted. */
  readonly failures: Record<string, number>;
  /** Messages or identities lost; must be 0. */
  readonly lost: number;
  readonly latenciesMs: readonly number[];
  readonly invariants: readonly Invariant[];
  /** Extra figures for the table (e.g. the CRL number, k revoked). */
  readonly figures?: Readonly<Record<string, string | number>>;
}

/** The one JSON line every run ends with. */
export interface ScenarioReport {
  readonly scenario: string;
  readonly devices: number;
  readonly succeeded: number;
  readonly failures: Record<string, number>;
  readonly lost: number;
  readonly p50Ms: number;
  readonly p95Ms: number;
  readonly p99Ms: number;
  readonly durationSec: number;
}

export function report(name: string, devices: number, o: ScenarioOutcome, durationMs: number): ScenarioReport {
  const p = (q: number) => (o.latenciesMs.length ? Math.round(percentile(o.latenciesMs, q)) : 0);
  return { scenario: name, devices, succeeded: o.succeeded, failures: o.failures, lost: o.lost, p50Ms: p(50), p95Ms: p(95), p99Ms: p(99), durationSec: Number((durationMs / 1000).toFixed(2)) };
}

/** The run passed: every invariant held and nothing was lost. */
export function passed(o: ScenarioOutcome): boolean {
  return o.lost === 0 && o.invariants.every((i) => i.ok);
}

export function invariant(name: string, failing: readonly string[], okDetail: string): Invariant {
  return failing.length === 0
    ? { name, ok: true, detail: okDetail }
    : { name, ok: false, detail: `${failing.length} failing: ${failing.slice(0, 5).join('; ')}${failing.length > 5 ? '; …' : ''}` };
}

/** Counts codes into a failure map. */
export function countCodes(codes: Iterable<string>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const c of codes) out[c] = (out[c] ?? 0) + 1;
  return out;
}

/** A seeded [0, 1) source (common/prng.ts): scenarios pick devices and moments reproducibly with `--seed`. */
export function seededRandom(seed: number): () => number {
  const rng = new Rng(seed);
  return () => rng.next();
}

/** `k` distinct items of `items`, chosen with `random`. */
export function pick<T>(items: readonly T[], k: number, random: () => number): T[] {
  const pool = [...items];
  for (let i = pool.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [pool[i], pool[j]] = [pool[j]!, pool[i]!];
  }
  return pool.slice(0, k);
}
