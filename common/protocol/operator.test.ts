import { describe, expect, it } from 'vitest';
import {
  OPERATOR_MESSAGES,
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
});
