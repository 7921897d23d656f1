import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { runProgram } from '../harness/cli.js';

const run = promisify(execFile);

/** The shipped agent bundle as a user runs it: version, usage errors and bad configuration. */
describe('agent CLI (dist/agent.mjs)', () => {
  let dir: string;
  const bootstrap = () => ({
    v: 1,
    deviceId: 'cli-dev',
    tcti: 'swtpm:host=127.0.0.1,port=1',
    enrollUrl: 'mqtts://127.0.0.1:1',
    deviceUrl: 'mqtts://127.0.0.1:2',
    trustBundle: ['-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----'],
    token: 'abcdefghijklmnopqrstuvwxyz012345',
    tokenExpiresAt: Date.now() + 3_600_000,
  });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agent-cli-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const agent = (args: string[]) => runProgram('agent', args);

  it('--version prints the version stamped at build time (package version + commit)', async () => {
    const r = await agent(['--version']);
    expect(r.code).toBe(0);
    expect(r.out.trim()).toMatch(/^0\.1\.0\+([0-9a-f]{12}|unknown)$/);
  });

  it('--help (and verify --help) prints the subcommands, options and exit codes on stdout, exit 0', async () => {
    for (const args of [['--help'], ['-h'], ['verify', '--help']]) {
      const r = await agent(args);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.out).toContain('usage: agent [run] --bootstrap FILE --data DIR');
      expect(r.out).toMatch(/verify CERT\.pem/);
      expect(r.out).toMatch(/Exit codes:/);
      expect(r.err).toBe('');
    }
  });

  it('usage errors exit 2 with one line, no stack trace', async () => {
    const r = await agent(['--bogus']);
    expect(r.code).toBe(2);
    expect(r.err).toContain('usage: agent [run] --bootstrap FILE --data DIR');
    expect(r.err).not.toMatch(/\n\s+at /);
    expect((await agent([])).code).toBe(2);
  });

  it('an inconsistent offline budget is refused at start with the constraint and its numbers', async () => {
    const boot = join(dir, 'boot.json');
    writeFileSync(boot, JSON.stringify(bootstrap()), { mode: 0o600 });
    const cfg = join(dir, 'agent.json');
    writeFileSync(cfg, JSON.stringify({ v: 1, offlineBudget: { renewAtFraction: 0.95, jitterFraction: 0.1 } }));
    const r = await agent(['--bootstrap', boot, '--data', join(dir, 'data'), '--config', cfg]);
    expect(r.code).toBe(1);
    const line = JSON.parse(r.err.trim().split('\n').at(-1)!) as { code: string; msg: string };
    expect(line.code).toBe('AGENT_CONFIG_INVALID');
    expect(line.msg).toMatch(/renewAtFraction/);
    expect(line.msg).toMatch(/0\.95/);
  });

  it('an explicit config that does not exist, and a bootstrap readable by others, are refused with their codes', async () => {
    const boot = join(dir, 'boot-open.json');
    writeFileSync(boot, JSON.stringify(bootstrap()), { mode: 0o644 });
    const missing = await agent(['--bootstrap', boot, '--data', join(dir, 'data'), '--config', join(dir, 'nope.json')]);
    expect(missing.code).toBe(1);
    expect(JSON.parse(missing.err.trim().split('\n').at(-1)!)).toMatchObject({ code: 'AGENT_CONFIG_UNREADABLE' });
    const open = await agent(['--bootstrap', boot, '--data', join(dir, 'data')]);
    expect(open.code).toBe(1);
    expect(JSON.parse(open.err.trim().split('\n').at(-1)!)).toMatchObject({ code: 'AGENT_CONFIG_PERMISSIONS' });
  });

  it('exits 1 (for a service manager to restart it) when the TPM cannot be opened', async () => {
    const boot = join(dir, 'boot-notpm.json');
    // A real trust bundle certificate (made here with openssl), so the agent gets as far as opening the
    // TPM, where nothing listens on port 1.
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'ca-key.pem'), '-out', join(dir, 'ca.pem'), '-subj', '/CN=any', '-days', '1']);
    const pem = readFileSync(join(dir, 'ca.pem'), 'utf8');
    writeFileSync(boot, JSON.stringify({ ...bootstrap(), trustBundle: [pem] }), { mode: 0o600 });
    const r = await agent(['--bootstrap', boot, '--data', join(dir, 'data-notpm')]);
    expect(r.code).toBe(1);
    const lines = r.err.trim().split('\n').map((l) => JSON.parse(l) as { msg: string; code?: string });
    expect(lines.filter((l) => l.msg === 'cannot start')).toHaveLength(1);
  });
});
