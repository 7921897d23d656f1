import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../../../common/clock.js';
import { decode, encode, type DeviceEvent, type DeviceStatus } from '../../../common/protocol/messages.js';
import { Topics } from '../../../common/protocol/topics.js';
import { MemoryBroker, MemoryTransport } from '../../../common/transport/memory-transport.js';
import { Bridge } from '../bridge.js';
import type { DeviceEventRecordInput, Inventory } from '../inventory/inventory.js';
import { LevelInventory } from '../inventory/level-inventory.js';
import { IngestService } from './ingest-service.js';

/**
 * Status and event ingestion behind a real Bridge on an in-process broker, into a real LevelInventory:
 * what a device publishes on its own status/events topics ends up in the inventory once, in order;
 * anything else is dropped with a rate-limited warning and never answered.
 */
const topics = new Topics('fleet/v1');
const T0 = Date.UTC(2026, 0, 1);

interface Line {
  level: 'info' | 'warn' | 'error';
  obj: Record<string, unknown>;
  msg: string;
}

function recorder(): { lines: Line[]; logger: { info: (o: object, m: string) => void; warn: (o: object, m: string) => void; error: (o: object, m: string) => void } } {
  const lines: Line[] = [];
  const at = (level: Line['level']) => (obj: object, msg: string) => void lines.push({ level, obj: obj as Record<string, unknown>, msg });
  return { lines, logger: { info: at('info'), warn: at('warn'), error: at('error') } };
}

const status = (deviceId: string, over: Partial<DeviceStatus> = {}): DeviceStatus => ({
  deviceId,
  online: true,
  state: 'online',
  certSerial: '4a01',
  certNotAfter: T0 + 86_400_000,
  slot: 'A',
  agentVersion: '0.1.0',
  ...over,
});

const event = (seq: number, over: Partial<DeviceEvent> = {}): DeviceEvent => ({ type: 'rotated', at: T0 + seq, seq, serial: '4a02', previousSerial: '4a01', slot: 'B', ...over });
const eventId = (seq: number) => `evt-${String(seq).padStart(6, '0')}`;

