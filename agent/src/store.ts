import { Level } from 'level';
import { CodedError } from '../../common/coded-error.js';
import { isLevelLocked } from '../../common/level-lock.js';
import { STORE_MIGRATIONS, STORE_SCHEMA } from './store-migrations.js';

/**
 * The agent's local state in LevelDB (dataDir/state): everything needed to work offline and to resume
 * after a crash. Key material is only ever TPM2B_PRIVATE blobs, encrypted by the TPM under the SRK and
 * usable by that TPM alone. Every change touching more than one record is one atomic batch.
 *
 * Records (JSON values):
 * - `ak`: attestation key blobs and its TPM Name (checked on reload).
 * - `slot:A`, `slot:B`: an identity (key blobs, certificate, chain, serial, notAfter). A new key is
 *   always made in the slot that is not active, so rotation never overwrites the identity in use.
 * - `active`: `'A' | 'B'`, the slot in use.
 * - `trustBundle`: fleet roots (PEM) from the last accepted enrollment or signed bundle update;
 *   `trustBundleVersion`: the version of that signed update (absent before the first).
 * - `pending`: the enrollment/re-attestation or rotation in progress: its key, CSR, and the exact
 *   envelopes sent (the enroll envelope holds the one-time token), resent unchanged after a restart.
 *   Deleted in the same batch that stores the certificate, so the token does not outlive the enrollment.
 * - `enrolled`: `true` once any enrollment completed: identity loss from then on means re-attestation
 *   (no token), never a second token enrollment.
 * - `clockFloor`: the newest trusted timestamp seen (ms); the device clock is never trusted below it.
 * - `lastRotation`: `{ at, result }` of the last rotation attempt that ended.
 * - `schema`: the layout version (store-migrations.ts); absent on stores written before it existed.
 * - sublevels (`sublevel(name)`): the event outbox (`outbox`), the revocation cache (`revocation`).
 */
export type AgentStoreErrorCode = 'AGENT_STORE_CLOSED' | 'AGENT_STATE_CORRUPT' | 'AGENT_STORE_LOCKED' | 'AGENT_STORE_TOO_NEW';

/** What open() found and did to the store's layout. */
export interface StoreOpened {
  /** The schema version the store was at (0: written before versioning; undefined: a new store). */
  readonly from: number | undefined;
  /** The schema version it is at now. */
  readonly schema: number;
  /** The migrations applied, in order (their `what`). */
  readonly migrated: readonly string[];
}

export class AgentStoreError extends CodedError<AgentStoreErrorCode> {}

export type SlotName = 'A' | 'B';
export const SLOT_NAMES: readonly SlotName[] = ['A', 'B'];

/** Marshalled TPM2B_PRIVATE / TPM2B_PUBLIC, base64. */
export interface StoredBlobs {
  readonly private: string;
  readonly public: string;
}

export interface StoredAk {
  readonly blobs: StoredBlobs;
  /** TPM Name (hex): a reload that yields another Name means the store and the TPM disagree. */
  readonly name: string;
}

export interface IdentitySlot {
  readonly key: StoredBlobs;
  readonly certificate: string;
  /** Issuing chain, the leaf's issuer first. */
  readonly chain: readonly string[];
  readonly serial: string;
  /** Absent on identities stored before it was recorded: read from the certificate. */
  readonly notBefore?: number;
  readonly notAfter: number;
  readonly issuedAt: number;
}

/** A message exactly as sent, for byte-identical resends under the same requestId. */
export interface SentEnvelope {
  readonly requestId: string;
  /** base64 of the JSON payload. */
  readonly payload: string;
}

/**
 * An enrollment (mode 'token') or re-attestation (mode 'reattest', no token) in progress. Fields appear
 * in this order as it advances; each step is persisted before the message it produced is sent.
 */
