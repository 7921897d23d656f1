import { parse } from 'node:url';
import { describe, expect, it } from 'vitest';
import { brokerAddress } from './mqtt-transport.js';

/**
 * brokerAddress reads broker URLs with the WHATWG parser (Node 24 warns on every url.parse() call, the
 * parser MQTT.js uses for a URL string). The parts must be what MQTT.js took from url.parse() before.
 */
describe('brokerAddress', () => {
  const legacy = (u: string) => {
    const p = parse(u);
    return { protocol: p.protocol!.replace(/:$/, ''), hostname: p.hostname!, ...(p.port ? { port: Number(p.port) } : {}), ...(p.auth ? { auth: p.auth } : {}) };
  };

  it.each(['mqtts://127.0.0.1:8883', 'mqtt://localhost:1883', 'mqtts://[::1]:18883', 'mqtts://broker.example', 'mqtt://dev%40x:p%3Ass@10.0.0.1:1884'])('%s: the same parts as url.parse()', (u) => {
    expect(brokerAddress(u)).toEqual(legacy(u));
  });

  it('strips the brackets of an IPv6 literal (net.connect wants the bare address)', () => {
    expect(brokerAddress('mqtts://[::1]:8883')).toEqual({ protocol: 'mqtts', hostname: '::1', port: 8883 });
  });

  it('refuses what is not a URL with TRANSPORT_INVALID_ARGUMENT', () => {
    expect(() => brokerAddress('127.0.0.1:8883 ')).toThrow(expect.objectContaining({ code: 'TRANSPORT_INVALID_ARGUMENT' }));
    expect(() => brokerAddress('')).toThrow(expect.objectContaining({ code: 'TRANSPORT_INVALID_ARGUMENT' }));
  });
});
