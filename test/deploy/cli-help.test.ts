import { describe, expect, it } from 'vitest';
import { runProgram } from '../harness/cli.js';

const cli = (program: 'agent' | 'bridge' | 'station' | 'operator', args: string[]) => runProgram(program, args);

/** Every program answers --help and --version on stdout with exit 0; unknown commands are usage errors (2, one coded line). */
describe('--help and --version (the built programs)', () => {
  it.each(['agent', 'bridge', 'station', 'operator'] as const)('%s --version prints the build-stamped version', async (program) => {
    const r = await cli(program, ['--version']);
    expect(r.code, r.err).toBe(0);
    expect(r.out.trim()).toMatch(/^\d+\.\d+\.\d+\+[0-9a-f]{7,}$|^\d+\.\d+\.\d+$/);
  });

  it.each(['agent', 'bridge', 'station', 'operator'] as const)('%s --help prints its usage', async (program) => {
    const r = await cli(program, ['--help']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/usage/);
    expect(r.err).toBe('');
  });

  it.each(['ca init', 'ca import', 'cert issue', 'broker-config', 'run', 'revoke'])('bridge %s --help names its options', async (command) => {
    const r = await cli('bridge', [...command.split(' '), '--help']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(new RegExp(`^usage: bridge ${command}`));
  });

  it('an unknown bridge command is a usage error in one coded line, also with --help', async () => {
    for (const args of [['bogus'], ['bogus', '--help']]) {
      const r = await cli('bridge', args);
      expect(r.code).toBe(2);
      expect(r.err.trim().split('\n')).toHaveLength(1);
      expect(r.err).toMatch(/^bridge: BRIDGE_USAGE: unknown command "bogus"/);
    }
  });
});
