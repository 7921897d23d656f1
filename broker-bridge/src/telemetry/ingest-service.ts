import type { Clock } from '../../../common/clock.js';
import { decode, encode, type DeviceEvent, type DeviceStatus } from '../../../common/protocol/messages.js';
import type { Topics } from '../../../common/protocol/topics.js';
import type { MessageMeta } from '../bridge.js';
import type { EnrollmentLogger, Reply } from '../enrollment/enrollment-service.js';
import type { DeviceEventRecordInput, DeviceStatusSnapshot, Inventory } from '../inventory/inventory.js';

/**
 * Ingests what devices report about themselves: every device's retained `status` and its outbox
 * `events` go into the inventory (last seen, current state and serial, per-device event history).
 *
 * The device id comes from the topic, which the broker's ACL lets only that device publish to. A status
 * is never answered. An event, once it is in the inventory (new, or there already), is acknowledged on
 * the device's `events/ack` topic with its id: only then does the device's outbox drop it, because a
 * broker's PUBACK does not survive the broker's crash. A message from a
 * device the inventory does not know, a malformed payload or a failed write is dropped with a warning
 * (and an event is not acknowledged, so the device sends it again later);
 * warnings are limited per device (`warnIntervalMs`) so a flooding device cannot flood the log.
 *
 * Writes for one device happen in arrival order (the outbox sends in order; the history keeps it).
 * Events are deduplicated by id in the inventory (QoS1 redelivery, resends after a device restart).
 */
export interface IngestServiceOptions {
  readonly inventory: Inventory;
  readonly clock: Clock;
  readonly topics: Topics;
  readonly logger?: EnrollmentLogger;
  /** At most one warning per device per interval; the ones held back are counted in the next. Default 60 000. */
  readonly warnIntervalMs?: number;
  /**
   * Told of every event once it is in the inventory, before it is acknowledged (a repeat of a recorded
   * one too, so a sink that failed gets it again with the device's resend). Rejecting leaves the event
   * unacknowledged. The campaign service listens here.
   */
  readonly onEvent?: (deviceId: string, event: IngestedEvent) => Promise<void>;
}

/** An event as the sinks see it: its type, its details and when it reached the bridge. */
export interface IngestedEvent {
  readonly type: string;
  readonly receivedAt: number;
  readonly details: Readonly<Record<string, string | number>>;
  /** The inventory held it already (a resend): `receivedAt` is this arrival, not the first. */
  readonly duplicate: boolean;
}

/** Devices whose warning state is remembered; the oldest is forgotten beyond this. */
const MAX_WARN_ENTRIES = 10_000;

const noopLogger: EnrollmentLogger = { info() {}, warn() {}, error() {} };

export class IngestService {
  readonly #o: IngestServiceOptions;
  readonly #log: EnrollmentLogger;
  readonly #warnIntervalMs: number;
  /** Per device: the tail of its write chain (removed when it settles idle). */
  readonly #chains = new Map<string, Promise<Reply | undefined>>();
  readonly #warned = new Map<string, { at: number; held: number }>();

  constructor(options: IngestServiceOptions) {
    this.#o = options;
    this.#log = options.logger ?? noopLogger;
    this.#warnIntervalMs = options.warnIntervalMs ?? 60_000;
  }