export interface PendingEnrollment {
  readonly kind: 'enroll';
  /** Absent on records written before re-attestation existed: 'token'. */
  readonly mode?: 'token' | 'reattest';
  /** The attempt's `enr-…` client id, which addresses its enrollment topics (kept across restarts). */
  readonly clientId?: string;
  readonly slot: SlotName;
  /** The identity key, stored right after TPM2_Create so a restart reuses it. */
  readonly key: StoredBlobs;
  readonly startedAt: number;
  readonly ekKind?: 'rsa' | 'ecc';
  /** DER CSR (base64), signed in the TPM once. */
  readonly csr?: string;
  /** The enroll envelope (in mode 'token' it contains the token). */
  readonly request?: SentEnvelope;
  readonly challenge?: { readonly challengeId: string; readonly expiresAt: number };
  /** The proof answering `challenge`. */
  readonly proof?: SentEnvelope;
}

/**
 * A rotation in progress (see rotation.ts). Phases, each persisted before the step it allows:
 * - `requesting`: the new key exists in `slot` (never the active slot); `csr` once signed, `request`
 *   (the rotate/request envelope, resent byte for byte) once certified over the bridge's nonce.
 * - `trial`: the new certificate is stored in `slot`, `active` is still `fromSlot`: the agent tries a
 *   connection with the new identity and rolls back if the broker refuses it.
 * - `confirming`: the new identity worked and is active; the bridge has not yet confirmed retiring the
 *   old certificate; `fromSlot` still holds the old key blob until it has.
 */
export interface PendingRotation {
  readonly kind: 'rotate';
  readonly phase: 'requesting' | 'trial' | 'confirming';
  readonly slot: SlotName;
  readonly key: StoredBlobs;
  readonly startedAt: number;
  readonly fromSlot: SlotName;
  readonly fromSerial: string;
  readonly csr?: string;
  readonly request?: SentEnvelope;
  /** The serial issued for the new key (phases trial and confirming). */
  readonly serial?: string;
}

export type Pending = PendingEnrollment | PendingRotation;

/** Outcome of the last rotation, for status. */
export interface LastRotation {
  readonly at: number;
  /** 'ok' or the failure code. */
  readonly result: string;
}

export interface ActiveIdentity {
  readonly name: SlotName;
  readonly slot: IdentitySlot;
}

export class AgentStore {
  readonly #path: string;
  #db: Level<string, unknown> | undefined;

  constructor(path: string) {
    this.#path = path;
  }

  get path(): string {
    return this.#path;
  }

