import { isCodedError } from '../../common/coded-error.js';
import { CRL_PART_BYTES, decodeCrlDelta, decodeCrlPart, sha256Hex } from '../../common/protocol/crl.js';
import type { SchemaErrorCode } from '../../common/protocol/schema.js';
import type { Topics } from '../../common/protocol/topics.js';
import { DEFAULT_MAX_CRL_BYTES } from './revocation-cache.js';

/**
 * Turns the fleet's CRL messages (common/protocol/crl.ts) into whole DER CRLs for the RevocationCache:
 * parts of the complete CRL are joined once every part of one set (same crlNumber, sha256 and parts)
 * is in and the digest matches; a delta message yields its DER at once. Nothing here is trusted: the
 * cache verifies the signature, the numbers and the base/delta relation of every DER it is given.
 *
 * - A complete CRL comes back together with the newest delta seen if that is numbered after it (a
 *   delta that arrived before its base, which the cache refused with CRL_BASE_MISSING, applies now).
 * - Bounded memory: at most two sets are assembled at once (the newest two by number; a part of an
 *   older set than both is dropped, and a third set evicts the oldest); a set never holds more than
 *   `maxBytes`; one delta DER is kept. Parts of a set numbered at or below the last set completed are
 *   ignored (retained copies re-sent on a resubscription).
 * - An empty payload (a cleared retained topic) is `waiting`. `push` never throws on network input.
 */
export type CrlFeedCode =
  | SchemaErrorCode
  /** Not a CRL topic of this fleet. */
  | 'CRL_FEED_TOPIC_UNKNOWN'
  /** The part's topic index differs from its `part` field. */
  | 'CRL_FEED_PART_MISMATCH'
  /** The announced complete CRL is larger than `maxBytes`. */
  | 'CRL_FEED_TOO_LARGE'
  /** Every part arrived but the joined bytes do not have the announced SHA-256 (the set is dropped). */
  | 'CRL_FEED_DIGEST_MISMATCH';

export type CrlFeedResult =
  | { readonly kind: 'ready'; readonly crls: Buffer[] }
  | { readonly kind: 'waiting' }
  | { readonly kind: 'invalid'; readonly code: CrlFeedCode; readonly reason: string };

interface Assembly {
  readonly crlNumber: bigint;
  readonly sha256: string;
  readonly chunks: (Buffer | undefined)[];
  received: number;
}

const WAITING: CrlFeedResult = { kind: 'waiting' };
const invalid = (code: CrlFeedCode, reason: string): CrlFeedResult => ({ kind: 'invalid', code, reason });

export class CrlFeed {
  /** The MQTT filters to subscribe to on the device connection: every part, and the delta. */
  readonly filters: readonly string[];
  readonly #topics: Topics;
  readonly #deltaTopic: string;
  readonly #maxBytes: number;
  readonly #sets = new Map<string, Assembly>();
  #completed: bigint | undefined;
  #delta: { readonly crlNumber: bigint; readonly der: Buffer } | undefined;

  constructor(opts: { topics: Topics; maxBytes?: number }) {
    this.#topics = opts.topics;
    this.#deltaTopic = opts.topics.fleet('crlDelta');
    this.#maxBytes = opts.maxBytes ?? DEFAULT_MAX_CRL_BYTES;
    this.filters = [opts.topics.allCrlParts(), this.#deltaTopic];
  }

  push(topic: string, payload: Buffer): CrlFeedResult {
    try {
      if (topic === this.#deltaTopic) return this.#onDelta(payload);
      const index = this.#topics.parseCrlPart(topic);
      if (index === undefined) return invalid('CRL_FEED_TOPIC_UNKNOWN', `${topic} is not a CRL topic`);
      return this.#onPart(index, payload);
    } catch (e) {
      if (isCodedError(e) && e.code.startsWith('SCHEMA_')) return invalid(e.code as SchemaErrorCode, e.message);
      return invalid('SCHEMA_INVALID', e instanceof Error ? e.message : 'unreadable CRL message');
    }
  }

  #onDelta(payload: Buffer): CrlFeedResult {
    if (payload.length === 0) return WAITING;
    const m = decodeCrlDelta(payload);
    const crlNumber = BigInt(m.crlNumber);
    if (!this.#delta || crlNumber > this.#delta.crlNumber) this.#delta = { crlNumber, der: m.crl };
    return { kind: 'ready', crls: [m.crl] };
  }

  #onPart(index: number, payload: Buffer): CrlFeedResult {
    if (payload.length === 0) return WAITING;
    const m = decodeCrlPart(payload);
    if (m.part !== index) return invalid('CRL_FEED_PART_MISMATCH', `part ${m.part} arrived on the topic of part ${index}`);
    const crlNumber = BigInt(m.crlNumber);
    if ((m.parts - 1) * CRL_PART_BYTES + 1 > this.#maxBytes) {
      return invalid('CRL_FEED_TOO_LARGE', `a CRL of ${m.parts} parts exceeds ${this.#maxBytes} bytes`);
    }
    if (this.#completed !== undefined && crlNumber <= this.#completed) return WAITING;

    const key = `${m.crlNumber}/${m.sha256}/${m.parts}`;
    let set = this.#sets.get(key);
    if (!set) {
      if (this.#sets.size >= 2) {
        const oldest = [...this.#sets.entries()].reduce((a, b) => (b[1].crlNumber < a[1].crlNumber ? b : a));
        if (crlNumber < oldest[1].crlNumber) return WAITING;
        this.#sets.delete(oldest[0]);
      }
      set = { crlNumber, sha256: m.sha256, chunks: new Array<Buffer | undefined>(m.parts).fill(undefined), received: 0 };
      this.#sets.set(key, set);
    }
    if (set.chunks[index] === undefined) set.received++;
    // A repeated part replaces the earlier copy: if one of them was wrong, the digest check says so.
    set.chunks[index] = m.data;
    if (set.received < set.chunks.length) return WAITING;

    this.#sets.delete(key);
    const der = Buffer.concat(set.chunks as Buffer[]);
    if (sha256Hex(der) !== set.sha256) {
      return invalid('CRL_FEED_DIGEST_MISMATCH', `the ${set.chunks.length} parts of CRL ${m.crlNumber} do not have the announced SHA-256`);
    }
    this.#completed = crlNumber;
    for (const [k, s] of this.#sets) if (s.crlNumber <= crlNumber) this.#sets.delete(k);
    const crls: Buffer[] = [der];
    if (this.#delta && this.#delta.crlNumber > crlNumber) crls.push(this.#delta.der);
    return { kind: 'ready', crls };
  }
}
