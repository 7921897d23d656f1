import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['**/*.test.ts'],
    exclude: ['node_modules/**', 'dist/**', 'native/build/**'],
    // Real swtpm/mosquitto/SoftHSM2 processes: generous per-test budget, bounded pool (2 cores).
    testTimeout: 60_000,
    hookTimeout: 180_000,
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    globalSetup: ['test/harness/global-setup.ts'],
    setupFiles: ['test/harness/teardown.ts'],
  },
});
