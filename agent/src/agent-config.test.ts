import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_AGENT_CONFIG, loadAgentConfig, parseAgentConfig } from './agent-config.js';

function errorOf(fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (e) {
    return e as Error & { code?: string };
  }
  throw new Error('expected a throw');
}

describe('parseAgentConfig', () => {
  it('fills every default from { v: 1 }', () => {
    const c = parseAgentConfig({ v: 1 });
    expect(c).toEqual(DEFAULT_AGENT_CONFIG);
    expect(c).toEqual({
      v: 1,
      offlineBudget: { lifetimeSec: 30 * 86_400, renewAtFraction: 2 / 3, jitterFraction: 0.1, graceSec: 3600 },
      backoff: { baseMs: 1000, capMs: 180_000 },
      tickMs: 30_000,
      outbox: { maxEvents: 10_000 },
      revocation: { graceSec: 86_400, reportDelayMs: 30_000 },
      clockCheckSec: 3600,
      logLevel: 'info',
    });
  });

  it('takes every field given, and fills the rest of a partial section', () => {
    const c = parseAgentConfig({
      v: 1,
      offlineBudget: { lifetimeSec: 172_800, renewAtFraction: 0.5, jitterFraction: 0.05 },
      backoff: { capMs: 60_000 },
      tickMs: 1000,
      outbox: { maxEvents: 50 },
      revocation: { graceSec: 600 },
      logLevel: 'debug',
    });
    expect(c).toEqual({
      v: 1,
      offlineBudget: { lifetimeSec: 172_800, renewAtFraction: 0.5, jitterFraction: 0.05, graceSec: 3600 },
      backoff: { baseMs: 1000, capMs: 60_000 },
      tickMs: 1000,
      outbox: { maxEvents: 50 },
      revocation: { graceSec: 600, reportDelayMs: 30_000 },
      clockCheckSec: 3600,
      logLevel: 'debug',
    });
  });

  it.each<[string, unknown, string]>([
    ['not an object', 'hello', 'expected an object'],
    ['missing version', {}, 'v: expected 1'],
    ['wrong version', { v: 2 }, 'v: expected 1'],
    ['unknown top-level field', { v: 1, tick: 5 }, 'tick: unknown property'],
    ['unknown nested field', { v: 1, offlineBudget: { lifetime: 5 } }, 'offlineBudget.lifetime: unknown property'],
    ['fraction as a string', { v: 1, offlineBudget: { renewAtFraction: '0.5' } }, 'offlineBudget.renewAtFraction: expected a finite number'],
    ['fraction out of range', { v: 1, offlineBudget: { jitterFraction: 1.5 } }, 'offlineBudget.jitterFraction: out of range [0, 1]'],
    ['non-integer lifetime', { v: 1, offlineBudget: { lifetimeSec: 86_400.5 } }, 'offlineBudget.lifetimeSec: expected an integer'],
    ['lifetime below a minute', { v: 1, offlineBudget: { lifetimeSec: 30 } }, 'offlineBudget.lifetimeSec: out of range'],
    ['negative grace', { v: 1, offlineBudget: { graceSec: -1 } }, 'offlineBudget.graceSec: out of range'],
    ['negative CRL grace', { v: 1, revocation: { graceSec: -1 } }, 'revocation.graceSec: out of range'],
    ['zero backoff base', { v: 1, backoff: { baseMs: 0 } }, 'backoff.baseMs: out of range'],
    ['tick too short', { v: 1, tickMs: 10 }, 'tickMs: out of range'],
    ['zero outbox', { v: 1, outbox: { maxEvents: 0 } }, 'outbox.maxEvents: out of range'],
    ['negative clock check interval', { v: 1, clockCheckSec: -1 }, 'clockCheckSec: out of range'],
    ['clock check interval over a week', { v: 1, clockCheckSec: 8 * 86_400 }, 'clockCheckSec: out of range'],
    ['unknown log level', { v: 1, logLevel: 'verbose' }, 'logLevel: expected one of'],
  ])('refuses %s with AGENT_CONFIG_INVALID and the field path', (_name, json, text) => {
    const err = errorOf(() => parseAgentConfig(json));
    expect(err.code).toBe('AGENT_CONFIG_INVALID');
    expect(err.message).toContain(text);
  });

  it('refuses a cap below the base', () => {
    const err = errorOf(() => parseAgentConfig({ v: 1, backoff: { baseMs: 5000, capMs: 1000 } }));
    expect(err.code).toBe('AGENT_CONFIG_INVALID');
    expect(err.message).toContain('backoff.capMs 1000 is below backoff.baseMs 5000');
  });

  it.each<[string, object, string]>([
    ['renewal window past expiry', { renewAtFraction: 0.95, jitterFraction: 0.1 }, 'renewAtFraction + jitterFraction = 0.95 + 0.1'],
    ['renewal at issuance', { renewAtFraction: 0.1, jitterFraction: 0.2 }, 'renewAtFraction - jitterFraction'],
    // 1 day lifetime, latest renewal at 0.8: 4.8 h left, less than a 5 h grace.
    ['grace longer than the window after renewal', { lifetimeSec: 86_400, renewAtFraction: 0.7, jitterFraction: 0.1, graceSec: 18_000 }, 'graceSec 18000 does not fit'],
  ])('refuses an inconsistent offline budget: %s', (_name, offlineBudget, text) => {
    const err = errorOf(() => parseAgentConfig({ v: 1, offlineBudget }));
    expect(err.code).toBe('AGENT_CONFIG_INVALID');
    expect(err.message).toContain('offline budget');
    expect(err.message).toContain(text);
  });

  it('a short lifetime with the default 1 h grace is refused until the grace is lowered', () => {
    expect(errorOf(() => parseAgentConfig({ v: 1, offlineBudget: { lifetimeSec: 600 } })).code).toBe('AGENT_CONFIG_INVALID');
    expect(parseAgentConfig({ v: 1, offlineBudget: { lifetimeSec: 600, graceSec: 30 } }).offlineBudget.graceSec).toBe(30);
  });
});

