import type { Clock } from '../../common/clock.js';
import { CodedError } from '../../common/coded-error.js';
import { checkSignature, CrlFormatError, normalizeSerial, parseCaCert, parseCrl, REMOVE_FROM_CRL, sha256Hex, type CaCert, type ParsedCrl } from './crl-der.js';

/**
 * The device's cache of the fleet's revocation data (issue 7, "Devices cache revocation data"), in a
 * LevelDB sublevel of the agent store, with a hot in-memory index for offline peer verification.
 *
 * It holds at most one complete CRL and one delta CRL (RFC 5280 5.2.4) against it, both from the
 * fleet's issuing CA (the bridge sends the complete one in parts and deltas in one message; see
 * common/protocol/crl.ts and agent/src/crl-feed.ts).
 * - `accept` takes a DER CRL, complete or delta, checks it was signed by one of the fleet CAs the agent
 *   already trusts (issuer name match, then the signature with that CA's key, trying the CA named by
 *   the CRL's AKI first), then:
 *   - a complete CRL is accepted when its number is greater than the held complete one; it replaces
 *     it and drops a held delta whose number is not greater than its own;
 *   - a delta is accepted when its number is greater than every held CRL's and its BaseCRLNumber is at
 *     most the held complete CRL's number (RFC 5280 5.2.4: a delta applies to any complete CRL numbered
 *     from its base up; this fleet's deltas are cumulative since their base), from the same CA key;
 *   - otherwise `CRL_OLDER` (a replay or an older CRL: the agent treats it as "nothing new") or
 *     `CRL_BASE_MISSING` (a delta whose base we do not hold: the agent waits for the base);
 *   and persists what it holds in one batch.
 * - `status(serial)` answers from the complete CRL ∪ the delta (a delta entry with reason
 *   removeFromCRL takes the serial off, RFC 5280 5.3.1), with two Set lookups; freshness and
 *   `thisUpdate()` come from the newest held CRL (the higher number): `stale` once
 *   now > its nextUpdate + graceSec, `none` while no complete CRL is held.
 *
 * The DER is read by crl-der.ts (our own walker: asn1js refuses CRLs of more than ~3,000 entries).
 *
 * Scope: serial numbers are unique per issuer only, so the cache holds the CRLs of one issuer (the
 * fleet's issuing CA) and `coversIssuer` lets `verifyPeer` check the peer was issued by that CA.
 *
 * Records (JSON): `crl` → StoredCrl (the complete CRL's DER and metadata); `serials` → StoredSerials
 * (its revoked serials and reasons, so `open` rebuilds the index without re-parsing the DER); `delta`
 * → StoredDelta (the delta's DER, metadata and entries). `crl` and `serials` carry the same number and
 * are written in one batch; a pair that disagrees is discarded at `open`, and so is a delta that does
 * not apply to the held complete CRL.
 */
export type RevocationCacheErrorCode = 'REVOCATION_CACHE_NOT_OPEN' | 'REVOCATION_CACHE_STORE_FAILED';

export class RevocationCacheError extends CodedError<RevocationCacheErrorCode> {}

export type CrlRejectCode = 'CRL_SIGNATURE_INVALID' | 'CRL_OLDER' | 'CRL_MALFORMED' | 'CRL_ISSUER_UNKNOWN' | 'CRL_BASE_MISSING';

export type AcceptResult =
  | { readonly accepted: true; readonly crlNumber: bigint; readonly thisUpdate: number }
  | { readonly accepted: false; readonly code: CrlRejectCode; readonly reason: string };

export type Freshness = 'fresh' | 'stale' | 'none';

export interface RevocationStatus {
  readonly revoked: boolean;
  /** RFC 5280 5.3.1 reason name, when the CRL entry has one. */
  readonly reason?: string;
  readonly freshness: Freshness;
  readonly thisUpdate?: number;
  readonly nextUpdate?: number;
}

/** What `verifyPeer` needs from the cache. */
export interface RevocationView {
  /** `now` defaults to the cache's clock. */
  status(serial: string, now?: number): RevocationStatus;
  /** Whether the cached CRL was signed by the CA with this SPKI (DER), i.e. covers its certificates. */
  coversIssuer(issuerSpkiDer: Buffer): boolean;
}

export type RevocationCacheBatchOp = { type: 'put'; key: string; value: unknown } | { type: 'del'; key: string };

/** The part of a LevelDB (sub)level with string keys and JSON values the cache uses; it owns every key in it. */
export interface RevocationCacheDb {
  get(key: string): Promise<unknown>;
  batch(ops: RevocationCacheBatchOp[]): Promise<void>;
}

