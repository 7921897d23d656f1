import { invokeHandler, notifyListeners, reportSafely } from './dispatch.js';
import { isValidTopicFilter, isValidTopicName, topicMatches } from './topic-match.js';
import {
  DEFAULT_MAX_INCOMING_BYTES,
  defaultErrorHook,
  TransportError,
  type IncomingMessage,
  type LastWill,
  type MessageHandler,
  type PublishOptions,
  type Subscription,
  type Transport,
  type TransportErrorHook,
  type TransportLogger,
  type TransportStats,
} from './transport.js';

/** Returns false to deny, like an ACL file: a denied QoS 1 publish is refused with 0x87, a denied subscribe too. */
export type MemoryAcl = (clientId: string, action: 'publish' | 'subscribe', topic: string) => boolean;

export interface MemoryBrokerOptions {
  acl?: MemoryAcl;
}

const NOT_AUTHORIZED = 0x87;

export interface BrokerSub {
  filter: string;
  active: boolean;
  deliver(msg: IncomingMessage): void;
}

/** One network connection as the broker sees it. */
export interface MemorySession {
  clientId: string;
  will: LastWill | undefined;
  subs: Set<BrokerSub>;
  alive: boolean;
  /** Tells the owning transport the broker dropped the connection. */
  dropped(): void;
}

/**
 * An in-process MQTT broker for unit tests of agent and bridge logic. Every delivery is asynchronous
 * (setImmediate), one copy per matching subscription; retained messages are kept per topic; wills fire
 * on abnormal disconnects. Sessions are always clean. QoS only decides whether a refusal is visible
 * (QoS 1 rejects, QoS 0 is dropped silently, as with a real broker).
 */
export class MemoryBroker {
  #acl: MemoryAcl | undefined;
  #online = true;
  readonly #sessions = new Map<string, MemorySession>();
  readonly #retained = new Map<string, Buffer>();

  constructor(opts?: MemoryBrokerOptions) {
    this.#acl = opts?.acl;
  }

  setAcl(acl: MemoryAcl | undefined): void {
    this.#acl = acl;
  }

  /** The retained payload on `topic`, if any. */
  retained(topic: string): Buffer | undefined {
    const p = this.#retained.get(topic);
    return p && Buffer.from(p);
  }

