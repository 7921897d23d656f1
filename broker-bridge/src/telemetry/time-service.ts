import type { Clock } from '../../../common/clock.js';
import { decode, encode } from '../../../common/protocol/messages.js';
import type { Topics } from '../../../common/protocol/topics.js';
import type { MessageMeta, RequestHandler } from '../bridge.js';
import type { Reply } from '../enrollment/request-handling.js';

/**
 * Answers a device's clock check (`time/request` → `time/reply`) with the bridge clock, echoing the
 * device's own `sentAt`, so the device can compute its skew against the fleet with the round trip as the
 * error bound (`agent check`). Stateless; a malformed or retained request gets no answer.
 */
export class TimeService implements RequestHandler {
  readonly #topics: Topics;
  readonly #clock: Clock;

  constructor(o: { topics: Topics; clock: Clock }) {
    this.#topics = o.topics;
    this.#clock = o.clock;
  }

  filters(): string[] {
    return [this.#topics.allDevices('timeRequest')];
  }

  async handle(topic: string, payload: Buffer, meta?: MessageMeta): Promise<Reply | undefined> {
    if (meta?.retain) return undefined;
    const parsed = this.#topics.parseDevice(topic);
    if (!parsed || parsed.topic !== 'timeRequest') return undefined;
    let request;
    try {
      request = decode('timeRequest', payload);
    } catch {
      return undefined; // a malformed clock check has nobody to tell: the device times out and says so
    }
    const now = this.#clock.now();
    return {
      topic: this.#topics.device(parsed.deviceId, 'timeReply'),
      payload: encode('timeReply', request.requestId, now, { deviceSentAt: request.sentAt, serverTime: now }),
    };
  }
}
