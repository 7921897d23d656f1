import { describe, expect, it } from 'vitest';
import { countCodes, invariant, passed, pick, report, seededRandom, type ScenarioOutcome } from './scenario.js';

const outcome = (o: Partial<ScenarioOutcome> = {}): ScenarioOutcome => ({ succeeded: 3, failures: {}, lost: 0, latenciesMs: [10, 20, 30, 40], invariants: [invariant('x', [], 'fine')], ...o });

describe('scenario results', () => {
  it('a run passes only when every invariant holds and nothing is lost', () => {
    expect(passed(outcome())).toBe(true);
    expect(passed(outcome({ lost: 1 }))).toBe(false);
    expect(passed(outcome({ invariants: [invariant('x', [], 'fine'), invariant('y', ['dev-1 offline'], 'fine')] }))).toBe(false);
  });

  it('an invariant names up to five failing cases and how many there are', () => {
    const i = invariant('online', ['a', 'b', 'c', 'd', 'e', 'f'], 'all online');
    expect(i).toMatchObject({ ok: false });
    expect(i.detail).toBe('6 failing: a; b; c; d; e; …');
    expect(invariant('online', [], 'all online')).toEqual({ name: 'online', ok: true, detail: 'all online' });
  });

  it('reports percentiles (nearest rank) and the duration in seconds', () => {
    expect(report('s', 4, outcome(), 1234)).toEqual({ scenario: 's', devices: 4, succeeded: 3, failures: {}, lost: 0, p50Ms: 20, p95Ms: 40, p99Ms: 40, durationSec: 1.23 });
    expect(report('s', 4, outcome({ latenciesMs: [] }), 0)).toMatchObject({ p50Ms: 0, p99Ms: 0 });
    expect(countCodes(['A', 'B', 'A'])).toEqual({ A: 2, B: 1 });
  });

  it('picks reproducibly from a seed, without repeats', () => {
    const ids = Array.from({ length: 50 }, (_, i) => `d${i}`);
    const a = pick(ids, 5, seededRandom(7));
    expect(pick(ids, 5, seededRandom(7))).toEqual(a);
    expect(new Set(a).size).toBe(5);
    expect(pick(ids, 5, seededRandom(8))).not.toEqual(a);
  });
});
