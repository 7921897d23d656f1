import { createHash } from 'node:crypto';
import { isCodedError } from '../../../common/coded-error.js';
import type { Clock } from '../../../common/clock.js';
import {
  STATION_REPLY_CODES,
  allStationCommands,
  decodeStationRegister,
  deviceRefusal,
  encodeStationRefusal,
  encodeStationRegisterAccepted,
  parseStationCommand,
  stationTopics,
  type StationDeviceResult,
  type StationReplyCode,
} from '../../../common/protocol/station.js';
import type { Topics } from '../../../common/protocol/topics.js';
import type { EkTrustStore } from '../../../native/lib/ek-certificate.js';
import type { MessageMeta, RequestHandler } from '../bridge.js';
import type { EnrollmentLogger } from '../enrollment/enrollment-service.js';
import { InFlight, type Reply } from '../enrollment/request-handling.js';
import type { Inventory } from '../inventory/inventory.js';
import { Registrar } from './registrar.js';

/**
 * The station `register` command (protocol: common/protocol/station.ts): registers factory devices
 * through the Registrar while the bridge runs, and answers on the station's reply topic with one
 * result per device. Registrations are serialized across all stations; every failure is a coded
 * refusal, internals go to the log, never to the wire, and tokens never reach either (only hashes
 * travel).
 */
export interface StationRegistrationOptions {
  readonly topics: Topics;
  readonly inventory: Inventory;
  /** The TPM manufacturer roots and intermediates the enrollment service trusts. */
  readonly ekTrust: EkTrustStore;
  readonly clock: Clock;
  readonly logger?: EnrollmentLogger;
  /** Stations that may register factory-trusted EKs (Registrar). Default: none. */
  readonly factoryTrustedEkStations?: readonly string[];
}

/** Answers remembered per (station, requestId); the oldest go first. */
const REMEMBERED_ANSWERS = 1024;
/** Inventory failures a station may wait out. */
const UNAVAILABLE: ReadonlySet<string> = new Set(['INVENTORY_CLOSED']);

export class StationRegistrationHandler implements RequestHandler {
  readonly #topics: Topics;
  readonly #registrar: Registrar;
  readonly #logger: EnrollmentLogger | undefined;
  readonly #done = new Map<string, { digest: string; payload: Buffer }>();
  readonly #inFlight = new InFlight();
  #queue: Promise<unknown> = Promise.resolve();

  constructor(o: StationRegistrationOptions) {
    this.#topics = o.topics;
    this.#registrar = new Registrar({
      inventory: o.inventory,
      ekTrust: o.ekTrust,
      clock: o.clock,
      ...(o.factoryTrustedEkStations ? { factoryTrustedEkStations: o.factoryTrustedEkStations } : {}),
    });
    this.#logger = o.logger;
  }

  filters(): string[] {
    return [allStationCommands(this.#topics, 'register')];
  }

  async handle(topic: string, payload: Buffer, meta?: MessageMeta): Promise<Reply | undefined> {
    if (meta?.retain) return undefined; // a retained command is never a live request
    const parsed = parseStationCommand(this.#topics, topic);
    if (parsed?.command !== 'register') return undefined;
    const station = parsed.stationId;
    const replyTopic = stationTopics(this.#topics, station, 'register').reply;
    let req;
    try {
      req = decodeStationRegister(payload);
    } catch (e) {
      const code = isCodedError(e) && e.code in STATION_REPLY_CODES ? (e.code as StationReplyCode) : 'SCHEMA_INVALID';
      return { topic: replyTopic, payload: encodeStationRefusal(undefined, code, (e as Error).message) };
    }
    const key = `${station}\n${req.requestId}`;
    const digest = createHash('sha256').update(payload).digest('hex');
    const cached = this.#done.get(key);
    if (cached) {
      return { topic: replyTopic, payload: cached.digest === digest ? cached.payload : encodeStationRefusal(req.requestId, 'REQUEST_ID_REUSED') };
    }
    // A redelivered command arriving while the first still runs gets the first answer.
    return this.#inFlight.run(`${key}\n${digest}`, () =>
      this.#serialized(async () => {
        const results: StationDeviceResult[] = [];
        const seen = new Set<string>();
        for (const d of req.devices) {
          if (seen.has(d.deviceId)) {
            results.push(deviceRefusal(d.deviceId, 'REGISTRATION_INVALID', `device ${d.deviceId} appears twice in the request`));
            continue;
          }
          seen.add(d.deviceId);
          results.push(await this.#registerOne(station, req.requestId, d));
        }
        const out = encodeStationRegisterAccepted(req.requestId, results);
        if (results.every((r) => r.ok || !r.retryable)) {
          this.#done.set(key, { digest, payload: out });
          if (this.#done.size > REMEMBERED_ANSWERS) this.#done.delete(this.#done.keys().next().value!);
        }
        return { topic: replyTopic, payload: out };
      }),
    );
  }

  async #registerOne(station: string, requestId: string, d: Parameters<Registrar['register']>[0]): Promise<StationDeviceResult> {
    let r: StationDeviceResult;
    try {
      r = await this.#registrar.register(d, station);
    } catch (e) {
      const code = isCodedError(e) ? e.code : undefined;
      const as: StationReplyCode = code !== undefined && UNAVAILABLE.has(code) ? 'UNAVAILABLE' : 'INTERNAL';
      this.#logger?.error({ station, requestId, deviceId: d.deviceId, code, err: e }, 'station registration failed');
      return deviceRefusal(d.deviceId, as);
    }
    const log = { station, requestId, deviceId: d.deviceId, ekPublicHash: d.ekPublicHash, ...(d.ekTrust ? { ekTrust: d.ekTrust } : {}), ...(r.ok ? { outcome: r.outcome } : { code: r.code, reason: r.message }) };
    if (r.ok) this.#logger?.info(log, 'station registration');
    else this.#logger?.warn(log, 'station registration refused');
    return r;
  }

  #serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }
}
