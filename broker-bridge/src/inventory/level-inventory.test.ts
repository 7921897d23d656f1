import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LevelInventory } from './level-inventory.js';
import type { CompleteEnrollment, DeviceRegistration, TokenRecord } from './inventory.js';

const device = (id: string, ek = 'ek-' + id): DeviceRegistration => ({
  deviceId: id,
  ekPublicHash: ek,
  ekCertificate: 'AAAA',
  ekKind: 'ecc',
  metadata: { model: 'm1' },
  registeredAt: 1000,
});
const token = (id: string, hash = 'tok-' + id, ek = 'ek-' + id): TokenRecord => ({
  tokenHash: hash,
  deviceId: id,
  ekPublicHash: ek,
  createdAt: 1000,
  expiresAt: 5000,
});
const completion = (id: string, requestId: string, serial: string): CompleteEnrollment => ({
  tokenHash: 'tok-' + id,
  requestId,
  deviceId: id,
  akName: '000b' + 'aa'.repeat(32),
  certificate: { serial, deviceId: id, notBefore: 1, notAfter: 2, issuedAt: 1, pem: 'PEM', keySpkiHash: 'k' },
  response: { requestId, deviceId: id, topic: 't', payload: 'cA==', storedAt: 2 },
  audit: [{ at: 2, type: 'enrollment.accepted', deviceId: id }],
  at: 2000,
});

describe('LevelInventory', () => {
  let dir: string;
  let inv: LevelInventory;
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'inv-'));
    inv = new LevelInventory(dir);
    await inv.open();
  });
  afterEach(async () => {
    await inv.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('registers idempotently and refuses the same id with another EK', async () => {
    await inv.registerDevice(device('d1'), token('d1'));
    await inv.registerDevice(device('d1'), token('d1'));
    await expect(inv.registerDevice(device('d1', 'other-ek'))).rejects.toMatchObject({ code: 'INVENTORY_CONFLICT' });
    await expect(inv.registerDevice(device('d2'), token('d1'))).rejects.toMatchObject({ code: 'INVENTORY_CONFLICT' });
    expect(inv.getDevice('d1')?.ekPublicHash).toBe('ek-d1');
    expect(inv.getDevice('d2')).toBeUndefined();
  });

  it('lets a new token supersede the device\'s unused one', async () => {
    await inv.registerDevice(device('d1'), token('d1', 'old'));
    await inv.registerDevice(device('d1'), token('d1', 'new'));
    expect(inv.getToken('old')).toBeUndefined();
    expect(inv.getToken('new')).toBeDefined();
    await inv.close();
    inv = new LevelInventory(dir);
    await inv.open();
    expect(inv.getToken('old')).toBeUndefined();
  });

  it('consumes a token exactly once under concurrent completions', async () => {
    await inv.registerDevice(device('d1'), token('d1'));
    const results = await Promise.allSettled(
      Array.from({ length: 5 }, (_, i) => inv.completeEnrollment(completion('d1', `req-000000${i}`, `0${i}`))),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of results.filter((r) => r.status === 'rejected')) {
      expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'INVENTORY_TOKEN_USED' });
    }
    expect(inv.listCertificates('d1')).toHaveLength(1);
    expect(inv.getToken('tok-d1')?.usedAt).toBe(2000);
  });

  it('keeps everything across close and reopen, with audit in append order', async () => {
    await inv.registerDevice(device('d1'), token('d1'));
    await inv.completeEnrollment(completion('d1', 'req-00000001', 'ab'));
    await inv.close();
    inv = new LevelInventory(dir);
    await inv.open();
    expect(inv.getDevice('d1')).toMatchObject({ certSerial: 'ab', akName: expect.stringMatching(/^000b/) });
    expect(inv.getResponse('req-00000001')?.payload).toBe('cA==');
    await inv.appendAudit([{ at: 3, type: 'later' }]);
    const audit = await inv.listAudit();
    expect(audit.map((a) => a.type)).toEqual(['device.registered', 'enrollment.accepted', 'later']);
    expect(audit.map((a) => a.seq)).toEqual([1, 2, 3]);
  });

  it('refuses use after close with a coded error', async () => {
    await inv.close();
    await expect(inv.appendAudit([])).rejects.toMatchObject({ code: 'INVENTORY_CLOSED' });
  });
});
