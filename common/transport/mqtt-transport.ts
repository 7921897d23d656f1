import { connect as mqttConnect, type IClientOptions, type IConnackPacket, type IPublishPacket, type MqttClient } from 'mqtt';
import { invokeHandler, notifyListeners, reportSafely } from './dispatch.js';
import { isValidTopicFilter, isValidTopicName, topicMatches } from './topic-match.js';
import {
  DEFAULT_MAX_INCOMING_BYTES,
  defaultErrorHook,
  TransportError,
  type LastWill,
  type MessageHandler,
  type PublishOptions,
  type SubscribeOptions,
  type Subscription,
  type Transport,
  type TransportErrorCode,
  type TransportErrorHook,
  type TransportLogger,
  type TransportStats,
} from './transport.js';

type Pem = string | Buffer;

interface TlsCommon {
  ca?: Pem | Pem[];
  cert?: Pem | Pem[];
  /** Default: the URL's host when it is a name (Node refuses IP addresses as SNI). */
  servername?: string;
  /** Default true. */
  rejectUnauthorized?: boolean;
}

/** Passed through to `tls.connect`; the engine form keeps the private key in a TPM or token. */
export type MqttTlsOptions = TlsCommon &
  ({ key?: Pem; privateKeyEngine?: never; privateKeyIdentifier?: never } | { key?: never; privateKeyEngine: string; privateKeyIdentifier: string });

export interface MqttTransportOptions {
  /** e.g. `mqtts://127.0.0.1:8883`. */
  url: string;
  clientId: string;
  tls?: MqttTlsOptions;
  username?: string;
  password?: string | Buffer;
  will?: LastWill;
  /** Bound on one connect attempt (TCP + TLS + CONNACK). Default 10 000. */
  connectTimeoutMs?: number;
  /** Delay between reconnect attempts after a connection was lost; 0 disables reconnecting. Default 1000. */
  reconnectPeriodMs?: number;
  /** Default 60. */
  keepaliveSec?: number;
  /** Default true. */
  clean?: boolean;
  /** MQTT 5 session lifetime when `clean` is false (a 0 expiry would end the session at disconnect). Default 3600. */
  sessionExpirySec?: number;
  /**
   * Default 5. With 4 (MQTT 3.1.1) there are no subscription identifiers: messages are routed by topic match,
   * so a broker that sends one copy per overlapping subscription would deliver duplicates (mosquitto does not for 3.1.1).
   */
  protocolVersion?: 4 | 5;
  /** Larger incoming payloads are dropped, counted and reported. Default 64 KiB. */
  maxIncomingBytes?: number;
  logger?: TransportLogger;
  /** Failures without a caller to reject (handler errors, dropped messages, failed resubscribes, refused reconnects). */
  onError?: TransportErrorHook;
}

interface FilterEntry {
  filter: string;
  qos: 0 | 1;
  records: Set<SubRecord>;
  /** Subscription identifiers issued for this filter, newest last (a few, for messages still in flight). */
  subIds: number[];
}

interface SubRecord {
  handler: MessageHandler;
  entry: FilterEntry;
}

interface SubIdRef {
  entry: FilterEntry;
  /**
   * Who asked for the SUBSCRIBE that carried this identifier. Retained messages the broker sends in reply
   * go only to them, so a second handler on a filter does not replay retained state to the first.
   */
  retainedFor: Set<SubRecord>;
}

const KEPT_SUB_IDS = 4;
const MAX_SUB_ID = 268_435_455;
const CLOSE_TIMEOUT_MS = 2000;

const NETWORK_CODES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EADDRNOTAVAIL']);

/**
 * `Transport` over MQTT.js. Subscriptions are kept here rather than in MQTT.js so that each one can carry an
 * MQTT 5 subscription identifier: mosquitto delivers one copy per matching subscription, and the
 * identifiers let every copy reach exactly the handlers of its own subscription.
 */
export class MqttTransport implements Transport {
  readonly #opts: MqttTransportOptions;
  readonly #onError: TransportErrorHook;
  readonly #maxIncoming: number;
  readonly #reconnectPeriodMs: number;
  readonly #connectTimeoutMs: number;

