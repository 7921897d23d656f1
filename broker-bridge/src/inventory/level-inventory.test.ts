import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LevelInventory } from './level-inventory.js';
import {
  DEVICE_EVENT_HISTORY,
  RESPONSES_PER_DEVICE,
  type CertificateRecord,
  type CompleteEnrollment,
  type CompleteReattestation,
  type CompleteRotation,
  type DeviceEventRecordInput,
  type DeviceRegistration,
  type TokenRecord,
} from './inventory.js';

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

/** JSON with sorted object keys: equal content, equal string, whatever the insertion order. */
const canonical = (v: unknown): string =>
  JSON.stringify(v, (_k, x: unknown) =>
    x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => a.localeCompare(b))) : x,
  );

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

  it('says plainly that another process holds the database when it is open elsewhere (INVENTORY_LOCKED)', async () => {
    const second = new LevelInventory(dir);
    const err = await second.open().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'INVENTORY_LOCKED' });
    expect((err as Error).message).toContain('in use by another process');
    // The holder is unaffected.
    await inv.registerDevice(device('gw-lock'));
    expect(inv.getDevice('gw-lock')).toBeDefined();
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
    expect(inv.getResponse('d1', 'req-00000001')?.payload).toBe('cA==');
    expect(inv.getResponse('d2', 'req-00000001')).toBeUndefined();
    await inv.appendAudit([{ at: 3, type: 'later' }]);
    const audit = await inv.listAudit();
    expect(audit.map((a) => a.type)).toEqual(['device.registered', 'enrollment.accepted', 'later']);
    expect(audit.map((a) => a.seq)).toEqual([1, 2, 3]);
  });

  it('refuses use after close with a coded error', async () => {
    await inv.close();
    await expect(inv.appendAudit([])).rejects.toMatchObject({ code: 'INVENTORY_CLOSED' });
  });

  describe('rotation, re-attestation, revocation, status and events', () => {
    const cert = (id: string, serial: string, extra?: Partial<CertificateRecord>): CertificateRecord => ({
      serial,
      deviceId: id,
      notBefore: 1,
      notAfter: 9_000_000,
      issuedAt: 1,
      pem: 'PEM-' + serial,
      keySpkiHash: 'k-' + serial,
      ...extra,
    });
    const rotation = (id: string, requestId: string, serial: string, previousSerial: string, at = 3000): CompleteRotation => ({
      deviceId: id,
      requestId,
      previousSerial,
      certificate: cert(id, serial),
      response: { requestId, deviceId: id, topic: 'rot', payload: Buffer.from(serial).toString('base64'), storedAt: at },
      audit: [{ at, type: 'rotation.issued', deviceId: id, details: { serial } }],
      at,
    });
    const reattest = (id: string, requestId: string, serial: string, at = 4000): CompleteReattestation => ({
      deviceId: id,
      requestId,
      certificate: cert(id, serial),
      response: { requestId, deviceId: id, topic: 're', payload: 'cmU=', storedAt: at },
      audit: [{ at, type: 'device.reattested', deviceId: id }],
      at,
    });
    const event = (n: number, type: DeviceEventRecordInput['type'] = 'clock_skew'): DeviceEventRecordInput => ({
      id: `evt-${String(n).padStart(6, '0')}`,
      type,
      at: 100 + n,
      seq: n,
      details: { n },
    });
    /** Everything the inventory holds, for before/after comparisons. */
    const digest = async (ids = ['d1', 'd2']) =>
      canonical({
        devices: inv.listDevices().sort((x, y) => x.deviceId.localeCompare(y.deviceId)),
        certs: inv.listCertificates().sort((x, y) => x.serial.localeCompare(y.serial)),
        audit: await inv.listAudit(),
        events: await Promise.all(ids.map((id) => inv.listDeviceEvents(id))),
      });
    const enrolled = async (id: string, serial = 'e0' + id.slice(1)) => {
      await inv.registerDevice(device(id), token(id));
      await inv.completeEnrollment(completion(id, `enr-req-${id}`, serial));
      return serial;
    };
    const active = (id: string) =>
      inv
        .listCertificates(id)
        .filter((c) => c.supersededAt === undefined && c.revokedAt === undefined)
        .map((c) => c.serial)
        .sort();
    const reopen = async () => {
      await inv.close();
      inv = new LevelInventory(dir);
      await inv.open();
    };

    it('records a rotation atomically: certificate, device, response and audit together', async () => {
      const e = await enrolled('d1');
      await inv.completeRotation(rotation('d1', 'rot-req-1', 'a1', e));
      expect(inv.getCertificate('a1')).toMatchObject({ kind: 'rotate', deviceId: 'd1' });
      expect(inv.getCertificate(e)).toMatchObject({ kind: 'enroll' });
      expect(inv.getDevice('d1')).toMatchObject({ certSerial: 'a1', certNotAfter: 9_000_000, lastRotationAt: 3000 });
      expect(inv.getResponse('d1', 'rot-req-1')?.payload).toBe(Buffer.from('a1').toString('base64'));
      // Until the device confirms, both the in-use and the new certificate are active.
      expect(active('d1')).toEqual(['a1', e].sort());
      expect((await inv.listAudit({ type: 'rotation.issued' })).map((a) => a.details?.serial)).toEqual(['a1']);
    });

    it('confirmRotation supersedes every other active certificate, once', async () => {
      const e = await enrolled('d1');
      await inv.completeRotation(rotation('d1', 'rot-req-1', 'a1', e));
      expect(await inv.confirmRotation('d1', 'a1', 5000)).toEqual([e]);
      expect(inv.getCertificate(e)?.supersededAt).toBe(5000);
      expect(inv.getCertificate('a1')?.confirmedAt).toBe(5000);
      expect(active('d1')).toEqual(['a1']);
      const before = await digest();
      expect(await inv.confirmRotation('d1', 'a1', 6000)).toEqual([]);
      expect(await digest()).toBe(before);
      expect((await inv.listAudit({ type: 'rotation.confirmed' })).map((a) => a.details)).toEqual([{ serial: 'a1', superseded: e }]);
    });

    it('confirmRotation refuses a serial that is not the device\'s, a superseded one and a revoked device', async () => {
      const e1 = await enrolled('d1');
      const e2 = await enrolled('d2');
      await expect(inv.confirmRotation('d1', e2, 1)).rejects.toMatchObject({ code: 'INVENTORY_NOT_FOUND' });
      await expect(inv.confirmRotation('d1', 'ffff', 1)).rejects.toMatchObject({ code: 'INVENTORY_NOT_FOUND' });
      await inv.completeRotation(rotation('d1', 'rot-req-1', 'a1', e1));
      await inv.confirmRotation('d1', 'a1', 5000);
      await expect(inv.confirmRotation('d1', e1, 6000)).rejects.toMatchObject({ code: 'INVENTORY_CONFLICT' });
      await inv.revokeDevice('d2', 'stolen', 7000);
      const before = await digest();
      await expect(inv.confirmRotation('d2', e2, 8000)).rejects.toMatchObject({ code: 'INVENTORY_REVOKED' });
      expect(await digest()).toBe(before);
    });

    it('a new rotation abandons earlier unconfirmed rotation certificates, never the one it began from', async () => {
      const e = await enrolled('d1');
      await inv.completeRotation(rotation('d1', 'rot-req-1', 'a1', e, 3000));
      // The device rolled back to e and rotates again: a1 was never confirmed.
      await inv.completeRotation(rotation('d1', 'rot-req-2', 'a2', e, 3100));
      expect(inv.getCertificate('a1')?.supersededAt).toBe(3100);
      expect(active('d1')).toEqual(['a2', e].sort());
      // Began from a2 without confirming it (the device uses it but its confirm was lost): a2 stays.
      await inv.completeRotation(rotation('d1', 'rot-req-3', 'a3', 'a2', 3200));
      expect(active('d1')).toEqual(['a2', 'a3', e].sort());
      expect((await inv.confirmRotation('d1', 'a3', 3300)).sort()).toEqual(['a2', e].sort());
      expect(active('d1')).toEqual(['a3']);
      // A confirmed rotation certificate is never abandoned by the next rotation.
      await inv.completeRotation(rotation('d1', 'rot-req-4', 'a4', 'a3', 3400));
      expect(active('d1')).toEqual(['a3', 'a4']);
      expect((await inv.listAudit({ type: 'certificate.superseded' })).map((a) => a.details)).toEqual([
        { serial: 'a1', reason: 'abandoned' },
        { serial: e, reason: 'confirmed-newer' },
        { serial: 'a2', reason: 'confirmed-newer' },
      ]);
    });

    it('refuses rotation and re-attestation for an unknown or revoked device and a reused serial, writing nothing', async () => {
      const e = await enrolled('d1');
      await enrolled('d2');
      await inv.revokeDevice('d2', 'stolen', 2500);
      const before = await digest();
      await expect(inv.completeRotation(rotation('nope', 'r-00000001', 'b1', 'x'))).rejects.toMatchObject({ code: 'INVENTORY_NOT_FOUND' });
      await expect(inv.completeRotation(rotation('d2', 'r-00000002', 'b2', 'e02'))).rejects.toMatchObject({ code: 'INVENTORY_REVOKED' });
      await expect(inv.completeReattestation(reattest('nope', 'r-00000003', 'b3'))).rejects.toMatchObject({ code: 'INVENTORY_NOT_FOUND' });
      await expect(inv.completeReattestation(reattest('d2', 'r-00000004', 'b4'))).rejects.toMatchObject({ code: 'INVENTORY_REVOKED' });
      await expect(inv.completeRotation(rotation('d1', 'r-00000005', e, e))).rejects.toMatchObject({ code: 'INVENTORY_CONFLICT' });
      await expect(inv.completeRotation({ ...rotation('d1', 'r-00000006', 'b6', e), certificate: cert('d2', 'b6') })).rejects.toMatchObject({
        code: 'INVENTORY_CONFLICT',
      });
      expect(await digest()).toBe(before);
      for (const r of ['r-00000001', 'r-00000002', 'r-00000005', 'r-00000006']) expect(inv.getResponse('d1', r)).toBeUndefined();
    });

    it('re-attestation records a reattest certificate and retires every other active one', async () => {
      const e = await enrolled('d1');
      await inv.completeRotation(rotation('d1', 'rot-req-1', 'a1', e));
      await inv.completeReattestation(reattest('d1', 're-req-1', 'c1', 4000));
      expect(inv.getCertificate('c1')).toMatchObject({ kind: 'reattest' });
      expect(inv.getDevice('d1')).toMatchObject({ certSerial: 'c1', reattestedAt: 4000 });
      expect(active('d1')).toEqual(['c1']);
      expect(inv.getResponse('d1', 're-req-1')?.payload).toBe('cmU=');
      expect((await inv.listAudit({ type: 'device.reattested' })).length).toBe(1);
    });

    it('revokes a device and all its certificates with a reason, idempotently', async () => {
      const e = await enrolled('d1');
      await inv.completeRotation(rotation('d1', 'rot-req-1', 'a1', e));
      await inv.confirmRotation('d1', 'a1', 5000);
      expect((await inv.revokeDevice('d1', 'key compromise', 6000)).sort()).toEqual(['a1', e].sort());
      expect(inv.getDevice('d1')).toMatchObject({ revokedAt: 6000, revocationReason: 'key compromise', online: false });
      for (const c of inv.listCertificates('d1')) expect(c).toMatchObject({ revokedAt: 6000, revocationReason: 'key compromise' });
      const before = await digest();
      expect(await inv.revokeDevice('d1', 'again', 7000)).toEqual([]);
      expect(await digest()).toBe(before);
      await expect(inv.revokeDevice('nope', 'x', 1)).rejects.toMatchObject({ code: 'INVENTORY_NOT_FOUND' });
      expect((await inv.listAudit({ type: 'device.revoked' })).length).toBe(1);
    });

    it('keys cached responses by (device, requestId) and keeps the newest per device', async () => {
      await inv.putResponse({ requestId: 'same-req-1', deviceId: 'x', topic: 't', payload: 'eA==', storedAt: 1 });
      await inv.putResponse({ requestId: 'same-req-1', deviceId: 'y', topic: 't', payload: 'eQ==', storedAt: 2 });
      expect(inv.getResponse('x', 'same-req-1')?.payload).toBe('eA==');
      expect(inv.getResponse('y', 'same-req-1')?.payload).toBe('eQ==');
      for (let i = 0; i < RESPONSES_PER_DEVICE + 3; i++) {
        await inv.putResponse({ requestId: `req-${String(i).padStart(5, '0')}`, deviceId: 'x', topic: 't', payload: 'AA==', storedAt: 10 + i });
      }
      // The oldest four of x's (same-req-1 and req-0..2) are gone; y's is untouched.
      expect(inv.getResponse('x', 'same-req-1')).toBeUndefined();
      expect(inv.getResponse('x', 'req-00002')).toBeUndefined();
      expect(inv.getResponse('x', 'req-00003')).toBeDefined();
      expect(inv.getResponse('y', 'same-req-1')).toBeDefined();
      await reopen();
      expect(inv.getResponse('x', 'req-00002')).toBeUndefined();
      expect(inv.getResponse('x', `req-${String(RESPONSES_PER_DEVICE + 2).padStart(5, '0')}`)).toBeDefined();
      expect(inv.getResponse('y', 'same-req-1')?.payload).toBe('eQ==');
      // Pruning continues from the reloaded order.
      await inv.putResponse({ requestId: 'req-late', deviceId: 'x', topic: 't', payload: 'AA==', storedAt: 999 });
      expect(inv.getResponse('x', 'req-00003')).toBeUndefined();
    });

    it('records status cheaply: last seen on online and on going offline, not on a redelivered offline status', async () => {
      await enrolled('d1');
      const online = { state: 'online', online: true, certSerial: 'ab', slot: 'A' as const };
      const offline = { state: 'offline', online: false };
      await inv.recordStatus('d1', online, 1000);
      expect(inv.getDevice('d1')).toMatchObject({ online: true, lastSeenAt: 1000, status: online, certSerial: 'e01' });
      await inv.recordStatus('d1', offline, 2000);
      expect(inv.getDevice('d1')).toMatchObject({ online: false, lastSeenAt: 2000, status: offline });
      await inv.recordStatus('d1', offline, 3000);
      expect(inv.getDevice('d1')?.lastSeenAt).toBe(2000);
      await expect(inv.recordStatus('nope', online, 1)).rejects.toMatchObject({ code: 'INVENTORY_NOT_FOUND' });
      await inv.revokeDevice('d1', 'r', 4000);
      await inv.recordStatus('d1', { state: 'revoked', online: true, errorCode: 'DEVICE_REVOKED' }, 5000);
      // Its last words are kept, but a revoked device is never online again (the broker refuses it).
      expect(inv.getDevice('d1')).toMatchObject({ lastSeenAt: 5000, online: false, status: { state: 'revoked', online: true } });
    });

    it('records events once per id, in arrival order, with audit for security events', async () => {
      await enrolled('d1');
      await enrolled('d2');
      const first = await inv.recordEvents('d1', [event(1, 'rotated'), event(2), event(2)], 7000);
      expect(first.map((e) => e.id)).toEqual(['evt-000001', 'evt-000002']);
      expect(first[0]).toMatchObject({ deviceId: 'd1', receivedAt: 7000, type: 'rotated', seq: 1 });
      // Redelivery of the same ids (another device may use the same ids freely).
      expect(await inv.recordEvents('d1', [event(2), event(1, 'rotated')], 8000)).toEqual([]);
      expect((await inv.recordEvents('d2', [event(1)], 8000)).length).toBe(1);
      expect((await inv.recordEvents('d1', [event(3, 'rotation_failed')], 9000)).length).toBe(1);
      expect((await inv.listDeviceEvents('d1')).map((e) => e.id)).toEqual(['evt-000001', 'evt-000002', 'evt-000003']);
      expect((await inv.listDeviceEvents('d2')).map((e) => e.id)).toEqual(['evt-000001']);
      expect(inv.getDevice('d1')?.lastSeenAt).toBe(9000);
      const audit = await inv.listAudit({ deviceId: 'd1' });
      expect(audit.filter((a) => a.type.startsWith('event.')).map((a) => [a.type, a.details?.eventId])).toEqual([
        ['event.rotated', 'evt-000001'],
        ['event.rotation_failed', 'evt-000003'],
      ]);
      await expect(inv.recordEvents('nope', [event(1)], 1)).rejects.toMatchObject({ code: 'INVENTORY_NOT_FOUND' });
      await reopen();
      expect(await inv.recordEvents('d1', [event(3, 'rotation_failed'), event(4)], 10_000)).toHaveLength(1);
      expect((await inv.listDeviceEvents('d1')).map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    });

    it('keeps the newest DEVICE_EVENT_HISTORY events per device, pruning the oldest in the same write', async () => {
      await enrolled('d1');
      const batch = (from: number, n: number) => Array.from({ length: n }, (_, i) => event(from + i));
      await inv.recordEvents('d1', batch(1, DEVICE_EVENT_HISTORY - 10), 1);
      await inv.recordEvents('d1', batch(DEVICE_EVENT_HISTORY - 9, 25), 2);
      let history = await inv.listDeviceEvents('d1');
      expect(history).toHaveLength(DEVICE_EVENT_HISTORY);
      expect(history[0]!.seq).toBe(16);
      expect(history.at(-1)!.seq).toBe(DEVICE_EVENT_HISTORY + 15);
      await reopen();
      // Ids still in the window are duplicates; a pruned id is outside the dedupe window.
      expect(await inv.recordEvents('d1', [event(16)], 3)).toEqual([]);
      expect(await inv.recordEvents('d1', [event(1)], 3)).toHaveLength(1);
      history = await inv.listDeviceEvents('d1');
      expect(history).toHaveLength(DEVICE_EVENT_HISTORY);
      expect(history[0]!.seq).toBe(17);
      expect(history.at(-1)).toMatchObject({ seq: 1, receivedAt: 3 });
    });

    it('keeps rotation, confirmation, re-attestation, revocation, status and events across close and reopen', async () => {
      const e = await enrolled('d1');
      await enrolled('d2');
      await inv.completeRotation(rotation('d1', 'rot-req-1', 'a1', e));
      await inv.confirmRotation('d1', 'a1', 5000);
      await inv.completeReattestation(reattest('d1', 're-req-1', 'c1'));
      await inv.recordStatus('d1', { state: 'online', online: true }, 6000);
      await inv.recordEvents('d1', [event(1, 'reattested')], 6100);
      await inv.revokeDevice('d2', 'lost', 7000);
      const before = await digest();
      await reopen();
      expect(await digest()).toBe(before);
      expect(inv.getResponse('d1', 'rot-req-1')).toBeDefined();
      expect(inv.getResponse('d1', 're-req-1')).toBeDefined();
      await expect(inv.completeRotation(rotation('d2', 'r-00000009', 'b9', 'e02'))).rejects.toMatchObject({ code: 'INVENTORY_REVOKED' });
      // The audit sequence continues after reopening.
      await inv.appendAudit([{ at: 1, type: 'later' }]);
      const audit = await inv.listAudit();
      expect(audit.at(-1)).toMatchObject({ type: 'later', seq: audit.length });
    });

    it('serializes concurrent writers: concurrent rotations and a revocation never interleave', async () => {
      const e = await enrolled('d1');
      const results = await Promise.allSettled([
        inv.completeRotation(rotation('d1', 'rot-req-1', 'a1', e, 3000)),
        inv.revokeDevice('d1', 'stolen', 3050),
        inv.completeRotation(rotation('d1', 'rot-req-2', 'a2', e, 3100)),
      ]);
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected']);
      expect(inv.getCertificate('a2')).toBeUndefined();
      for (const c of inv.listCertificates('d1')) expect(c.revokedAt).toBe(3050);
    });
  });
});