  filters(): string[] {
    return [this.#o.topics.allDevices('status'), this.#o.topics.allDevices('events')];
  }

  /** Records one status or event; never rejects; answers a recorded event with its acknowledgment. */
  async handle(topic: string, payload: Buffer, meta?: MessageMeta): Promise<Reply | undefined> {
    const parsed = this.#o.topics.parseDevice(topic);
    if (!parsed || (parsed.topic !== 'status' && parsed.topic !== 'events')) return undefined;
    const { deviceId } = parsed;
    const receivedAt = this.#o.clock.now();
    const kind = parsed.topic;
    const previous = this.#chains.get(deviceId) ?? Promise.resolve();
    const work = previous.then(() => this.#ingest(kind, deviceId, payload, receivedAt, meta?.retain === true));
    this.#chains.set(deviceId, work);
    const reply = await work;
    if (this.#chains.get(deviceId) === work) this.#chains.delete(deviceId);
    return reply;
  }

  async #ingest(kind: 'status' | 'events', deviceId: string, payload: Buffer, receivedAt: number, retained: boolean): Promise<Reply | undefined> {
    try {
      // An empty retained message clears the topic: nothing to record.
      if (kind === 'status' && payload.length === 0) return;
      const device = this.#o.inventory.getDevice(deviceId);
      if (!device) {
        this.#warn(deviceId, { kind }, 'message from a device the inventory does not know; dropped');
        return;
      }
      if (kind === 'status') await this.#status(deviceId, payload, receivedAt, retained, device.status, device.lastSeenAt);
      else return await this.#event(deviceId, payload, receivedAt);
    } catch (e) {
      const err = e as { code?: string; path?: string; message?: string };
      this.#warn(deviceId, { kind, code: err.code, ...(err.path ? { path: err.path } : {}) }, `device ${kind} not recorded: ${err.message ?? String(e)}`);
    }
    return undefined;
  }

  async #status(
    deviceId: string,
    payload: Buffer,
    receivedAt: number,
    retained: boolean,
    stored: DeviceStatusSnapshot | undefined,
    lastSeenAt: number | undefined,
  ): Promise<void> {
    const msg = decode('status', payload);
    if (msg.body.deviceId !== deviceId) {
      this.#warn(deviceId, { kind: 'status', code: 'DEVICE_ID_MISMATCH' }, 'status names another device; dropped');
      return;
    }
    const snapshot = toSnapshot(msg.body);
    let at = receivedAt;
    if (retained) {
      // Replayed because the bridge (re)subscribed: not a sign of life now. Recorded only if it is news,
      // dated no later than the device said it sent it, and never before what was already seen. News is
      // a changed status, or the same one sent after we last saw the device (it reconnected while the
      // bridge was away, e.g. both after a broker restart, and the device was first). A sending time
      // ahead of our clock proves nothing: the device's clock may be wrong.
      const sentSinceSeen = msg.sentAt > (lastSeenAt ?? 0) && msg.sentAt <= receivedAt + SENT_AT_TOLERANCE_MS;
      if (stored && sameSnapshot(stored, snapshot) && !sentSinceSeen) return;
      at = Math.max(lastSeenAt ?? 0, Math.min(receivedAt, msg.sentAt));
    }
    await this.#o.inventory.recordStatus(deviceId, snapshot, at);
  }

  async #event(deviceId: string, payload: Buffer, receivedAt: number): Promise<Reply> {
    const msg = decode('events', payload);
    const input: DeviceEventRecordInput = { id: msg.requestId, type: msg.body.type, at: msg.body.at, seq: msg.body.seq, details: eventDetails(msg.body) };
    const recorded = await this.#o.inventory.recordEvents(deviceId, [input], receivedAt);
    await this.#o.onEvent?.(deviceId, { type: input.type, receivedAt, details: input.details, duplicate: recorded.length === 0 });
    return {
      topic: this.#o.topics.device(deviceId, 'eventsAck'),
      payload: encode('eventsAck', msg.requestId, this.#o.clock.now(), { new: recorded.length > 0 }),
    };
  }

  #warn(deviceId: string, fields: Record<string, unknown>, msg: string): void {
    const now = this.#o.clock.now();
    const entry = this.#warned.get(deviceId);
    if (entry && now - entry.at < this.#warnIntervalMs) {
      entry.held++;
      return;
    }
    this.#warned.delete(deviceId);
    this.#warned.set(deviceId, { at: now, held: 0 });
    if (this.#warned.size > MAX_WARN_ENTRIES) this.#warned.delete(this.#warned.keys().next().value as string);
    this.#log.warn({ deviceId, ...fields, ...(entry?.held ? { suppressed: entry.held } : {}) }, msg);
  }
}

/** How far ahead of the bridge's clock a device's sending time may be and still count (clock jitter). */
const SENT_AT_TOLERANCE_MS = 30_000;

function toSnapshot(body: DeviceStatus): DeviceStatusSnapshot {
  const { deviceId: _id, ...rest } = body;
  return Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined)) as unknown as DeviceStatusSnapshot;
}

function sameSnapshot(a: DeviceStatusSnapshot, b: DeviceStatusSnapshot): boolean {
  const x = a as unknown as Record<string, unknown>;
  const y = b as unknown as Record<string, unknown>;
  const ka = Object.keys(x).filter((k) => x[k] !== undefined);
  const kb = Object.keys(y).filter((k) => y[k] !== undefined);
  return ka.length === kb.length && ka.every((k) => x[k] === y[k]);
}

/** The event's optional fields that are present. */
function eventDetails(body: DeviceEvent): Record<string, string | number> {
  const { type: _t, at: _a, seq: _s, ...rest } = body;
  const details: Record<string, string | number> = {};
  for (const [k, v] of Object.entries(rest)) if (typeof v === 'string' || typeof v === 'number') details[k] = v;
  return details;
}
