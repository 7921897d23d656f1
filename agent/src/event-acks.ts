import { CodedError } from '../../common/coded-error.js';
import { decode } from '../../common/protocol/messages.js';
import type { Topics } from '../../common/protocol/topics.js';
import type { Transport } from '../../common/transport/transport.js';

/**
 * The bridge's acknowledgments of outbox events (`<base>/devices/<id>/events/ack`, requestId = event
 * id). The outbox deletes an event only once the bridge says it is in the inventory: mosquitto's PUBACK
 * means the broker holds it, and a broker killed before it saved or forwarded it loses it (found by
 * the simulator's broker-outage scenario). `expect(id)` is registered before the publish, so an
 * acknowledgment can never arrive unseen; an unexpected or malformed one is ignored.
 */
export type EventAckErrorCode = 'AGENT_EVENT_UNACKED';

export class EventAcks {
  readonly #topics: Topics;
  readonly #deviceId: string;
  readonly #waiting = new Map<string, { resolve: () => void; reject: (e: unknown) => void; timer: NodeJS.Timeout }>();

  constructor(topics: Topics, deviceId: string) {
    this.#topics = topics;
    this.#deviceId = deviceId;
  }

  /** On every (new) device connection, before events are sent. */
  async subscribe(t: Transport): Promise<void> {
    await t.subscribe(this.#topics.device(this.#deviceId, 'eventsAck'), (m) => {
      let id: string;
      try {
        id = decode('eventsAck', m.payload).requestId;
      } catch {
        return;
      }
      const w = this.#waiting.get(id);
      if (!w) return;
      this.#waiting.delete(id);
      clearTimeout(w.timer);
      w.resolve();
    });
  }

  /** Resolves when the bridge acknowledges event `id`; rejects AGENT_EVENT_UNACKED after `timeoutMs`. */
  expect(id: string, timeoutMs: number): Promise<void> {
    this.forget(id);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiting.delete(id);
        reject(new CodedError<EventAckErrorCode>('AGENT_EVENT_UNACKED', `the bridge did not acknowledge event ${id} within ${timeoutMs} ms`));
      }, timeoutMs);
      timer.unref();
      this.#waiting.set(id, { resolve, reject, timer });
    });
  }

  /** Stops waiting for `id` (its publish failed); the pending promise is left to be dropped. */
  forget(id: string): void {
    const w = this.#waiting.get(id);
    if (!w) return;
    clearTimeout(w.timer);
    this.#waiting.delete(id);
  }
}
