import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ISSUED_REGISTRY_FILE, normalizeSerial, readIssuedRegistry, recordIssued, type IssuedCertificate } from './issued-registry.js';

const entry = (serial: string, commonName = 'role:operator:alice'): IssuedCertificate => ({
  serial,
  commonName,
  kind: 'role',
  notBefore: 1_000,
  notAfter: 2_000,
  issuedAt: 1_500,
});

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

describe('issued-certificate registry', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'issued-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('is empty without a file; records entries and finds them by any spelling of the serial and by CN', async () => {
    expect((await readIssuedRegistry(dir)).list()).toEqual([]);
    await recordIssued(dir, entry('00ABcd01'));
    await recordIssued(dir, { ...entry('77', 'broker.example'), kind: 'server', sans: ['dns:broker.example', 'ip:10.0.0.1'] });
    await recordIssued(dir, entry('78'));
    const reg = await readIssuedRegistry(dir);
    expect(reg.bySerial('abcd01')).toEqual(entry('abcd01'));
    expect(reg.bySerial('0000ABCD01')?.commonName).toBe('role:operator:alice');
    expect(reg.bySerial('99')).toBeUndefined();
    expect(reg.byCommonName('role:operator:alice').map((e) => e.serial)).toEqual(['abcd01', '78']);
    expect(reg.bySerial('77')?.sans).toEqual(['dns:broker.example', 'ip:10.0.0.1']);
    expect(normalizeSerial('000')).toBe('0');
    // Re-recording a serial replaces its entry; no temp or lock files are left behind.
    await recordIssued(dir, entry('78', 'role:bridge'));
    expect((await readIssuedRegistry(dir)).list().map((e) => [e.serial, e.commonName])).toEqual([
      ['abcd01', 'role:operator:alice'],
      ['77', 'broker.example'],
      ['78', 'role:bridge'],
    ]);
    expect(readdirSync(dir)).toEqual([ISSUED_REGISTRY_FILE]);
  });

  it('keeps every entry when many writers record at once', async () => {
    await Promise.all(Array.from({ length: 25 }, (_, i) => recordIssued(dir, entry((i + 1).toString(16)))));
    expect((await readIssuedRegistry(dir)).list()).toHaveLength(25);
  });

  it('refuses a malformed entry before writing anything, and a file that is not a registry', async () => {
    expect(await codeOf(recordIssued(dir, entry('xyz')))).toBe('ISSUED_REGISTRY_BAD_ENTRY');
    expect(await codeOf(recordIssued(dir, { ...entry('1'), commonName: '' }))).toBe('ISSUED_REGISTRY_BAD_ENTRY');
    expect(readdirSync(dir)).toEqual([]);
    writeFileSync(join(dir, ISSUED_REGISTRY_FILE), '{"v":1,"certificates":[{"serial":"zz"}]}');
    expect(await codeOf(readIssuedRegistry(dir))).toBe('ISSUED_REGISTRY_INVALID');
    expect(await codeOf(recordIssued(dir, entry('1')))).toBe('ISSUED_REGISTRY_INVALID');
    writeFileSync(join(dir, ISSUED_REGISTRY_FILE), 'not json');
    expect(await codeOf(readIssuedRegistry(dir))).toBe('ISSUED_REGISTRY_INVALID');
    expect(readdirSync(dir)).toEqual([ISSUED_REGISTRY_FILE]);
  });

  it('waits for a live lock holder and then fails ISSUED_REGISTRY_LOCKED; takes over a dead one\'s lock', async () => {
    writeFileSync(join(dir, '.issued.json.lock'), String(process.pid));
    expect(await codeOf(recordIssued(dir, entry('1'), { lockTimeoutMs: 100 }))).toBe('ISSUED_REGISTRY_LOCKED');
    // A pid that existed and is gone (a writer killed mid-write).
    const dead = Number(execFileSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).toString());
    writeFileSync(join(dir, '.issued.json.lock'), String(dead));
    await recordIssued(dir, entry('1'), { lockTimeoutMs: 100 });
    expect((await readIssuedRegistry(dir)).bySerial('1')).toBeDefined();
    expect(readdirSync(dir)).toEqual([ISSUED_REGISTRY_FILE]);
    expect(JSON.parse(readFileSync(join(dir, ISSUED_REGISTRY_FILE), 'utf8'))).toMatchObject({ v: 1 });
  });
});
