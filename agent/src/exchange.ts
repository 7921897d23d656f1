import type { Clock } from '../../common/clock.js';
import { isCodedError } from '../../common/coded-error.js';
import { decode, type Rejection } from '../../common/protocol/messages.js';
import { ENROLL_TOPICS, REJECTION_TOPICS, type DeviceTopic, type EnrollTopic, type RejectionTopic, type Topics } from '../../common/protocol/topics.js';
import { request } from '../../common/transport/request.js';
import type { IncomingMessage, Transport } from '../../common/transport/transport.js';
import type { Backoff, Sleep } from './backoff.js';
import { throwIfAborted } from './backoff.js';
import type { SentEnvelope } from './store.js';

/**
 * One request/answer exchange with the bridge that outlives any network condition: it (re)connects
 * through `link`, publishes the stored envelope (byte-identical, same requestId: the bridge answers a
 * repeat with its first answer), and waits for the answer. A timeout or a lost connection is never an
 * error here: it backs off (capped exponential, full jitter) and sends again, for as long as it takes,
 * until an answer arrives or `signal` aborts. Rejections are answers: the caller decides what they mean.
 */
export interface Link {
  /** A connected transport; retries with backoff until connected or aborted (rejects only with AGENT_STOPPED). */
  ensureConnected(signal?: AbortSignal): Promise<Transport>;
}

export type Answer =
  | { readonly kind: 'answer'; readonly topic: DeviceTopic; readonly payload: Buffer }
  | { readonly kind: 'rejected'; readonly error: Rejection['error'] };

/** Where an exchange's messages go: a device's own topics, or an enrollment attempt's. */
export interface Addressing {
  topic(kind: DeviceTopic): string;
  kindOf(topic: string): DeviceTopic | undefined;
}

/** The device's own topics (mutual-TLS listener; the broker knows it by its certificate CN). */
export function deviceAddressing(topics: Topics, deviceId: string): Addressing {
  return { topic: (k) => topics.device(deviceId, k), kindOf: (t) => topics.parseDevice(t)?.topic };
}

/** An enrollment attempt's topics, under its random `enr-…` client id (enrollment listener). */
export function enrollAddressing(topics: Topics, clientId: string): Addressing {
  return {
    topic: (k) => {
      if (!isEnrollTopic(k)) throw new Error(`${k} is not an enrollment message`);
      return topics.enrollment(clientId, k);
    },
    kindOf: (t) => topics.parseEnrollment(t)?.topic,
  };
}

const isEnrollTopic = (k: DeviceTopic): k is EnrollTopic => Object.hasOwn(ENROLL_TOPICS, k);

export interface ExchangeOptions {
  readonly link: Link;
  readonly address: Addressing;
  readonly request: DeviceTopic;
  readonly envelope: SentEnvelope;
  /** Answer topics (a rejection topic among them). */
  readonly answers: readonly DeviceTopic[];
  /** Wait for an answer per publication. */
  readonly timeoutMs: number;
  readonly backoff: Backoff;
  readonly sleep: Sleep;
  readonly clock: Clock;
  readonly signal?: AbortSignal;
  /** Called once per publication (for counting messages sent). */
  readonly onSend?: () => void;
  /** Called when no answer came (timeout or lost connection), with the wait before the next try. */
  readonly onRetry?: (why: 'timeout' | 'disconnected', waitMs: number) => void;
}

/** Transport failures that mean "the network, try again later". */
const TRANSIENT = new Set(['TRANSPORT_TIMEOUT', 'TRANSPORT_NOT_CONNECTED', 'TRANSPORT_CONNECTION_LOST', 'TRANSPORT_UNREACHABLE']);

export async function exchange(o: ExchangeOptions): Promise<Answer> {
  const responseTopics = o.answers.map((a) => o.address.topic(a));
  for (;;) {
    throwIfAborted(o.signal);
    const transport = await o.link.ensureConnected(o.signal);
    let why: 'timeout' | 'disconnected';
    try {
      o.onSend?.();
      const msg = await request(transport, {
        requestTopic: o.address.topic(o.request),
        payload: Buffer.from(o.envelope.payload, 'base64'),
        responseTopics,
        match: (m) => peekRequestId(m.payload) === o.envelope.requestId,
        timeoutMs: o.timeoutMs,
        retries: 0,
        clock: o.clock,
      });
      o.backoff.reset();
      return toAnswer(o, msg);
    } catch (e) {
      if (!isCodedError(e) || !TRANSIENT.has(e.code)) throw e;
      why = e.code === 'TRANSPORT_TIMEOUT' ? 'timeout' : 'disconnected';
    }
    throwIfAborted(o.signal);
    const waitMs = o.backoff.next();
    o.onRetry?.(why, waitMs);
    await o.sleep(waitMs, o.signal);
  }
}

function toAnswer(o: ExchangeOptions, msg: IncomingMessage): Answer {
  const topic = o.address.kindOf(msg.topic);
  if (topic === undefined || !o.answers.includes(topic)) {
    // request() only delivers messages from the subscribed answer topics.
    throw new Error(`answer on unexpected topic ${msg.topic}`);
  }
  if ((REJECTION_TOPICS as readonly DeviceTopic[]).includes(topic)) {
    return { kind: 'rejected', error: decode(topic as RejectionTopic, msg.payload).error };
  }
  return { kind: 'answer', topic, payload: msg.payload };
}

export function peekRequestId(payload: Buffer): string | undefined {
  try {
    const v = (JSON.parse(payload.toString('utf8')) as { requestId?: unknown }).requestId;
    return typeof v === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}
