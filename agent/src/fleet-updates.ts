import { isCodedError } from '../../common/coded-error.js';
import { decodeCrlDelta } from '../../common/protocol/crl.js';
import type { Topics } from '../../common/protocol/topics.js';
import type { Transport } from '../../common/transport/transport.js';
import { CrlFeed } from './crl-feed.js';
import { writeSnapshot } from './peer-verify-snapshot.js';
import type { Freshness, RevocationCache } from './revocation-cache.js';
import type { ActiveIdentity } from './store.js';
import { acceptTrustBundle } from './trust-bundle.js';

/**
 * What the fleet publishes for every device, kept current on the device: the CRL (parts of the
 * complete CRL and the delta, into the RevocationCache) and the signed trust bundle. Messages are
 * handled one at a time, in arrival order. The agent owns the state this changes (trust bundle,
 * clock floor) and is told through the host callbacks; this module decides what to accept.
 */
export interface FleetUpdatesHost {
  readonly topics: Topics;
  readonly dataDir: string;
  readonly crlGraceSec: number;
  readonly cache: RevocationCache;
  identity(): ActiveIdentity | undefined;
  /** The roots in use (stored, else the bootstrap's). */
  trust(): readonly string[];
  clockFloor(): number | undefined;
  /** Now for validity decisions (clock floor applied). */
  judgedNow(): number;
  /** Stores a newer signed bundle and uses it from the next connection on. */
  replaceTrust(roots: readonly string[], version: number): Promise<void>;
  /** A signed timestamp (CRL thisUpdate, bundle issuedAt) for the clock floor. */
  advanceFloor(trusted: number): Promise<void>;
  /** The cached CRL lists the identity in use. Called once. */
  ownCertificateRevoked(serial: string, reason: string | undefined): void;
  log(level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>): void;
  /** A newer CRL or trust bundle is in use (the agent republishes its status). */
  changed(): void;
}

export interface CrlSummary {
  readonly crlNumber: string;
  readonly thisUpdate: number;
  readonly freshness: Freshness;
  readonly revokedSerials: number;
}

export class FleetUpdates {
  readonly #h: FleetUpdatesHost;
  readonly #feed: CrlFeed;
  #work: Promise<void> = Promise.resolve();
  #trustVersion: number | undefined;
  #revokedSeen = false;
  /** A delta waiting in the queue; a newer one that arrives meanwhile takes its place (see #onDeltaArrival). */
  #pendingDelta: { payload: Buffer; number: bigint } | undefined;
  #deltasSuperseded = 0;

  constructor(host: FleetUpdatesHost, opts: { readonly trustVersion: number | undefined }) {
    this.#h = host;
    this.#feed = new CrlFeed({ topics: host.topics });
    this.#trustVersion = opts.trustVersion;
  }

  /** Version of the signed trust bundle in use (undefined: the one from enrollment or bootstrap). */
  get trustVersion(): number | undefined {
    return this.#trustVersion;
  }

