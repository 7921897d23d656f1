import { afterEach, describe, expect, it, vi } from 'vitest';
import { MemoryBroker, MemoryTransport, type MemoryTransportOptions } from './memory-transport.js';
import { TransportError, type IncomingMessage } from './transport.js';

const open: MemoryTransport[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((t) => t.close()));
});

async function client(broker: MemoryBroker, opts: Partial<MemoryTransportOptions> & { clientId: string }): Promise<MemoryTransport> {
  const t = new MemoryTransport(broker, { onError: () => {}, ...opts });
  open.push(t);
  await t.connect();
  return t;
}

function collector(): { msgs: IncomingMessage[]; handler: (m: IncomingMessage) => void; next: (n?: number) => Promise<IncomingMessage[]> } {
  const msgs: IncomingMessage[] = [];
  let waiters: Array<() => void> = [];
  return {
    msgs,
    handler: (m) => {
      msgs.push(m);
      const w = waiters;
      waiters = [];
      for (const f of w) f();
    },
    next: async (n = 1) => {
      while (msgs.length < n) await new Promise<void>((r) => waiters.push(r));
      return msgs;
    },
  };
}

const flush = (): Promise<void> => new Promise((r) => setTimeout(r, 5));

describe('MemoryBroker / MemoryTransport', () => {
  it('delivers asynchronously, not inside publish', async () => {
    const broker = new MemoryBroker();
    const a = await client(broker, { clientId: 'a' });
    const c = collector();
    await a.subscribe('t/x', c.handler);
    const p = a.publish('t/x', Buffer.from('1'));
    expect(c.msgs).toHaveLength(0);
    await p;
    await c.next();
    expect(c.msgs[0]).toMatchObject({ topic: 't/x', retain: false });
    expect(c.msgs[0]?.payload.toString()).toBe('1');
    expect(a.stats()).toEqual({ received: 1, dropped: 0, published: 1 });
  });

  it('keeps retained messages per topic, delivers them to late subscribers with retain=true, clears on empty payload', async () => {
    const broker = new MemoryBroker();
    const pub = await client(broker, { clientId: 'pub' });
    await pub.publish('r/1', Buffer.from('one'), { retain: true });
    await pub.publish('r/2', Buffer.from('two'), { retain: true });
    await pub.publish('r/2', Buffer.from('two-b'), { retain: true });
    expect(broker.retained('r/2')?.toString()).toBe('two-b');

    const late = await client(broker, { clientId: 'late' });
    const c = collector();
    await late.subscribe('r/+', c.handler);
    await c.next(2);
    expect(c.msgs.map((m) => [m.topic, m.payload.toString(), m.retain]).sort()).toEqual([
      ['r/1', 'one', true],
      ['r/2', 'two-b', true],
    ]);

    await pub.publish('r/1', Buffer.alloc(0), { retain: true });
    await c.next(3);
    expect(c.msgs[2]).toMatchObject({ topic: 'r/1', retain: false });
    expect(broker.retained('r/1')).toBeUndefined();
    const later = collector();
    await late.subscribe('r/#', later.handler);
    await later.next(1);
    await flush();
    expect(later.msgs.map((m) => m.topic)).toEqual(['r/2']);
  });

  it('a message matching several subscriptions reaches each handler once; unsubscribe stops delivery', async () => {
    const broker = new MemoryBroker();
    const a = await client(broker, { clientId: 'a' });
    const h1 = collector();
    const h2 = collector();
    const h3 = collector();
    const s1 = await a.subscribe('d/+/status', h1.handler);
    await a.subscribe('d/#', h2.handler);
    await a.subscribe('d/#', h3.handler);
    await a.publish('d/1/status', Buffer.from('x'));
    await Promise.all([h1.next(), h2.next(), h3.next()]);
    await flush();
    expect([h1.msgs.length, h2.msgs.length, h3.msgs.length]).toEqual([1, 1, 1]);

    await s1.unsubscribe();
    await s1.unsubscribe();
    await a.publish('d/1/status', Buffer.from('y'));
    await Promise.all([h2.next(2), h3.next(2)]);
    await flush();
    expect([h1.msgs.length, h2.msgs.length, h3.msgs.length]).toEqual([1, 2, 2]);
  });

  it('publishes the last will on simulateDrop, not on a clean close', async () => {
    const broker = new MemoryBroker();
    const watcher = await client(broker, { clientId: 'w' });
    const c = collector();
    await watcher.subscribe('status/+', c.handler);
    const will = { topic: 'status/dev', payload: Buffer.from('offline'), retain: true };

    const clean = await client(broker, { clientId: 'dev-clean', will: { ...will, topic: 'status/clean' } });
    await clean.close();
    const dev = await client(broker, { clientId: 'dev', will, reconnectPeriodMs: 0 });
    const changes: boolean[] = [];
    dev.onConnectionChange((up) => changes.push(up));
    dev.simulateDrop();
    expect(dev.connected).toBe(false);
    expect(changes).toEqual([false]);
    await c.next();
    await flush();
    expect(c.msgs.map((m) => [m.topic, m.payload.toString()])).toEqual([['status/dev', 'offline']]);
    expect(broker.retained('status/dev')?.toString()).toBe('offline');
    await expect(dev.publish('x', Buffer.from('1'))).rejects.toMatchObject({ code: 'TRANSPORT_NOT_CONNECTED' });
  });

  it('a forced close also fires the will', async () => {
    const broker = new MemoryBroker();
    const watcher = await client(broker, { clientId: 'w' });
    const c = collector();
    await watcher.subscribe('lw', c.handler);
    const dev = await client(broker, { clientId: 'dev', will: { topic: 'lw', payload: Buffer.from('gone') } });
    await dev.close({ force: true });
    await c.next();
  });

  it('enforces the ACL hook: denied QoS1 publish rejects 0x87, denied QoS0 is dropped, denied subscribe rejects', async () => {
    const acl = vi.fn((clientId: string, action: 'publish' | 'subscribe', topic: string) => {
      if (topic.startsWith('admin/')) return false;
      return !(action === 'publish' && topic === `devices/${clientId}/ro`);
    });
    const broker = new MemoryBroker({ acl });
    const dev = await client(broker, { clientId: 'd1' });
    const c = collector();
    await dev.subscribe('devices/#', c.handler);

    const err = await dev.publish('admin/x', Buffer.from('1')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TransportError);
    expect(err).toMatchObject({ code: 'TRANSPORT_PUBLISH_REFUSED', details: { reasonCode: 0x87, topic: 'admin/x' } });
    await expect(dev.publish('devices/d1/ro', Buffer.from('1'), { qos: 0 })).resolves.toBeUndefined();
    await expect(dev.subscribe('admin/#', () => {})).rejects.toMatchObject({ code: 'TRANSPORT_SUBSCRIBE_REFUSED' });
    await dev.publish('devices/d1/rw', Buffer.from('ok'));
    await c.next();
    await flush();
    expect(c.msgs.map((m) => m.topic)).toEqual(['devices/d1/rw']);
    expect(acl).toHaveBeenCalledWith('d1', 'subscribe', 'admin/#');
  });

  it('reports handler throws and rejections through onError and keeps delivering', async () => {
    const broker = new MemoryBroker();
    const errors: TransportError[] = [];
    const a = await client(broker, { clientId: 'a', onError: (e) => errors.push(e) });
    const ok = collector();
    await a.subscribe('h', () => {
      throw new Error('sync boom');
    });
    await a.subscribe('h', async () => {
      throw new Error('async boom');
    });
    await a.subscribe('h', ok.handler);
    await a.publish('h', Buffer.from('1'));
    await a.publish('h', Buffer.from('2'));
    await ok.next(2);
    await flush();
    expect(errors.map((e) => e.code)).toEqual(Array(4).fill('TRANSPORT_HANDLER_FAILED'));
    expect(errors.map((e) => (e.cause as Error).message).sort()).toEqual(['async boom', 'async boom', 'sync boom', 'sync boom']);
    expect(a.connected).toBe(true);
  });

  it('drops and reports oversize messages', async () => {
    const broker = new MemoryBroker();
    const errors: TransportError[] = [];
    const a = await client(broker, { clientId: 'a', maxIncomingBytes: 10, onError: (e) => errors.push(e) });
    const c = collector();
    await a.subscribe('big', c.handler);
    await a.publish('big', Buffer.alloc(11));
    await a.publish('big', Buffer.alloc(10));
    await c.next();
    await flush();
    expect(c.msgs.map((m) => m.payload.length)).toEqual([10]);
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ code: 'TRANSPORT_PAYLOAD_TOO_LARGE', details: { topic: 'big', bytes: 11, limit: 10 } });
    expect(a.stats()).toMatchObject({ received: 1, dropped: 1 });
  });

  it('reconnects after a broker outage and resubscribes', async () => {
    const broker = new MemoryBroker();
    const a = await client(broker, { clientId: 'a', reconnectPeriodMs: 2 });
    const c = collector();
    await a.subscribe('t', c.handler);
    const changes: boolean[] = [];
    a.onConnectionChange((up) => changes.push(up));
    broker.stop();
    expect(a.connected).toBe(false);
    await expect(new MemoryTransport(broker, { clientId: 'x' }).connect()).rejects.toMatchObject({ code: 'TRANSPORT_UNREACHABLE' });
    await new Promise((r) => setTimeout(r, 20));
    expect(a.connected).toBe(false);
    broker.start();
    await vi.waitFor(() => expect(a.connected).toBe(true));
    expect(changes).toEqual([false, true]);
    const b = await client(broker, { clientId: 'b' });
    await b.publish('t', Buffer.from('after'));
    await c.next();
  });

  it('rejects with coded errors on invalid topics and after close; close is idempotent', async () => {
    const broker = new MemoryBroker();
    const a = await client(broker, { clientId: 'a' });
    await expect(a.publish('a/+', Buffer.alloc(1))).rejects.toMatchObject({ code: 'TRANSPORT_INVALID_TOPIC' });
    await expect(a.subscribe('a/#/b', () => {})).rejects.toMatchObject({ code: 'TRANSPORT_INVALID_TOPIC' });
    await a.close();
    await a.close();
    await expect(a.publish('a', Buffer.alloc(1))).rejects.toMatchObject({ code: 'TRANSPORT_CLOSED' });
    await expect(a.connect()).rejects.toMatchObject({ code: 'TRANSPORT_CLOSED' });
    expect(broker.connectedClientIds()).toEqual([]);
  });
});