  /**
   * Opens the store and brings its layout to this build's schema (store-migrations.ts), each migration
   * one atomic batch. `migrate: false` reads the store as it is (a diagnostic that must not write).
   * Throws AGENT_STORE_LOCKED when another process holds it, AGENT_STORE_TOO_NEW when a newer build
   * wrote it.
   */
  async open(opts: { readonly migrate?: boolean } = {}): Promise<StoreOpened> {
    if (this.#db) return { from: STORE_SCHEMA, schema: STORE_SCHEMA, migrated: [] };
    const db = new Level<string, unknown>(this.#path, { valueEncoding: 'json' });
    try {
      await db.open();
    } catch (e) {
      if (!isLevelLocked(e)) throw e;
      throw new AgentStoreError('AGENT_STORE_LOCKED', `the agent store ${this.#path} is in use by another process (is an agent already running with this data directory?)`, { cause: e });
    }
    try {
      const opened = await migrateStore(db, opts.migrate ?? true);
      this.#db = db;
      return opened;
    } catch (e) {
      await db.close().catch(() => undefined);
      throw e;
    }
  }

  /** The layout version of the open store. */
  async schema(): Promise<number> {
    return ((await this.#get<number>('schema')) ?? 0);
  }

  async close(): Promise<void> {
    const db = this.#db;
    this.#db = undefined;
    await db?.close();
  }

  #require(): Level<string, unknown> {
    if (!this.#db) throw new AgentStoreError('AGENT_STORE_CLOSED', 'agent store is not open');
    return this.#db;
  }

  async #get<T>(key: string): Promise<T | undefined> {
    return (await this.#require().get(key)) as T | undefined;
  }

  getAk(): Promise<StoredAk | undefined> {
    return this.#get('ak');
  }

  putAk(ak: StoredAk): Promise<void> {
    return this.#require().put('ak', ak);
  }

  async getPending(): Promise<Pending | undefined> {
    const p = await this.#get<Pending>('pending');
    if (p === undefined) return undefined;
    const keyOk = typeof p.key?.private === 'string' && typeof p.key?.public === 'string';
    const ok =
      keyOk &&
      SLOT_NAMES.includes(p.slot) &&
      (p.kind === 'enroll' ||
        (p.kind === 'rotate' &&
          ['requesting', 'trial', 'confirming'].includes(p.phase) &&
          SLOT_NAMES.includes(p.fromSlot) &&
          p.fromSlot !== p.slot &&
          typeof p.fromSerial === 'string'));
    if (!ok) throw new AgentStoreError('AGENT_STATE_CORRUPT', 'pending record is malformed');
    return p;
  }

  putPending(p: Pending): Promise<void> {
    return this.#require().put('pending', p);
  }

  /** Forgets a pending enrollment or rotation whose key is gone (e.g. its slot is needed again). */
  async deletePending(): Promise<void> {
    await this.#require().del('pending');
  }

  getSlot(name: SlotName): Promise<IdentitySlot | undefined> {
    return this.#get(`slot:${name}`);
  }

  async active(): Promise<ActiveIdentity | undefined> {
    const name = await this.#get<SlotName>('active');
    if (name === undefined) return undefined;
    const slot = SLOT_NAMES.includes(name) ? await this.getSlot(name) : undefined;
    if (!slot) throw new AgentStoreError('AGENT_STATE_CORRUPT', `active slot ${String(name)} has no identity`);
    return { name, slot };
  }

  /** The slot a new key goes into: never the active one. */
  async freeSlot(): Promise<SlotName> {
    const active = await this.#get<SlotName>('active');
    return active === 'A' ? 'B' : 'A';
  }

  getTrustBundle(): Promise<string[] | undefined> {
    return this.#get('trustBundle');
  }

  /** Version of the last signed trust bundle accepted from the fleet topic (none before the first). */
  getTrustBundleVersion(): Promise<number | undefined> {
    return this.#get('trustBundleVersion');
  }

  /** A signed, newer trust bundle from the fleet topic replaces the current one (one batch). */
  async putTrustBundle(roots: readonly string[], version: number): Promise<void> {
    await this.#require().batch([
      { type: 'put', key: 'trustBundle', value: roots },
      { type: 'put', key: 'trustBundleVersion', value: version },
    ]);
  }

  /**
   * Stores the new identity, makes it active, replaces the trust bundle and ends the pending enrollment
   * (and with it the token): one batch, so a crash leaves either the old state or the new one. A
   * re-attestation passes the slot of the identity it replaces (`retire`), deleted in the same batch.
   */
  async completeEnrollment(name: SlotName, slot: IdentitySlot, trustBundle: readonly string[], retire?: SlotName): Promise<void> {
    await this.#require().batch([
      { type: 'put', key: `slot:${name}`, value: slot },
      { type: 'put', key: 'active', value: name },
      { type: 'put', key: 'trustBundle', value: trustBundle },
      { type: 'put', key: 'enrolled', value: true },
      ...(retire && retire !== name ? [{ type: 'del' as const, key: `slot:${retire}` }] : []),
      { type: 'del', key: 'pending' },
    ]);
  }

