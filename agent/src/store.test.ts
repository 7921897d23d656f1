import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentStore, type IdentitySlot, type PendingEnrollment } from './store.js';

const blobs = { private: Buffer.from('private-blob').toString('base64'), public: Buffer.from('public-blob').toString('base64') };
const identity: IdentitySlot = { key: blobs, certificate: 'CERT', chain: ['ISSUER'], serial: 'ab01', notAfter: 2_000_000_000_000, issuedAt: 1 };
const pending: PendingEnrollment = {
  kind: 'enroll',
  slot: 'A',
  key: blobs,
  startedAt: 5,
  ekKind: 'ecc',
  csr: 'Q1NS',
  request: { requestId: 'req-00000001', payload: Buffer.from('{"token":"secret-token"}').toString('base64') },
};

describe('AgentStore (real LevelDB)', () => {
  let dir: string;
  let store: AgentStore;
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agent-store-'));
    store = new AgentStore(join(dir, 'state'));
    await store.open();
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function reopen(): Promise<void> {
    await store.close();
    store = new AgentStore(join(dir, 'state'));
    await store.open();
  }

  it('says plainly that another process holds the store (AGENT_STORE_LOCKED)', async () => {
    const second = new AgentStore(join(dir, 'state'));
    await expect(second.open()).rejects.toMatchObject({ code: 'AGENT_STORE_LOCKED', message: expect.stringContaining('in use by another process') });
  });

  it('starts empty, with slot A free', async () => {
    expect(await store.active()).toBeUndefined();
    expect(await store.getPending()).toBeUndefined();
    expect(await store.getAk()).toBeUndefined();
    expect(await store.freeSlot()).toBe('A');
  });

  it('keeps the AK and a pending enrollment across a reopen', async () => {
    await store.putAk({ blobs, name: '000b' + 'ff'.repeat(32) });
    await store.putPending(pending);
    await reopen();
    expect(await store.getAk()).toEqual({ blobs, name: '000b' + 'ff'.repeat(32) });
    expect(await store.getPending()).toEqual(pending);
  });

  it('completes an enrollment in one batch: slot, active pointer, trust bundle, pending (and its token) gone', async () => {
    await store.putPending(pending);
    await store.completeEnrollment('A', identity, ['ROOT']);
    await reopen();
    expect(await store.active()).toEqual({ name: 'A', slot: identity });
    expect(await store.getTrustBundle()).toEqual(['ROOT']);
    expect(await store.getPending()).toBeUndefined();
    expect(await store.freeSlot()).toBe('B'); // rotation never overwrites the slot in use
  });

  it('writes nothing when the batch fails', async () => {
    await store.putPending(pending);
    const unserializable = { ...identity, notAfter: 1n } as unknown as IdentitySlot;
    await expect(store.completeEnrollment('A', unserializable, ['ROOT'])).rejects.toThrow();
    await reopen();
    expect(await store.active()).toBeUndefined();
    expect(await store.getTrustBundle()).toBeUndefined();
    expect(await store.getPending()).toEqual(pending);
  });

  it('refuses use while closed and malformed records', async () => {
    await store.close();
    await expect(store.getAk()).rejects.toMatchObject({ code: 'AGENT_STORE_CLOSED' });
    await store.open();
    await store.putPending({ ...pending, slot: 'C' } as unknown as PendingEnrollment);
    await expect(store.getPending()).rejects.toMatchObject({ code: 'AGENT_STATE_CORRUPT' });
  });
});
