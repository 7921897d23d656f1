import { createHash, verify as verifySignature, X509Certificate } from 'node:crypto';
import type { Clock } from '../../common/clock.js';
import { CodedError } from '../../common/coded-error.js';
import { TAG, readSingle, readTlv, readTime, type Tlv } from '../../common/der.js';

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
 * Why a DER walker of our own instead of @peculiar/x509's X509Crl: asn1js refuses inputs of more than
 * 10,000 ASN.1 nodes ("Maximum ASN.1 node count exceeded"), i.e. CRLs of more than about 3,000
 * entries; a fleet CRL has 100,000. The walker below reads only what RFC 5280 5.1 defines, and refuses
 * unknown critical extensions (5.2, 5.3), indirect CRLs, a non-critical deltaCRLIndicator and
 * removeFromCRL in a complete CRL.
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
  /** Largest CRL accepted; default 16 MiB (a full CRL is about 35 bytes a serial). */
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
const REMOVE_FROM_CRL = 'removeFromCRL';

/** RFC 5280 5.3.1 (7 is unused). */
const REASON_NAMES: Readonly<Record<number, string>> = {
  0: 'unspecified',
  1: 'keyCompromise',
  2: 'cACompromise',
  3: 'affiliationChanged',
  4: 'superseded',
  5: 'cessationOfOperation',
  6: 'certificateHold',
  8: REMOVE_FROM_CRL,
  9: 'privilegeWithdrawn',
  10: 'aACompromise',
};

/** Lowercase hex without leading zeros ('0' for zero): the index key. */
export function normalizeSerial(serial: string): string {
  const s = serial.toLowerCase().replace(/^0+/, '');
  return s === '' ? '0' : s;
}

