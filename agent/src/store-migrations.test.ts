import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentStore } from './store.js';
import { STORE_MIGRATIONS, STORE_SCHEMA } from './store-migrations.js';

/**
 * The store's versioned migrations on a real LevelDB: a store written before versioning (records laid out
 * as the builds before schema 1 wrote them, written here with `level` directly) is brought to this
 * build's schema in one batch per migration, once; a newer store is refused; a diagnostic open writes
 * nothing. The certificate is made by OpenSSL and its notBefore read back with node:crypto as the oracle.
 */
describe('agent store schema migrations (real LevelDB)', () => {
  let dir: string;
  let path: string;
  let pem: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'store-migrations-'));
    path = join(dir, 'state');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=dev-1', '-days', '30', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
    pem = readFileSync(join(dir, 'cert.pem'), 'utf8');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const blobs = { private: 'cHJpdg==', public: 'cHVi' };
  /** What a build before schema 1 left: no schema record, a slot without notBefore, a pending enrollment without mode. */
  async function writeLegacyStore(): Promise<Record<string, unknown>> {
    const records: Record<string, unknown> = {
      ak: { blobs, name: '000b' + 'ab'.repeat(32) },
      'slot:A': { key: blobs, certificate: pem, chain: [], serial: '01', notAfter: 2_000_000_000_000, issuedAt: 1 },
      active: 'A',
      trustBundle: [pem],
      enrolled: true,
      pending: { kind: 'enroll', slot: 'B', key: blobs, startedAt: 5 },
    };
    const db = new Level<string, unknown>(path, { valueEncoding: 'json' });
    await db.batch(Object.entries(records).map(([key, value]) => ({ type: 'put' as const, key, value })));
    await db.sublevel<string, unknown>('outbox', { valueEncoding: 'json' }).put('0001', { type: 'clock_skew' });
    await db.close();
    return records;
  }
  async function raw(): Promise<Record<string, unknown>> {
    const db = new Level<string, unknown>(path, { valueEncoding: 'json' });
    const out: Record<string, unknown> = {};
    for await (const [k, v] of db.iterator()) out[k] = v;
    await db.close();
    return out;
  }

  it('a new store starts at the current schema with nothing to migrate', async () => {
    const store = new AgentStore(path);
    expect(await store.open()).toEqual({ from: undefined, schema: STORE_SCHEMA, migrated: [] });
    expect(await store.schema()).toBe(STORE_SCHEMA);
    await store.close();
  });

  it('migrates a store from before versioning once: slots get notBefore from their certificate, a pending enrollment its mode; nothing else changes', async () => {
    const legacy = await writeLegacyStore();
    const store = new AgentStore(path);
    const opened = await store.open();
    expect(opened).toEqual({ from: 0, schema: STORE_SCHEMA, migrated: STORE_MIGRATIONS.map((m) => m.what) });
    expect(await store.schema()).toBe(1);
    const slot = await store.getSlot('A');
    expect(slot?.notBefore).toBe(Date.parse(new X509Certificate(pem).validFrom));
    expect(await store.getPending()).toMatchObject({ kind: 'enroll', mode: 'token', slot: 'B', startedAt: 5 });
    await store.close();

    const after = await raw();
    for (const key of ['ak', 'active', 'trustBundle', 'enrolled']) expect(after[key], key).toEqual(legacy[key]);
    expect(after['slot:A']).toEqual({ ...(legacy['slot:A'] as object), notBefore: slot?.notBefore });
    expect(after['!outbox!0001']).toEqual({ type: 'clock_skew' });

    // Opened again: already at the schema, nothing applied.
    const again = new AgentStore(path);
    expect(await again.open()).toEqual({ from: STORE_SCHEMA, schema: STORE_SCHEMA, migrated: [] });
    await again.close();
  });

  it('a diagnostic open (migrate: false) reads an old store as it is and writes nothing', async () => {
    await writeLegacyStore();
    const before = await raw();
    const store = new AgentStore(path);
    expect(await store.open({ migrate: false })).toEqual({ from: 0, schema: 0, migrated: [] });
    expect((await store.getSlot('A'))?.notBefore).toBeUndefined();
    await store.close();
    expect(await raw()).toEqual(before);
  });

  it('refuses a store written by a newer build (AGENT_STORE_TOO_NEW) and releases it', async () => {
    const db = new Level<string, unknown>(path, { valueEncoding: 'json' });
    await db.put('schema', STORE_SCHEMA + 1);
    await db.close();
    const store = new AgentStore(path);
    await expect(store.open()).rejects.toMatchObject({ code: 'AGENT_STORE_TOO_NEW', message: expect.stringContaining(`schema ${STORE_SCHEMA + 1}`) });
    // Not left locked: the newer build (or a look with level) can open it.
    expect(await raw()).toEqual({ schema: STORE_SCHEMA + 1 });
  });

  it('refuses a schema record that is not a version (AGENT_STATE_CORRUPT)', async () => {
    const db = new Level<string, unknown>(path, { valueEncoding: 'json' });
    await db.put('schema', 'one');
    await db.close();
    await expect(new AgentStore(path).open()).rejects.toMatchObject({ code: 'AGENT_STATE_CORRUPT' });
  });

  it('leaves a slot whose certificate it cannot read as it is, for the agent to report', async () => {
    const db = new Level<string, unknown>(path, { valueEncoding: 'json' });
    await db.put('slot:A', { key: blobs, certificate: 'not a certificate', chain: [], serial: '01', notAfter: 1, issuedAt: 1 });
    await db.close();
    const store = new AgentStore(path);
    expect((await store.open()).schema).toBe(STORE_SCHEMA);
    expect((await store.getSlot('A'))?.notBefore).toBeUndefined();
    await store.close();
  });
});
