import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../../common/atomic-file.js';
import { CodedError } from '../../common/coded-error.js';
import { array, int, literal, object, optional, str, type Infer } from '../../common/protocol/schema.js';
import { verifyPeer, type PeerVerdict } from './peer-verify.js';
import { RevocationCache, type RevocationCacheBatchOp } from './revocation-cache.js';

/**
 * What `agent verify <cert.pem>` needs to answer offline, kept next to the agent's LevelDB store.
 *
 * Why a snapshot: the store is LevelDB, which one process holds locked while the agent runs, and the
 * CLI must answer while it runs. The running agent writes the verification material here whenever it
 * changes (CRL accepted, trust bundle replaced, clock floor advanced); the CLI reads it, re-verifies
 * every CRL signature against the CA certificates (so a tampered file is refused, not trusted) and
 * answers with `verifyPeer`, judging time by max(system clock, clock floor).
 *
 * Layout in `<dataDir>/peer-verify/`: `crl-<sha256>.der` (content-addressed: the complete CRL and the
 * delta, written before the state that names them) and `state.json` (replaced atomically). A reader
 * therefore always sees a consistent set; unreferenced CRL files are deleted after the state is written.
 */
export type SnapshotErrorCode = 'AGENT_VERIFY_NO_SNAPSHOT' | 'AGENT_VERIFY_SNAPSHOT_INVALID';
export class SnapshotError extends CodedError<SnapshotErrorCode> {}

const pemText = str({ min: 64, max: 16_384 });

const stateSchema = object({
  v: literal(1),
  /** Fleet roots the agent trusts. */
  trustBundle: array(pemText, { min: 1, max: 8 }),
  /** CA certificates that may sign the cached CRLs and complete a peer's chain (the agent's own chain). */
  caCertificates: array(pemText, { min: 0, max: 8 }),
  clockFloor: optional(int({ min: 0, max: Number.MAX_SAFE_INTEGER })),
  graceSec: int({ min: 0, max: 10 * 366 * 86_400 }),
  /** File names, complete CRL first. */
  crls: array(str({ min: 1, max: 80, pattern: /^crl-[0-9a-f]{64}\.der$/ }), { min: 0, max: 2 }),
  /**
   * The identity in use, for `agent check` while the agent holds the store: its certificate and the
   * public area of its TPM key (marshalled TPM2B_PUBLIC, base64; public, never the private blob).
   * Absent before enrollment and in snapshots of agents that did not record it.
   */
  identity: optional(object({ certificate: pemText, serial: str({ min: 1, max: 64 }), keyPublic: str({ min: 8, max: 4096, pattern: /^[A-Za-z0-9+/]+=*$/ }) })),
});

export type SnapshotState = Infer<typeof stateSchema>;

export interface SnapshotMaterial {
  readonly trustBundle: readonly string[];
  readonly caCertificates: readonly string[];
  readonly clockFloor: number | undefined;
  readonly graceSec: number;
  readonly crls: readonly Buffer[];
  /** The identity in use (an IdentitySlot fits); only its certificate, serial and public key blob are written. */
  readonly identity?: { readonly certificate: string; readonly serial: string; readonly key: { readonly public: string } } | undefined;
}

export const SNAPSHOT_DIR = 'peer-verify';

/** Writes in progress per data directory: each waits for the one before it. */
const writing = new Map<string, Promise<void>>();

/**
 * Writes the material (see the layout above). Calls for one directory run one at a time, in call
 * order, so the last call's material is what stays (a CRL update and a rotation may write at once;
 * interleaved, one's clean-up could delete the other's CRL file).
 */
export function writeSnapshot(dataDir: string, m: SnapshotMaterial): Promise<void> {
  const run = (writing.get(dataDir) ?? Promise.resolve()).catch(() => undefined).then(() => writeNow(dataDir, m));
  writing.set(dataDir, run);
  const forget = () => {
    if (writing.get(dataDir) === run) writing.delete(dataDir);
  };
  run.then(forget, forget);
  return run;
}

/** The snapshot is derived from the store and rewritten at every start: no fsync per update. */
const NOT_DURABLE = { sync: false } as const;

const CRL_FILE = /^crl-[0-9a-f]{64}\.der$/;
/** The file name of a CRL DER, computed once per buffer (the cache hands out the same base buffer on every update). */
const crlNames = new WeakMap<Buffer, string>();
/**
 * Per snapshot directory: the CRL files this process wrote or found with the right bytes. The name
 * carries the content's SHA-256, so a file named here needs neither reading nor writing again: an
 * update (a new delta) writes only the delta and state.json, not the base, however large.
 */
const present = new Map<string, Set<string>>();