export class RevocationCache implements RevocationView {
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
      const ca = parseCaCert(pem);
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

function sha256Hex(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
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

// --- CRL parsing (RFC 5280 5.1) ----------------------------------------------------------------

class CrlFormatError extends Error {}

interface ParsedCrl {
  readonly tbs: Buffer;
  readonly sigAlg: Buffer;
  readonly signature: Buffer;
  readonly issuerDer: Buffer;
  readonly thisUpdate: number;
  readonly nextUpdate: number;
  readonly crlNumber: bigint;
  /** The deltaCRLIndicator's BaseCRLNumber: set for a delta CRL. */
  readonly baseCrlNumber: bigint | undefined;
  readonly akiKeyId: Buffer | undefined;
  readonly entries: readonly { readonly serial: string; readonly reason: string | undefined }[];
}

const OID_TAG = 0x06;
const BOOLEAN = 0x01;
const CTX0 = 0xa0;
const CTX3 = 0xa3;
const ext = (last: number): string => `551d${last.toString(16).padStart(2, '0')}`; // 2.5.29.x
const EXT_AKI = ext(35);
const EXT_SKI = ext(14);
const EXT_KEY_USAGE = ext(15);
const EXT_CRL_NUMBER = ext(20);
const EXT_DELTA = ext(27);
const EXT_REASON = ext(21);
const EXT_INVALIDITY_DATE = ext(24);
/** CRL extensions understood (RFC 5280 5.2): AKI, issuerAltName, CRL number, freshestCRL (non-critical only). */
const KNOWN_CRL_EXTS = new Set([EXT_AKI, ext(18), EXT_CRL_NUMBER, ext(46)]);
const KNOWN_ENTRY_EXTS = new Set([EXT_REASON, EXT_INVALIDITY_DATE]);

/** Signature AlgorithmIdentifier OIDs (hex of the OID content) → digest for crypto.verify. */
const SIG_ALGS: ReadonlyMap<string, string | null> = new Map([
  ['2a8648ce3d040302', 'sha256'], // ecdsa-with-SHA256
  ['2a8648ce3d040303', 'sha384'],
  ['2a8648ce3d040304', 'sha512'],
  ['2a864886f70d01010b', 'sha256'], // sha256WithRSAEncryption
  ['2a864886f70d01010c', 'sha384'],
  ['2a864886f70d01010d', 'sha512'],
  ['2b6570', null], // Ed25519
]);

const fail = (why: string): never => {
  throw new CrlFormatError(`malformed CRL: ${why}`);
};

function expect(buf: Buffer, off: number, limit: number, tag: number, what: string): Tlv {
  const t = readTlv(buf, off, limit);
  if (t.tag !== tag) fail(`${what}: unexpected tag 0x${t.tag.toString(16)}`);
  return t;
}

function isTime(t: Tlv): boolean {
  return t.tag === TAG.UTC_TIME || t.tag === TAG.GENERALIZED_TIME;
}

function unsignedInteger(buf: Buffer, t: Tlv, what: string): Buffer {
  const c = buf.subarray(t.contentStart, t.end);
  if (c.length === 0) fail(`${what}: empty INTEGER`);
  return c;
}

interface Ext {
  readonly id: string;
  readonly critical: boolean;
  readonly value: Buffer;
}

/** Extensions ::= SEQUENCE SIZE (1..MAX) OF Extension, starting at the SEQUENCE TLV `t`. */
function readExtensions(buf: Buffer, t: Tlv): Ext[] {
  const out: Ext[] = [];
  const seen = new Set<string>();
  for (let p = t.contentStart; p < t.end; ) {
    const e = expect(buf, p, t.end, TAG.SEQUENCE, 'extension');
    const oid = expect(buf, e.contentStart, e.end, OID_TAG, 'extnID');
    let q = oid.end;
    let critical = false;
    let v = readTlv(buf, q, e.end);
    if (v.tag === BOOLEAN) {
      critical = v.end - v.contentStart === 1 && buf[v.contentStart] !== 0;
      q = v.end;
      v = readTlv(buf, q, e.end);
    }
    if (v.tag !== TAG.OCTET_STRING || v.end !== e.end) fail('extnValue');
    const id = buf.toString('hex', oid.contentStart, oid.end);
    if (seen.has(id)) fail(`extension ${id} repeated`);
    seen.add(id);
    out.push({ id, critical, value: buf.subarray(v.contentStart, v.end) });
    p = e.end;
  }
  return out;
}

function readTimeOf(buf: Buffer, t: Tlv, what: string): number {
  if (!isTime(t)) fail(`${what}: not a Time`);
  try {
    return readTime(buf, t);
  } catch {
    return fail(`${what}: bad time`);
  }
}

function parseCrl(der: Buffer): ParsedCrl {
  try {
    return parseCrlUnchecked(der);
  } catch (e) {
    if (e instanceof CrlFormatError) throw e;
    throw new CrlFormatError(`malformed CRL: ${e instanceof Error ? e.message : 'bad DER'}`);
  }
}

function parseCrlUnchecked(der: Buffer): ParsedCrl {
  const outer = readSingle(der, TAG.SEQUENCE, 'CertificateList');
  const tbsT = expect(der, outer.contentStart, outer.end, TAG.SEQUENCE, 'tbsCertList');
  const algT = expect(der, tbsT.end, outer.end, TAG.SEQUENCE, 'signatureAlgorithm');
  const sigT = expect(der, algT.end, outer.end, TAG.BIT_STRING, 'signatureValue');
  if (sigT.end !== outer.end) fail('trailing data in CertificateList');
  if (sigT.end - sigT.contentStart < 2 || der[sigT.contentStart] !== 0) fail('signatureValue');

  const end = tbsT.end;
  let t = readTlv(der, tbsT.contentStart, end);
  if (t.tag !== TAG.INTEGER) fail('version: a v2 CRL is required (CRL number)');
  if (t.end - t.contentStart !== 1 || der[t.contentStart] !== 1) fail('version: only v2 is supported');
  const innerAlg = expect(der, t.end, end, TAG.SEQUENCE, 'signature');
  if (!der.subarray(innerAlg.start, innerAlg.end).equals(der.subarray(algT.start, algT.end))) {
    fail('signature algorithms of tbsCertList and CertificateList differ');
  }
  const issuerT = expect(der, innerAlg.end, end, TAG.SEQUENCE, 'issuer');
  const thisT = readTlv(der, issuerT.end, end);
  const thisUpdate = readTimeOf(der, thisT, 'thisUpdate');
  let p = thisT.end;
  let nextUpdate: number | undefined;
  if (p < end) {
    t = readTlv(der, p, end);
    if (isTime(t)) {
      nextUpdate = readTimeOf(der, t, 'nextUpdate');
      p = t.end;
    }
  }
  if (nextUpdate === undefined) fail('nextUpdate is required');
  if ((nextUpdate as number) <= thisUpdate) fail('nextUpdate is not after thisUpdate');

  const entries: { serial: string; reason: string | undefined }[] = [];
  if (p < end) {
    t = readTlv(der, p, end);
    if (t.tag === TAG.SEQUENCE) {
      for (let q = t.contentStart; q < t.end; ) {
        const e = expect(der, q, t.end, TAG.SEQUENCE, 'revoked certificate');
        const sn = expect(der, e.contentStart, e.end, TAG.INTEGER, 'userCertificate');
        const at = readTlv(der, sn.end, e.end);
        readTimeOf(der, at, 'revocationDate');
        let reason: string | undefined;
        if (at.end < e.end) {
          const exts = expect(der, at.end, e.end, TAG.SEQUENCE, 'crlEntryExtensions');
          if (exts.end !== e.end) fail('revoked certificate: trailing data');
          for (const x of readExtensions(der, exts)) {
            if (x.id === EXT_REASON) {
              const r = readSingle(x.value, TAG.ENUMERATED, 'reasonCode');
              const code = r.end - r.contentStart === 1 ? (x.value[r.contentStart] as number) : -1;
              reason = REASON_NAMES[code] ?? fail(`unknown reasonCode ${code}`);
            } else if (x.critical && !KNOWN_ENTRY_EXTS.has(x.id)) {
              fail(`unsupported critical entry extension ${x.id} (indirect CRLs are not supported)`);
            }
          }
        }
        entries.push({ serial: normalizeSerial(unsignedInteger(der, sn, 'userCertificate').toString('hex')), reason });
        q = e.end;
      }
      p = t.end;
    }
  }

  let crlNumber: bigint | undefined;
  let baseCrlNumber: bigint | undefined;
  let akiKeyId: Buffer | undefined;
  if (p < end) {
    const wrap = expect(der, p, end, CTX0, 'crlExtensions');
    if (wrap.end !== end) fail('trailing data in tbsCertList');
    const exts = expect(der, wrap.contentStart, wrap.end, TAG.SEQUENCE, 'crlExtensions');
    for (const x of readExtensions(der, exts)) {
      if (x.id === EXT_CRL_NUMBER) {
        crlNumber = crlNumberValue(x.value, 'cRLNumber');
      } else if (x.id === EXT_AKI) {
        const a = readSingle(x.value, TAG.SEQUENCE, 'authorityKeyIdentifier');
        if (a.contentStart < a.end) {
          const k = readTlv(x.value, a.contentStart, a.end);
          if (k.tag === 0x80) akiKeyId = x.value.subarray(k.contentStart, k.end);
        }
      } else if (x.id === EXT_DELTA) {
        // RFC 5280 5.2.4: MUST be critical (a reader unaware of deltas must not take it for complete).
        if (!x.critical) fail('deltaCRLIndicator must be critical');
        baseCrlNumber = crlNumberValue(x.value, 'BaseCRLNumber');
      } else if (x.critical && !KNOWN_CRL_EXTS.has(x.id)) {
        fail(`unsupported critical CRL extension ${x.id}`);
      }
    }
  } else if (p !== end) {
    fail('trailing data in tbsCertList');
  }
  if (crlNumber === undefined) fail('cRLNumber is required');
  if (baseCrlNumber !== undefined && baseCrlNumber >= (crlNumber as bigint)) fail('a delta CRL must be numbered after its base');
  // RFC 5280 5.3.1: removeFromCRL is for delta CRLs only.
  if (baseCrlNumber === undefined && entries.some((e) => e.reason === REMOVE_FROM_CRL)) fail('removeFromCRL in a complete CRL');

  return {
    tbs: der.subarray(tbsT.start, tbsT.end),
    sigAlg: der.subarray(algT.contentStart, algT.end),
    signature: der.subarray(sigT.contentStart + 1, sigT.end),
    issuerDer: der.subarray(issuerT.start, issuerT.end),
    thisUpdate,
    nextUpdate: nextUpdate as number,
    crlNumber: crlNumber as bigint,
    baseCrlNumber,
    akiKeyId,
    entries,
  };
}

/** CRLNumber ::= INTEGER (0..MAX), at most 20 octets (RFC 5280 5.2.3); BaseCRLNumber is a CRLNumber. */
function crlNumberValue(value: Buffer, what: string): bigint {
  const n = readSingle(value, TAG.INTEGER, what);
  const c = value.subarray(n.contentStart, n.end);
  if (c.length === 0 || c.length > 21 || ((c[0] as number) & 0x80) !== 0) fail(`${what} out of range`);
  return BigInt('0x' + c.toString('hex'));
}

function checkSignature(crl: ParsedCrl, ca: X509Certificate): boolean {
  try {
    const oid = readTlv(crl.sigAlg, 0);
    if (oid.tag !== OID_TAG) return false;
    const digest = SIG_ALGS.get(crl.sigAlg.toString('hex', oid.contentStart, oid.end));
    if (digest === undefined) return false;
    return verifySignature(digest, crl.tbs, { key: ca.publicKey, dsaEncoding: 'der' }, crl.signature);
  } catch {
    return false;
  }
}

// --- CA certificates ---------------------------------------------------------------------------

interface CaCert {
  readonly cert: X509Certificate;
  readonly subjectDer: Buffer;
  readonly skid: Buffer | undefined;
  readonly mayCrlSign: boolean;
  readonly keyHash: string;
}

/** Subject DER, SKI and whether keyUsage (when present) allows cRLSign; undefined for a non-CA or junk. */
function parseCaCert(pem: string): CaCert | undefined {
  try {
    const cert = new X509Certificate(pem);
    if (!cert.ca) return undefined;
    const der = cert.raw;
    const outer = readSingle(der, TAG.SEQUENCE, 'Certificate');
    const tbs = readTlv(der, outer.contentStart, outer.end);
    let t = readTlv(der, tbs.contentStart, tbs.end);
    if (t.tag === CTX0) t = readTlv(der, t.end, tbs.end); // version
    const sigAlg = readTlv(der, t.end, tbs.end); // t = serialNumber
    const issuer = readTlv(der, sigAlg.end, tbs.end);
    const validity = readTlv(der, issuer.end, tbs.end);
    const subject = readTlv(der, validity.end, tbs.end);
    let skid: Buffer | undefined;
    let mayCrlSign = true;
    for (let p = readTlv(der, subject.end, tbs.end).end; p < tbs.end; ) {
      const x = readTlv(der, p, tbs.end);
      if (x.tag === CTX3) {
        const exts = readTlv(der, x.contentStart, x.end);
        for (const e of readExtensions(der, exts)) {
          if (e.id === EXT_SKI) {
            const k = readSingle(e.value, TAG.OCTET_STRING, 'subjectKeyIdentifier');
            skid = e.value.subarray(k.contentStart, k.end);
          } else if (e.id === EXT_KEY_USAGE) {
            const bits = readSingle(e.value, TAG.BIT_STRING, 'keyUsage');
            // cRLSign is bit 6: the second content byte (after unused-bits) & 0x02.
            const first = bits.end - bits.contentStart >= 2 ? (e.value[bits.contentStart + 1] as number) : 0;
            mayCrlSign = (first & 0x02) !== 0;
          }
        }
      }
      p = x.end;
    }
    return {
      cert,
      subjectDer: der.subarray(subject.start, subject.end),
      skid,
      mayCrlSign,
      keyHash: sha256Hex(cert.publicKey.export({ type: 'spki', format: 'der' })),
    };
  } catch {
    return undefined;
  }
}

// --- Offline peer verification ("Offline verification of peers") ------------------------------

export type PeerVerdictCode = 'OK' | 'CERT_EXPIRED' | 'CERT_NOT_YET_VALID' | 'CHAIN_UNTRUSTED' | 'REVOKED' | 'CRL_STALE' | 'CRL_MISSING';

export interface PeerVerdict {
  readonly valid: boolean;
  readonly code: PeerVerdictCode;
  readonly reason: string;
}

/**
 * Whether `certPem` is valid at `now` without the network. Order: chain to the trust bundle
 * (CHAIN_UNTRUSTED), validity of every certificate on the path against `now` (the agent's judged
 * time, clock floor applied), revocation of the leaf in the cached CRL, then the CRL's freshness.
 * A revoked serial is REVOKED even from a stale CRL (revocation is final); an unrevoked one from a
 * stale CRL is CRL_STALE. A CRL from another issuer than the leaf's does not cover it: CRL_MISSING.
 * Only the leaf is checked for revocation (the cache holds the issuing CA's CRL, not the root's).
 */
export function verifyPeer(
  certPem: string,
  opts: { readonly trustBundle: readonly string[]; readonly chain?: readonly string[]; readonly now: number; readonly cache: RevocationView },
): PeerVerdict {
  const verdict = (code: PeerVerdictCode, reason: string): PeerVerdict => ({ valid: code === 'OK', code, reason });
  let leaf: X509Certificate;
  let pool: X509Certificate[];
  let roots: X509Certificate[];
  try {
    leaf = new X509Certificate(certPem);
  } catch {
    return verdict('CHAIN_UNTRUSTED', 'the certificate does not parse');
  }
  try {
    pool = (opts.chain ?? []).map((p) => new X509Certificate(p));
    roots = opts.trustBundle.map((p) => new X509Certificate(p));
  } catch {
    return verdict('CHAIN_UNTRUSTED', 'the chain or trust bundle does not parse');
  }

  const path: X509Certificate[] = [leaf];
  let cur = leaf;
  let anchored = false;
  for (let depth = 0; depth <= pool.length; depth++) {
    const root = roots.find((r) => r.ca && cur.checkIssued(r) && cur.verify(r.publicKey));
    if (root) {
      if (root !== cur) path.push(root);
      anchored = true;
      break;
    }
    const next = pool.find((c) => c.ca && !path.includes(c) && cur.checkIssued(c) && cur.verify(c.publicKey));
    if (!next) break;
    path.push(next);
    cur = next;
  }
  if (!anchored) return verdict('CHAIN_UNTRUSTED', 'the certificate does not chain to the trust bundle');

  for (const c of path) {
    const who = c === leaf ? 'the certificate' : `CA "${c.subject.replace(/\n/g, ', ')}"`;
    if (opts.now < Date.parse(c.validFrom)) return verdict('CERT_NOT_YET_VALID', `${who} is not valid before ${c.validFrom}`);
    if (opts.now > Date.parse(c.validTo)) return verdict('CERT_EXPIRED', `${who} expired at ${c.validTo}`);
  }

  const issuer = path[1] ?? leaf;
  if (!opts.cache.coversIssuer(issuer.publicKey.export({ type: 'spki', format: 'der' }))) {
    return verdict('CRL_MISSING', 'no cached CRL from the certificate issuer');
  }
  const s = opts.cache.status(leaf.serialNumber, opts.now);
  if (s.freshness === 'none') return verdict('CRL_MISSING', 'no CRL is cached');
  if (s.revoked) return verdict('REVOKED', `serial ${normalizeSerial(leaf.serialNumber)} is revoked${s.reason ? ` (${s.reason})` : ''}`);
  if (s.freshness === 'stale') {
    return verdict('CRL_STALE', `the cached CRL is past its nextUpdate ${new Date(s.nextUpdate ?? 0).toISOString()} plus grace`);
  }
  return verdict('OK', 'chains to the trust bundle, valid now, not revoked in a fresh CRL');
}
