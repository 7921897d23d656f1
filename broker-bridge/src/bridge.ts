import { CodedError } from '../../common/coded-error.js';
import { systemClock, type Clock } from '../../common/clock.js';
import type { Topics } from '../../common/protocol/topics.js';
import { topicMatches } from '../../common/transport/topic-match.js';
import type { IncomingMessage, Transport, TransportErrorCode } from '../../common/transport/transport.js';
import type { EnrollmentLogger, Reply } from './enrollment/enrollment-service.js';

/**
 * The bridge's MQTT side: subscribes to what its handlers need (enrollment, rotation, status and event
 * ingestion), hands each message to the handler whose filter matches its topic and publishes the reply
 * to the device's own answer topic; keeps the retained trust bundle published. Handlers run
 * concurrently (each reply is independent); the services serialize what must be serialized.
 *
 * Connection: a persistent MQTT session (`BRIDGE_SESSION` for the transport, a stable client id): while
 * the bridge is away mosquitto queues the QoS1 messages devices publish (events, requests) and delivers
 * them when it returns. The broker connection may drop and come back any number of times: the bridge
 * logs one line when it goes down and one when it is back (with the outage length), and republishes the
 * trust bundle on every reconnect (a broker that lost its retained messages gets it back).
 *
 * Trust bundle: the signed, versioned message of common/protocol/trust-bundle.ts, retained on
 * `<base>/trust-bundle` (only the bridge may publish there). `trustBundle` is asked for it on start and
 * on every reconnect; with a TrustBundleSigner that returns the stored message (no new signature)
 * until the roots change.
 *
 * `sharedGroup` subscribes through an MQTT 5 shared subscription (`$share/<group>/…`). Several
 * instances also need the challenge state and inventory in a shared store, which does not exist yet
 * (see README).
 */
export interface BridgeOptions {
  /** Create it with `BRIDGE_SESSION` and a stable client id (e.g. `DEFAULT_BRIDGE_CLIENT_ID`). */
  readonly transport: Transport;
  readonly topics: Topics;
  /** Filters must not overlap: a message goes to the first handler with a matching filter. */
  readonly handlers: readonly RequestHandler[];
  /**
   * The signed trust bundle message to publish retained, e.g. `() => signer.message(roots)`
   * (TrustBundleSigner). A rejection is logged (once per failure streak, with its code) and retried on
   * the next reconnect.
   */
  readonly trustBundle: () => Promise<Buffer>;
  readonly sharedGroup?: string;
  readonly logger?: BridgeLogger;
  /** Measures outages for the log; default the system clock. */
  readonly clock?: Clock;
  /** Delay between connect attempts while the broker cannot be reached at start. Default 1000. */
  readonly connectRetryMs?: number;
}

/** One service behind the bridge (EnrollmentService, RotationService, IngestService). */
export interface RequestHandler {
  /** Subscription filters (without any `$share/` prefix). */
  filters(): string[];
  /**
   * Handles one message; resolves with the reply to publish, or undefined (nothing to answer). Should
   * not reject (a rejection is logged, nothing is published).
   */
  handle(topic: string, payload: Buffer, meta?: MessageMeta): Promise<Reply | undefined>;
}

export interface MessageMeta {
  /** The broker replayed a retained message because of a (re)subscription: old news, not a live event. */
  readonly retain: boolean;
}

export type BridgeLogger = EnrollmentLogger;

export type BridgeErrorCode = 'BRIDGE_CONFIG_INVALID' | 'BRIDGE_STOPPED';
export class BridgeError extends CodedError<BridgeErrorCode> {}

/**
 * The client id the bridge asks for. The broker requires the `enr-` prefix of every client and, on the
 * mutual-TLS listener, replaces the id with the certificate CN (`role:bridge`): the persistent session
 * lives under that name, and no other client can take it over.
 */
export const DEFAULT_BRIDGE_CLIENT_ID = 'enr-bridge';

/**
 * Transport settings for the bridge's persistent session: not clean, and kept 7 days by the broker
 * after a disconnect (a bridge away longer has its queue dropped; devices resend what they still hold).
 */
export const BRIDGE_SESSION = { clean: false, sessionExpirySec: 7 * 86_400 } as const;

/** Connect failures worth waiting out at start; refused credentials and TLS failures are not. */
const RETRY_CONNECT: ReadonlySet<TransportErrorCode> = new Set(['TRANSPORT_UNREACHABLE', 'TRANSPORT_TIMEOUT', 'TRANSPORT_CONNECTION_LOST']);

const noopLogger: BridgeLogger = { info() {}, warn() {}, error() {} };

export class Bridge {
  readonly #o: BridgeOptions;
  readonly #log: BridgeLogger;
  readonly #clock: Clock;
  readonly #routes: ReadonlyArray<{ readonly filter: string; readonly handler: RequestHandler }>;
  readonly #pending = new Set<Promise<void>>();
  #subscribed: Promise<void> | undefined;
  #offConnection: (() => void) | undefined;
  #downSince: number | undefined;
  #bundleFailing = false;
  /** The latest trust bundle publish (never rejects). */
  #bundle: Promise<void> | undefined;
  #started = false;
  #stopping = false;
  #stopped: Promise<void> | undefined;
  #wake: (() => void) | undefined;

  constructor(options: BridgeOptions) {
    if (typeof options.trustBundle !== 'function') throw new BridgeError('BRIDGE_CONFIG_INVALID', 'trustBundle must be a function returning the signed message');
    this.#o = options;
    this.#log = options.logger ?? noopLogger;
    this.#clock = options.clock ?? systemClock;
    const routes = options.handlers.flatMap((handler) => handler.filters().map((filter) => ({ filter, handler })));
    const seen = new Set<string>();
    for (const { filter } of routes) {
      if (seen.has(filter)) throw new BridgeError('BRIDGE_CONFIG_INVALID', `two handlers subscribe to ${filter}`);
      seen.add(filter);
    }
    this.#routes = routes;
  }

