import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readFileSync, statSync, type Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { CodedError } from '../../../common/coded-error.js';
import { USER_NAME } from './mosquitto-config.js';

/**
 * Makes the files a generated mosquitto.conf names usable by the user mosquitto runs as. Started as
 * root, mosquitto drops to its `user` (default `mosquitto`) before it loads TLS files, and rereads the
 * ACL and CRL files on SIGHUP as that user: a root-owned 0600 key stops it ("Unable to load server key
 * file ... Permission denied").
 *
 * Only the files given here are touched, never their directories (a directory the user cannot enter is
 * refused, naming it) and never anything else:
 * - the server key: owner = the broker user, mode 0600. Owner-only rather than root:<group> 0640,
 *   because the user's primary group may be shared (`nogroup`, `users`), and a key must never be
 *   readable by anyone but the process that serves with it;
 * - public files (server certificate, client CA bundle, CRL, ACLs): left as they are when the user can
 *   read them, else given read permission for all (they are public); one holding a private key is refused;
 * - the persistence directory: created if missing, owner = the broker user, mode 0700.
 * Everything is checked before anything is changed.
 */
export type BrokerFileErrorCode =
  | 'BROKER_USER_UNKNOWN'
  | 'BROKER_FILE_MISSING'
  | 'BROKER_FILE_UNREACHABLE'
  | 'BROKER_FILE_HOLDS_KEY'
  | 'BROKER_OWNERSHIP_DENIED';

export class BrokerFileError extends CodedError<BrokerFileErrorCode> {}

export interface SystemUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
  /** Primary and supplementary group ids. */
  readonly groups: readonly number[];
}