export interface RevocationCacheOptions {
  readonly clock: Clock;
  /** Freshness policy: answers are `stale` once now > nextUpdate + graceSec. */
  readonly graceSec: number;
  /** Largest CRL accepted; default 16 MiB (a fleet CRL is about 50 bytes a serial: ~330,000 serials). */
  readonly maxBytes?: number;
}

export const DEFAULT_MAX_CRL_BYTES = 16 * 1024 * 1024;

interface StoredCrl {
  readonly v: 1;
  readonly der: string;
  readonly crlNumber: string;
  readonly thisUpdate: number;
  readonly nextUpdate: number;
  /** sha256 (hex) of the signing CA's SPKI. */
  readonly issuerKey: string;
  readonly issuer: string;
}

interface StoredSerials {
  readonly crlNumber: string;
  readonly serials: readonly string[];
  /** Sparse: serial → reason name, for entries with a reasonCode. */
  readonly reasons: Readonly<Record<string, string>>;
}

interface StoredDelta extends StoredCrl, StoredSerials {
  readonly baseCrlNumber: string;
  /** Serials the delta takes off (reason removeFromCRL). */
  readonly removed: readonly string[];
}

/** One held CRL and its index. */
interface Held {
  readonly der: Buffer;
  readonly crlNumber: bigint;
  /** Delta only. */
  readonly baseCrlNumber: bigint | undefined;
  readonly thisUpdate: number;
  readonly nextUpdate: number;
  readonly issuerKey: string;
  readonly issuer: string;
  readonly serials: ReadonlySet<string>;
  readonly reasons: ReadonlyMap<string, string>;
  /** Delta only: removeFromCRL entries. */
  readonly removed: ReadonlySet<string>;
}

const CRL_KEY = 'crl';
const SERIALS_KEY = 'serials';
const DELTA_KEY = 'delta';
export class RevocationCache implements RevocationView {
  /** Parsed issuer certificates by PEM: the same few CAs come with every CRL (parsing them was half an accept). */
  readonly #caCerts = new Map<string, CaCert | null>();
  readonly #db: RevocationCacheDb;
  readonly #clock: Clock;
  readonly #maxBytes: number;
  #graceMs: number;
  #opened: Promise<'loaded' | 'empty' | 'discarded'> | undefined;
  #ready = false;
  #complete: Held | undefined;
  #delta: Held | undefined;
  /** Distinct serials revoked by complete ∪ delta. */
  #size = 0;
  #writes: Promise<unknown> = Promise.resolve();

  constructor(db: RevocationCacheDb, opts: RevocationCacheOptions) {
    this.#db = db;
    this.#clock = opts.clock;
    this.#graceMs = graceMs(opts.graceSec);
    this.#maxBytes = opts.maxBytes ?? DEFAULT_MAX_CRL_BYTES;
  }

