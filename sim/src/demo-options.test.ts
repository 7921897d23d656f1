import { describe, expect, it } from 'vitest';
import { DEFAULT_DEVICES, parseDemoArgs } from './demo-options.js';

const usage = (argv: string[]) => {
  try {
    parseDemoArgs(argv);
  } catch (e) {
    return { code: (e as { code?: string }).code, message: (e as Error).message };
  }
  throw new Error(`accepted ${argv.join(' ')}`);
};

describe('parseDemoArgs', () => {
  it('defaults to 5 devices, not kept running', () => {
    expect(DEFAULT_DEVICES).toBe(5);
    expect(parseDemoArgs([])).toEqual({ kind: 'run', devices: 5, keepRunning: false });
    expect(parseDemoArgs(['--devices', '2', '--keep-running'])).toEqual({ kind: 'run', devices: 2, keepRunning: true });
    expect(parseDemoArgs(['--devices=10'])).toEqual({ kind: 'run', devices: 10, keepRunning: false });
  });

  it('help and version', () => {
    expect(parseDemoArgs(['--help'])).toEqual({ kind: 'help' });
    expect(parseDemoArgs(['-h'])).toEqual({ kind: 'help' });
    expect(parseDemoArgs(['--version'])).toEqual({ kind: 'version' });
    expect(parseDemoArgs(['-V'])).toEqual({ kind: 'version' });
  });

  it('refuses anything else with DEMO_USAGE', () => {
    for (const argv of [['--devices', '0'], ['--devices', '11'], ['--devices', '1.5'], ['--devices', ' 3'], ['--devices', '0x3'], ['--bogus'], ['extra'], ['--keep-running=yes']]) {
      expect(usage(argv).code, argv.join(' ')).toBe('DEMO_USAGE');
    }
    expect(usage(['--devices', '11']).message).toBe('--devices must be an integer from 1 to 10, not "11"');
  });
});