  #client: MqttClient | undefined;
  #connected = false;
  #closed = false;
  #closePromise: Promise<void> | undefined;
  #connectPromise: Promise<void> | undefined;
  #abortConnect: ((err: TransportError) => void) | undefined;
  #subIdsAvailable = true;
  #nextSubId = 1;
  readonly #entries = new Map<string, FilterEntry>();
  readonly #bySubId = new Map<number, SubIdRef>();
  readonly #removedWhileOffline = new Set<string>();
  readonly #pendingPublishes = new Set<(err: TransportError) => void>();
  /**
   * SUBSCRIBE/UNSUBSCRIBE awaiting their ACK. A connection that drops (or is closed) first never
   * acknowledges them, and MQTT.js does not always call back: they end here instead of hanging.
   */
  readonly #pendingAcks = new Set<(err: TransportError) => void>();
  readonly #listeners = new Set<(connected: boolean) => void>();
  readonly #reportedThisOutage = new Set<TransportErrorCode>();
  readonly #stats: TransportStats = { received: 0, dropped: 0, published: 0 };

  constructor(opts: MqttTransportOptions) {
    this.#opts = opts;
    this.#onError = opts.onError ?? defaultErrorHook(opts.logger, { clientId: opts.clientId });
    this.#maxIncoming = opts.maxIncomingBytes ?? DEFAULT_MAX_INCOMING_BYTES;
    this.#reconnectPeriodMs = opts.reconnectPeriodMs ?? 1000;
    this.#connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
  }

  get connected(): boolean {
    return this.#connected;
  }

