import { describe, expect, it } from 'vitest';
import { isCodedError } from './coded-error.js';
import { resolveLogFormat, resolveLogLevel } from './logger.js';

describe('program logger settings', () => {
  it('LOG_LEVEL wins over the configured level; the default is info', () => {
    expect(resolveLogLevel({}, undefined)).toBe('info');
    expect(resolveLogLevel({}, 'debug')).toBe('debug');
    expect(resolveLogLevel({ LOG_LEVEL: 'warn' }, 'debug')).toBe('warn');
    expect(resolveLogLevel({ LOG_LEVEL: '' }, 'error')).toBe('error');
  });

  it('refuses an unknown level with LOG_LEVEL_INVALID naming it', () => {
    for (const [env, configured] of [[{ LOG_LEVEL: 'verbose' }, undefined], [{}, 'loud']] as const) {
      try {
        resolveLogLevel(env, configured);
        expect.unreachable();
      } catch (e) {
        expect(isCodedError(e) && e.code).toBe('LOG_LEVEL_INVALID');
        expect((e as Error).message).toMatch(/verbose|loud/);
      }
    }
  });

  it('pretty on a terminal, JSON otherwise; LOG_FORMAT overrides; anything else is LOG_FORMAT_INVALID', () => {
    expect(resolveLogFormat({}, true)).toBe('pretty');
    expect(resolveLogFormat({}, false)).toBe('json');
    expect(resolveLogFormat({ LOG_FORMAT: 'json' }, true)).toBe('json');
    expect(resolveLogFormat({ LOG_FORMAT: 'pretty' }, false)).toBe('pretty');
    expect(() => resolveLogFormat({ LOG_FORMAT: 'xml' }, false)).toThrow(expect.objectContaining({ code: 'LOG_FORMAT_INVALID' }));
  });
});
