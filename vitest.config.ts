import { defineConfig } from 'vitest/config';
import { LongFirstSequencer } from './test/harness/sequencer.js';

const forks = Number(process.env['TEST_FORKS'] ?? 3);
if (!Number.isInteger(forks) || forks < 1) throw new Error(`TEST_FORKS=${process.env['TEST_FORKS']}: expected a positive integer`);

export default defineConfig({
  test: {
    include: ['**/*.test.ts'],
    exclude: ['node_modules/**', 'dist/**', 'native/build/**'],
    // Real swtpm/mosquitto/SoftHSM2 processes: generous per-test budget, bounded pool. TEST_FORKS test
    // files run at once (default 3 on the 2-core CI machine: much of a file's time is spent waiting on
    // real processes, timers and the network; docs/testing.md has the measurements).
    testTimeout: 60_000,
    hookTimeout: 180_000,
    pool: 'forks',
    poolOptions: { forks: { maxForks: forks, minForks: 1 } },
    // The longest files first, so the forks end together (test/harness/sequencer.ts).
    sequence: { sequencer: LongFirstSequencer },
    globalSetup: ['test/harness/global-setup.ts'],
    setupFiles: ['test/harness/teardown.ts'],
  },
});