  /** True once an enrollment completed on this device (identity loss then means re-attestation). */
  async hasEnrolled(): Promise<boolean> {
    return (await this.#get<boolean>('enrolled')) === true || (await this.#get<SlotName>('active')) !== undefined;
  }

  /** Rotation accepted: the new identity goes into its slot, not yet active (phase trial). */
  async rotationIssued(p: PendingRotation, identity: IdentitySlot): Promise<PendingRotation> {
    const next: PendingRotation = { ...p, phase: 'trial', serial: identity.serial };
    await this.#require().batch([
      { type: 'put', key: `slot:${p.slot}`, value: identity },
      { type: 'put', key: 'pending', value: next },
    ]);
    return next;
  }

  /** The new identity connected: it becomes active; the old slot stays until the bridge confirms. */
  async rotationCommitted(p: PendingRotation): Promise<PendingRotation> {
    const next: PendingRotation = { ...p, phase: 'confirming' };
    await this.#require().batch([
      { type: 'put', key: 'active', value: p.slot },
      { type: 'put', key: 'pending', value: next },
    ]);
    return next;
  }

  /** Refuses to finish or abandon a rotation other than the one stored (a stale record in hand). */
  async #requireCurrent(p: PendingRotation, phase: PendingRotation['phase']): Promise<void> {
    const cur = await this.getPending();
    if (cur?.kind !== 'rotate' || cur.phase !== phase || cur.slot !== p.slot || cur.serial !== p.serial || cur.fromSlot !== p.fromSlot) {
      throw new AgentStoreError('AGENT_STATE_CORRUPT', `the stored rotation is not the one being ended (expected phase ${phase}, slot ${p.slot})`);
    }
  }

  /** The bridge retired the old certificate: the old key blob goes, the rotation ends. */
  async rotationFinished(p: PendingRotation, at: number): Promise<void> {
    await this.#requireCurrent(p, 'confirming');
    await this.#require().batch([
      { type: 'del', key: `slot:${p.fromSlot}` },
      { type: 'del', key: 'pending' },
      { type: 'put', key: 'lastRotation', value: { at, result: 'ok' } satisfies LastRotation },
    ]);
  }

  /** Rolls back: the new slot's content goes, the old identity stays active. */
  async rotationAbandoned(p: PendingRotation, result: string, at: number): Promise<void> {
    await this.#requireCurrent(p, 'trial');
    const active = await this.#get<SlotName>('active');
    if (active === p.slot) throw new AgentStoreError('AGENT_STATE_CORRUPT', 'cannot abandon a rotation whose identity is already active');
    await this.#require().batch([
      { type: 'del', key: `slot:${p.slot}` },
      { type: 'del', key: 'pending' },
      { type: 'put', key: 'lastRotation', value: { at, result } satisfies LastRotation },
    ]);
  }

  /** Records a rotation attempt that failed before anything was stored (e.g. refused by the bridge). */
  putLastRotation(r: LastRotation): Promise<void> {
    return this.#require().put('lastRotation', r);
  }

  getLastRotation(): Promise<LastRotation | undefined> {
    return this.#get('lastRotation');
  }

  getClockFloor(): Promise<number | undefined> {
    return this.#get('clockFloor');
  }

  putClockFloor(ms: number): Promise<void> {
    return this.#require().put('clockFloor', ms);
  }

  /** A JSON sublevel of this store (e.g. the outbox); closed with the store. */
  sublevel(name: string): ReturnType<Level<string, unknown>['sublevel']> {
    return this.#require().sublevel<string, unknown>(name, { valueEncoding: 'json' }) as unknown as ReturnType<Level<string, unknown>['sublevel']>;
  }
}

async function migrateStore(db: Level<string, unknown>, write: boolean): Promise<StoreOpened> {
  const stored = await db.get('schema');
  if (stored !== undefined && (typeof stored !== 'number' || !Number.isInteger(stored) || stored < 1)) {
    throw new AgentStoreError('AGENT_STATE_CORRUPT', `the store's schema record is ${JSON.stringify(stored)}, not a version`);
  }
  if (typeof stored === 'number' && stored > STORE_SCHEMA) {
    throw new AgentStoreError('AGENT_STORE_TOO_NEW', `the agent store is at schema ${stored}, written by a newer agent; this build knows schema ${STORE_SCHEMA} at most (reinstall the newer build: docs/install.md, "Upgrade and rollback")`);
  }
  let from: number | undefined = stored;
  if (from === undefined) {
    // No version: a store from before versioning (any record at all), or a new one.
    for await (const _ of db.keys({ limit: 1 })) from = 0;
  }
  if (from === undefined) {
    if (write) await db.put('schema', STORE_SCHEMA);
    return { from, schema: write ? STORE_SCHEMA : 0, migrated: [] };
  }
  const migrated: string[] = [];
  let schema: number = from;
  if (!write) return { from, schema, migrated };
  for (const m of STORE_MIGRATIONS) {
    if (m.to <= schema) continue;
    const ops = await m.plan(async (key) => db.get(key));
    await db.batch([...ops, { type: 'put', key: 'schema', value: m.to }]);
    schema = m.to;
    migrated.push(m.what);
  }
  return { from, schema, migrated };
}
