import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { expect } from 'vitest';

const run = promisify(execFile);

export interface CliResult {
  readonly code: number;
  readonly out: string;
  readonly err: string;
}

/**
 * Runs a shipped bundle (`dist/<program>.mjs`, built by the global setup) as an operator would, and
 * returns its exit code and output; never throws for a non-zero exit.
 */
export function runProgram(program: 'agent' | 'bridge' | 'station' | 'operator', args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return run(process.execPath, [`dist/${program}.mjs`, ...args], { env: { ...process.env, ...env }, timeout: 60_000 }).then(
    (r) => ({ code: 0, out: r.stdout, err: r.stderr }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout, err: e.stderr }),
  );
}

/** A user error: exit 2, exactly one stderr line `<program>: <CODE>: …`, no stack trace, nothing on stdout. */
export function expectUserError(r: CliResult, program: string, code: string): void {
  expect(r.code, r.err).toBe(2);
  expect(r.err.trim().split('\n'), r.err).toHaveLength(1);
  expect(r.err.trim()).toMatch(new RegExp(`^${program}: ${code}: \\S`));
  expect(r.err).not.toMatch(/\n\s+at /);
  expect(r.out).toBe('');
}