  /** On every (new) connection: the retained CRL parts, delta and trust bundle arrive right after. */
  async subscribe(t: Transport): Promise<void> {
    const deltaTopic = this.#h.topics.fleet('crlDelta');
    for (const filter of this.#feed.filters) {
      await t.subscribe(filter, (m) => (m.topic === deltaTopic ? this.#onDeltaArrival(m.topic, m.payload) : this.#queue(() => this.#onCrlMessage(m.topic, m.payload))));
    }
    await t.subscribe(this.#h.topics.fleet('trustBundle'), (m) => this.#queue(() => this.#onTrustBundle(m.payload)));
  }

  /** Deltas skipped because a newer one arrived before they were handled. */
  get deltasSuperseded(): number {
    return this.#deltasSuperseded;
  }

  /** The cached CRL's number, time, freshness (by the grace policy) and size; undefined before the first. */
  crlSummary(): CrlSummary | undefined {
    const cache = this.#h.cache;
    const n = cache.crlNumber();
    if (n === undefined) return undefined;
    const id = this.#h.identity();
    const freshness = id ? cache.status(id.slot.serial, this.#h.judgedNow()).freshness : 'fresh';
    return { crlNumber: n.toString(), thisUpdate: cache.thisUpdate()!, freshness, revokedSerials: cache.size() };
  }

  /** Tells the host once when the cached CRL lists the identity in use (at start, and after each CRL). */
  checkOwnCertificate(): void {
    const id = this.#h.identity();
    if (!id || this.#revokedSeen) return;
    const s = this.#h.cache.status(id.slot.serial);
    if (!s.revoked) return;
    this.#revokedSeen = true;
    this.#h.log('warn', 'the fleet CRL lists our certificate; stopping its use', { serial: id.slot.serial, reason: s.reason });
    this.#h.ownCertificateRevoked(id.slot.serial, s.reason);
  }

  /** The material `agent verify` answers from while this process holds the store (peer-verify-snapshot.ts). */
  async writeSnapshot(): Promise<void> {
    try {
      await writeSnapshot(this.#h.dataDir, {
        trustBundle: this.#h.trust(),
        caCertificates: this.#h.identity()?.slot.chain ?? [],
        clockFloor: this.#h.clockFloor(),
        graceSec: this.#h.crlGraceSec,
        crls: this.#h.cache.ders(),
        identity: this.#h.identity()?.slot,
      });
    } catch (e) {
      this.#h.log('warn', 'could not write the verification snapshot', { code: (e as { code?: string }).code, err: (e as Error).message });
    }
  }

  #queue(work: () => Promise<void>): Promise<void> {
    const run = this.#work.then(work).catch((e: unknown) => {
      this.#h.log('warn', 'could not handle a fleet message', { code: isCodedError(e) ? e.code : 'UNEXPECTED', err: (e as Error).message });
    });
    this.#work = run;
    return run;
  }

  /**
   * A delta CRL is cumulative since its base: a newer one carries every entry of an older one. While a
   * delta waits in the queue (a burst of revocations, a slow device), a newer arrival takes its place
   * instead of queueing behind it, so a device verifies and stores the latest delta once rather than
   * every one of the burst. Only a delta that decodes with a higher number replaces the waiting one;
   * anything else is queued as it came (and refused there with its code).
   */
  #onDeltaArrival(topic: string, payload: Buffer): Promise<void> {
    let crlNumber: bigint | undefined;
    try {
      crlNumber = payload.length === 0 ? undefined : BigInt(decodeCrlDelta(payload).crlNumber);
    } catch {
      crlNumber = undefined;
    }
    const waiting = this.#pendingDelta;
    if (crlNumber !== undefined && waiting) {
      if (crlNumber > waiting.number) {
        waiting.payload = payload;
        waiting.number = crlNumber;
      }
      this.#deltasSuperseded++;
      return this.#work;
    }
    if (crlNumber === undefined) return this.#queue(() => this.#onCrlMessage(topic, payload));
    const entry = { payload, number: crlNumber };
    this.#pendingDelta = entry;
    return this.#queue(() => {
      if (this.#pendingDelta === entry) this.#pendingDelta = undefined;
      return this.#onCrlMessage(topic, entry.payload);
    });
  }

  async #onCrlMessage(topic: string, payload: Buffer): Promise<void> {
    const r = this.#feed.push(topic, payload);
    if (r.kind === 'invalid') {
      this.#h.log('warn', 'refused a CRL message', { topic, code: r.code, reason: r.reason });
      return;
    }
    if (r.kind === 'waiting') return;
    // CA certificates a CRL may be signed by: the issuing chain of our identity, then the fleet roots.
    const issuers = [...(this.#h.identity()?.slot.chain ?? []), ...this.#h.trust()];
    let changed = false;
    for (const der of r.crls) {
      const a = await this.#h.cache.accept(der, issuers);
      if (!a.accepted) {
        // No news (a retained CRL we hold, or a delta on a base still on its way) is the normal case.
        if (a.code !== 'CRL_OLDER' && a.code !== 'CRL_BASE_MISSING') this.#h.log('warn', 'refused a CRL', { code: a.code, reason: a.reason });
        continue;
      }
      changed = true;
      this.#h.log('info', 'CRL updated', { crlNumber: a.crlNumber.toString(), revokedSerials: this.#h.cache.size() });
      await this.#h.advanceFloor(a.thisUpdate);
    }
    if (!changed) return;
    this.checkOwnCertificate();
    await this.writeSnapshot();
    this.#h.changed();
  }

  async #onTrustBundle(payload: Buffer): Promise<void> {
    const r = acceptTrustBundle(payload, { roots: this.#h.trust(), version: this.#trustVersion }, this.#h.judgedNow());
    if (!r.accepted) {
      if (r.code !== 'TRUST_BUNDLE_OLDER') this.#h.log('warn', 'refused a trust bundle', { code: r.code, reason: r.reason });
      return;
    }
    await this.#h.replaceTrust(r.roots, r.version);
    this.#trustVersion = r.version;
    // issuedAt is signed by the fleet CA: a trusted timestamp like a certificate's notBefore.
    await this.#h.advanceFloor(r.issuedAt);
    this.#h.log('info', 'trust bundle updated', { version: r.version, roots: r.roots.length });
    await this.writeSnapshot();
    this.#h.changed();
  }
}
