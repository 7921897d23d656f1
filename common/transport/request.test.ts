import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../clock.js';
import { MemoryBroker, MemoryTransport } from './memory-transport.js';
import { request } from './request.js';
import type { IncomingMessage } from './transport.js';

const open: MemoryTransport[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((t) => t.close()));
});

async function connected(broker: MemoryBroker, clientId: string): Promise<MemoryTransport> {
  const t = new MemoryTransport(broker, { clientId, onError: (e) => console.error(e) });
  open.push(t);
  await t.connect();
  return t;
}

const idOf = (msg: IncomingMessage): string => (JSON.parse(msg.payload.toString()) as { requestId: string }).requestId;

/** A server that answers on `res/ok` with the same requestId, ignoring the first `ignore` copies it sees. */
async function responder(t: MemoryTransport, ignore: number): Promise<{ seen: Buffer[] }> {
  const seen: Buffer[] = [];
  await t.subscribe('req', async ({ payload }) => {
    seen.push(payload);
    if (seen.length <= ignore) return;
    const { requestId } = JSON.parse(payload.toString()) as { requestId: string };
    await t.publish('res/ok', Buffer.from(JSON.stringify({ requestId, n: seen.length })));
  });
  return { seen };
}

describe('request', () => {
  it('re-publishes the same payload after a timeout and resolves with the matching answer', async () => {
    const broker = new MemoryBroker();
    const server = await connected(broker, 'server');
    const device = await connected(broker, 'device');
    const { seen } = await responder(server, 1);
    const payload = Buffer.from(JSON.stringify({ requestId: 'req-0001' }));

    const answer = await request(device, {
      requestTopic: 'req',
      payload,
      responseTopics: ['res/ok', 'res/rejected'],
      match: (m) => idOf(m) === 'req-0001',
      timeoutMs: 30,
      retries: 2,
    });
    expect(JSON.parse(answer.payload.toString())).toEqual({ requestId: 'req-0001', n: 2 });
    expect(answer.topic).toBe('res/ok');
    expect(seen).toHaveLength(2);
    expect(seen.every((p) => p.equals(payload))).toBe(true);
  });

  it('ignores answers to other requests', async () => {
    const broker = new MemoryBroker();
    const server = await connected(broker, 'server');
    const device = await connected(broker, 'device');
    await server.subscribe('req', async () => {
      await server.publish('res/ok', Buffer.from(JSON.stringify({ requestId: 'someone-else' })));
      await server.publish('res/ok', Buffer.from(JSON.stringify({ requestId: 'mine-0001' })));
    });
    const answer = await request(device, {
      requestTopic: 'req',
      payload: Buffer.from('{}'),
      responseTopics: ['res/ok'],
      match: (m) => idOf(m) === 'mine-0001',
      timeoutMs: 1000,
      retries: 0,
    });
    expect(idOf(answer)).toBe('mine-0001');
  });

  it('rejects TRANSPORT_TIMEOUT after the last retry and unsubscribes', async () => {
    const broker = new MemoryBroker();
    const server = await connected(broker, 'server');
    const device = await connected(broker, 'device');
    const { seen } = await responder(server, Number.POSITIVE_INFINITY);
    const clock = new ManualClock(0);
    const started = Date.now();
    const err = await request(device, {
      requestTopic: 'req',
      payload: Buffer.from(JSON.stringify({ requestId: 'req-0002' })),
      responseTopics: ['res/ok'],
      match: () => true,
      timeoutMs: 20,
      retries: 2,
      clock,
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'TRANSPORT_TIMEOUT', details: { attempts: 3, elapsedMs: 0 } });
    expect(Date.now() - started).toBeGreaterThanOrEqual(55);
    expect(seen).toHaveLength(3);

    // The response subscriptions are gone: a late answer reaches no handler.
    const before = device.stats().received;
    await server.publish('res/ok', Buffer.from('{"requestId":"req-0002"}'));
    await new Promise((r) => setTimeout(r, 5));
    expect(device.stats().received).toBe(before);
  });

  it('fails at once when the broker refuses the request publish', async () => {
    const broker = new MemoryBroker({ acl: (_c, action, topic) => !(action === 'publish' && topic === 'req') });
    const device = await connected(broker, 'device');
    const started = Date.now();
    await expect(
      request(device, { requestTopic: 'req', payload: Buffer.from('{}'), responseTopics: ['res/ok'], match: () => true, timeoutMs: 5000, retries: 3 }),
    ).rejects.toMatchObject({ code: 'TRANSPORT_PUBLISH_REFUSED' });
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('fails when a response subscription is refused, releasing the ones that succeeded', async () => {
    const broker = new MemoryBroker({ acl: (_c, action, topic) => !(action === 'subscribe' && topic === 'res/denied') });
    const device = await connected(broker, 'device');
    const server = await connected(broker, 'server');
    await expect(
      request(device, { requestTopic: 'req', payload: Buffer.from('{}'), responseTopics: ['res/ok', 'res/denied'], match: () => true, timeoutMs: 50, retries: 0 }),
    ).rejects.toMatchObject({ code: 'TRANSPORT_SUBSCRIBE_REFUSED' });
    await server.publish('res/ok', Buffer.from('{}'));
    await new Promise((r) => setTimeout(r, 5));
    expect(device.stats().received).toBe(0);
  });

  it('turns a throwing matcher into a coded rejection', async () => {
    const broker = new MemoryBroker();
    const server = await connected(broker, 'server');
    const device = await connected(broker, 'device');
    await responder(server, 0);
    await expect(
      request(device, {
        requestTopic: 'req',
        payload: Buffer.from('{"requestId":"x"}'),
        responseTopics: ['res/ok'],
        match: () => {
          throw new Error('bad matcher');
        },
        timeoutMs: 1000,
        retries: 0,
      }),
    ).rejects.toMatchObject({ code: 'TRANSPORT_HANDLER_FAILED' });
  });

  it('rejects TRANSPORT_NOT_CONNECTED when the transport is down', async () => {
    const device = new MemoryTransport(new MemoryBroker(), { clientId: 'd' });
    await expect(
      request(device, { requestTopic: 'req', payload: Buffer.from('{}'), responseTopics: ['res/ok'], match: () => true, timeoutMs: 10, retries: 0 }),
    ).rejects.toMatchObject({ code: 'TRANSPORT_NOT_CONNECTED' });
  });

  it('rejects TRANSPORT_CONNECTION_LOST at once when the connection drops while waiting', async () => {
    const broker = new MemoryBroker();
    const device = await connected(broker, 'd');
    const started = Date.now();
    const pending = request(device, { requestTopic: 'req', payload: Buffer.from('{}'), responseTopics: ['res/ok'], match: () => true, timeoutMs: 30_000, retries: 2 });
    setTimeout(() => device.simulateDrop(), 20);
    await expect(pending).rejects.toMatchObject({ code: 'TRANSPORT_CONNECTION_LOST' });
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});