  /**
   * Loads the stored CRLs and rebuilds the index. A stored complete CRL whose records do not parse or
   * disagree is deleted with any delta (`discarded`): the cache then answers `none` until the next
   * complete CRL arrives (fail closed). A stored delta that does not parse or does not apply to the
   * complete CRL is deleted alone (`discarded`; the complete CRL still answers).
   */
  open(): Promise<'loaded' | 'empty' | 'discarded'> {
    this.#opened ??= this.#load().catch((e: unknown) => {
      this.#opened = undefined;
      throw e;
    });
    return this.#opened;
  }

  async #load(): Promise<'loaded' | 'empty' | 'discarded'> {
    let crl: unknown;
    let serials: unknown;
    let delta: unknown;
    try {
      [crl, serials, delta] = await Promise.all([this.#db.get(CRL_KEY), this.#db.get(SERIALS_KEY), this.#db.get(DELTA_KEY)]);
    } catch (e) {
      throw new RevocationCacheError('REVOCATION_CACHE_STORE_FAILED', 'cannot read the cached CRL', { cause: e });
    }
    if (crl === undefined && serials === undefined && delta === undefined) {
      this.#ready = true;
      return 'empty';
    }
    const complete = crl === undefined && serials === undefined ? undefined : completeFromStored(crl, serials);
    const d = delta === undefined || !complete ? undefined : deltaFromStored(delta);
    const deltaOk = d !== undefined && appliesTo(d, complete!);
    const drop: RevocationCacheBatchOp[] = [];
    if (!complete && (crl !== undefined || serials !== undefined)) drop.push({ type: 'del', key: CRL_KEY }, { type: 'del', key: SERIALS_KEY });
    if (delta !== undefined && !deltaOk) drop.push({ type: 'del', key: DELTA_KEY });
    if (drop.length > 0) {
      try {
        await this.#db.batch(drop);
      } catch (e) {
        throw new RevocationCacheError('REVOCATION_CACHE_STORE_FAILED', 'cannot discard the corrupt cached CRL', { cause: e });
      }
    }
    this.#set(complete, deltaOk ? d : undefined);
    this.#ready = true;
    return drop.length > 0 ? 'discarded' : 'loaded';
  }

  /**
   * Verifies and stores a complete or delta CRL. `issuers`: PEM CA certificates the CRL may be signed
   * by (the fleet's issuing chain as the agent holds it, already trusted). `opts.graceSec` replaces
   * the freshness grace. Calls are serialized, so two CRLs racing cannot store the older one last.
   */
  accept(crlDer: Buffer, issuers: readonly string[], opts?: { readonly graceSec?: number }): Promise<AcceptResult> {
    const run = this.#writes.then(() => this.#accept(crlDer, issuers, opts));
    this.#writes = run.catch(() => undefined);
    return run;
  }

  async #accept(crlDer: Buffer, issuers: readonly string[], opts?: { readonly graceSec?: number }): Promise<AcceptResult> {
    this.#assertOpen();
    if (opts?.graceSec !== undefined) this.#graceMs = graceMs(opts.graceSec);
    if (!Buffer.isBuffer(crlDer) || crlDer.length === 0 || crlDer.length > this.#maxBytes) {
      return reject('CRL_MALFORMED', `CRL must be 1..${this.#maxBytes} bytes of DER`);
    }
    let crl: ParsedCrl;
    try {
      crl = parseCrl(crlDer);
    } catch (e) {
      return reject('CRL_MALFORMED', e instanceof CrlFormatError ? e.message : 'CRL does not parse');
    }

    const candidates: CaCert[] = [];
    for (const pem of issuers) {
      const ca = this.#caCert(pem);
      if (ca && ca.subjectDer.equals(crl.issuerDer) && ca.mayCrlSign) candidates.push(ca);
    }
    if (candidates.length === 0) return reject('CRL_ISSUER_UNKNOWN', 'no trusted CA with the CRL issuer name may sign CRLs');
    // RFC 5280 5.2.1: the AKI names the key; try that CA first, then any other CA with the same name.
    if (crl.akiKeyId) {
      const aki = crl.akiKeyId;
      candidates.sort((a, b) => Number(b.skid?.equals(aki) ?? false) - Number(a.skid?.equals(aki) ?? false));
    }
    const signer = candidates.find((ca) => checkSignature(crl, ca.cert));
    if (!signer) return reject('CRL_SIGNATURE_INVALID', 'the CRL signature does not verify with the issuing CA key');

    const held = indexOf(crlDer, crl, signer);
    const c = this.#complete;
    const d = this.#delta;
    const ops: RevocationCacheBatchOp[] = [];
    let next: { complete: Held; delta: Held | undefined };
    if (held.baseCrlNumber === undefined) {
      if (c && held.crlNumber <= c.crlNumber) {
        return reject('CRL_OLDER', `CRL number ${held.crlNumber} is not newer than the cached ${c.crlNumber}`);
      }
      // A held delta newer than this complete CRL still applies to it (its base is older still).
      const keep = d !== undefined && appliesTo(d, held) ? d : undefined;
      next = { complete: held, delta: keep };
      ops.push({ type: 'put', key: CRL_KEY, value: toStoredCrl(crlDer, held) }, { type: 'put', key: SERIALS_KEY, value: toStoredSerials(held) });
      if (d && !keep) ops.push({ type: 'del', key: DELTA_KEY });
    } else {
      const newest = d?.crlNumber ?? c?.crlNumber;
      if (newest !== undefined && held.crlNumber <= newest) {
        return reject('CRL_OLDER', `delta CRL number ${held.crlNumber} is not newer than the cached ${newest}`);
      }
      if (!c) return reject('CRL_BASE_MISSING', `delta CRL ${held.crlNumber} needs complete CRL ${held.baseCrlNumber} or newer; none is cached`);
      if (!appliesTo(held, c)) {
        return reject('CRL_BASE_MISSING', `delta CRL ${held.crlNumber} (base ${held.baseCrlNumber}) does not apply to the cached complete CRL ${c.crlNumber}`);
      }
      next = { complete: c, delta: held };
      ops.push({ type: 'put', key: DELTA_KEY, value: toStoredDelta(crlDer, held) });
    }
    try {
      await this.#db.batch(ops);
    } catch (e) {
      throw new RevocationCacheError('REVOCATION_CACHE_STORE_FAILED', 'cannot store the CRL', { cause: e });
    }
    this.#set(next.complete, next.delta);
    return { accepted: true, crlNumber: held.crlNumber, thisUpdate: held.thisUpdate };
  }

  #set(complete: Held | undefined, delta: Held | undefined): void {
    this.#complete = complete;
    this.#delta = complete ? delta : undefined;
    let n = complete?.serials.size ?? 0;
    if (complete && delta) {
      for (const s of delta.serials) if (!complete.serials.has(s)) n++;
      for (const s of delta.removed) if (complete.serials.has(s)) n--;
    }
    this.#size = n;
  }

  #caCert(pem: string): CaCert | undefined {
    let ca = this.#caCerts.get(pem);
    if (ca === undefined) {
      ca = parseCaCert(pem) ?? null;
      // Bounded: the agent's chain and roots change rarely; a stranger set just starts the map over.
      if (this.#caCerts.size >= 32) this.#caCerts.clear();
      this.#caCerts.set(pem, ca);
    }
    return ca ?? undefined;
  }

  /** The hot path: one normalization and at most three Set lookups. */
  status(serial: string, now: number = this.#clock.now()): RevocationStatus {
    this.#assertOpen();
    const c = this.#complete;
    if (!c) return { revoked: false, freshness: 'none' };
    const d = this.#delta;
    const newest = d ?? c;
    const key = normalizeSerial(serial);
    const freshness: Freshness = now > newest.nextUpdate + this.#graceMs ? 'stale' : 'fresh';
    let from: Held | undefined;
    if (d !== undefined && d.serials.has(key)) from = d;
    else if (c.serials.has(key) && (d === undefined || !d.removed.has(key))) from = c;
    if (!from) return { revoked: false, freshness, thisUpdate: newest.thisUpdate, nextUpdate: newest.nextUpdate };
    const reason = from.reasons.get(key);
    return reason === undefined
      ? { revoked: true, freshness, thisUpdate: newest.thisUpdate, nextUpdate: newest.nextUpdate }
      : { revoked: true, reason, freshness, thisUpdate: newest.thisUpdate, nextUpdate: newest.nextUpdate };
  }

  coversIssuer(issuerSpkiDer: Buffer): boolean {
    this.#assertOpen();
    return this.#complete !== undefined && sha256Hex(issuerSpkiDer) === this.#complete.issuerKey;
  }

  /** thisUpdate (ms) of the newest held CRL: a trusted timestamp for the agent's clock floor. */
  thisUpdate(): number | undefined {
    this.#assertOpen();
    return (this.#delta ?? this.#complete)?.thisUpdate;
  }

  /** Number of the newest held CRL (the delta's when one is held). */
  crlNumber(): bigint | undefined {
    this.#assertOpen();
    return (this.#delta ?? this.#complete)?.crlNumber;
  }

  /** Number of the held complete CRL. */
  completeCrlNumber(): bigint | undefined {
    this.#assertOpen();
    return this.#complete?.crlNumber;
  }

  /** Number of distinct revoked serials in the held complete CRL ∪ delta. */
  size(): number {
    this.#assertOpen();
    return this.#size;
  }

  /** The DER CRLs held: the complete one first, then the delta if any (for snapshots; do not modify). */
  ders(): Buffer[] {
    this.#assertOpen();
    const out: Buffer[] = [];
    if (this.#complete) out.push(this.#complete.der);
    if (this.#delta) out.push(this.#delta.der);
    return out;
  }

  /** Waits for a running `accept`. The database itself belongs to the caller. */
  async close(): Promise<void> {
    await this.#writes;
    this.#ready = false;
    this.#opened = undefined;
    this.#complete = undefined;
    this.#delta = undefined;
    this.#size = 0;
  }

  #assertOpen(): void {
    if (!this.#ready) throw new RevocationCacheError('REVOCATION_CACHE_NOT_OPEN', 'revocation cache is not open');
  }
}

function reject(code: CrlRejectCode, reason: string): AcceptResult {
  return { accepted: false, code, reason };
}

function graceMs(graceSec: number): number {
  if (!Number.isSafeInteger(graceSec) || graceSec < 0) {
    throw new RangeError('graceSec must be a non-negative integer');
  }
  return graceSec * 1000;
}


/** RFC 5280 5.2.4: a delta applies to a complete CRL numbered from its base up to below its own number, from the same CA key. */
function appliesTo(delta: Held, complete: Held): boolean {
  return (
    delta.baseCrlNumber !== undefined &&
    delta.baseCrlNumber <= complete.crlNumber &&
    delta.crlNumber > complete.crlNumber &&
    delta.issuerKey === complete.issuerKey
  );
}

/** The index of a parsed, verified CRL (first entry of a serial wins). */
function indexOf(der: Buffer, crl: ParsedCrl, signer: CaCert): Held {
  const serials = new Set<string>();
  const removed = new Set<string>();
  const reasons = new Map<string, string>();
  for (const e of crl.entries) {
    if (serials.has(e.serial) || removed.has(e.serial)) continue;
    if (e.reason === REMOVE_FROM_CRL) {
      removed.add(e.serial);
      continue;
    }
    serials.add(e.serial);
    if (e.reason !== undefined) reasons.set(e.serial, e.reason);
  }
  return {
    der,
    crlNumber: crl.crlNumber,
    baseCrlNumber: crl.baseCrlNumber,
    thisUpdate: crl.thisUpdate,
    nextUpdate: crl.nextUpdate,
    issuerKey: signer.keyHash,
    issuer: signer.cert.subject,
    serials,
    reasons,
    removed,
  };
}

function toStoredCrl(der: Buffer, h: Held): StoredCrl {
  return { v: 1, der: der.toString('base64'), crlNumber: h.crlNumber.toString(), thisUpdate: h.thisUpdate, nextUpdate: h.nextUpdate, issuerKey: h.issuerKey, issuer: h.issuer };
}

function toStoredSerials(h: Held): StoredSerials {
  return { crlNumber: h.crlNumber.toString(), serials: [...h.serials], reasons: Object.fromEntries(h.reasons) };
}

function toStoredDelta(der: Buffer, h: Held): StoredDelta {
  return { ...toStoredCrl(der, h), ...toStoredSerials(h), baseCrlNumber: String(h.baseCrlNumber), removed: [...h.removed] };
}

const NUMBER = /^\d{1,60}$/;

function isStoredCrl(c: Partial<StoredCrl>): boolean {
  return (
    c.v === 1 &&
    typeof c.crlNumber === 'string' &&
    NUMBER.test(c.crlNumber) &&
    typeof c.der === 'string' &&
    Number.isSafeInteger(c.thisUpdate) &&
    Number.isSafeInteger(c.nextUpdate) &&
    typeof c.issuerKey === 'string' &&
    typeof c.issuer === 'string'
  );
}

function stringSet(v: unknown): Set<string> | undefined {
  if (!Array.isArray(v)) return undefined;
  const set = new Set<string>();
  for (const x of v as unknown[]) {
    if (typeof x !== 'string') return undefined;
    set.add(x);
  }
  return set;
}

function reasonMap(v: unknown): Map<string, string> | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const reasons = new Map<string, string>();
  for (const [k, r] of Object.entries(v)) if (typeof r === 'string') reasons.set(k, r);
  return reasons;
}

function completeFromStored(crl: unknown, serials: unknown): Held | undefined {
  if (typeof crl !== 'object' || crl === null || typeof serials !== 'object' || serials === null) return undefined;
  const c = crl as Partial<StoredCrl>;
  const s = serials as Partial<StoredSerials>;
  if (!isStoredCrl(c) || s.crlNumber !== c.crlNumber) return undefined;
  const set = stringSet(s.serials);
  const reasons = reasonMap(s.reasons);
  if (!set || !reasons) return undefined;
  return {
    der: Buffer.from(c.der!, 'base64'),
    crlNumber: BigInt(c.crlNumber!),
    baseCrlNumber: undefined,
    thisUpdate: c.thisUpdate!,
    nextUpdate: c.nextUpdate!,
    issuerKey: c.issuerKey!,
    issuer: c.issuer!,
    serials: set,
    reasons,
    removed: new Set(),
  };
}

function deltaFromStored(delta: unknown): Held | undefined {
  if (typeof delta !== 'object' || delta === null) return undefined;
  const d = delta as Partial<StoredDelta>;
  if (!isStoredCrl(d) || typeof d.baseCrlNumber !== 'string' || !NUMBER.test(d.baseCrlNumber)) return undefined;
  const set = stringSet(d.serials);
  const removed = stringSet(d.removed);
  const reasons = reasonMap(d.reasons);
  if (!set || !removed || !reasons) return undefined;
  return {
    der: Buffer.from(d.der!, 'base64'),
    crlNumber: BigInt(d.crlNumber!),
    baseCrlNumber: BigInt(d.baseCrlNumber),
    thisUpdate: d.thisUpdate!,
    nextUpdate: d.nextUpdate!,
    issuerKey: d.issuerKey!,
    issuer: d.issuer!,
    serials: set,
    reasons,
    removed,
  };
}

export { normalizeSerial } from './crl-der.js';
