import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expectUserError, runProgram } from '../harness/cli.js';

const run = promisify(execFile);

/** The built station program (dist/station.mjs) as a Unix tool: help per command, usage errors, coded lines. */
describe('station command line (the built program)', () => {
  let dir: string;
  const station = (args: string[]) => runProgram('station', args);

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'station-cli-'));
    const selfSigned = (name: string, cn: string) =>
      run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${cn}`, '-days', '1', '-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.pem`)]);
    await Promise.all([selfSigned('cert', 'any root'), selfSigned('station', 'role:station:line9'), selfSigned('device', 'gw-1')]);
    writeFileSync(join(dir, 'm.jsonl'), '{"deviceId":"gw-1","tcti":"swtpm:port=1"}\n');
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const provision = (over: Record<string, string> = {}, extra: string[] = []) => {
    const flags: Record<string, string> = {
      '--manifest': join(dir, 'm.jsonl'),
      '--out': join(dir, 'out'),
      '--roots': join(dir, 'cert.pem'),
      '--enroll-url': 'mqtts://fleet.example:8883',
      '--device-url': 'mqtts://fleet.example:8884',
      '--trust-bundle': join(dir, 'cert.pem'),
      '--export': join(dir, 'reg.jsonl'),
      ...over,
    };
    return ['provision', ...Object.entries(flags).flatMap(([k, v]) => (v === '' ? [] : [k, v])), ...extra];
  };

  it.each(['provision', 'import'])('station %s --help prints that command’s usage and options', async (command) => {
    for (const args of [[command, '--help'], ['help', command], [command, '--file', 'x', '-h']]) {
      const r = await station(args);
      expect(r.code, r.err).toBe(0);
      expect(r.out).toMatch(new RegExp(`^usage: station ${command} `));
      expect(r.out).toContain('--bridge');
      expect(r.err).toBe('');
    }
  });

  it('usage errors exit 2 with one coded line: unknown command, unknown flag, missing flag, two targets', async () => {
    expectUserError(await station(['bogus']), 'station', 'STATION_USAGE');
    expectUserError(await station(['provision', '--bogus', 'x']), 'station', 'STATION_USAGE');
    expectUserError(await station(['import', '--inventory', 'x']), 'station', 'STATION_USAGE');
    expectUserError(await station(provision({ '--inventory': join(dir, 'inv') })), 'station', 'STATION_USAGE');
  });

  it('refuses a bad enroll URL before any token is minted (issue 8, item 5): nothing is written', async () => {
    for (const url of ['notaurl', 'mqtts://fleet.example', 'https://fleet.example:8883', 'mqtts://a:b:1', 'mqtts://fleet.example:70000']) {
      const r = await station(provision({ '--enroll-url': url }));
      expectUserError(r, 'station', 'STATION_USAGE');
      expect(r.err).toContain('--enroll-url: expected mqtts://HOST:PORT');
    }
    expect(existsSync(join(dir, 'out'))).toBe(false);
    expect(existsSync(join(dir, 'reg.jsonl'))).toBe(false);
  });

  it('refuses unreadable certificate files and a certificate that is not a station’s, naming the flag', async () => {
    const r1 = await station(provision({ '--trust-bundle': join(dir, 'm.jsonl') }));
    expectUserError(r1, 'station', 'STATION_USAGE');
    expect(r1.err).toContain('--trust-bundle:');
    const r2 = await station(provision({ '--intermediates': join(dir, 'missing.pem') }));
    expectUserError(r2, 'station', 'STATION_USAGE');
    expect(r2.err).toContain('--intermediates: cannot read');
    const bridge = (name: string) => ({ '--export': '', '--bridge': 'mqtts://127.0.0.1:1', '--cert': join(dir, `${name}.pem`), '--key': join(dir, `${name}.key`), '--ca': join(dir, 'cert.pem') });
    const r3 = await station(provision(bridge('device')));
    expectUserError(r3, 'station', 'STATION_USAGE');
    expect(r3.err).toContain(`--cert: the certificate's CN is "gw-1", not role:station:<id>`);
    expect(existsSync(join(dir, 'out'))).toBe(false);
  });

  it('a bad manifest is bad input (exit 2, one line naming the line); an unreachable bridge is one coded line, exit 1', async () => {
    writeFileSync(join(dir, 'bad.jsonl'), '{"deviceId":"gw 1","tcti":"x"}\n{"deviceId":"gw-2"}\n');
    const bad = await station(provision({ '--manifest': join(dir, 'bad.jsonl') }));
    expectUserError(bad, 'station', 'STATION_MANIFEST_INVALID');
    expect(bad.err).toMatch(/bad\.jsonl:1: .*bad\.jsonl:2: /);

    const r = await station(provision({ '--export': '', '--bridge': 'mqtts://127.0.0.1:1', '--cert': join(dir, 'station.pem'), '--key': join(dir, 'station.key'), '--ca': join(dir, 'cert.pem') }));
    expect(r.code, r.err).toBe(1);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(/^station: STATION_BRIDGE_UNAVAILABLE: cannot connect to the bridge at mqtts:\/\/127\.0\.0\.1:1: TRANSPORT_\w+: /);
    expect(r.err).not.toMatch(/\n\s+at /);
    expect(r.out).toBe('');
    expect(existsSync(join(dir, 'out'))).toBe(false);
  });
});
