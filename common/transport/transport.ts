import { CodedError } from '../coded-error.js';

/**
 * The message transport the agent, the bridge and the fleet simulator talk through. Two
 * implementations: `MqttTransport` (a real broker) and `MemoryTransport` (in-process, for unit tests).
 * Both are plain instances without global state, so hundreds can live in one process.
 */
export interface Transport {
  readonly connected: boolean;
  /** Resolves on CONNACK; rejects with a TransportError (never hangs past the connect timeout). */
  connect(): Promise<void>;
  /**
   * QoS 1 (the default) resolves on PUBACK; QoS 0 once written. A refusal by the broker (MQTT 5 PUBACK
   * reason code >= 0x80, e.g. 0x87 not authorized) rejects with TRANSPORT_PUBLISH_REFUSED.
   */
  publish(topic: string, payload: Buffer, opts?: PublishOptions): Promise<void>;
  /**
   * Resolves after SUBACK; a refused grant rejects with TRANSPORT_SUBSCRIBE_REFUSED. Each subscription
   * has its own handler: a message matching several subscriptions reaches each matching handler once.
   * Subscriptions survive reconnects.
   */
  subscribe(filter: string, handler: MessageHandler, opts?: SubscribeOptions): Promise<Subscription>;
  /** Returns a function that removes the listener. */
  onConnectionChange(listener: (connected: boolean) => void): () => void;
  /** Idempotent. `force` drops the connection without DISCONNECT, so the broker publishes the will. */
  close(opts?: { force?: boolean }): Promise<void>;
}

export interface IncomingMessage {
  topic: string;
  payload: Buffer;
  /** True only for retained messages the broker sends because of a (re)subscription. */
  retain: boolean;
}

export type MessageHandler = (msg: IncomingMessage) => void | Promise<void>;

export interface Subscription {
  /** Never rejects: without a connection the subscription is dropped locally (it dies with the session). */
  unsubscribe(): Promise<void>;
}

export interface PublishOptions {
  /** Default 1. */
  qos?: 0 | 1;
  retain?: boolean;
}

export interface SubscribeOptions {
  /** Default 1. */
  qos?: 0 | 1;
}

export interface TransportStats {
  /** Messages accepted and routed to handlers. */
  received: number;
  /** Incoming messages dropped (too large); each one was also reported through `onError`. */
  dropped: number;
  /** Publishes completed (PUBACK for QoS 1, written for QoS 0). */
  published: number;
}

export interface LastWill {
  topic: string;
  payload: Buffer;
  qos?: 0 | 1;
  retain?: boolean;
}

/** pino-compatible subset. */
export interface TransportLogger {
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  debug?(obj: object, msg: string): void;
}

/** Receives failures that have no caller to reject: handler errors, dropped messages, failed resubscribes. */
export type TransportErrorHook = (err: TransportError) => void;

export type TransportErrorCode =
  | 'TRANSPORT_NOT_CONNECTED'
  | 'TRANSPORT_TIMEOUT'
  | 'TRANSPORT_UNREACHABLE'
  | 'TRANSPORT_TLS_FAILED'
  | 'TRANSPORT_CONNECT_REFUSED'
  | 'TRANSPORT_CONNECTION_LOST'
  | 'TRANSPORT_SUBSCRIBE_REFUSED'
  | 'TRANSPORT_PUBLISH_REFUSED'
  | 'TRANSPORT_INVALID_TOPIC'
  | 'TRANSPORT_INVALID_ARGUMENT'
  | 'TRANSPORT_PAYLOAD_TOO_LARGE'
  | 'TRANSPORT_HANDLER_FAILED'
  | 'TRANSPORT_CLOSED';

export class TransportError extends CodedError<TransportErrorCode> {}

export const DEFAULT_MAX_INCOMING_BYTES = 64 * 1024;

/** The fallback for `onError`: log through the logger if there is one, else stderr — never silent. */
export function defaultErrorHook(logger: TransportLogger | undefined, context: Record<string, unknown>): TransportErrorHook {
  return (err) => {
    const obj = { ...context, code: err.code, ...err.details, err: err.cause ?? err };
    if (logger) logger.error(obj, err.message);
    else console.error(`[transport] ${err.message}`, obj);
  };
}
