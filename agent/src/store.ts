import { Level } from 'level';

/**
 * The agent's local state in LevelDB (dataDir/state): everything needed to work offline and to resume
 * after a crash. Key material is only ever TPM2B_PRIVATE blobs, which are encrypted by the TPM under
 * the SRK and usable by that TPM alone. Multi-record changes are one atomic batch.
 *
 * Records: `ak` (AK blobs), `slot:A` / `slot:B` (identity key blobs + certificate), `active` (which slot
 * is in use: a new key never overwrites the slot in use), `trustBundle`, `pending` (an enrollment in
 * progress: its key, CSR and the exact messages sent, resent unchanged after a restart).
 */
export interface StoredBlobs {
  readonly private: string;
  readonly public: string;
}

export type SlotName = 'A' | 'B';

export interface IdentitySlot {
  readonly key: StoredBlobs;
  readonly certificate: string;
  readonly chain: readonly string[];
  readonly serial: string;
  readonly notAfter: number;
  readonly issuedAt: number;
}

export interface PendingEnrollment {
  readonly slot: SlotName;
  readonly key: StoredBlobs;
  readonly csr: string;
  readonly ekKind: 'rsa' | 'ecc';
  /** requestId of the enroll message (kept for retries of the same enroll). */
  readonly enrollRequestId: string;
  /** The proof sent for the current challenge: resent byte for byte after a restart. */
  readonly proof?: { readonly requestId: string; readonly payload: string };
}

export class AgentStore {
  readonly #db: Level<string, unknown>;

  constructor(path: string) {
    this.#db = new Level<string, unknown>(path, { valueEncoding: 'json' });
  }

  open(): Promise<void> {
    return this.#db.open();
  }

  close(): Promise<void> {
    return this.#db.close();
  }

  async #get<T>(key: string): Promise<T | undefined> {
    return (await this.#db.get(key)) as T | undefined;
  }

  getAk(): Promise<StoredBlobs | undefined> {
    return this.#get('ak');
  }

  putAk(blobs: StoredBlobs): Promise<void> {
    return this.#db.put('ak', blobs);
  }

  getPending(): Promise<PendingEnrollment | undefined> {
    return this.#get('pending');
  }

  putPending(p: PendingEnrollment): Promise<void> {
    return this.#db.put('pending', p);
  }

  async active(): Promise<{ name: SlotName; slot: IdentitySlot } | undefined> {
    const name = await this.#get<SlotName>('active');
    if (!name) return undefined;
    const slot = await this.#get<IdentitySlot>(`slot:${name}`);
    return slot ? { name, slot } : undefined;
  }

  getTrustBundle(): Promise<string[] | undefined> {
    return this.#get('trustBundle');
  }

  /** Stores the new identity, makes it active and ends the pending enrollment, atomically. */
  async completeEnrollment(name: SlotName, slot: IdentitySlot, trustBundle: readonly string[]): Promise<void> {
    await this.#db.batch([
      { type: 'put', key: `slot:${name}`, value: slot },
      { type: 'put', key: 'active', value: name },
      { type: 'put', key: 'trustBundle', value: trustBundle },
      { type: 'del', key: 'pending' },
    ]);
  }
}