/** The user `name` as the system's name service knows it (`id`, so NSS users count); undefined if none. */
export function lookupUser(name: string): SystemUser | undefined {
  if (!USER_NAME.test(name)) return undefined;
  let out: string;
  try {
    out = execFileSync('id', [name], { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' }, stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return undefined;
  }
  const m = /^uid=(\d+)\([^)]*\) gid=(\d+)\([^)]*\)(?: groups=(.*))?$/.exec(out.trim());
  if (!m) return undefined;
  const groups = [...(m[3] ?? '').matchAll(/(\d+)\(/g)].map((g) => Number(g[1]));
  return { name, uid: Number(m[1]), gid: Number(m[2]), groups: [...new Set([Number(m[2]), ...groups])] };
}

/**
 * The user mosquitto will run as when `--user` is not given: `mosquitto` when we run as root and that
 * user exists (where a root-started mosquitto drops to anyway), else none (mosquitto started by a
 * non-root user keeps running as that user).
 */
export function defaultBrokerUser(): string | undefined {
  return process.geteuid?.() === 0 && lookupUser('mosquitto') ? 'mosquitto' : undefined;
}

export interface BrokerFiles {
  /** Private keys mosquitto reads (the server key). */
  readonly secret: readonly string[];
  /** Public files mosquitto reads and that must exist now (certificates, CA bundle, ACLs). */
  readonly public: readonly string[];
  /** Public files mosquitto reads that may appear later (the CRL the bridge writes): checked if present, their directory always. */
  readonly publicLater: readonly string[];
  readonly persistenceDir: string;
}

/** What `applyBrokerFileAccess` will change; computed by `planBrokerFileAccess` without changing anything. */
export interface BrokerFilePlan {
  readonly user: SystemUser | undefined;
  readonly steps: readonly (() => void)[];
  /** Human-readable, for the log. */
  readonly changes: readonly string[];
}

const can = (st: Stats, user: SystemUser, bit: 4 | 2 | 1): boolean => {
  if (user.uid === 0) return bit !== 1 || st.isDirectory() || (st.mode & 0o111) !== 0;
  if (st.uid === user.uid) return (st.mode & (bit << 6)) !== 0;
  if (user.groups.includes(st.gid)) return (st.mode & (bit << 3)) !== 0;
  return (st.mode & bit) !== 0;
};

function statOrUndefined(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch {
    return undefined;
  }
}

/** Every existing ancestor directory of `path` must let `user` through; the first that does not is refused. */
function assertReachable(path: string, user: SystemUser): void {
  const dirs: string[] = [];
  for (let d = dirname(resolve(path)); ; d = dirname(d)) {
    dirs.unshift(d);
    if (d === dirname(d)) break;
  }
  for (const d of dirs) {
    const st = statOrUndefined(d);
    if (!st) return; // created later (persistence directory), by us
    if (!can(st, user, 1)) {
      throw new BrokerFileError(
        'BROKER_FILE_UNREACHABLE',
        `user ${user.name} cannot enter directory ${d} (mode ${(st.mode & 0o7777).toString(8)}, owner uid ${st.uid}), needed for ${path}: allow it (chmod o+x) or put the file elsewhere`,
      );
    }
  }
}

/**
 * Checks that `files` can be made usable by `userName` (undefined: the user running this, who owns what
 * it writes) and returns the steps that do so. Throws BROKER_USER_UNKNOWN, BROKER_FILE_MISSING,
 * BROKER_FILE_UNREACHABLE, BROKER_FILE_HOLDS_KEY or BROKER_OWNERSHIP_DENIED; changes nothing.
 */
export function planBrokerFileAccess(userName: string | undefined, files: BrokerFiles): BrokerFilePlan {
  const user = userName === undefined ? undefined : lookupUser(userName);
  if (userName !== undefined && !user) {
    throw new BrokerFileError('BROKER_USER_UNKNOWN', `user ${JSON.stringify(userName)} does not exist on this host (mosquitto would refuse to start as it)`);
  }
  const euid = process.geteuid?.() ?? -1;
  const changes: string[] = [];
  const steps: (() => void)[] = [];
  const needsChown = user !== undefined && user.uid !== 0;
  if (needsChown && euid !== 0 && euid !== user.uid) {
    throw new BrokerFileError('BROKER_OWNERSHIP_DENIED', `only root can give the broker's files to user ${user.name}: run broker-config as root, or without --user`);
  }
  for (const f of [...files.secret, ...files.public]) {
    const st = statOrUndefined(f);
    if (!st?.isFile()) throw new BrokerFileError('BROKER_FILE_MISSING', `${f} is not a readable file`);
  }
  for (const f of [...files.secret, ...files.public, ...files.publicLater, files.persistenceDir]) {
    if (user) assertReachable(f, user);
  }
  for (const f of [...files.public, ...files.publicLater]) {
    const st = statOrUndefined(f);
    if (!st) continue;
    if (readFileSync(f, 'utf8').includes('PRIVATE KEY')) {
      throw new BrokerFileError('BROKER_FILE_HOLDS_KEY', `${f} holds a private key; give the key only as --server-key`);
    }
    if (user && !can(st, user, 4)) {
      changes.push(`${f}: readable by all (public)`);
      steps.push(() => chmodSync(f, (st.mode & 0o7777) | 0o444));
    }
  }
  for (const f of files.secret) {
    const st = statSync(f);
    if (needsChown && (st.uid !== user.uid || (st.mode & 0o7777) !== 0o600)) {
      changes.push(`${f}: owner ${user.name}, mode 0600`);
      steps.push(() => {
        chownSync(f, user.uid, user.gid);
        chmodSync(f, 0o600);
      });
    } else if ((st.mode & 0o077) !== 0) {
      // The broker's user already owns it (or is root): just never leave a key readable by others.
      changes.push(`${f}: mode 0600`);
      steps.push(() => chmodSync(f, 0o600));
    }
  }
  const dir = files.persistenceDir;
  const dst = statOrUndefined(dir);
  if (dst && !dst.isDirectory()) throw new BrokerFileError('BROKER_FILE_MISSING', `${dir} is not a directory`);
  if (!dst) {
    changes.push(`${dir}: created`);
    steps.push(() => {
      // Parents with the default mode (a recursive mkdir would give them 0700 too, shutting the user out).
      mkdirSync(dirname(dir), { recursive: true });
      mkdirSync(dir, { mode: 0o700 });
    });
  }
  if (needsChown && (!dst || dst.uid !== user.uid || (dst.mode & 0o700) !== 0o700)) {
    changes.push(`${dir}: owner ${user.name}, mode 0700`);
    steps.push(() => {
      chownSync(dir, user.uid, user.gid);
      chmodSync(dir, 0o700);
    });
  }
  return { user, steps, changes };
}

/** Runs a plan's steps (chown/chmod/mkdir). A failure here is the host's (exit 1 territory). */
export function applyBrokerFileAccess(plan: BrokerFilePlan): void {
  for (const step of plan.steps) step();
}
