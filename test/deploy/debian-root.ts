import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { debianMirror } from '../harness/docker-engine.js';

const run = promisify(execFile);

/**
 * A clean Debian bookworm root (debootstrap, minbase) for installing packages with dpkg in a chroot:
 * built once per machine and kept as a tarball in /var/cache/tpm-fleet, keyed by what it includes;
 * each `open` extracts a fresh copy and binds /proc and /dev into it. Needs root (mounts, chroot).
 */
export interface DebianRoot {
  readonly dir: string;
  /** Runs `args` inside the root (chroot), as root, with a clean environment. */
  chroot(args: readonly string[], opts?: { timeoutMs?: number }): Promise<{ stdout: string; stderr: string }>;
  /** Unmounts and deletes the root. */
  close(): Promise<void>;
}

const CACHE = '/var/cache/tpm-fleet';
export const CHROOT_ENV = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8' };

export async function openDebianRoot(dir: string, include: readonly string[]): Promise<DebianRoot> {
  const key = createHash('sha256').update(include.join(',')).digest('hex').slice(0, 12);
  const tarball = join(CACHE, `debian-bookworm-${key}.tar`);
  if (!existsSync(tarball)) {
    mkdirSync(CACHE, { recursive: true });
    const build = `${dir}.debootstrap`;
    rmSync(build, { recursive: true, force: true });
    try {
      await run('debootstrap', ['--variant=minbase', `--include=${include.join(',')}`, 'bookworm', build, debianMirror()], { timeout: 15 * 60_000, maxBuffer: 256 << 20 });
      await run('tar', ['-C', build, '-cf', `${tarball}.tmp`, '.'], { timeout: 5 * 60_000 });
      renameSync(`${tarball}.tmp`, tarball);
    } finally {
      rmSync(build, { recursive: true, force: true });
    }
  }
  mkdirSync(dir, { recursive: true });
  await run('tar', ['-C', dir, '-xf', tarball], { timeout: 5 * 60_000 });
  const mounted: string[] = [];
  try {
    for (const m of ['proc', 'dev']) {
      await run('mount', ['--bind', `/${m}`, join(dir, m)]);
      mounted.push(join(dir, m));
    }
  } catch (e) {
    for (const m of mounted.reverse()) await run('umount', [m]).catch(() => undefined);
    throw e;
  }
  return {
    dir,
    chroot: (args, opts = {}) => run('chroot', [dir, ...args], { env: CHROOT_ENV, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 16 << 20 }),
    async close() {
      for (const m of mounted.reverse()) await run('umount', [m]).catch(() => run('umount', ['-l', m]).catch(() => undefined));
      // Never delete through a bind mount of the host's /dev or /proc.
      const still = readFileSync('/proc/self/mounts', 'utf8')
        .split('\n')
        .map((l) => l.split(' ')[1] ?? '')
        .filter((p) => p === dir || p.startsWith(`${dir}/`));
      if (still.length) throw new Error(`${dir} still has mounts (${still.join(', ')}); not deleting it`);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
