import { describe, expect, it } from 'vitest';
import { SchemaError } from './schema.js';
import {
  REGISTER_MAX_BYTES,
  REGISTER_MAX_DEVICES,
  STATION_REPLY_CODES,
  allStationCommands,
  decodeStationRegister,
  decodeStationRegisterReply,
  deviceRefusal,
  encodeStationRefusal,
  encodeStationRegister,
  encodeStationRegisterAccepted,
  parseStationCommand,
  stationIdOfCommonName,
  stationTopics,
  type StationDevice,
} from './station.js';
import { Topics } from './topics.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

const device = (over: Partial<StationDevice> = {}): StationDevice => ({
  deviceId: 'gw-1',
  ekKind: 'ecc',
  ekCertificate: Buffer.from('not parsed here'),
  ekPublicHash: 'ab'.repeat(32),
  metadata: { model: 'gw', serial: 'SN-1' },
  tokenHash: 'cd'.repeat(32),
  tokenCreatedAt: 1_000,
  tokenExpiresAt: 2_000,
  ...over,
});

describe('station protocol', () => {
  const topics = new Topics('fleet/v1');

  it('builds and parses command and reply topics; parses nothing else; station ids from certificate CNs', () => {
    expect(stationTopics(topics, 'line1', 'register')).toEqual({
      command: 'fleet/v1/stations/line1/commands/register',
      reply: 'fleet/v1/stations/line1/commands/register/reply',
    });
    expect(allStationCommands(topics, 'register')).toBe('fleet/v1/stations/+/commands/register');
    expect(parseStationCommand(topics, 'fleet/v1/stations/line1/commands/register')).toEqual({ stationId: 'line1', command: 'register' });
    for (const t of [
      'fleet/v1/stations/line1/commands/register/reply',
      'fleet/v1/stations/line1/commands/unregister',
      'fleet/v1/stations/+/commands/register',
      'fleet/v1/stations//commands/register',
      'fleet/v1/operators/line1/commands/register',
      'other/v1/stations/line1/commands/register',
    ]) {
      expect(parseStationCommand(topics, t), t).toBeUndefined();
    }
    expect(codeOf(() => stationTopics(topics, 'a/b', 'register'))).toBe('TOPIC_INVALID_STATION_ID');
    expect(stationIdOfCommonName('role:station:line1')).toBe('line1');
    for (const cn of ['role:operator:line1', 'role:station:', 'role:station:a/b', 'line1']) expect(stationIdOfCommonName(cn), cn).toBeUndefined();
  });

  it('round-trips a register command (the token hash only); refuses bad fields, empty and oversize batches with schema codes', () => {
    const payload = encodeStationRegister('r-1', [device(), device({ deviceId: 'gw-2', ekKind: 'rsa', metadata: {} })]);
    const req = decodeStationRegister(payload);
    expect(req).toEqual({ v: 1, requestId: 'r-1', devices: [device(), device({ deviceId: 'gw-2', ekKind: 'rsa', metadata: {} })] });
    expect(JSON.parse(payload.toString()).devices[0]).not.toHaveProperty('token');

    const ok = JSON.parse(payload.toString()) as { devices: Record<string, unknown>[] };
    const bad = (d: Record<string, unknown>) => codeOf(() => decodeStationRegister(JSON.stringify({ v: 1, requestId: 'r', devices: [{ ...ok.devices[0], ...d }] })));
    expect(bad({ token: 'secret' })).toBe('SCHEMA_INVALID');
    expect(bad({ deviceId: 'gw 1' })).toBe('SCHEMA_INVALID');
    expect(bad({ ekPublicHash: 'AB'.repeat(32) })).toBe('SCHEMA_INVALID');
    expect(bad({ ekCertificate: 'not base64!' })).toBe('SCHEMA_INVALID');
    expect(bad({ ekCertificate: Buffer.alloc(4097).toString('base64') })).toBe('SCHEMA_INVALID');
    expect(bad({ metadata: { 'bad key': 'x' } })).toBe('SCHEMA_INVALID');
    expect(bad({ metadata: { k: 'x'.repeat(257) } })).toBe('SCHEMA_INVALID');
    expect(bad({ tokenExpiresAt: 1.5 })).toBe('SCHEMA_INVALID');
    expect(codeOf(() => decodeStationRegister('{"v":1,"requestId":"r","devices":[]}'))).toBe('SCHEMA_INVALID');
    const many = Array.from({ length: REGISTER_MAX_DEVICES + 1 }, (_, i) => device({ deviceId: `gw-${i}`, ekCertificate: Buffer.alloc(1) }));
    expect(codeOf(() => decodeStationRegister(encodeStationRegister('r', many)))).toBe('SCHEMA_INVALID');
    expect(codeOf(() => decodeStationRegister(Buffer.alloc(REGISTER_MAX_BYTES + 1, 0x20)))).toBe('SCHEMA_TOO_LARGE');
    expect(codeOf(() => decodeStationRegister('{"v":1'))).toBe('SCHEMA_NOT_JSON');
    // The encoder refuses what the bridge would refuse for size, before anything is sent.
    const big = Array.from({ length: 16 }, (_, i) => device({ deviceId: `gw-${i}`, ekCertificate: Buffer.alloc(4096) }));
    expect(codeOf(() => encodeStationRegister('r', big))).toBe('SCHEMA_TOO_LARGE');
    try {
      decodeStationRegister(JSON.stringify({ v: 1, requestId: 'r', devices: [{ ...ok.devices[0], ekKind: 'dsa' }] }));
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(SchemaError);
      expect((e as SchemaError).path).toBe('devices[0].ekKind');
    }
  });

  it('encodes replies that decode as their shape; refusals carry their code’s retryable flag', () => {
    const accepted = decodeStationRegisterReply(
      encodeStationRegisterAccepted('r-1', [{ deviceId: 'gw-1', ok: true, outcome: 'registered' }, deviceRefusal('gw-2', 'REGISTRATION_CONFLICT', 'x'.repeat(300))]),
    );
    expect(accepted).toEqual({
      v: 1,
      requestId: 'r-1',
      ok: true,
      results: [
        { deviceId: 'gw-1', ok: true, outcome: 'registered' },
        { deviceId: 'gw-2', ok: false, code: 'REGISTRATION_CONFLICT', message: 'x'.repeat(200), retryable: false },
      ],
    });
    for (const code of Object.keys(STATION_REPLY_CODES) as (keyof typeof STATION_REPLY_CODES)[]) {
      expect(decodeStationRegisterReply(encodeStationRefusal('r9', code))).toEqual({ v: 1, requestId: 'r9', ok: false, code, message: STATION_REPLY_CODES[code].message, retryable: STATION_REPLY_CODES[code].retryable });
    }
    expect(decodeStationRegisterReply(encodeStationRefusal(undefined, 'SCHEMA_INVALID'))).not.toHaveProperty('requestId');
    expect(codeOf(() => decodeStationRegisterReply('{"v":1,"ok":false,"code":"NOPE","message":"","retryable":false}'))).toBe('SCHEMA_INVALID');
    expect(codeOf(() => decodeStationRegisterReply('{"v":1,"requestId":"r","ok":true,"results":[{"deviceId":"gw-1","ok":true,"outcome":"stolen"}]}'))).toBe('SCHEMA_INVALID');
  });
});
