import { describe, expect, it } from 'vitest';
import {
  OPERATOR_COMMANDS,
  OPERATOR_MESSAGES,
  OPERATOR_PAGE_MAX,
  decodeOperatorReply,
  decodeOperatorRequest,
  encodeOperatorAccepted,
  encodeOperatorRequest,
  OPERATOR_REPLY_CODES,
  allOperatorCommands,
  decodeOperatorRevoke,
  decodeOperatorRevokeReply,
  encodeOperatorRefusal,
  encodeOperatorRevokeAccepted,
  operatorTopics,
  parseOperatorCommand,
} from './operator.js';
import { SchemaError } from './schema.js';
import { Topics } from './topics.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

describe('operator protocol', () => {
  const topics = new Topics('fleet/v1');

  it('builds and parses command and reply topics; parses nothing else', () => {
    expect(operatorTopics(topics, 'alice', 'revoke')).toEqual({
      command: 'fleet/v1/operators/alice/commands/revoke',
      reply: 'fleet/v1/operators/alice/commands/revoke/reply',
    });
    expect(allOperatorCommands(topics, 'revoke')).toBe('fleet/v1/operators/+/commands/revoke');
    expect(parseOperatorCommand(topics, 'fleet/v1/operators/alice/commands/revoke')).toEqual({ operatorId: 'alice', command: 'revoke' });
    for (const t of [
      'fleet/v1/operators/alice/commands/revoke/reply',
      'fleet/v1/operators/alice/commands/launch',
      'fleet/v1/operators/+/commands/revoke',
      'fleet/v1/operators//commands/revoke',
      'fleet/v1/operators/alice/command/revoke',
      `fleet/v1/operators/${'a'.repeat(65)}/commands/revoke`,
      'other/v1/operators/alice/commands/revoke',
      'fleet/v1/devices/alice/commands/revoke',
    ]) {
      expect(parseOperatorCommand(topics, t), t).toBeUndefined();
    }
    expect(codeOf(() => operatorTopics(topics, 'a/b', 'revoke'))).toBe('TOPIC_INVALID_OPERATOR_ID');
    expect(codeOf(() => operatorTopics(topics, '#', 'revoke'))).toBe('TOPIC_INVALID_OPERATOR_ID');
  });

  it('decodes a revoke command; refuses unknown fields, bad reasons, bad serials, oversize and non-JSON with schema codes', () => {
    expect(decodeOperatorRevoke('{"v":1,"requestId":"r1","deviceId":"gw-1","reason":"keyCompromise"}')).toEqual({
      v: 1,
      requestId: 'r1',
      deviceId: 'gw-1',
      reason: 'keyCompromise',
    });
    expect(decodeOperatorRevoke('{"v":1,"requestId":"r2","serial":"00AbC1","reason":"superseded"}').serial).toBe('00AbC1');
    const bad = (o: object) => codeOf(() => decodeOperatorRevoke(JSON.stringify(o)));
    const ok = { v: 1, requestId: 'r1', deviceId: 'gw-1', reason: 'keyCompromise' };
    expect(bad({ ...ok, extra: 1 })).toBe('SCHEMA_INVALID');
    expect(bad({ ...ok, reason: 'removeFromCRL' })).toBe('SCHEMA_INVALID');
    expect(bad({ ...ok, v: 2 })).toBe('SCHEMA_INVALID');
    expect(bad({ ...ok, requestId: '' })).toBe('SCHEMA_INVALID');
    expect(bad({ ...ok, deviceId: 'gw/1' })).toBe('SCHEMA_INVALID');
    expect(bad({ v: 1, requestId: 'r', serial: 'x1', reason: 'superseded' })).toBe('SCHEMA_INVALID');
    expect(bad({ v: 1, requestId: 'r', serial: 'a'.repeat(41), reason: 'superseded' })).toBe('SCHEMA_INVALID');
    expect(codeOf(() => decodeOperatorRevoke(Buffer.alloc(OPERATOR_MESSAGES.revoke.maxBytes + 1, 0x20)))).toBe('SCHEMA_TOO_LARGE');
    expect(codeOf(() => decodeOperatorRevoke('{"v":1'))).toBe('SCHEMA_NOT_JSON');
    try {
      decodeOperatorRevoke(JSON.stringify({ ...ok, reason: 'because' }));
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(SchemaError);
      expect((e as SchemaError).path).toBe('reason');
    }
  });

  it('encodes replies that decode as their shape; a refusal carries the code\'s retryable flag and no requestId when unknown', () => {
    const acc = decodeOperatorRevokeReply(encodeOperatorRevokeAccepted({ requestId: 'r1', serials: ['4a01'], crlNumber: '12', enforced: true }));
    expect(acc).toEqual({ v: 1, requestId: 'r1', ok: true, serials: ['4a01'], crlNumber: '12', enforced: true });
    for (const code of Object.keys(OPERATOR_REPLY_CODES) as (keyof typeof OPERATOR_REPLY_CODES)[]) {
      const r = decodeOperatorRevokeReply(encodeOperatorRefusal('r9', code, 'x'.repeat(500)));
      expect(r).toMatchObject({ ok: false, code, requestId: 'r9', retryable: OPERATOR_REPLY_CODES[code].retryable });
      expect((r as { message: string }).message).toHaveLength(200);
    }
    expect(decodeOperatorRevokeReply(encodeOperatorRefusal(undefined, 'SCHEMA_INVALID'))).not.toHaveProperty('requestId');
    // A reply shape with a foreign code or a mixed shape is refused.
    expect(codeOf(() => decodeOperatorRevokeReply('{"v":1,"ok":false,"code":"NOPE","message":"","retryable":false}'))).toBe('SCHEMA_INVALID');
    expect(codeOf(() => decodeOperatorRevokeReply('{"v":1,"requestId":"r","ok":true,"serials":[],"crlNumber":"1","enforced":true,"code":"INTERNAL"}'))).toBe('SCHEMA_INVALID');
  });

  it('gives every command its own topic pair and filter', () => {
    for (const c of OPERATOR_COMMANDS) {
      const t = operatorTopics(topics, 'alice', c);
      expect(t.command).toBe(`fleet/v1/operators/alice/commands/${c}`);
      expect(parseOperatorCommand(topics, t.command)).toEqual({ operatorId: 'alice', command: c });
      expect(parseOperatorCommand(topics, t.reply)).toBeUndefined();
      expect(allOperatorCommands(topics, c)).toBe(`fleet/v1/operators/+/commands/${c}`);
    }
    expect(new Set(OPERATOR_COMMANDS.map((c) => allOperatorCommands(topics, c))).size).toBe(OPERATOR_COMMANDS.length);
  });

  it('decodes the query and device commands; refuses unknown fields, out-of-range bounds and bad states', () => {
    const req = encodeOperatorRequest('devices', { requestId: 'q1', owner: 'plant-7', state: 'error', expiringWithinDays: 30, staleSec: 3600, limit: 10, cursor: 'gw-9', model: undefined });
    expect(decodeOperatorRequest('devices', req)).toEqual({ v: 1, requestId: 'q1', owner: 'plant-7', state: 'error', expiringWithinDays: 30, staleSec: 3600, limit: 10, cursor: 'gw-9' });
    const bad = (c: (typeof OPERATOR_COMMANDS)[number], o: object) => codeOf(() => decodeOperatorRequest(c, JSON.stringify({ v: 1, requestId: 'q', ...o })));
    expect(bad('devices', { limit: OPERATOR_PAGE_MAX + 1 })).toBe('SCHEMA_INVALID');
    expect(bad('devices', { limit: 0 })).toBe('SCHEMA_INVALID');
    expect(bad('devices', { state: 'asleep' })).toBe('SCHEMA_INVALID');
    expect(bad('devices', { cursor: 'a/b' })).toBe('SCHEMA_INVALID');
    expect(bad('devices', { owner: '' })).toBe('SCHEMA_INVALID');
    expect(bad('device', {})).toBe('SCHEMA_INVALID');
    expect(bad('device', { deviceId: 'gw-1', extra: true })).toBe('SCHEMA_INVALID');
    expect(bad('history', { deviceId: 'gw-1', limit: 201 })).toBe('SCHEMA_INVALID');
    expect(bad('token-reissue', { deviceId: 'gw-1', ttlSec: 10 })).toBe('SCHEMA_INVALID');
    expect(bad('rotate-now', { deviceId: 'gw-1', jitterSec: 86_401 })).toBe('SCHEMA_INVALID');
    expect(bad('reattest', { deviceId: 'gw-1', ttlSec: 59 })).toBe('SCHEMA_INVALID');
    expect(bad('reattest', { deviceId: 'gw-1', ttlSec: 60, jitterSec: 0 })).toBeUndefined();
    expect(codeOf(() => decodeOperatorRequest('devices', Buffer.alloc(OPERATOR_MESSAGES.devices.maxBytes + 1, 0x20)))).toBe('SCHEMA_TOO_LARGE');
  });

  it('decodes accepted replies of each shape; open maps are bounded; refusals of new codes decode for every command', () => {
    const row = { deviceId: 'gw-1', state: 'enrolled', owner: 'o', certSerial: '4a01', certNotAfter: 1, online: true, agentState: 'online' } as const;
    expect(decodeOperatorReply('devices', encodeOperatorAccepted('devices', 'q', { devices: [row], nextCursor: 'gw-1' }))).toMatchObject({ ok: true, devices: [row], nextCursor: 'gw-1' });
    const detail = { deviceId: 'gw-1', state: 'registered', metadata: { model: 'gw', owner: 'x' }, ekKind: 'ecc', ekPublicHash: 'ab', registeredAt: 5 } as const;
    expect(decodeOperatorReply('device', encodeOperatorAccepted('device', 'q', { device: detail }))).toMatchObject({ ok: true, device: detail });
    const tooMany = Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v']));
    expect(codeOf(() => decodeOperatorReply('device', encodeOperatorAccepted('device', 'q', { device: { ...detail, metadata: tooMany } })))).toBe('SCHEMA_INVALID');
    expect(codeOf(() => decodeOperatorReply('device', encodeOperatorAccepted('device', 'q', { device: { ...detail, metadata: { '1bad': 'v' } } })))).toBe('SCHEMA_INVALID');
    expect(codeOf(() => decodeOperatorReply('device', encodeOperatorAccepted('device', 'q', { device: { ...detail, metadata: { m: 'x'.repeat(257) } } })))).toBe('SCHEMA_INVALID');
    const history = { deviceId: 'gw-1', audit: [{ seq: 1, at: 2, type: 'device.registered', details: { ok: true, n: 1, s: 'x' } }], events: [], truncated: false };
    expect(decodeOperatorReply('history', encodeOperatorAccepted('history', 'q', history))).toMatchObject(history);
    const cmd = { deviceId: 'gw-1', command: 'rotate-now', commandId: 'abcdefgh12', issuedAt: 1, expiresAt: 2, jitterSec: 0, by: 'ops' } as const;
    expect(decodeOperatorReply('rotate-now', encodeOperatorAccepted('rotate-now', 'q', cmd))).toMatchObject(cmd);
    expect(codeOf(() => decodeOperatorReply('token-reissue', encodeOperatorAccepted('token-reissue', 'q', { deviceId: 'gw-1', token: 'short', tokenExpiresAt: 1 })))).toBe('SCHEMA_INVALID');
    for (const c of OPERATOR_COMMANDS) {
      for (const code of ['DEVICE_NOT_FOUND', 'DEVICE_NOT_ENROLLED', 'DEVICE_ALREADY_ENROLLED', 'DEVICE_REVOKED'] as const) {
        expect(decodeOperatorReply(c, encodeOperatorRefusal('q', code))).toMatchObject({ ok: false, code, retryable: false });
      }
    }
  });
});
