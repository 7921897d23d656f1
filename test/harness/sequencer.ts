import { relative } from 'node:path';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * Test files known to take longest (seconds per run on the 2-core CI machine, process backend,
 * measured 2026-12-02), started first. Vitest orders by the durations it cached in an earlier run;
 * a clean clone has none, and its fallback (largest file first) started the longest file, the
 * simulator scenarios, near the end, so one fork ran it alone for over a minute. Only the order
 * changes: a file missing from this list, or a stale entry, costs time, not correctness.
 */
export const LONG_FILES: readonly string[] = [
  'test/sim/scenarios.test.ts', // 105 s
  'test/agent/outage.test.ts', // 82 s
  'test/deploy/package.test.ts', // 60 s
  'test/harness/harness.test.ts', // 32 s
  'test/demo/demo-interrupt.test.ts', // 25 s
  'test/deploy/sd-notify.test.ts', // 25 s
  'test/deploy/broker-config.test.ts', // 24 s
  'test/revocation/cert-cli.test.ts', // 20 s
  'test/deploy/docs-deployment.test.ts', // 20 s
  'test/agent/reattest.test.ts', // 18 s
  'test/operator/operator-cli.test.ts', // 17 s
];

export class LongFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const rank = (f: TestSpecification) => {
      const i = LONG_FILES.indexOf(relative(f.project.config.root, f.moduleId).split('\\').join('/'));
      return i < 0 ? LONG_FILES.length : i;
    };
    // Stable: files off the list keep vitest's order among themselves.
    return sorted.map((f, i) => ({ f, i, r: rank(f) })).sort((a, b) => a.r - b.r || a.i - b.i).map((x) => x.f);
  }
}
