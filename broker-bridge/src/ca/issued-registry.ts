import { open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError } from '../../../common/coded-error.js';
import { array, int, literal, object, oneOf, optional, parseMessage, str, type Infer } from '../../../common/protocol/schema.js';
import { writeFileAtomic } from '../../../common/atomic-file.js';

/**
 * The record of service and role certificates the issuing CA signed outside enrollment (`bridge cert
 * issue`): `<ca dir>/issued.json`, one entry per certificate with its serial, CN, kind and validity.
 * Device certificates are in the inventory; this is the rest, so that revocation can map a revoked
 * serial to the role CN (`role:operator:alice`) it must cut from the broker, and refuse serials the CA
 * never issued.
 *
 * Writes replace the file atomically (temp file, fsync, rename) under an exclusive lock file
 * (`.issued.json.lock`, created O_EXCL, holding the writer's pid): two `cert issue` runs at once both
 * land. A lock whose pid is gone is stale and taken over. Readers never lock: they see the old file or
 * the new one.
 */
export const ISSUED_REGISTRY_FILE = 'issued.json';
const LOCK_FILE = '.issued.json.lock';

export type IssuedRegistryErrorCode =
  /** The file exists but is not a registry (unreadable, not JSON, wrong shape). */
  | 'ISSUED_REGISTRY_INVALID'
  /** Another writer held the lock for longer than the timeout. */
  | 'ISSUED_REGISTRY_LOCKED'
  /** The file or its lock could not be written. */
  | 'ISSUED_REGISTRY_WRITE_FAILED'
  /** An entry to record is malformed (nothing is written). */
  | 'ISSUED_REGISTRY_BAD_ENTRY';

export class IssuedRegistryError extends CodedError<IssuedRegistryErrorCode> {}

export const ISSUED_KINDS = ['server', 'role'] as const;
export type IssuedKind = (typeof ISSUED_KINDS)[number];

const SERIAL = /^[0-9a-f]{1,40}$/;
const time = int({ min: 0, max: 8_640_000_000_000_000 });
const entrySchema = object({
  /** Lower-case hex without leading zeros (as the CRL and the inventory spell serials). */
  serial: str({ min: 1, max: 40, pattern: SERIAL }),
  commonName: str({ min: 1, max: 64 }),
  kind: oneOf(ISSUED_KINDS),
  notBefore: time,
  notAfter: time,
  issuedAt: time,
  /** subjectAltName entries of a server certificate (`dns:…`, `ip:…`). */
  sans: optional(array(str({ min: 1, max: 260 }), { max: 64 })),
});
const fileSchema = object({ v: literal(1), certificates: array(entrySchema, { max: 1_000_000 }) });

export type IssuedCertificate = Infer<typeof entrySchema>;

/** A serial as the registry, CRL and inventory spell it: lower-case hex, no leading zeros. */
export function normalizeSerial(serial: string): string {
  return serial.toLowerCase().replace(/^0+(?=.)/, '');
}

/** A read-only view of the registry, indexed by serial. */
export class IssuedRegistry {
  readonly #entries: readonly IssuedCertificate[];
  readonly #bySerial: ReadonlyMap<string, IssuedCertificate>;

  constructor(entries: readonly IssuedCertificate[]) {
    this.#entries = entries;
    this.#bySerial = new Map(entries.map((e) => [e.serial, e]));
  }

  list(): readonly IssuedCertificate[] {
    return this.#entries;
  }

  /** The certificate with this serial (any spelling of the hex), if the CA issued it through `cert issue`. */
  bySerial(serial: string): IssuedCertificate | undefined {
    return this.#bySerial.get(normalizeSerial(serial));
  }

  /** Every certificate issued for this CN (a role renewed several times has several). */
  byCommonName(commonName: string): IssuedCertificate[] {
    return this.#entries.filter((e) => e.commonName === commonName);
  }
}

/** Reads `<caDir>/issued.json`; an absent file is an empty registry. Throws ISSUED_REGISTRY_INVALID. */
export async function readIssuedRegistry(caDir: string): Promise<IssuedRegistry> {
  return new IssuedRegistry(await load(join(caDir, ISSUED_REGISTRY_FILE)));
}

/**
 * Adds `entry` (serial normalized) to `<caDir>/issued.json`. Call it before handing the certificate
 * out: an entry for a certificate nobody got is harmless, a certificate with no entry is not.
 */
export async function recordIssued(caDir: string, entry: IssuedCertificate, opts: { lockTimeoutMs?: number } = {}): Promise<void> {
  const e = { ...entry, serial: normalizeSerial(entry.serial) };
  try {
    entrySchema.parse(e, 'entry'); // a malformed entry would make the whole file unreadable later
  } catch (err) {
    throw new IssuedRegistryError('ISSUED_REGISTRY_BAD_ENTRY', (err as Error).message, { cause: err });
  }
  const path = join(caDir, ISSUED_REGISTRY_FILE);
  await withLock(join(caDir, LOCK_FILE), opts.lockTimeoutMs ?? 5_000, async () => {
    const entries = (await load(path)).filter((x) => x.serial !== e.serial);
    entries.push(e);
    try {
      await writeFileAtomic(path, `${JSON.stringify({ v: 1, certificates: entries }, null, 1)}\n`, 0o644);
    } catch (err) {
      throw new IssuedRegistryError('ISSUED_REGISTRY_WRITE_FAILED', `cannot write ${path}: ${(err as Error).message}`, { cause: err });
    }
  });
}

async function load(path: string): Promise<IssuedCertificate[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new IssuedRegistryError('ISSUED_REGISTRY_INVALID', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    return parseMessage(text, fileSchema, 256 * 1024 * 1024).certificates;
  } catch (e) {
    throw new IssuedRegistryError('ISSUED_REGISTRY_INVALID', `${path} is not an issued-certificates registry: ${(e as Error).message}`, { cause: e });
  }
}

async function withLock<T>(lockPath: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const fh = await open(lockPath, 'wx', 0o644);
      try {
        await fh.writeFile(String(process.pid));
      } finally {
        await fh.close();
      }
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new IssuedRegistryError('ISSUED_REGISTRY_WRITE_FAILED', `cannot create ${lockPath}: ${(e as Error).message}`, { cause: e });
      }
    }
    const stale = await staleLockPid(lockPath);
    // Re-read just before removing: a writer that took over the stale lock meanwhile wrote its own pid.
    if (stale !== undefined && (await staleLockPid(lockPath)) === stale) {
      await rm(lockPath, { force: true });
      continue;
    }
    if (Date.now() >= deadline) throw new IssuedRegistryError('ISSUED_REGISTRY_LOCKED', `${lockPath} is held by another writer; remove it if no bridge command is running`);
    // Waiting for another process (a concurrent `cert issue`), not for a timer of ours.
    await new Promise((r) => setTimeout(r, 20));
  }
  try {
    return await fn();
  } finally {
    await rm(lockPath, { force: true });
  }
}

/** The pid in the lock when that process no longer exists. An empty or unreadable lock is being written: not stale. */
async function staleLockPid(lockPath: string): Promise<number | undefined> {
  let pid: number;
  try {
    pid = Number((await readFile(lockPath, 'utf8')).trim());
  } catch {
    return undefined;
  }
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  try {
    process.kill(pid, 0);
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH' ? pid : undefined;
  }
}