async function writeNow(dataDir: string, m: SnapshotMaterial): Promise<void> {
  const dir = join(dataDir, SNAPSHOT_DIR);
  let have = present.get(dir);
  if (!have) {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    have = new Set();
    present.set(dir, have);
  }
  const names: string[] = [];
  for (const der of m.crls) {
    let name = crlNames.get(der);
    if (!name) crlNames.set(der, (name = `crl-${createHash('sha256').update(der).digest('hex')}.der`));
    names.push(name);
    if (have.has(name)) continue;
    // Left by an earlier run (written without fsync): used only when its bytes are right.
    const existing = await readFile(join(dir, name)).catch(() => undefined);
    if (!existing?.equals(der)) await writeFileAtomic(join(dir, name), der, 0o644, NOT_DURABLE);
    have.add(name);
  }
  const state: SnapshotState = {
    v: 1,
    trustBundle: [...m.trustBundle],
    caCertificates: [...m.caCertificates],
    ...(m.clockFloor === undefined ? {} : { clockFloor: m.clockFloor }),
    graceSec: m.graceSec,
    crls: names,
    ...(m.identity ? { identity: { certificate: m.identity.certificate, serial: m.identity.serial, keyPublic: m.identity.key.public } } : {}),
  };
  await writeFileAtomic(join(dir, 'state.json'), JSON.stringify(state), 0o644, NOT_DURABLE);
  for (const f of await readdir(dir)) {
    if (CRL_FILE.test(f) && !names.includes(f)) {
      await rm(join(dir, f), { force: true });
      have.delete(f);
    }
  }
}

export interface SnapshotVerifyResult extends PeerVerdict {
  /** The time the answer was judged at (system clock, or the clock floor when the clock is behind it). */
  readonly judgedAt: number;
  readonly crlNumber?: string;
}

/** A snapshot read back: its state and a cache holding its CRLs, each re-verified against the CA certificates. */
export interface LoadedSnapshot {
  readonly state: SnapshotState;
  readonly cache: RevocationCache;
  /** max(systemNow, clock floor): the time the cache judges freshness at. */
  readonly judgedAt: number;
}

/**
 * Reads the snapshot in `dataDir` (see the layout above) and re-verifies every CRL into an in-memory
 * cache judged at max(`systemNow`, clock floor). Throws SnapshotError when there is none or it is unusable.
 */
export async function readSnapshot(dataDir: string, systemNow: number): Promise<LoadedSnapshot> {
  const dir = join(dataDir, SNAPSHOT_DIR);
  let text: string;
  try {
    text = await readFile(join(dir, 'state.json'), 'utf8');
  } catch (e) {
    throw new SnapshotError('AGENT_VERIFY_NO_SNAPSHOT', `no verification data in ${dir}: the agent has not run with this data directory yet`, { cause: e });
  }
  let state: SnapshotState;
  try {
    state = stateSchema.parse(JSON.parse(text), 'state');
  } catch (e) {
    throw new SnapshotError('AGENT_VERIFY_SNAPSHOT_INVALID', `${join(dir, 'state.json')}: ${(e as Error).message}`, { cause: e });
  }
  const judgedAt = Math.max(systemNow, state.clockFloor ?? 0);
  const cache = new RevocationCache(memoryDb(), { clock: { now: () => judgedAt }, graceSec: state.graceSec });
  await cache.open();
  const issuers = [...state.caCertificates, ...state.trustBundle];
  for (const name of state.crls) {
    let der: Buffer;
    try {
      der = await readFile(join(dir, name));
    } catch (e) {
      throw new SnapshotError('AGENT_VERIFY_SNAPSHOT_INVALID', `${join(dir, name)} is missing`, { cause: e });
    }
    const r = await cache.accept(der, issuers);
    if (!r.accepted) throw new SnapshotError('AGENT_VERIFY_SNAPSHOT_INVALID', `${join(dir, name)}: ${r.code}: ${r.reason}`);
  }
  return { state, cache, judgedAt };
}

/**
 * Answers whether `certPem` is valid at `systemNow` from the snapshot in `dataDir`. `chain` adds
 * intermediates the peer presented. Throws SnapshotError when there is no snapshot or it is unusable.
 */
export async function verifyFromSnapshot(dataDir: string, certPem: string, opts: { readonly systemNow: number; readonly chain?: readonly string[] }): Promise<SnapshotVerifyResult> {
  const { state, cache, judgedAt } = await readSnapshot(dataDir, opts.systemNow);
  const verdict = verifyPeer(certPem, { trustBundle: state.trustBundle, chain: [...(opts.chain ?? []), ...state.caCertificates], now: judgedAt, cache });
  const n = cache.crlNumber();
  return { ...verdict, judgedAt, ...(n === undefined ? {} : { crlNumber: n.toString() }) };
}

/** An in-memory RevocationCacheDb: the CLI re-verifies the CRLs into it on every run. */
function memoryDb(): { get(key: string): Promise<unknown>; batch(ops: RevocationCacheBatchOp[]): Promise<void> } {
  const m = new Map<string, unknown>();
  return {
    get: (key) => Promise.resolve(m.get(key)),
    batch: (ops) => {
      for (const op of ops) {
        if (op.type === 'put') m.set(op.key, op.value);
        else m.delete(op.key);
      }
      return Promise.resolve();
    },
  };
}
