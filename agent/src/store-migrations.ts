import { parseCertificates } from '../../native/lib/ek-certificate.js';

/**
 * Versions of the agent store's layout (store.ts) and the migrations between them. The version lives in
 * the store's `schema` record; a store without one was written before versioning existed (version 0).
 * A build opens its store by applying, in order, every migration above the stored version; each
 * migration is one atomic batch that also writes its version, so a device that loses power mid-upgrade
 * resumes from the last migration that completed. Migrations only add or fill in records: a build never
 * deletes what an older build needs to keep the device's identity. A store newer than the build is
 * refused (AGENT_STORE_TOO_NEW) rather than guessed at: docs/install.md, "Upgrade and rollback".
 */

/** What a migration reads: one record of the main store (JSON value), undefined when absent. */
export type RecordReader = (key: string) => Promise<unknown>;

export type MigrationOp = { readonly type: 'put'; readonly key: string; readonly value: unknown } | { readonly type: 'del'; readonly key: string };

export interface StoreMigration {
  /** The schema version this migration produces (1, 2, …, in order). */
  readonly to: number;
  /** One line for the log and for docs/install.md. */
  readonly what: string;
  /** The writes that bring a store at version `to - 1` to `to` (the `schema` record is added by the caller). */
  plan(read: RecordReader): Promise<MigrationOp[]>;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export const STORE_MIGRATIONS: readonly StoreMigration[] = [
  {
    to: 1,
    what: 'identity slots record their certificate notBefore; a pending enrollment records its mode',
    async plan(read) {
      const ops: MigrationOp[] = [];
      for (const name of ['A', 'B']) {
        const slot = await read(`slot:${name}`);
        if (!isObject(slot) || typeof slot['notBefore'] === 'number' || typeof slot['certificate'] !== 'string') continue;
        let notBefore: number | undefined;
        try {
          notBefore = parseCertificates([slot['certificate']])[0]?.fields.notBefore;
        } catch {
          notBefore = undefined;
        }
        // An unreadable certificate stays as it is: the agent's own checks report it, with their codes.
        if (notBefore === undefined || !Number.isFinite(notBefore)) continue;
        ops.push({ type: 'put', key: `slot:${name}`, value: { ...slot, notBefore } });
      }
      const pending = await read('pending');
      // Records from before re-attestation existed were token enrollments.
      if (isObject(pending) && pending['kind'] === 'enroll' && pending['mode'] === undefined) ops.push({ type: 'put', key: 'pending', value: { ...pending, mode: 'token' } });
      return ops;
    },
  },
];

/** The schema this build writes: the last migration's version. */
export const STORE_SCHEMA = STORE_MIGRATIONS.at(-1)!.to;