describe('IngestService', () => {
  let dir: string;
  let inventory: LevelInventory;
  let clock: ManualClock;
  let broker: MemoryBroker;
  let bridge: Bridge;
  let bridgeTransport: MemoryTransport;
  let device: MemoryTransport;
  let log: ReturnType<typeof recorder>;
  let ingest: IngestService;
  /** Messages the ingest service has finished with, through the bridge. */
  let handled: number;
  const counted = () => ({
    filters: () => ingest.filters(),
    handle: async (topic: string, payload: Buffer, meta?: { retain: boolean }) => {
      try {
        return await ingest.handle(topic, payload, meta);
      } finally {
        handled++;
      }
    },
  });

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'ingest-test-'));
    inventory = new LevelInventory(join(dir, 'inventory'));
    await inventory.open();
    for (const deviceId of ['dev-a', 'dev-b']) {
      await inventory.registerDevice({ deviceId, ekPublicHash: 'ab'.repeat(32), ekCertificate: 'AAAA', ekKind: 'ecc', metadata: {}, registeredAt: T0 });
    }
    clock = new ManualClock(T0 + 1000);
    broker = new MemoryBroker();
    log = recorder();
    ingest = new IngestService({ inventory, clock, topics, logger: log.logger, warnIntervalMs: 60_000 });
    handled = 0;
    bridgeTransport = new MemoryTransport(broker, { clientId: 'role:bridge', onError: () => {} });
    bridge = new Bridge({ transport: bridgeTransport, topics, handlers: [counted()], trustBundle: async () => Buffer.from('{}'), logger: log.logger, clock });
    await bridge.start();
    device = new MemoryTransport(broker, { clientId: 'dev-a', onError: () => {} });
    await device.connect();
  });

  afterEach(async () => {
    await device.close();
    await bridge.stop();
    await inventory.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Delivery is asynchronous: turns the event loop until `until` holds (bounded). */
  const settle = async (until: () => boolean | Promise<boolean>) => {
    for (let i = 0; i < 10_000 && !(await until()); i++) await new Promise((r) => setImmediate(r));
    expect(await until()).toBe(true);
  };
  const handledAll = (n: number) => () => handled === n;
  const publishEvent = (deviceId: string, id: string, body: DeviceEvent, via = device) => via.publish(topics.device(deviceId, 'events'), encode('events', id, T0, body));

  it('records a live status: state, serial, online and last seen (bridge clock)', async () => {
    await device.publish(topics.device('dev-a', 'status'), encode('status', 'status-req-1', T0 + 500, status('dev-a')), { retain: true });
    await settle(handledAll(1));
    const rec = inventory.getDevice('dev-a')!;
    expect(rec.status).toEqual({ online: true, state: 'online', certSerial: '4a01', certNotAfter: T0 + 86_400_000, slot: 'A', agentVersion: '0.1.0' });
    expect(rec.online).toBe(true);
    expect(rec.lastSeenAt).toBe(T0 + 1000);
    expect(log.lines.filter((l) => l.level !== 'info')).toEqual([]);
    // Nothing is ever answered on these topics: the bridge published nothing.
    expect(bridgeTransport.stats().published).toBe(1); // the (empty) trust bundle
  });

  it('records events once each, in arrival order, with their optional fields as details', async () => {
    for (let seq = 1; seq <= 40; seq++) await publishEvent('dev-a', eventId(seq), event(seq));
    // QoS1 redelivery / a resend after a device restart: same ids again.
    await publishEvent('dev-a', eventId(7), event(7));
    await publishEvent('dev-a', eventId(40), event(40));
    await publishEvent('dev-a', eventId(41), event(41, { type: 'clock_skew', skewMs: -5000, serial: undefined, previousSerial: undefined, slot: undefined }));
    await settle(handledAll(43));
    const events = await inventory.listDeviceEvents('dev-a');
    expect(events.map((e) => e.seq)).toEqual(Array.from({ length: 41 }, (_, i) => i + 1));
    expect(events.map((e) => e.id)).toEqual(Array.from({ length: 41 }, (_, i) => eventId(i + 1)));
    expect(events[0]).toEqual({
      id: eventId(1),
      deviceId: 'dev-a',
      type: 'rotated',
      at: T0 + 1,
      seq: 1,
      details: { serial: '4a02', previousSerial: '4a01', slot: 'B' },
      receivedAt: T0 + 1000,
    });
    expect(events[40]).toMatchObject({ type: 'clock_skew', details: { skewMs: -5000 } });
    expect(inventory.getDevice('dev-a')?.lastSeenAt).toBe(T0 + 1000);
    expect(log.lines.filter((l) => l.level !== 'info')).toEqual([]);
  });

  it('drops malformed messages without writing, with one warning per device per interval', async () => {
    const statusTopic = topics.device('dev-a', 'status');
    const eventsTopic = topics.device('dev-a', 'events');
    await device.publish(eventsTopic, Buffer.from('not json'));
    await device.publish(eventsTopic, encode('events', eventId(1), T0, { ...event(1), type: 'exploded' as never }));
    await device.publish(eventsTopic, Buffer.alloc(3000, 0x20)); // over the 2 KiB events limit
    await device.publish(statusTopic, encode('status', 'status-req-1', T0, status('dev-b'))); // names another device
    await device.publish(statusTopic, Buffer.from('{"v":1}'));
    await settle(handledAll(5));
    expect(await inventory.listDeviceEvents('dev-a')).toEqual([]);
    expect(inventory.getDevice('dev-a')?.status).toBeUndefined();
    expect(inventory.getDevice('dev-a')?.lastSeenAt).toBeUndefined();
    const warns = log.lines.filter((l) => l.level === 'warn');
    expect(warns).toHaveLength(1);
    expect(warns[0]!.obj).toMatchObject({ deviceId: 'dev-a', kind: 'events', code: 'SCHEMA_NOT_JSON' });

    // The next interval: one line again, saying how many were held back.
    clock.advance(60_000);
    await device.publish(statusTopic, encode('status', 'status-req-2', T0, status('dev-b')));
    await settle(handledAll(6));
    expect(log.lines.filter((l) => l.level === 'warn')[1]!.obj).toMatchObject({ deviceId: 'dev-a', kind: 'status', code: 'DEVICE_ID_MISMATCH', suppressed: 4 });

    // A well-formed message still goes through.
    await publishEvent('dev-a', eventId(1), event(1));
    await settle(handledAll(7));
    expect((await inventory.listDeviceEvents('dev-a')).map((e) => e.id)).toEqual([eventId(1)]);
    // The bridge's publishes: the trust bundle, and the acknowledgment of the one event it recorded (none for the malformed ones).
    expect(bridgeTransport.stats().published).toBe(2);
  });

  it('warns about unknown devices (rate-limited per device) and writes nothing', async () => {
    const stranger = new MemoryTransport(broker, { clientId: 'dev-x', onError: () => {} });
    await stranger.connect();
    try {
      for (let seq = 1; seq <= 20; seq++) await publishEvent('dev-x', eventId(seq), event(seq), stranger);
      await stranger.publish(topics.device('dev-x', 'status'), encode('status', 'status-req-1', T0, status('dev-x')));
      await publishEvent('dev-a', eventId(1), event(1));
      await settle(handledAll(22));
      expect((await inventory.listDeviceEvents('dev-a')).length).toBe(1);
      expect(inventory.getDevice('dev-x')).toBeUndefined();
      expect(await inventory.listDeviceEvents('dev-x')).toEqual([]);
      const warns = log.lines.filter((l) => l.level === 'warn');
      expect(warns).toHaveLength(1);
      expect(warns[0]!.obj).toMatchObject({ deviceId: 'dev-x', kind: 'events' });
    } finally {
      await stranger.close();
    }
  });

  it('a retained status replayed by a resubscription is not a sign of life; a changed one is dated when sent', async () => {
    await device.publish(topics.device('dev-a', 'status'), encode('status', 'status-req-1', T0 + 500, status('dev-a')), { retain: true });
    await settle(handledAll(1));
    expect(inventory.getDevice('dev-a')?.lastSeenAt).toBe(T0 + 1000);
    await bridge.stop();
    // While the bridge is away, dev-b reports (its status is retained), then an hour passes.
    const devB = new MemoryTransport(broker, { clientId: 'dev-b', onError: () => {} });
    await devB.connect();
    await devB.publish(topics.device('dev-b', 'status'), encode('status', 'status-req-2', T0 + 2000, status('dev-b', { slot: 'B' })), { retain: true });
    await devB.close();
    clock.advance(3_600_000);
    bridgeTransport = new MemoryTransport(broker, { clientId: 'role:bridge', onError: () => {} });
    bridge = new Bridge({ transport: bridgeTransport, topics, handlers: [counted()], trustBundle: async () => Buffer.from('{}'), logger: log.logger, clock });
    await bridge.start();
    await settle(handledAll(3));
    expect(inventory.getDevice('dev-a')?.lastSeenAt).toBe(T0 + 1000);
    expect(inventory.getDevice('dev-b')).toMatchObject({ lastSeenAt: T0 + 2000, online: true, status: { slot: 'B' } });
  });

  it('the same status, sent again while the bridge was away, is a sign of life dated when sent; a sending time ahead of the bridge clock is not', async () => {
    const statusTopic = topics.device('dev-a', 'status');
    const restartBridge = async (handled: number) => {
      bridgeTransport = new MemoryTransport(broker, { clientId: 'role:bridge', onError: () => {} });
      bridge = new Bridge({ transport: bridgeTransport, topics, handlers: [counted()], trustBundle: async () => Buffer.from('{}'), logger: log.logger, clock });
      await bridge.start();
      await settle(handledAll(handled));
    };
    await device.publish(statusTopic, encode('status', 'status-req-1', T0 + 500, status('dev-a')), { retain: true });
    await settle(handledAll(1));
    const seen = inventory.getDevice('dev-a')!.lastSeenAt!;
    // The broker restarts; the device is back before the bridge and says the same thing again.
    await bridge.stop();
    clock.advance(5_000);
    await device.publish(statusTopic, encode('status', 'status-req-2', clock.now(), status('dev-a')), { retain: true });
    const resent = clock.now();
    clock.advance(1_000);
    await restartBridge(2);
    expect(resent).toBeGreaterThan(seen);
    expect(inventory.getDevice('dev-a')?.lastSeenAt).toBe(resent);
    // A device whose clock runs an hour ahead: its replayed status does not make it look alive.
    await bridge.stop();
    await device.publish(statusTopic, encode('status', 'status-req-3', clock.now() + 3_600_000, status('dev-a')), { retain: true });
    clock.advance(1_000);
    await restartBridge(3);
    expect(inventory.getDevice('dev-a')?.lastSeenAt).toBe(resent);
  });

  it('writes one device\'s messages strictly in arrival order, even when a write is slow', async () => {
    const calls: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow: Inventory = Object.create(inventory) as Inventory;
    slow.getDevice = (id) => inventory.getDevice(id);
    slow.recordEvents = async (deviceId, events: readonly DeviceEventRecordInput[], at) => {
      calls.push(`start ${events[0]!.id}`);
      if (events[0]!.id === eventId(1)) await gate;
      const out = await inventory.recordEvents(deviceId, events, at);
      calls.push(`end ${events[0]!.id}`);
      return out;
    };
    const service = new IngestService({ inventory: slow, clock, topics });
    const handled = [1, 2, 3].map((seq) => service.handle(topics.device('dev-a', 'events'), encode('events', eventId(seq), T0, event(seq))));
    // Another device is not held up by dev-a's slow write.
    await service.handle(topics.device('dev-b', 'events'), encode('events', eventId(9), T0, event(9)));
    expect(calls).toEqual([`start ${eventId(1)}`, `start ${eventId(9)}`, `end ${eventId(9)}`]);
    release();
    // Each event is acknowledged once recorded, on the device's own events/ack topic, with its id.
    const replies = await Promise.all(handled);
    expect(replies.map((r) => r?.topic)).toEqual(Array(3).fill(topics.device('dev-a', 'eventsAck')));
    expect(replies.map((r) => decode('eventsAck', r!.payload))).toMatchObject([1, 2, 3].map((seq) => ({ requestId: eventId(seq), body: { new: true } })));
    expect(calls.slice(3)).toEqual([`end ${eventId(1)}`, ...[2, 3].flatMap((s) => [`start ${eventId(s)}`, `end ${eventId(s)}`])]);
    expect((await inventory.listDeviceEvents('dev-a')).map((e) => e.seq)).toEqual([1, 2, 3]);
  });

  it('ignores topics that are not status or events', async () => {
    expect(await ingest.handle(topics.enrollment(`enr-${'A'.repeat(22)}`, 'enroll'), Buffer.from('{}'))).toBeUndefined();
    expect(await ingest.handle('elsewhere/dev-a/events', Buffer.from('{}'))).toBeUndefined();
    expect(log.lines.filter((l) => l.level === 'warn')).toEqual([]);
  });
});