  stats(): TransportStats {
    return { ...this.#stats };
  }

  connect(): Promise<void> {
    if (this.#closed) return Promise.reject(closedError());
    if (this.#connected) return Promise.resolve();
    this.#connectPromise ??= this.#attempt().finally(() => {
      this.#connectPromise = undefined;
    });
    return this.#connectPromise;
  }

  async publish(topic: string, payload: Buffer, opts?: PublishOptions): Promise<void> {
    if (!isValidTopicName(topic)) throw new TransportError('TRANSPORT_INVALID_TOPIC', `invalid topic ${JSON.stringify(topic)}`);
    const client = this.#requireConnected();
    const qos = opts?.qos ?? 1;
    return new Promise<void>((resolve, reject) => {
      const abort = (err: TransportError): void => reject(err);
      if (qos === 1) this.#pendingPublishes.add(abort);
      client.publish(topic, payload, { qos, retain: opts?.retain ?? false }, (err) => {
        this.#pendingPublishes.delete(abort);
        if (!err) {
          this.#stats.published++;
          resolve();
          return;
        }
        const reasonCode = (err as { code?: unknown }).code;
        if (typeof reasonCode === 'number') {
          reject(
            new TransportError('TRANSPORT_PUBLISH_REFUSED', `broker refused publish to ${topic}: ${err.message}`, {
              details: { topic, reasonCode },
            }),
          );
        } else {
          reject(this.#lostError(`publish to ${topic}`, err));
        }
      });
    });
  }

  async subscribe(filter: string, handler: MessageHandler, opts?: SubscribeOptions): Promise<Subscription> {
    if (!isValidTopicFilter(filter)) throw new TransportError('TRANSPORT_INVALID_TOPIC', `invalid topic filter ${JSON.stringify(filter)}`);
    this.#requireConnected();
    const qos = opts?.qos ?? 1;
    let entry = this.#entries.get(filter);
    if (entry) {
      entry.qos = Math.max(entry.qos, qos) as 0 | 1;
    } else {
      entry = { filter, qos, records: new Set(), subIds: [] };
      this.#entries.set(filter, entry);
    }
    this.#removedWhileOffline.delete(filter);
    // Registered before SUBSCRIBE goes out: retained messages may be parsed before the SUBACK callback runs.
    const record: SubRecord = { handler, entry };
    entry.records.add(record);
    try {
      await this.#sendSubscribe(entry, new Set([record]));
    } catch (e) {
      this.#dropRecord(record);
      throw e;
    }
    let active = true;
    return {
      unsubscribe: async () => {
        if (!active) return;
        active = false;
        const emptied = this.#dropRecord(record);
        if (emptied) await this.#sendUnsubscribe(filter);
      },
    };
  }

  onConnectionChange(listener: (connected: boolean) => void): () => void {
    // Wrapped so the same function can be registered twice and removed independently.
    const wrapped = (c: boolean): void => listener(c);
    this.#listeners.add(wrapped);
    return () => {
      this.#listeners.delete(wrapped);
    };
  }

  close(opts?: { force?: boolean }): Promise<void> {
    this.#closePromise ??= this.#shutdown(opts?.force ?? false);
    return this.#closePromise;
  }

  async #shutdown(force: boolean): Promise<void> {
    this.#closed = true;
    this.#abortConnect?.(closedError());
    const client = this.#client;
    this.#client = undefined;
    const wasConnected = this.#connected;
    this.#connected = false;
    this.#entries.clear();
    this.#bySubId.clear();
    if (client) {
      // A graceful DISCONNECT is only possible on a live connection; the timer bounds a broker that never answers.
      const graceful = !force && wasConnected;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          client.stream?.destroy();
          resolve();
        }, CLOSE_TIMEOUT_MS);
        client.end(!graceful, {}, () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    for (const abort of this.#pendingPublishes) abort(closedError());
    this.#pendingPublishes.clear();
    this.#abortAcks(closedError());
    if (wasConnected) notifyListeners(this.#listeners, false, this.#onError);
    this.#listeners.clear();
  }

  #attempt(): Promise<void> {
    const previous = this.#client;
    this.#client = undefined;
    previous?.end(true);
    let address: BrokerAddress;
    try {
      address = brokerAddress(this.#opts.url);
    } catch (e) {
      return Promise.reject(e);
    }
    const client = mqttConnect({ ...address, ...this.#clientOptions() });
    this.#client = client;
    // Request/response traffic is small packets both ways: with Nagle on, each exchange can wait for
    // a delayed ACK (~40 ms). mqtt.js leaves it on.
    (client.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        fail(new TransportError('TRANSPORT_TIMEOUT', `no CONNACK from ${this.#opts.url} within ${this.#connectTimeoutMs} ms`));
      }, this.#connectTimeoutMs);
      const fail = (err: TransportError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#abortConnect = undefined;
        if (this.#client === client) this.#client = undefined;
        client.end(true);
        reject(err);
      };
      this.#abortConnect = fail;
      client.on('error', (e) => {
        if (!settled) fail(classifyConnectError(e, this.#opts.url));
        else if (this.#client === client) this.#onClientError(e);
        else this.#opts.logger?.debug?.({ clientId: this.#opts.clientId, err: e }, 'error on a discarded MQTT client');
      });
      client.on('close', () => {
        if (!settled) fail(new TransportError('TRANSPORT_CONNECTION_LOST', `connection to ${this.#opts.url} closed before CONNACK`));
        else if (this.#client === client) this.#onClientClose();
      });
      client.on('connect', (connack: IConnackPacket) => {
        if (this.#client !== client) return;
        const first = !settled;
        if (first) {
          settled = true;
          clearTimeout(timer);
          this.#abortConnect = undefined;
        }
        this.#onConnected(connack);
        if (first) resolve();
      });
      client.on('message', (topic: string, payload: Buffer, packet: IPublishPacket) => {
        if (this.#client === client) this.#route(topic, payload, packet);
      });
    });
  }

  #clientOptions(): IClientOptions {
    const o = this.#opts;
    const clean = o.clean ?? true;
    const protocolVersion = o.protocolVersion ?? 5;
    const options: IClientOptions & Record<string, unknown> = {
      clientId: o.clientId,
      protocolVersion,
      clean,
      keepalive: o.keepaliveSec ?? 60,
      connectTimeout: this.#connectTimeoutMs,
      reconnectPeriod: this.#reconnectPeriodMs,
      reconnectOnConnackError: true,
      // Subscriptions are restored here (with fresh identifiers), not by MQTT.js.
      resubscribe: false,
      // Publishing while offline is rejected rather than queued behind an unbounded outage.
      queueQoSZero: false,
      // mqtt-packet otherwise pre-builds a Buffer for every 16-bit number on its first packet: 65,536
      // Buffers, about 7 MiB of heap kept for the life of the process (measured on the device agent,
      // docs/install.md). Building the two bytes when written costs nothing measurable.
      writeCache: false,
    };
    if (!clean && protocolVersion === 5) options.properties = { sessionExpiryInterval: o.sessionExpirySec ?? 3600 };
    if (o.username !== undefined) options.username = o.username;
    if (o.password !== undefined) options.password = o.password;
    if (o.will) {
      options.will = { topic: o.will.topic, payload: o.will.payload, qos: o.will.qos ?? 1, retain: o.will.retain ?? false };
    }
    if (o.tls) {
      const { rejectUnauthorized, ...tls } = o.tls;
      Object.assign(options, tls, { rejectUnauthorized: rejectUnauthorized ?? true });
    }
    return options;
  }

  #onConnected(connack: IConnackPacket): void {
    const wasConnected = this.#connected;
    this.#subIdsAvailable = (this.#opts.protocolVersion ?? 5) === 5 && connack.properties?.subscriptionIdentifiersAvailable !== false;
    this.#connected = true;
    this.#reportedThisOutage.clear();
    // SUBSCRIBEs go on the wire before listeners can publish requests whose answers need them.
    this.#restoreSubscriptions(connack.sessionPresent === true);
    if (!wasConnected) notifyListeners(this.#listeners, true, this.#onError);
  }

  #restoreSubscriptions(sessionPresent: boolean): void {
    if (sessionPresent) {
      for (const filter of this.#removedWhileOffline) void this.#sendUnsubscribe(filter);
      this.#removedWhileOffline.clear();
      return;
    }
    this.#removedWhileOffline.clear();
    for (const entry of this.#entries.values()) {
      this.#sendSubscribe(entry, new Set(entry.records)).catch((err: unknown) => {
        if (err instanceof TransportError && err.code === 'TRANSPORT_SUBSCRIBE_REFUSED') reportSafely(this.#onError, err);
        else this.#opts.logger?.debug?.({ clientId: this.#opts.clientId, filter: entry.filter, err }, 'resubscribe interrupted');
      });
    }
  }

  #onClientClose(): void {
    const wasConnected = this.#connected;
    this.#connected = false;
    // Subscriptions are restored by us on reconnect (#restoreSubscriptions), never by MQTT.js.
    this.#abortAcks(new TransportError('TRANSPORT_CONNECTION_LOST', 'connection lost before SUBACK/UNSUBACK'));
    if (this.#reconnectPeriodMs === 0) {
      // MQTT.js would keep these for a reconnect that is never going to happen.
      for (const abort of this.#pendingPublishes) {
        abort(new TransportError('TRANSPORT_CONNECTION_LOST', 'connection lost before PUBACK (the message may still have been delivered)'));
      }
      this.#pendingPublishes.clear();
    }
    if (wasConnected) {
      this.#opts.logger?.warn({ clientId: this.#opts.clientId, url: this.#opts.url }, 'MQTT connection lost');
      notifyListeners(this.#listeners, false, this.#onError);
    }
  }

  #onClientError(e: Error): void {
    const err = classifyConnectError(e, this.#opts.url);
    const first = !this.#reportedThisOutage.has(err.code);
    this.#reportedThisOutage.add(err.code);
    const log = { clientId: this.#opts.clientId, code: err.code, err: e };
    if (!first) this.#opts.logger?.debug?.(log, err.message);
    // A refused or untrusted reconnect will not fix itself (revoked or expired credentials): someone must act.
    else if (err.code === 'TRANSPORT_CONNECT_REFUSED' || err.code === 'TRANSPORT_TLS_FAILED') reportSafely(this.#onError, err);
    else this.#opts.logger?.warn(log, err.message);
  }

  #route(topic: string, payload: Buffer, packet: IPublishPacket): void {
    if (payload.length > this.#maxIncoming) {
      this.#stats.dropped++;
      reportSafely(
        this.#onError,
        new TransportError('TRANSPORT_PAYLOAD_TOO_LARGE', `dropped ${payload.length}-byte message on ${topic} (limit ${this.#maxIncoming})`, {
          details: { topic, bytes: payload.length, limit: this.#maxIncoming },
        }),
      );
      return;
    }
    const retain = packet.retain === true;
    const targets = new Set<SubRecord>();
    const ids = packet.properties?.subscriptionIdentifier;
    let known = false;
    if (ids !== undefined && this.#subIdsAvailable) {
      for (const id of Array.isArray(ids) ? ids : [ids]) {
        const ref = this.#bySubId.get(id);
        if (!ref) continue;
        known = true;
        for (const r of retain ? ref.retainedFor : ref.entry.records) if (ref.entry.records.has(r)) targets.add(r);
      }
    }
    if (!known) {
      // No identifier, or only identifiers this process never issued: messages a persistent session
      // queued for an earlier process (their subscription identifiers are that process's). Route them
      // by topic rather than drop what the broker already counts as delivered.
      for (const entry of this.#entries.values()) {
        if (topicMatches(entry.filter, topic)) for (const r of entry.records) targets.add(r);
      }
    }
    this.#stats.received++;
    if (targets.size === 0) {
      this.#opts.logger?.debug?.({ clientId: this.#opts.clientId, topic }, 'message for a subscription that no longer exists');
      return;
    }
    const msg = { topic, payload, retain };
    for (const r of targets) invokeHandler(r.handler, msg, r.entry.filter, this.#onError);
  }

  #sendSubscribe(entry: FilterEntry, retainedFor: Set<SubRecord>): Promise<void> {
    const client = this.#requireConnected();
    let properties: { subscriptionIdentifier: number } | undefined;
    if (this.#subIdsAvailable) {
      const id = this.#allocSubId();
      this.#bySubId.set(id, { entry, retainedFor });
      entry.subIds.push(id);
      while (entry.subIds.length > KEPT_SUB_IDS) this.#bySubId.delete(entry.subIds.shift() as number);
      properties = { subscriptionIdentifier: id };
    }
    return new Promise<void>((resolve, reject) => {
      const abort = (e: TransportError): void => reject(e);
      this.#pendingAcks.add(abort);
      client.subscribe(entry.filter, { qos: entry.qos, ...(properties ? { properties } : {}) }, (err, granted) => {
        this.#pendingAcks.delete(abort);
        const rc = err ? (err as { packet?: { granted?: unknown[] } }).packet?.granted?.[0] : granted?.[0]?.qos;
        if (typeof rc === 'number' && rc >= 0x80) {
          reject(
            new TransportError('TRANSPORT_SUBSCRIBE_REFUSED', `broker refused subscription to ${entry.filter} (reason 0x${rc.toString(16)})`, {
              details: { filter: entry.filter, reasonCode: rc },
            }),
          );
        } else if (err) {
          reject(this.#lostError(`subscribe to ${entry.filter}`, err));
        } else {
          resolve();
        }
      });
    });
  }

  async #sendUnsubscribe(filter: string): Promise<void> {
    const client = this.#client;
    if (!client || !this.#connected) {
      // A persistent session keeps the subscription on the broker: remove it there once back.
      if (this.#opts.clean === false && !this.#closed) this.#removedWhileOffline.add(filter);
      return;
    }
    await new Promise<void>((resolve) => {
      const abort = (): void => resolve();
      this.#pendingAcks.add(abort);
      client.unsubscribe(filter, (err) => {
        this.#pendingAcks.delete(abort);
        if (err) this.#opts.logger?.debug?.({ clientId: this.#opts.clientId, filter, err }, 'unsubscribe not acknowledged');
        resolve();
      });
    });
  }

  /** Removes one handler; true when it was the filter's last one (the broker subscription should go too). */
  #dropRecord(record: SubRecord): boolean {
    const entry = record.entry;
    entry.records.delete(record);
    for (const id of entry.subIds) this.#bySubId.get(id)?.retainedFor.delete(record);
    if (entry.records.size > 0 || this.#entries.get(entry.filter) !== entry) return false;
    this.#entries.delete(entry.filter);
    for (const id of entry.subIds) this.#bySubId.delete(id);
    return true;
  }

  #abortAcks(err: TransportError): void {
    for (const abort of this.#pendingAcks) abort(err);
    this.#pendingAcks.clear();
  }

  #allocSubId(): number {
    const id = this.#nextSubId;
    this.#nextSubId = id >= MAX_SUB_ID ? 1 : id + 1;
    return id;
  }

  #requireConnected(): MqttClient {
    if (this.#closed) throw closedError();
    if (!this.#connected || !this.#client) throw new TransportError('TRANSPORT_NOT_CONNECTED', `not connected to ${this.#opts.url}`);
    return this.#client;
  }

  #lostError(what: string, cause: Error): TransportError {
    if (this.#closed) return closedError(cause);
    return new TransportError('TRANSPORT_CONNECTION_LOST', `${what} interrupted: ${cause.message}`, { cause });
  }
}

function closedError(cause?: unknown): TransportError {
  return new TransportError('TRANSPORT_CLOSED', 'transport is closed', cause === undefined ? undefined : { cause });
}

const TLS_CODE = /^(ERR_SSL_|ERR_TLS_)|CERT|SIGNATURE|ISSUER|HOSTNAME_MISMATCH/;

/** Maps what MQTT.js / net / tls report while connecting onto the transport's codes. */
/** What MQTT.js needs of a broker URL, read with the WHATWG URL parser. */
export interface BrokerAddress {
  readonly protocol: IClientOptions['protocol'];
  readonly hostname: string;
  readonly port?: number;
  readonly auth?: string;
}

/**
 * The broker URL as connect options. MQTT.js would parse a URL string with Node's legacy url.parse(),
 * which Node 24 flags on every call (DEP0169, a warning on stderr); handing it the parts avoids that.
 * IPv6 literals lose their brackets, as net.connect wants them. Throws TRANSPORT_INVALID_ARGUMENT for a
 * string that is not a URL.
 */
export function brokerAddress(url: string): BrokerAddress {
  let u: URL;
  try {
    u = new URL(url);
  } catch (e) {
    throw new TransportError('TRANSPORT_INVALID_ARGUMENT', `${JSON.stringify(url)} is not a broker URL`, { cause: e });
  }
  const hostname = u.hostname.startsWith('[') && u.hostname.endsWith(']') ? u.hostname.slice(1, -1) : u.hostname;
  const auth = u.username ? `${decodeURIComponent(u.username)}${u.password ? `:${decodeURIComponent(u.password)}` : ''}` : undefined;
  return {
    protocol: u.protocol.replace(/:$/, '') as IClientOptions['protocol'],
    hostname,
    ...(u.port ? { port: Number(u.port) } : {}),
    ...(auth !== undefined ? { auth } : {}),
  };
}

export function classifyConnectError(e: unknown, url: string): TransportError {
  const err = e instanceof Error ? e : new Error(String(e));
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'number') {
    return new TransportError('TRANSPORT_CONNECT_REFUSED', `${url} refused the connection: ${err.message}`, {
      cause: err,
      details: { reasonCode: code },
    });
  }
  if (typeof code === 'string' && NETWORK_CODES.has(code)) {
    return new TransportError('TRANSPORT_UNREACHABLE', `cannot reach ${url}: ${code}`, { cause: err, details: { errno: code } });
  }
  if ((typeof code === 'string' && TLS_CODE.test(code)) || err.message === 'TLS not authorized' || (err as { library?: unknown }).library === 'SSL routines') {
    return new TransportError('TRANSPORT_TLS_FAILED', `TLS with ${url} failed: ${err.message}`, {
      cause: err,
      details: typeof code === 'string' ? { tlsCode: code } : {},
    });
  }
  if (err.message === 'connack timeout') {
    return new TransportError('TRANSPORT_TIMEOUT', `no CONNACK from ${url}`, { cause: err });
  }
  return new TransportError('TRANSPORT_CONNECTION_LOST', `connection to ${url} failed: ${err.message}`, {
    cause: err,
    details: typeof code === 'string' ? { errno: code } : {},
  });
}
