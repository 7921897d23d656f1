import { isCodedError } from '../coded-error.js';
import { systemClock, type Clock } from '../clock.js';
import { TransportError, type IncomingMessage, type Subscription, type Transport } from './transport.js';

export interface RequestOptions {
  requestTopic: string;
  payload: Buffer;
  /** Every topic an answer may arrive on (e.g. accepted and rejected). */
  responseTopics: string[];
  /** Picks the answer to this request among everything on the response topics (e.g. same requestId). */
  match: (msg: IncomingMessage) => boolean;
  /** Wait per attempt, from the moment the request is published. */
  timeoutMs: number;
  /** Re-publications of the same payload after a timeout; 0 means a single attempt. */
  retries: number;
  clock?: Clock;
}

/** Publish failures that a later attempt can outlive; anything else ends the request at once. */
const TRANSIENT = new Set(['TRANSPORT_NOT_CONNECTED', 'TRANSPORT_CONNECTION_LOST', 'TRANSPORT_TIMEOUT']);

/**
 * Request/response over publish/subscribe. Subscribes before publishing (an answer cannot overtake the
 * subscription), publishes QoS 1, and re-publishes the byte-identical payload after each timeout: the
 * server deduplicates by requestId and answers a repeat with its first answer. Resolves with the first
 * matching message; rejects TRANSPORT_TIMEOUT after the last attempt. Always unsubscribes.
 *
 * A connection lost while waiting rejects TRANSPORT_CONNECTION_LOST at once: an answer published while
 * this client was away is gone (clean session), so waiting out the timer would only delay the retry.
 */
export async function request(transport: Transport, opts: RequestOptions): Promise<IncomingMessage> {
  const { requestTopic, payload, responseTopics, match, timeoutMs, retries } = opts;
  if (!(timeoutMs > 0) || !Number.isInteger(retries) || retries < 0 || responseTopics.length === 0) {
    throw new TransportError('TRANSPORT_INVALID_ARGUMENT', 'request needs timeoutMs > 0, an integer retries >= 0 and a response topic', {
      details: { timeoutMs, retries, responseTopics: responseTopics.length },
    });
  }
  const clock = opts.clock ?? systemClock;
  const startedAt = clock.now();

  let response: IncomingMessage | undefined;
  let failure: unknown;
  let wake: (() => void) | undefined;
  const handler = (msg: IncomingMessage): void => {
    if (response !== undefined || failure !== undefined) return;
    let matched: boolean;
    try {
      matched = match(msg);
    } catch (e) {
      failure = new TransportError('TRANSPORT_HANDLER_FAILED', `response matcher threw on ${msg.topic}`, { cause: e, details: { topic: msg.topic } });
      wake?.();
      return;
    }
    if (matched) {
      response = msg;
      wake?.();
    }
  };

  const subscriptions: Subscription[] = [];
  const stopWatching = transport.onConnectionChange((up) => {
    if (up || response !== undefined || failure !== undefined) return;
    failure = new TransportError('TRANSPORT_CONNECTION_LOST', `connection lost while waiting for an answer to ${requestTopic}`, {
      details: { requestTopic },
    });
    wake?.();
  });
  try {
    const results = await Promise.allSettled(responseTopics.map((t) => transport.subscribe(t, handler, { qos: 1 })));
    for (const r of results) if (r.status === 'fulfilled') subscriptions.push(r.value);
    const refused = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (refused) throw refused.reason;

    const attempts = retries + 1;
    for (let attempt = 1; attempt <= attempts && response === undefined && failure === undefined; attempt++) {
      let timer: NodeJS.Timeout | undefined;
      const waited = new Promise<void>((resolve) => {
        wake = resolve;
        timer = setTimeout(resolve, timeoutMs);
      });
      transport.publish(requestTopic, payload, { qos: 1 }).catch((e: unknown) => {
        // Transient failures just use up this attempt; its timer paces the retry.
        if (isCodedError(e) && TRANSIENT.has(e.code)) return;
        failure ??= e;
        wake?.();
      });
      await waited;
      clearTimeout(timer);
      wake = undefined;
    }
    if (response !== undefined) return response;
    if (failure !== undefined) throw failure;
    throw new TransportError('TRANSPORT_TIMEOUT', `no matching response to ${requestTopic} after ${attempts} attempt(s)`, {
      details: { requestTopic, responseTopics, attempts, timeoutMs, elapsedMs: clock.now() - startedAt },
    });
  } finally {
    stopWatching();
    // Unsubscribe never rejects (see Subscription); the answer or the error above is what matters.
    await Promise.all(subscriptions.map((s) => s.unsubscribe()));
  }
}
