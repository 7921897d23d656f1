import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkTrustBundle, loadBootstrap, parseBootstrap } from './config.js';

const valid = {
  v: 1,
  deviceId: 'dev-1',
  tcti: 'swtpm:host=127.0.0.1,port=2321',
  enrollUrl: 'mqtts://broker.example:8883',
  deviceUrl: 'mqtts://broker.example:8884',
  trustBundle: ['-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'],
  token: 'tok_abcdefghijklmnopqrstuvwxyz012345',
  tokenExpiresAt: 1_800_000_000_000,
};

describe('bootstrap config', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'agent-config-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const write = (content: unknown, mode: number) => {
    const path = join(dir, 'bootstrap.json');
    writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
    chmodSync(path, mode);
    return path;
  };

  it('loads a 0600 file and defaults the base topic', () => {
    expect(loadBootstrap(write(valid, 0o600))).toEqual({ ...valid, baseTopic: 'fleet/v1' });
  });

  it('takes the EK kind the station registered, and works without it (older files)', () => {
    expect(parseBootstrap({ ...valid, ekKind: 'rsa' }).ekKind).toBe('rsa');
    expect(parseBootstrap(valid).ekKind).toBeUndefined();
  });

  it('refuses a file that group or others can read (it holds the token)', () => {
    for (const mode of [0o640, 0o604, 0o660]) {
      expect(() => loadBootstrap(write(valid, mode))).toThrow(expect.objectContaining({ code: 'AGENT_CONFIG_PERMISSIONS' }));
    }
  });

  it('refuses invalid documents with AGENT_CONFIG_INVALID and never echoes the token', () => {
    const cases: unknown[] = [
      { ...valid, v: 2 },
      { ...valid, extra: true },
      { ...valid, deviceId: 'a/+' },
      { ...valid, enrollUrl: 'mqtt://plain:1883' },
      { ...valid, trustBundle: [] },
      { ...valid, token: 'short' },
      { ...valid, ekKind: 'dsa' },
    ];
    for (const c of cases) {
      try {
        parseBootstrap(c);
        expect.unreachable();
      } catch (e) {
        expect((e as { code: string }).code).toBe('AGENT_CONFIG_INVALID');
        expect((e as Error).message).not.toContain(valid.token);
      }
    }
    expect(() => loadBootstrap(write('{"v":1,', 0o600))).toThrow(expect.objectContaining({ code: 'AGENT_CONFIG_INVALID' }));
    expect(() => loadBootstrap(join(dir, 'missing.json'))).toThrow(expect.objectContaining({ code: 'AGENT_CONFIG_UNREADABLE' }));
    expect(() => checkTrustBundle(parseBootstrap(valid))).toThrow(expect.objectContaining({ code: 'AGENT_CONFIG_INVALID' }));
  });
});
