import { randomBytes } from 'node:crypto';
import { isCodedError } from '../../common/coded-error.js';
import {
  decodeStationRegisterReply,
  encodeStationRegister,
  stationTopics,
  type StationDevice,
  type StationDeviceResult,
  type StationRegisterReply,
} from '../../common/protocol/station.js';
import { Topics } from '../../common/protocol/topics.js';
import { MqttTransport } from '../../common/transport/mqtt-transport.js';
import type { Transport } from '../../common/transport/transport.js';
import { StationError } from './errors.js';
import type { BridgeSettings } from './options.js';

/**
 * The station's online side of common/protocol/station.ts: sends `register` commands to the running
 * bridge as `role:station:<id>` and waits for each answer. One request at a time, so every reply
 * (including a schema refusal, which carries no requestId) belongs to the request in flight.
 *
 * A request is sent again, under the same requestId (the bridge answers a repeat with its first
 * answer), when no reply comes within `replyTimeoutMs`, when the connection is down, or when the
 * reply is a retryable refusal of the request or of some device; with exponential backoff between
 * attempts. Gives up after `attempts` with STATION_BRIDGE_UNAVAILABLE. A non-retryable refusal of the
 * whole request, or a publish the broker refuses (the certificate is not this station's), is
 * STATION_BRIDGE_REFUSED at once. Per-device results are returned as the bridge gave them.
 */
export interface BridgeClientOptions {
  readonly attempts?: number;
  readonly backoff?: { readonly baseMs: number; readonly capMs: number };
  /** Waits between attempts; injectable so tests need not sleep. Default setTimeout. */
  readonly sleep?: (ms: number) => Promise<void>;
}

const DEFAULT_ATTEMPTS = 5;
const DEFAULT_BACKOFF = { baseMs: 500, capMs: 8_000 };

export class BridgeClient {
  readonly #transport: Transport;
  readonly #topic: { command: string; reply: string };
  readonly #timeoutMs: number;
  readonly #attempts: number;
  readonly #backoff: { baseMs: number; capMs: number };
  readonly #sleep: (ms: number) => Promise<void>;
  #waiting: { readonly requestId: string; readonly resolve: (reply: StationRegisterReply) => void } | undefined;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(transport: Transport, topic: { command: string; reply: string }, timeoutMs: number, o: BridgeClientOptions) {
    this.#transport = transport;
    this.#topic = topic;
    this.#timeoutMs = timeoutMs;
    this.#attempts = o.attempts ?? DEFAULT_ATTEMPTS;
    this.#backoff = o.backoff ?? DEFAULT_BACKOFF;
    this.#sleep = o.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  /** Connects and subscribes to this station's reply topic. Throws STATION_BRIDGE_UNAVAILABLE. */
  static async connect(s: BridgeSettings, o: BridgeClientOptions = {}): Promise<BridgeClient> {
    const topic = stationTopics(new Topics(s.baseTopic), s.stationId, 'register');
    // The broker renames the session to the certificate CN; the id asked for only needs the `enr-` prefix.
    const transport = new MqttTransport({
      url: s.url,
      clientId: `enr-station-${randomBytes(12).toString('base64url')}`,
      tls: { ca: s.caPem, cert: s.certPem, key: s.keyPem },
      connectTimeoutMs: s.replyTimeoutMs,
      reconnectPeriodMs: 1_000,
      // Failures without a caller (a reply too large, a lost connection) show up as timeouts here.
      onError: () => undefined,
    });
    const client = new BridgeClient(transport, topic, s.replyTimeoutMs, o);
    try {
      await transport.connect();
      await transport.subscribe(topic.reply, (m) => client.#onReply(m.payload, m.retain));
    } catch (e) {
      await transport.close().catch(() => undefined);
      throw unavailable(`cannot connect to the bridge at ${s.url}`, e);
    }
    return client;
  }

  /** Registers `devices` (at most REGISTER_MAX_DEVICES, within REGISTER_MAX_BYTES); one result per device, in order. */
  register(devices: readonly StationDevice[]): Promise<StationDeviceResult[]> {
    const run = this.#queue.then(() => this.#request(devices));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  close(): Promise<void> {
    return this.#transport.close();
  }

  async #request(devices: readonly StationDevice[]): Promise<StationDeviceResult[]> {
    const requestId = randomBytes(16).toString('base64url');
    const payload = encodeStationRegister(requestId, devices);
    let last = 'no reply';
    for (let attempt = 1; ; attempt++) {
      const reply = await this.#exchange(requestId, payload).catch((e: unknown) => {
        if (isCodedError(e) && e.code === 'TRANSPORT_PUBLISH_REFUSED') {
          throw new StationError('STATION_BRIDGE_REFUSED', `the broker refused the register command on ${this.#topic.command}: is the certificate this station's role:station:<id>?`, { cause: e });
        }
        last = isCodedError(e) ? `${e.code}: ${e.message}` : String(e);
        return undefined;
      });
      if (reply?.ok === false) {
        if (!reply.retryable) throw new StationError('STATION_BRIDGE_REFUSED', `the bridge refused the request: ${reply.code}: ${reply.message}`, { details: { cause: reply.code } });
        last = `${reply.code}: ${reply.message}`;
      } else if (reply?.ok === true) {
        const retry = reply.results.find((r) => !r.ok && r.retryable);
        if (!retry) return reply.results;
        last = retry.ok ? '' : `${retry.code}: ${retry.message}`;
        if (attempt >= this.#attempts) return reply.results;
      }
      if (attempt >= this.#attempts) throw unavailable(`no acknowledgment from the bridge after ${attempt} attempts (last: ${last})`);
      await this.#sleep(Math.min(this.#backoff.capMs, this.#backoff.baseMs * 2 ** (attempt - 1)));
    }
  }

  /** Publishes once and waits up to the reply timeout; resolves undefined on timeout. */
  async #exchange(requestId: string, payload: Buffer): Promise<StationRegisterReply | undefined> {
    let timer: NodeJS.Timeout | undefined;
    const answered = new Promise<StationRegisterReply | undefined>((resolve) => {
      this.#waiting = { requestId, resolve };
      timer = setTimeout(() => resolve(undefined), this.#timeoutMs);
    });
    try {
      await this.#transport.publish(this.#topic.command, payload, { qos: 1 });
      return await answered;
    } finally {
      clearTimeout(timer);
      this.#waiting = undefined;
    }
  }

  #onReply(payload: Buffer, retained: boolean): void {
    if (retained) return;
    let reply: StationRegisterReply;
    try {
      reply = decodeStationRegisterReply(payload);
    } catch {
      return; // not an answer this station can read: the request times out and is sent again
    }
    const waiting = this.#waiting;
    // A schema refusal carries no requestId: with one request at a time it is the one in flight's.
    if (waiting && (reply.requestId === undefined || reply.requestId === waiting.requestId)) waiting.resolve(reply);
  }
}

function unavailable(message: string, cause?: unknown): StationError {
  const detail = cause === undefined ? '' : `: ${isCodedError(cause) ? `${cause.code}: ` : ''}${(cause as Error).message ?? String(cause)}`;
  return new StationError('STATION_BRIDGE_UNAVAILABLE', `${message}${detail}`, cause === undefined ? undefined : { cause });
}
