import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../../common/clock.js';
import { OPERATOR_REVOKE_REASONS, decodeOperatorRevokeReply, type OperatorRevokeReply } from '../../../common/protocol/operator.js';
import { Topics } from '../../../common/protocol/topics.js';
import { createCa, type CaMaterial } from '../ca/ca-setup.js';
import { CrlSigner, REVOCATION_REASONS } from '../ca/crl.js';
import { LevelInventory } from '../inventory/level-inventory.js';
import { OperatorRevokeHandler, operatorRevokeTopics } from './operator-handler.js';
import { RevocationService } from './revocation-service.js';
import { recordEnrolledDevice } from '../inventory/test-records.js';

/** The handler against a real RevocationService, CA (key file) and LevelInventory; no broker. */
describe('OperatorRevokeHandler', () => {
  const topics = new Topics('fleet/v1');
  const t = operatorRevokeTopics(topics, 'alice');
  let dir: string;
  let ca: CaMaterial;
  let inv: LevelInventory;
  let clock: ManualClock;
  let revocation: RevocationService;
  let handler: OperatorRevokeHandler;
  let errors: { obj: object; msg: string }[];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'op-handler-'));
    clock = new ManualClock(Date.UTC(2026, 5, 1));
    ca = await createCa({
      outDir: join(dir, 'ca'),
      clock,
      trustDomain: 'op.test',
      root: { commonName: 'R' },
      issuing: { commonName: 'I' },
      backend: { kind: 'file', keyPath: join(dir, 'ca', 'issuing-key.pem') },
    });
    inv = new LevelInventory(join(dir, 'inventory'));
    await inv.open();
    for (const [id, serial] of [['gw-1', '4a01'], ['gw-2', '4a02']] as const) await recordEnrolledDevice(inv, { deviceId: id, serial, at: clock.now() });
    revocation = new RevocationService({
      inventory: inv,
      crlSigner: new CrlSigner({ backend: ca.backend, issuingCertificate: ca.issuingCertificatePem, clock }),
      clock,
      stateFile: join(dir, 'crl-state.json'),
    });
    await revocation.start();
    errors = [];
    handler = new OperatorRevokeHandler({ topics, revocation, logger: { info: () => undefined, warn: () => undefined, error: (obj, msg) => void errors.push({ obj, msg }) } });
  });

  afterEach(async () => {
    await revocation.stop();
    await inv.close().catch(() => undefined);
    await ca.backend.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const send = async (o: object | string, topic = t.command, retain = false): Promise<{ topic: string; raw: Buffer; reply: OperatorRevokeReply } | undefined> => {
    const r = await handler.handle(topic, Buffer.from(typeof o === 'string' ? o : JSON.stringify(o)), { retain });
    return r && { topic: r.topic, raw: r.payload, reply: decodeOperatorRevokeReply(r.payload) };
  };

  it('gives operators exactly the CRL signer\'s reasons', () => {
    expect([...OPERATOR_REVOKE_REASONS].sort()).toEqual([...REVOCATION_REASONS].sort());
  });

  it('revokes a device and answers on the operator\'s reply topic; a repeat gets the same bytes and revokes nothing more', async () => {
    const before = revocation.current!.crlNumber;
    const cmd = { v: 1, requestId: 'r1', deviceId: 'gw-1', reason: 'keyCompromise' };
    const first = await send(cmd);
    expect(first?.topic).toBe(t.reply);
    expect(first?.reply).toEqual({ v: 1, requestId: 'r1', ok: true, serials: ['4a01'], crlNumber: (before + 1n).toString(), enforced: true });
    expect(inv.getDevice('gw-1')?.revocationReason).toBe('keyCompromise');
    // The same requestId, even with another body, is the same request: its first answer, nothing done.
    const again = await send({ ...cmd, deviceId: 'gw-2' });
    expect(again?.raw.equals(first!.raw)).toBe(true);
    expect(inv.getDevice('gw-2')?.revokedAt).toBeUndefined();
    expect(revocation.current!.crlNumber).toBe(before + 1n);
    // Another operator's requestId space is its own.
    const bob = await send(cmd, operatorRevokeTopics(topics, 'bob').command);
    expect(bob?.topic).toBe(operatorRevokeTopics(topics, 'bob').reply);
    expect(bob?.reply).toMatchObject({ ok: true, serials: [] });
  });

  it('answers concurrent duplicates (QoS1 redelivery while the first runs) with one revocation', async () => {
    const before = revocation.current!.crlNumber;
    const cmd = { v: 1, requestId: 'dup', serial: '00FFEE', reason: 'superseded' };
    const [a, b] = await Promise.all([send(cmd), send(cmd)]);
    expect(a?.reply).toMatchObject({ ok: true, serials: ['ffee'] });
    expect(b?.raw.equals(a!.raw)).toBe(true);
    expect(revocation.current!.crlNumber).toBe(before + 1n);
  });

  it('ignores retained messages, replies, other commands and malformed topics', async () => {
    const cmd = { v: 1, requestId: 'r1', deviceId: 'gw-1', reason: 'keyCompromise' };
    expect(await send(cmd, t.command, true)).toBeUndefined();
    for (const topic of [t.reply, 'fleet/v1/operators/alice/commands/launch', 'fleet/v1/operators/+/commands/revoke', 'fleet/v1/operators/a b/commands/revoke', 'fleet/v2/operators/alice/commands/revoke']) {
      expect(await send(cmd, topic), topic).toBeUndefined();
    }
    expect(inv.getDevice('gw-1')?.revokedAt).toBeUndefined();
  });

  it('refuses with the code of the check; refusals are not remembered', async () => {
    const schema = await send({ v: 1, requestId: 'r1', deviceId: 'gw-1', reason: 'because' });
    expect(schema?.reply).toMatchObject({ ok: false, code: 'SCHEMA_INVALID', retryable: false });
    expect(schema?.reply).not.toHaveProperty('requestId');
    expect((await send('not json'))?.reply).toMatchObject({ ok: false, code: 'SCHEMA_NOT_JSON' });
    expect((await send('x'.repeat(2000)))?.reply).toMatchObject({ ok: false, code: 'SCHEMA_TOO_LARGE' });
    expect((await send({ v: 1, requestId: 'r2', deviceId: 'gw-1', serial: '4a01', reason: 'superseded' }))?.reply).toMatchObject({
      ok: false,
      requestId: 'r2',
      code: 'REVOCATION_BAD_REQUEST',
    });
    expect((await send({ v: 1, requestId: 'r3', reason: 'superseded' }))?.reply).toMatchObject({ code: 'REVOCATION_BAD_REQUEST' });
    expect((await send({ v: 1, requestId: 'r4', serial: '000', reason: 'superseded' }))?.reply).toMatchObject({ code: 'REVOCATION_BAD_REQUEST' });
    expect((await send({ v: 1, requestId: 'r5', deviceId: 'gw-none', reason: 'superseded' }))?.reply).toMatchObject({ code: 'REVOCATION_NOT_FOUND', retryable: false });
    expect(inv.getDevice('gw-1')?.revokedAt).toBeUndefined();
    // r5 refused: the same id, corrected, is a new attempt.
    expect((await send({ v: 1, requestId: 'r5', deviceId: 'gw-2', reason: 'superseded' }))?.reply).toMatchObject({ ok: true, serials: ['4a02'] });
    expect(errors).toEqual([]);
  });

  it('turns outages into retryable codes and internals into INTERNAL, logged, never on the wire', async () => {
    await ca.backend.close();
    const down = await send({ v: 1, requestId: 'hsm', deviceId: 'gw-1', reason: 'superseded' });
    expect(down?.reply).toEqual({ v: 1, requestId: 'hsm', ok: false, code: 'UNAVAILABLE', message: 'fleet service temporarily unavailable', retryable: true });
    expect(errors.map((e) => (e.obj as { code?: string }).code)).toEqual(['CA_BACKEND_FAILED']);
    await inv.close();
    const broken = await send({ v: 1, requestId: 'db', deviceId: 'gw-2', reason: 'superseded' });
    expect(broken?.reply).toEqual({ v: 1, requestId: 'db', ok: false, code: 'INTERNAL', message: 'internal error', retryable: true });
    expect(errors).toHaveLength(2);
    await revocation.stop();
    expect((await send({ v: 1, requestId: 'late', deviceId: 'gw-2', reason: 'superseded' }))?.reply).toMatchObject({ code: 'REVOCATION_STOPPED', retryable: true });
  });
});