describe('loadAgentConfig', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'agent-config-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('no path: the defaults', () => {
    expect(loadAgentConfig(undefined)).toEqual(DEFAULT_AGENT_CONFIG);
  });

  it('reads and resolves a file', () => {
    const path = join(dir, 'agent.json');
    writeFileSync(path, JSON.stringify({ v: 1, tickMs: 5000, backoff: { baseMs: 200, capMs: 10_000 } }));
    const c = loadAgentConfig(path);
    expect(c.tickMs).toBe(5000);
    expect(c.backoff).toEqual({ baseMs: 200, capMs: 10_000 });
    expect(c.offlineBudget).toEqual(DEFAULT_AGENT_CONFIG.offlineBudget);
  });

  it('a missing file: defaults when optional, AGENT_CONFIG_UNREADABLE when the path was explicit', () => {
    const path = join(dir, 'nope.json');
    expect(loadAgentConfig(path, { optional: true })).toEqual(DEFAULT_AGENT_CONFIG);
    const err = errorOf(() => loadAgentConfig(path));
    expect(err.code).toBe('AGENT_CONFIG_UNREADABLE');
    expect(err.message).toContain(path);
  });

  it('a path that cannot be read (a directory) is AGENT_CONFIG_UNREADABLE, even when optional', () => {
    const path = join(dir, 'as-dir');
    mkdirSync(path);
    expect(errorOf(() => loadAgentConfig(path, { optional: true })).code).toBe('AGENT_CONFIG_UNREADABLE');
  });

  it('not JSON: AGENT_CONFIG_INVALID naming the file', () => {
    const path = join(dir, 'agent.json');
    writeFileSync(path, '{ v: 1 ');
    const err = errorOf(() => loadAgentConfig(path));
    expect(err.code).toBe('AGENT_CONFIG_INVALID');
    expect(err.message).toBe(`${path} is not JSON`);
  });

  it('a schema failure names the file and the field path', () => {
    const path = join(dir, 'agent.json');
    writeFileSync(path, JSON.stringify({ v: 1, offlineBudget: { graceSec: 'soon' } }));
    const err = errorOf(() => loadAgentConfig(path));
    expect(err.code).toBe('AGENT_CONFIG_INVALID');
    expect(err.message).toBe(`${path}: offlineBudget.graceSec: expected an integer`);
  });
});
