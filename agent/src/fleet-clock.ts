import { randomUUID } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { decode, encode } from '../../common/protocol/messages.js';
import type { Topics } from '../../common/protocol/topics.js';
import type { Subscription, Transport } from '../../common/transport/transport.js';

/**
 * The device clock against the fleet's (`time/request` → `time/reply`, answered by the bridge's
 * TimeService), over the device's own mutual-TLS session. The clock floor (the newest fleet-signed
 * time held) can only show a clock behind; this shows a clock ahead too. Used by the running agent
 * (periodically, reported in its status and as a `clock_skew` event) and by `agent check`.
 */

/** Beyond this the skew is reported: certificates are backdated by minutes, NTP keeps a healthy device well inside it. */
export const CLOCK_TOLERANCE_MS = 30_000;

/** One round trip: the device clock when it asked and when the answer came, the fleet clock in between. */
export interface TimeSample {
  readonly sentAt: number;
  readonly receivedAt: number;
  readonly serverTime: number;
}

export interface Skew {
  /** Device clock minus fleet clock, estimated at the middle of the round trip (positive: ahead). */
  readonly skewMs: number;
  /** The fleet answered somewhere in the round trip: the estimate is off by at most half of it. */
  readonly uncertaintyMs: number;
  /** The smallest skew consistent with the sample (0 when the round trip could explain it all). */
  readonly leastMs: number;
}

export function skewOf(s: TimeSample): Skew {
  const rtt = Math.max(0, s.receivedAt - s.sentAt);
  const skewMs = Math.round((s.sentAt + s.receivedAt) / 2 - s.serverTime);
  const uncertaintyMs = Math.ceil(rtt / 2);
  return { skewMs, uncertaintyMs, leastMs: Math.max(0, Math.abs(skewMs) - uncertaintyMs) };
}

/** Whether a sample shows a skew beyond `toleranceMs` whatever the network did. */
export function beyondTolerance(s: Skew, toleranceMs = CLOCK_TOLERANCE_MS): boolean {
  return s.leastMs > toleranceMs;
}

export interface AskFleetTimeOptions {
  readonly topics: Topics;
  readonly deviceId: string;
  readonly clock: Clock;
  readonly timeoutMs: number;
}

/**
 * One time request on a connected transport; undefined when no matching reply came within the timeout
 * (bridge away, time service off). Replies for other requests, retained copies and malformed payloads
 * are ignored. The reply subscription is removed before it resolves.
 */
export async function askFleetTime(t: Transport, o: AskFleetTimeOptions): Promise<TimeSample | undefined> {
  const requestId = randomUUID().replace(/-/g, '');
  let sentAt = 0;
  let timer: NodeJS.Timeout | undefined;
  let sub: Subscription | undefined;
  let settle: (s: TimeSample | undefined) => void = () => undefined;
  const result = new Promise<TimeSample | undefined>((resolve) => {
    settle = resolve;
  });
  timer = setTimeout(() => settle(undefined), o.timeoutMs);
  timer.unref();
  try {
    sub = await t.subscribe(o.topics.device(o.deviceId, 'timeReply'), (m) => {
      const receivedAt = o.clock.now();
      if (m.retain) return;
      try {
        const r = decode('timeReply', m.payload);
        if (r.requestId === requestId && r.body.deviceSentAt === sentAt) settle({ sentAt, receivedAt, serverTime: r.body.serverTime });
      } catch {
        // not ours, or malformed: keep waiting for ours
      }
    });
    sentAt = o.clock.now();
    await t.publish(o.topics.device(o.deviceId, 'timeRequest'), encode('timeRequest', requestId, sentAt, {}), { qos: 1 });
    return await result;
  } catch {
    return undefined; // the connection went away, or the broker refused: no sample this time
  } finally {
    clearTimeout(timer);
    timer = undefined;
    await sub?.unsubscribe().catch(() => undefined);
  }
}
