import { Level } from 'level';
import { CodedError } from '../../common/coded-error.js';

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
 * - `trustBundle`: fleet roots (PEM) from the last accepted enrollment.
 * - `pending`: the enrollment in progress: its key, CSR, and the exact envelopes sent (the enroll
 *   envelope holds the one-time token), resent unchanged after a restart. Deleted in the same batch
 *   that stores the certificate, so the token does not outlive the enrollment.
 */
export type AgentStoreErrorCode = 'AGENT_STORE_CLOSED' | 'AGENT_STATE_CORRUPT';

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
 * An enrollment in progress. Fields appear in this order as the enrollment advances; each step is
 * persisted before the message it produced is sent.
 */
export interface PendingEnrollment {
  readonly kind: 'enroll';
  readonly slot: SlotName;
  /** The identity key, stored right after TPM2_Create so a restart reuses it. */
  readonly key: StoredBlobs;
  readonly startedAt: number;
  readonly ekKind?: 'rsa' | 'ecc';
  /** DER CSR (base64), signed in the TPM once. */
  readonly csr?: string;
  /** The enroll envelope (contains the token). */
  readonly request?: SentEnvelope;
  readonly challenge?: { readonly challengeId: string; readonly expiresAt: number };
  /** The proof answering `challenge`. */
  readonly proof?: SentEnvelope;
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

  async open(): Promise<void> {
    if (this.#db) return;
    const db = new Level<string, unknown>(this.#path, { valueEncoding: 'json' });
    await db.open();
    this.#db = db;
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

  async getPending(): Promise<PendingEnrollment | undefined> {
    const p = await this.#get<PendingEnrollment>('pending');
    if (p === undefined) return undefined;
    if (p.kind !== 'enroll' || !SLOT_NAMES.includes(p.slot) || typeof p.key?.private !== 'string' || typeof p.key?.public !== 'string') {
      throw new AgentStoreError('AGENT_STATE_CORRUPT', 'pending enrollment record is malformed');
    }
    return p;
  }

  putPending(p: PendingEnrollment): Promise<void> {
    return this.#require().put('pending', p);
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

  /**
   * Stores the new identity, makes it active, replaces the trust bundle and ends the pending enrollment
   * (and with it the token): one batch, so a crash leaves either the old state or the new one.
   */
  async completeEnrollment(name: SlotName, slot: IdentitySlot, trustBundle: readonly string[]): Promise<void> {
    await this.#require().batch([
      { type: 'put', key: `slot:${name}`, value: slot },
      { type: 'put', key: 'active', value: name },
      { type: 'put', key: 'trustBundle', value: trustBundle },
      { type: 'del', key: 'pending' },
    ]);
  }
}
