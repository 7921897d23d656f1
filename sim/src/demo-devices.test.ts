import { describe, expect, it } from 'vitest';
import type { AgentStatus } from '../../agent/src/agent.js';
import { eventText, rowOf } from './demo-devices.js';

describe('eventText', () => {
  it('turns the agent log lines the demo is about into short events', () => {
    expect(eventText('info', 'enrolled', { slot: 'A', serial: 'cc794481f91a46b8' })).toBe('enrolled: certificate cc794481… in slot A');
    expect(eventText('info', 'CRL updated', { crlNumber: '2', revokedSerials: 2 })).toBe('holds CRL #2 (2 revoked)');
    expect(eventText('info', 'fleet command received', { command: 'rotate-now', by: 'ops' })).toBe('got rotate-now from ops');
    expect(eventText('info', 'rotated', { serial: '9285203e1be1', previous: 'cc794481f91a', slot: 'B' })).toBe('rotated: cc794481… → 9285203e…');
    expect(eventText('warn', 'connection to the fleet lost; reconnecting', { code: 'TRANSPORT_CONNECTION_LOST' })).toBe('connection lost; reconnecting');
    expect(eventText('info', 'connection to the fleet restored', { outageMs: 1640 })).toBe('reconnected after 1.6 s offline');
    expect(eventText('error', 'this device is revoked; stopped using its identity', { code: 'AGENT_REVOKED' })).toBe('revoked: cut off, identity no longer used');
  });

  it('drops the noise of each failed reconnect; other lines as logged, warnings with their code', () => {
    expect(eventText('warn', 'transport error', { code: 'TRANSPORT_UNREACHABLE' })).toBeUndefined();
    expect(eventText('info', 'challenge answered', { challengeId: 'x' })).toBe('challenge answered');
    expect(eventText('warn', 'supervisor step failed; retrying', { code: 'TRANSPORT_TIMEOUT' })).toBe('supervisor step failed; retrying [TRANSPORT_TIMEOUT]');
  });
});

describe('rowOf', () => {
  const status: AgentStatus = {
    deviceId: 'demo-device-1',
    state: 'online',
    online: true,
    slot: 'B',
    certSerial: 'abc',
    certNotAfter: 5,
    tpmSignatures: 0,
    tlsHandshakes: 1,
    rotations: 1,
    clockSkewMs: 0,
    outbox: { pending: 0, dropped: 0 },
    crl: { crlNumber: '2', thisUpdate: 0, freshness: 'fresh', revokedSerials: 2 },
  };

  it('takes state, serial, expiry, slot and CRL number from the status', () => {
    expect(rowOf(status, true, 'online')).toEqual({ id: 'demo-device-1', state: 'online', serial: 'abc', notAfter: 5, slot: 'B', crl: '#2', event: 'online' });
  });

  it('a device whose agent never started is provisioned', () => {
    expect(rowOf({ ...status, state: 'stopped', slot: undefined, certSerial: undefined, certNotAfter: undefined, crl: undefined }, false, undefined)).toEqual({
      id: 'demo-device-1',
      state: 'provisioned',
    });
  });
});
