import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../common/clock.js';
import { CodedError } from '../../../common/coded-error.js';
import { hashEnrollmentToken } from '../../../common/enrollment-token.js';
import { decode } from '../../../common/protocol/messages.js';
import {
  OPERATOR_PAGE_MAX,
  OPERATOR_REPLY_BUDGET_BYTES,
  decodeOperatorReply,
  operatorTopics,
  type OperatorCommand,
  type OperatorReplyOf,
} from '../../../common/protocol/operator.js';
import { Topics } from '../../../common/protocol/topics.js';
import { LevelInventory } from '../inventory/level-inventory.js';
import { recordEnrolledDevice } from '../inventory/test-records.js';
import { OperatorHandler } from './operator-handler.js';

const DAY = 86_400_000;

/** OperatorHandler against a real LevelInventory (devices recorded without a TPM), a manual clock and a recording publish. */
describe('OperatorHandler', () => {
  const topics = new Topics('fleet/v1');
  let dir: string;
  let inv: LevelInventory;
  let clock: ManualClock;
  let published: { topic: string; payload: Buffer; retain: boolean }[];
  let publishFails: boolean;
  let errors: string[];
  let handler: OperatorHandler;
  let seq = 0;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'op-queries-'));
    clock = new ManualClock(Date.UTC(2026, 5, 1));
    inv = new LevelInventory(join(dir, 'inventory'));
    await inv.open();
    published = [];
    publishFails = false;
    errors = [];
    handler = new OperatorHandler({
      topics,
      inventory: inv,
      clock,
      publish: async (topic, payload, opts) => {
        if (publishFails) throw new CodedError('BRIDGE_STOPPED', 'the bridge is not running');
        published.push({ topic, payload, retain: opts.retain });
      },
      logger: { info: () => undefined, warn: () => undefined, error: (_o, m) => void errors.push(m) },
    });
  });

  afterEach(async () => {
    await inv.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  async function send<C extends OperatorCommand>(command: C, body: object, operator = 'alice'): Promise<{ raw: Buffer; reply: OperatorReplyOf<C> }> {
    const t = operatorTopics(topics, operator, command);
    const r = await handler.handle(t.command, Buffer.from(JSON.stringify({ v: 1, requestId: `r${seq++}`, ...body })), { retain: false });
    expect(r?.topic).toBe(t.reply);
    return { raw: r!.payload, reply: decodeOperatorReply(command, r!.payload) };
  }
  const ok = <T>(r: { reply: T }) => r.reply as Extract<T, { ok: true }>;

  /** gw-1 (plant-7, gw), gw-2 (plant-7, sensor), gw-3 (plant-9, gw, revoked), new-1 registered only. */
  async function seed(): Promise<void> {
    const now = clock.now();
    await recordEnrolledDevice(inv, { deviceId: 'gw-1', serial: '4a01', at: now - 20 * DAY, notAfter: now + 5 * DAY });
    await recordEnrolledDevice(inv, { deviceId: 'gw-2', serial: '4a02', at: now - 20 * DAY, notAfter: now + 25 * DAY });
    await recordEnrolledDevice(inv, { deviceId: 'gw-3', serial: '4a03', at: now - 20 * DAY, notAfter: now + 1 * DAY });
    await recordEnrolledDevice(inv, { deviceId: 'new-1', at: now });
    for (const [id, owner, model] of [['gw-1', 'plant-7', 'gw'], ['gw-2', 'plant-7', 'sensor'], ['gw-3', 'plant-9', 'gw'], ['new-1', 'plant-9', 'gw']] as const) {
      const d = inv.getDevice(id)!;
      await inv.registerDevice({ ...d, metadata: { owner, model, serial: `SN-${id}` } });
    }
    await inv.revokeDevice('gw-3', 'keyCompromise', now - DAY);
    await inv.recordStatus('gw-1', { state: 'online', online: true, certSerial: '4a01', agentVersion: '1.2.3' }, now - 60_000);
    await inv.recordStatus('gw-2', { state: 'error', online: true, errorCode: 'TPM_FAILED' }, now - 2 * DAY);
  }

  it('lists devices with each filter, in id order, with rows the protocol defines', async () => {
    await seed();
    const ids = async (f: object) => ok(await send('devices', f)).devices.map((d) => d.deviceId);
    expect(await ids({})).toEqual(['gw-1', 'gw-2', 'gw-3', 'new-1']);
    expect(ok(await send('devices', {})).devices[0]).toEqual({
      deviceId: 'gw-1',
      state: 'enrolled',
      owner: 'plant-7',
      model: 'gw',
      certSerial: '4a01',
      certNotAfter: clock.now() + 5 * DAY,
      lastSeenAt: clock.now() - 60_000,
      online: true,
      agentState: 'online',
    });
    expect(await ids({ owner: 'plant-7' })).toEqual(['gw-1', 'gw-2']);
    expect(await ids({ model: 'gw' })).toEqual(['gw-1', 'gw-3', 'new-1']);
    expect(await ids({ owner: 'plant-9', model: 'gw' })).toEqual(['gw-3', 'new-1']);
    expect(await ids({ state: 'registered' })).toEqual(['new-1']);
    expect(await ids({ state: 'revoked' })).toEqual(['gw-3']);
    expect(await ids({ state: 'enrolled' })).toEqual(['gw-1', 'gw-2']);
    expect(await ids({ state: 'error' })).toEqual(['gw-2']); // the agent's own state
    // Revoked devices never expire or go stale for an operator; the registered one has no certificate.
    expect(await ids({ expiringWithinDays: 7 })).toEqual(['gw-1']);
    expect(await ids({ expiringWithinDays: 30 })).toEqual(['gw-1', 'gw-2']);
    expect(await ids({ staleSec: 3600 })).toEqual(['gw-2']);
    expect(await ids({ staleSec: 30 })).toEqual(['gw-1', 'gw-2']);
    clock.advance(6 * DAY);
    expect(await ids({ expiringWithinDays: 0 })).toEqual(['gw-1']); // expired ones are included
  });

  it('pages by cursor under the byte budget: every device exactly once, each reply well below the broker limit', async () => {
    const now = clock.now();
    for (let i = 0; i < 150; i++) {
      const id = `dev-${String(i).padStart(3, '0')}`;
      await inv.registerDevice({ deviceId: id, ekPublicHash: `ek-${id}`, ekCertificate: 'AAAA', ekKind: 'ecc', metadata: { owner: 'o'.repeat(256), model: 'm'.repeat(256) }, registeredAt: now });
    }
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const r = await send('devices', { limit: OPERATOR_PAGE_MAX, ...(cursor ? { cursor } : {}) });
      expect(r.raw.length).toBeLessThanOrEqual(OPERATOR_REPLY_BUDGET_BYTES);
      const page = ok(r);
      seen.push(...page.devices.map((d) => d.deviceId));
      cursor = page.nextCursor;
      pages++;
    } while (cursor);
    expect(seen).toHaveLength(150);
    expect(new Set(seen).size).toBe(150);
    expect(pages).toBeGreaterThan(2); // long metadata: the budget, not the limit, ends the pages
    const small = ok(await send('devices', { limit: 7 }));
    expect(small.devices).toHaveLength(7);
    expect(small.nextCursor).toBe('dev-006');
  });

  it('shows one device with its status and current certificate; lists its certificates newest first', async () => {
    await seed();
    const d = ok(await send('device', { deviceId: 'gw-1' }));
    expect(d.device).toMatchObject({ deviceId: 'gw-1', state: 'enrolled', metadata: { owner: 'plant-7', serial: 'SN-gw-1' }, ekKind: 'ecc', certSerial: '4a01', status: { state: 'online', agentVersion: '1.2.3' } });
    expect(d.certificate).toMatchObject({ serial: '4a01', kind: 'enroll', state: 'active', current: true, pem: 'PEM' });
    expect(ok(await send('device', { deviceId: 'new-1' }))).not.toHaveProperty('certificate');
    expect(ok(await send('device', { deviceId: 'gw-3' })).device).toMatchObject({ state: 'revoked', revocationReason: 'keyCompromise' });

    await inv.completeRotation({
      deviceId: 'gw-1',
      requestId: 'rot-1',
      previousSerial: '4a01',
      certificate: { serial: '4b01', deviceId: 'gw-1', notBefore: clock.now(), notAfter: clock.now() + 30 * DAY, issuedAt: clock.now() + 1, pem: 'PEM2', keySpkiHash: 'k2', kind: 'rotate' },
      response: { requestId: 'rot-1', deviceId: 'gw-1', topic: 't', payload: 'cA==', storedAt: clock.now() },
      audit: [{ at: clock.now(), type: 'rotation.issued', deviceId: 'gw-1' }],
      at: clock.now(),
    });
    await inv.confirmRotation('gw-1', '4b01', clock.now() + 2);
    const c = ok(await send('certificates', { deviceId: 'gw-1' }));
    expect(c.total).toBe(2);
    expect(c.certificates.map((x) => [x.serial, x.kind, x.state, x.current])).toEqual([
      ['4b01', 'rotate', 'active', true],
      ['4a01', 'enroll', 'superseded', false],
    ]);
    expect(ok(await send('certificates', { deviceId: 'gw-1', limit: 1 })).certificates).toHaveLength(1);
  });

  it('gives a bounded history: audit and device events, newest kept, each oldest first', async () => {
    await seed();
    const events = Array.from({ length: 30 }, (_, i) => ({ id: `ev-${i}`, type: 'clock_skew', at: clock.now() + i, seq: i, details: { skewMs: i, note: 'x'.repeat(1000) } }));
    for (let i = 0; i < 30; i++) await inv.recordEvents('gw-1', [events[i]!], clock.now() + i * 1000);
    const all = ok(await send('history', { deviceId: 'gw-1' }));
    expect(all.events.map((e) => e.id)).toEqual(events.map((e) => e.id));
    expect(all.events[0]!.details['note']).toHaveLength(256); // cut to the protocol's bound
    expect(all.audit.map((a) => a.type)).toContain('device.registered');
    expect(all.truncated).toBe(false);
    const last = ok(await send('history', { deviceId: 'gw-1', limit: 5 }));
    expect(last.events.map((e) => e.id)).toEqual(['ev-25', 'ev-26', 'ev-27', 'ev-28', 'ev-29']);
    expect(last.audit).toEqual([]);
    expect(last.truncated).toBe(true);
  });

  it('refuses unknown devices, bad input and retained commands with their codes', async () => {
    await seed();
    for (const c of ['device', 'certificates', 'history', 'token-reissue', 'rotate-now', 'reattest'] as const) {
      expect((await send(c, { deviceId: 'nope' })).reply, c).toMatchObject({ ok: false, code: 'DEVICE_NOT_FOUND', retryable: false });
    }
    expect((await send('devices', { state: 'sleeping' })).reply).toMatchObject({ ok: false, code: 'SCHEMA_INVALID' });
    expect((await send('devices', { limit: OPERATOR_PAGE_MAX + 1 })).reply).toMatchObject({ code: 'SCHEMA_INVALID' });
    expect((await send('rotate-now', { deviceId: 'gw-1', jitterSec: -1 })).reply).toMatchObject({ code: 'SCHEMA_INVALID' });
    const t = operatorTopics(topics, 'alice', 'devices');
    expect(await handler.handle(t.command, Buffer.from('{"v":1,"requestId":"x"}'), { retain: true })).toBeUndefined();
    expect(await handler.handle(operatorTopics(topics, 'alice', 'revoke').command, Buffer.from('{}'), { retain: false })).toBeUndefined();
    expect(handler.filters()).not.toContain('fleet/v1/operators/+/commands/revoke');
    expect((await handler.handle(t.command, Buffer.alloc(4096, 0x20)))?.payload.toString()).toMatch(/SCHEMA_TOO_LARGE/);
    expect(errors).toEqual([]);
  });

  it('re-issues a token for a registered device: only its hash is stored, the old token is gone, a repeat returns the same token', async () => {
    await seed();
    const oldHash = 'tok-new-1';
    expect(inv.getToken(oldHash)).toBeDefined();
    const r = await send('token-reissue', { requestId: 'reissue-1', deviceId: 'new-1', ttlSec: 3600 });
    const got = ok(r);
    expect(got).toMatchObject({ deviceId: 'new-1', tokenExpiresAt: clock.now() + 3_600_000 });
    expect(got.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(inv.getToken(hashEnrollmentToken(got.token))).toMatchObject({ deviceId: 'new-1', ekPublicHash: 'ek-new-1', expiresAt: clock.now() + 3_600_000 });
    expect(inv.getToken(oldHash)).toBeUndefined();
    expect(inv.getDevice('new-1')?.metadata).toMatchObject({ owner: 'plant-9' });
    const again = await handler.handle(operatorTopics(topics, 'alice', 'token-reissue').command, Buffer.from(JSON.stringify({ v: 1, requestId: 'reissue-1', deviceId: 'new-1' })));
    expect(again?.payload.equals(r.raw)).toBe(true);
    expect((await inv.listAudit({ deviceId: 'new-1', type: 'operator.token-reissue' })).map((a) => a.details)).toEqual([{ operator: 'alice', expiresAt: clock.now() + 3_600_000 }]);
    expect((await send('token-reissue', { deviceId: 'gw-1' })).reply).toMatchObject({ ok: false, code: 'DEVICE_ALREADY_ENROLLED' });
    expect((await send('token-reissue', { deviceId: 'gw-3' })).reply).toMatchObject({ ok: false, code: 'DEVICE_REVOKED' });
  });

  it('rotate-now and reattest publish one retained device command each; refusals publish nothing; a repeat publishes nothing more', async () => {
    await seed();
    const r = await send('rotate-now', { requestId: 'rot-now', deviceId: 'gw-1', jitterSec: 30, ttlSec: 600 }, 'bob');
    const acc = ok(r);
    expect(acc).toMatchObject({ deviceId: 'gw-1', command: 'rotate-now', issuedAt: clock.now(), expiresAt: clock.now() + 600_000, jitterSec: 30, by: 'bob' });
    expect(published).toHaveLength(1);
    expect(published[0]).toMatchObject({ topic: 'fleet/v1/devices/gw-1/commands', retain: true });
    const cmd = decode('command', published[0]!.payload);
    expect(cmd.requestId).toBe(acc.commandId);
    expect(cmd.body).toEqual({ command: 'rotate-now', issuedAt: clock.now(), expiresAt: clock.now() + 600_000, jitterSec: 30, by: 'bob' });
    const again = await handler.handle(operatorTopics(topics, 'bob', 'rotate-now').command, Buffer.from(JSON.stringify({ v: 1, requestId: 'rot-now', deviceId: 'gw-1' })));
    expect(again?.payload.equals(r.raw)).toBe(true);
    expect(published).toHaveLength(1);

    const re = ok(await send('reattest', { deviceId: 'gw-2' }));
    expect(re).toMatchObject({ command: 'reattest', jitterSec: 0, expiresAt: clock.now() + DAY });
    expect(decode('command', published[1]!.payload).body.command).toBe('reattest');
    expect(re.commandId).not.toBe(acc.commandId);

    expect((await send('rotate-now', { deviceId: 'new-1' })).reply).toMatchObject({ code: 'DEVICE_NOT_ENROLLED' });
    expect((await send('reattest', { deviceId: 'gw-3' })).reply).toMatchObject({ code: 'DEVICE_REVOKED' });
    expect(published).toHaveLength(2);
    expect((await inv.listAudit({ deviceId: 'gw-1', type: 'operator.rotate-now' }))[0]?.details).toMatchObject({ operator: 'bob', commandId: acc.commandId });
  });

  it('answers UNAVAILABLE (retryable) when the bridge cannot publish, and the same requestId works once it can', async () => {
    await seed();
    publishFails = true;
    const down = await send('rotate-now', { requestId: 'retry-me', deviceId: 'gw-1' });
    expect(down.reply).toEqual({ v: 1, requestId: 'retry-me', ok: false, code: 'UNAVAILABLE', message: 'fleet service temporarily unavailable', retryable: true });
    expect(errors).toHaveLength(1);
    publishFails = false;
    expect((await send('rotate-now', { requestId: 'retry-me', deviceId: 'gw-1' })).reply).toMatchObject({ ok: true });
    expect(published).toHaveLength(1);
  });
});
