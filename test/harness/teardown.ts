import { afterAll } from 'vitest';
import { stopAll } from './registry.js';

// vitest setup file: whatever a test file started and did not stop (a failed test) is stopped here.
afterAll(async () => {
  await stopAll();
});