  /**
   * Connects (waiting out an unreachable broker), subscribes every handler's filters and publishes the
   * trust bundle. Rejects when the broker refuses the connection or a subscription, or on `stop()`.
   */
  async start(): Promise<void> {
    if (this.#started) throw new BridgeError('BRIDGE_CONFIG_INVALID', 'bridge already started');
    this.#started = true;
    const { transport } = this.#o;
    this.#offConnection = transport.onConnectionChange((up) => this.#onConnectionChange(up));
    await this.#connect();
    // Normally subscribed by the connection listener already; not when the transport was connected before.
    if (!this.#subscribed) {
      this.#subscribed = this.#subscribeAll();
      this.#track((this.#bundle = this.#publishBundle()));
    }
    await this.#subscribed;
    await this.#bundle;
  }

  /**
   * Stops dispatching after in-flight work, then disconnects. The broker keeps the session and its
   * subscriptions (nothing is unsubscribed), so messages published while the bridge is away are queued
   * for the next start. Idempotent.
   */
  stop(): Promise<void> {
    this.#stopped ??= this.#shutdown();
    return this.#stopped;
  }

  async #shutdown(): Promise<void> {
    this.#stopping = true;
    this.#wake?.();
    this.#offConnection?.();
    // Messages keep arriving (and being acknowledged) until the transport is closed: handle them all.
    await this.#drain();
    await this.#o.transport.close();
    await this.#drain();
  }

  async #drain(): Promise<void> {
    while (this.#pending.size > 0) await Promise.allSettled([...this.#pending]);
  }

  async #connect(): Promise<void> {
    const retryMs = this.#o.connectRetryMs ?? 1000;
    const since = this.#clock.now();
    let waiting = false;
    for (;;) {
      if (this.#stopping) throw new BridgeError('BRIDGE_STOPPED', 'bridge stopped before it connected');
      try {
        await this.#o.transport.connect();
        if (waiting) this.#log.info({ waitedMs: this.#clock.now() - since }, 'bridge connected to the broker');
        return;
      } catch (e) {
        const code = (e as { code?: TransportErrorCode }).code;
        if (this.#stopping || code === undefined || !RETRY_CONNECT.has(code)) throw e;
        if (!waiting) this.#log.warn({ code, retryMs }, 'broker not reachable; bridge keeps trying');
        waiting = true;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, retryMs);
          this.#wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        this.#wake = undefined;
      }
    }
  }

  #onConnectionChange(up: boolean): void {
    if (this.#stopping) return;
    if (!up) {
      this.#downSince = this.#clock.now();
      this.#log.warn({}, 'bridge lost its broker connection');
      return;
    }
    if (this.#downSince !== undefined) {
      this.#log.info({ outageMs: this.#clock.now() - this.#downSince }, 'bridge reconnected to the broker');
      this.#downSince = undefined;
    }
    // Subscribed here, synchronously inside CONNACK handling: with a resumed session mosquitto sends the
    // messages it queued right after CONNACK, and the transport drops (after acknowledging) any message
    // that arrives before a local subscription exists. Later reconnects keep the transport's subscriptions.
    this.#subscribed ??= this.#subscribeAll();
    this.#track((this.#bundle = this.#publishBundle()));
  }

  #subscribeAll(): Promise<void> {
    const { transport, sharedGroup } = this.#o;
    // Every SUBSCRIBE is issued in this same turn (no await between them), see #onConnectionChange.
    const all = this.#routes.map(({ filter }) =>
      transport.subscribe(sharedGroup ? `$share/${sharedGroup}/${filter}` : filter, (msg) => this.#onMessage(msg)),
    );
    const done = Promise.all(all).then(() => undefined);
    done.catch(() => undefined); // start() reports it; never an unhandled rejection
    return done;
  }

  #onMessage(msg: IncomingMessage): void {
    // Routed by topic, not by subscription: after a restart, messages queued in the resumed session carry
    // the previous process's subscription identifiers.
    const route = this.#routes.find((r) => topicMatches(r.filter, msg.topic));
    if (!route) return;
    this.#track(this.#dispatch(route.handler, msg));
  }

  async #dispatch(handler: RequestHandler, msg: IncomingMessage): Promise<void> {
    let reply: Reply | undefined;
    try {
      reply = await handler.handle(msg.topic, msg.payload, { retain: msg.retain });
    } catch (e) {
      this.#log.error({ topic: msg.topic, err: e }, 'handler failed on a device message');
      return;
    }
    if (!reply) return;
    try {
      await this.#o.transport.publish(reply.topic, reply.payload, { qos: 1 });
    } catch (e) {
      // The device retries with the same requestId and gets the cached answer.
      this.#log.warn({ topic: reply.topic, code: (e as { code?: string }).code }, 'could not publish a reply');
    }
  }

  async #publishBundle(): Promise<void> {
    const { transport, topics, trustBundle } = this.#o;
    try {
      const payload = await trustBundle();
      await transport.publish(topics.fleet('trustBundle'), payload, { qos: 1, retain: true });
      if (this.#bundleFailing) this.#log.info({}, 'trust bundle published');
      this.#bundleFailing = false;
    } catch (e) {
      if (this.#stopping) return;
      // Once per failure streak; the next reconnect publishes again.
      if (!this.#bundleFailing) this.#log.warn({ code: (e as { code?: string }).code }, 'could not publish the trust bundle; retrying on the next reconnect');
      this.#bundleFailing = true;
    }
  }

  #track(work: Promise<void>): void {
    this.#pending.add(work);
    void work.finally(() => this.#pending.delete(work));
  }
}
