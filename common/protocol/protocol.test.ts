import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { decode, encode, encodeRejection, MESSAGES } from './messages.js';
import { SchemaError } from './schema.js';
import { Topics } from './topics.js';
import { REJECTION_CODE_LIST } from './errors.js';

const enrollBody = () => ({
  deviceId: 'dev-001',
  token: 'a'.repeat(43),
  ekKind: 'ecc' as const,
  ekCertificate: randomBytes(700),
  ekPublic: randomBytes(122),
  akPublic: randomBytes(90),
  keyPublic: randomBytes(90),
  csr: randomBytes(300),
});

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SchemaError);
    return (e as SchemaError).code;
  }
  return undefined;
}

describe('protocol messages', () => {
  it('round-trips an enroll request, decoding binary fields to Buffers', () => {
    const body = enrollBody();
    const wire = encode('enroll', 'req-00000001', 1000, body);
    const msg = decode('enroll', wire);
    expect(msg.requestId).toBe('req-00000001');
    expect(msg.body.ekCertificate!.equals(body.ekCertificate)).toBe(true);
    expect(msg.body.deviceId).toBe('dev-001');
  });

  it('refuses unknown properties, wrong types and bad base64 with the field path', () => {
    const wire = JSON.parse(encode('enroll', 'req-00000001', 1, enrollBody()).toString());
    expect(codeOf(() => decode('enroll', JSON.stringify({ ...wire, extra: 1 })))).toBe('SCHEMA_INVALID');
    const bad = { ...wire, body: { ...wire.body, csr: 'not base64!' } };
    try {
      decode('enroll', JSON.stringify(bad));
      expect.unreachable();
    } catch (e) {
      expect((e as SchemaError).path).toBe('body.csr');
    }
    expect(codeOf(() => decode('enroll', JSON.stringify({ ...wire, v: 2 })))).toBe('SCHEMA_INVALID');
    expect(codeOf(() => decode('enroll', JSON.stringify({ ...wire, body: { ...wire.body, deviceId: 'a/+/#' } })))).toBe(
      'SCHEMA_INVALID',
    );
  });

  it('checks size before parsing and refuses non-JSON', () => {
    const huge = Buffer.alloc(MESSAGES.enroll.maxBytes + 1, 0x20);
    expect(codeOf(() => decode('enroll', huge))).toBe('SCHEMA_TOO_LARGE');
    expect(codeOf(() => decode('enroll', '{"v":1,'))).toBe('SCHEMA_NOT_JSON');
    const oversizedField = { ...enrollBody(), ekCertificate: randomBytes(5000) };
    expect(codeOf(() => decode('enroll', encode('enroll', 'req-00000001', 1, oversizedField)))).toBe('SCHEMA_INVALID');
  });

  it('encodes every rejection code so that it decodes', () => {
    for (const code of REJECTION_CODE_LIST) {
      const r = decode('enrollRejected', encodeRejection('req-00000001', 5, code, { retryAfterSec: 3 }));
      expect(r.error.code).toBe(code);
      expect(typeof r.error.retryable).toBe('boolean');
    }
  });
});

describe('topics', () => {
  const t = new Topics('fleet/v1');
  it('builds and parses device topics', () => {
    expect(t.device('dev-1', 'rotateChallenge')).toBe('fleet/v1/devices/dev-1/rotate/challenge');
    expect(t.parseDevice('fleet/v1/devices/dev-1/rotate/request')).toEqual({ deviceId: 'dev-1', topic: 'rotateRequest' });
    expect(t.parseDevice('fleet/v1/devices/dev-1/unknown')).toBeUndefined();
    expect(t.parseDevice('other/devices/dev-1/status')).toBeUndefined();
    expect(t.allDevices('status')).toBe('fleet/v1/devices/+/status');
  });
  it('addresses enrollment by the attempt\'s enr- client id, never by a device id', () => {
    const id = 'enr-AAAAAAAAAAAAAAAAAAAAAA';
    expect(t.enrollment(id, 'enroll')).toBe(`fleet/v1/enroll/${id}/request`);
    expect(t.parseEnrollment(`fleet/v1/enroll/${id}/proof`)).toEqual({ clientId: id, topic: 'enrollProof' });
    expect(t.parseEnrollment('fleet/v1/enroll/gw-0001/request')).toBeUndefined();
    expect(t.parseEnrollment(`fleet/v1/enroll/${id}/request/x`)).toBeUndefined();
    expect(t.parseDevice('fleet/v1/devices/dev-1/request')).toBeUndefined();
    expect(t.allEnrollments('enrollProof')).toBe('fleet/v1/enroll/+/proof');
    expect(() => t.device('dev-1', 'enroll')).toThrow(expect.objectContaining({ code: 'TOPIC_INVALID_KIND' }));
    expect(() => t.enrollment('gw-0001', 'enroll')).toThrow(expect.objectContaining({ code: 'TOPIC_INVALID_CLIENT_ID' }));
  });
  it('refuses wildcards in ids and base topics', () => {
    expect(() => t.device('+', 'status')).toThrow(expect.objectContaining({ code: 'TOPIC_INVALID_DEVICE_ID' }));
    expect(() => new Topics('fleet/#')).toThrow(expect.objectContaining({ code: 'TOPIC_INVALID_BASE' }));
  });
});