  connectedClientIds(): string[] {
    return [...this.#sessions.keys()];
  }

  get online(): boolean {
    return this.#online;
  }

  /** Simulates a broker outage: every connection drops (no wills: nobody is left to receive them) and connects fail until `start()`. */
  stop(): void {
    this.#online = false;
    for (const s of [...this.#sessions.values()]) this.#end(s, false);
  }

  start(): void {
    this.#online = true;
  }

  /** @internal MemoryTransport's side of CONNECT. */
  open(clientId: string, will: LastWill | undefined, dropped: () => void): MemorySession {
    if (!this.#online) throw new TransportError('TRANSPORT_UNREACHABLE', 'memory broker is stopped');
    const previous = this.#sessions.get(clientId);
    // Session takeover, as on a real broker: the older connection is dropped and its will fires.
    if (previous) this.#end(previous, true);
    const session: MemorySession = { clientId, will, subs: new Set(), alive: true, dropped };
    this.#sessions.set(clientId, session);
    return session;
  }

  /** @internal Ends a connection; `publishWill` is false only for a clean DISCONNECT. */
  close(session: MemorySession, publishWill: boolean): void {
    if (!session.alive) return;
    session.alive = false;
    for (const sub of session.subs) sub.active = false;
    session.subs.clear();
    if (this.#sessions.get(session.clientId) === session) this.#sessions.delete(session.clientId);
    if (publishWill && session.will) {
      const w = session.will;
      this.publish(session, w.topic, w.payload, w.retain ?? false);
    }
  }

  /** @internal False when the ACL denies it. */
  publish(session: MemorySession, topic: string, payload: Buffer, retain: boolean): boolean {
    if (this.#acl && !this.#acl(session.clientId, 'publish', topic)) return false;
    const copy = Buffer.from(payload);
    if (retain) {
      if (copy.length === 0) this.#retained.delete(topic);
      else this.#retained.set(topic, copy);
    }
    for (const s of this.#sessions.values()) {
      for (const sub of s.subs) {
        if (topicMatches(sub.filter, topic)) schedule(sub, { topic, payload: Buffer.from(copy), retain: false });
      }
    }
    return true;
  }

  /** @internal Undefined when the ACL denies it; retained messages follow asynchronously. */
  subscribe(session: MemorySession, filter: string, deliver: (msg: IncomingMessage) => void): BrokerSub | undefined {
    if (!session.alive) return undefined;
    if (this.#acl && !this.#acl(session.clientId, 'subscribe', filter)) return undefined;
    const sub: BrokerSub = { filter, active: true, deliver };
    session.subs.add(sub);
    for (const [topic, payload] of this.#retained) {
      if (topicMatches(filter, topic)) schedule(sub, { topic, payload: Buffer.from(payload), retain: true });
    }
    return sub;
  }

  /** @internal */
  unsubscribe(session: MemorySession, sub: BrokerSub): void {
    sub.active = false;
    session.subs.delete(sub);
  }

  #end(session: MemorySession, publishWill: boolean): void {
    const wasAlive = session.alive;
    this.close(session, publishWill);
    if (wasAlive) session.dropped();
  }
}

function schedule(sub: BrokerSub, msg: IncomingMessage): void {
  setImmediate(() => {
    if (sub.active) sub.deliver(msg);
  });
}

function tick(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export interface MemoryTransportOptions {
  clientId: string;
  will?: LastWill;
  /** Default 64 KiB, as MqttTransport. */
  maxIncomingBytes?: number;
  /** Reconnect delay after a drop; 0 disables. Default 10. */
  reconnectPeriodMs?: number;
  logger?: TransportLogger;
  onError?: TransportErrorHook;
}

interface MemoryRecord {
  filter: string;
  handler: MessageHandler;
  brokerSub: BrokerSub | undefined;
}

/** `Transport` on a `MemoryBroker`, with the same error codes and delivery rules as MqttTransport. */
export class MemoryTransport implements Transport {
  readonly #broker: MemoryBroker;
  readonly #opts: MemoryTransportOptions;
  readonly #onError: TransportErrorHook;
  readonly #maxIncoming: number;
  #session: MemorySession | undefined;
  #closed = false;
  #reconnectTimer: NodeJS.Timeout | undefined;
  readonly #records = new Set<MemoryRecord>();
  readonly #listeners = new Set<(connected: boolean) => void>();
  readonly #stats: TransportStats = { received: 0, dropped: 0, published: 0 };

  constructor(broker: MemoryBroker, opts: MemoryTransportOptions) {
    this.#broker = broker;
    this.#opts = opts;
    this.#onError = opts.onError ?? defaultErrorHook(opts.logger, { clientId: opts.clientId });
    this.#maxIncoming = opts.maxIncomingBytes ?? DEFAULT_MAX_INCOMING_BYTES;
  }

  get connected(): boolean {
    return this.#session?.alive === true;
  }

  stats(): TransportStats {
    return { ...this.#stats };
  }

  async connect(): Promise<void> {
    if (this.#closed) throw closedError();
    if (this.connected) return;
    await tick();
    if (this.#closed) throw closedError();
    if (this.connected) return;
    this.#open();
  }

  async publish(topic: string, payload: Buffer, opts?: PublishOptions): Promise<void> {
    if (!isValidTopicName(topic)) throw new TransportError('TRANSPORT_INVALID_TOPIC', `invalid topic ${JSON.stringify(topic)}`);
    this.#requireSession();
    const qos = opts?.qos ?? 1;
    // The broker receives the PUBLISH a turn later, like a packet on a socket.
    await tick();
    const session = this.#requireSession();
    const accepted = this.#broker.publish(session, topic, payload, opts?.retain ?? false);
    if (!accepted && qos === 1) {
      throw new TransportError('TRANSPORT_PUBLISH_REFUSED', `broker refused publish to ${topic}: Not authorized`, {
        details: { topic, reasonCode: NOT_AUTHORIZED },
      });
    }
    this.#stats.published++;
  }

  async subscribe(filter: string, handler: MessageHandler): Promise<Subscription> {
    if (!isValidTopicFilter(filter)) throw new TransportError('TRANSPORT_INVALID_TOPIC', `invalid topic filter ${JSON.stringify(filter)}`);
    this.#requireSession();
    await tick();
    const session = this.#requireSession();
    const record: MemoryRecord = { filter, handler, brokerSub: undefined };
    record.brokerSub = this.#broker.subscribe(session, filter, (msg) => this.#deliver(record, msg));
    if (!record.brokerSub) {
      throw new TransportError('TRANSPORT_SUBSCRIBE_REFUSED', `broker refused subscription to ${filter} (reason 0x87)`, {
        details: { filter, reasonCode: NOT_AUTHORIZED },
      });
    }
    this.#records.add(record);
    let active = true;
    return {
      unsubscribe: async () => {
        if (!active) return;
        active = false;
        this.#records.delete(record);
        if (record.brokerSub && this.#session) this.#broker.unsubscribe(this.#session, record.brokerSub);
        await tick();
      },
    };
  }

  onConnectionChange(listener: (connected: boolean) => void): () => void {
    const wrapped = (c: boolean): void => listener(c);
    this.#listeners.add(wrapped);
    return () => {
      this.#listeners.delete(wrapped);
    };
  }

  /** The network connection dies without DISCONNECT: the broker publishes the will; reconnects if enabled. */
  simulateDrop(): void {
    const session = this.#session;
    if (!session?.alive) return;
    this.#broker.close(session, true);
    this.#onDropped(session);
  }

  async close(opts?: { force?: boolean }): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#reconnectTimer);
    const session = this.#session;
    this.#session = undefined;
    this.#records.clear();
    if (session?.alive) {
      this.#broker.close(session, opts?.force === true);
      notifyListeners(this.#listeners, false, this.#onError);
    }
    this.#listeners.clear();
    await tick();
  }

  #open(): void {
    const session = this.#broker.open(this.#opts.clientId, this.#opts.will, () => this.#onDropped(session));
    this.#session = session;
    for (const record of this.#records) {
      record.brokerSub = this.#broker.subscribe(session, record.filter, (msg) => this.#deliver(record, msg));
      if (!record.brokerSub) {
        reportSafely(
          this.#onError,
          new TransportError('TRANSPORT_SUBSCRIBE_REFUSED', `broker refused resubscription to ${record.filter}`, {
            details: { filter: record.filter, reasonCode: NOT_AUTHORIZED },
          }),
        );
      }
    }
    notifyListeners(this.#listeners, true, this.#onError);
  }

  #onDropped(session: MemorySession): void {
    if (this.#session !== session) return;
    this.#opts.logger?.warn({ clientId: this.#opts.clientId }, 'memory transport connection lost');
    notifyListeners(this.#listeners, false, this.#onError);
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    const period = this.#opts.reconnectPeriodMs ?? 10;
    if (period <= 0 || this.#closed) return;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      if (this.#closed || this.connected) return;
      if (!this.#broker.online) {
        this.#scheduleReconnect();
        return;
      }
      this.#open();
    }, period);
    // A forgotten transport must not keep a test process alive.
    this.#reconnectTimer.unref();
  }

  #deliver(record: MemoryRecord, msg: IncomingMessage): void {
    if (!this.#records.has(record)) return;
    if (msg.payload.length > this.#maxIncoming) {
      this.#stats.dropped++;
      reportSafely(
        this.#onError,
        new TransportError('TRANSPORT_PAYLOAD_TOO_LARGE', `dropped ${msg.payload.length}-byte message on ${msg.topic} (limit ${this.#maxIncoming})`, {
          details: { topic: msg.topic, bytes: msg.payload.length, limit: this.#maxIncoming },
        }),
      );
      return;
    }
    this.#stats.received++;
    invokeHandler(record.handler, msg, record.filter, this.#onError);
  }

  #requireSession(): MemorySession {
    if (this.#closed) throw closedError();
    const s = this.#session;
    if (!s?.alive) throw new TransportError('TRANSPORT_NOT_CONNECTED', 'memory transport is not connected');
    return s;
  }
}

function closedError(): TransportError {
  return new TransportError('TRANSPORT_CLOSED', 'transport is closed');
}
