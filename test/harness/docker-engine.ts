import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * A Docker engine and the local test image for the container backend, as FACTS.md describes for this
 * machine kind: no engine runs by default, so dockerd is started by hand (own data root, no iptables),
 * and with no registry reachable the image is built locally with debootstrap and `docker import`
 * (once per machine: the data root persists, later runs reuse the image).
 *
 * Several vitest runs on one machine share the engine we start: each registers in RUN_DIR/users (by
 * PID, under a lock); the last one out stops dockerd (by the PID in its pidfile) and removes the
 * bridge. Each run removes only its own containers (label tpmfleet.run), except the last one, which
 * removes every testcontainers container left on our engine.
 */
const run = promisify(execFile);

export const TEST_IMAGE = 'tpmfleet-test:bookworm';
const DATA_ROOT = '/var/lib/tpmfleet-docker';
const RUN_DIR = '/run/tpmfleet-docker';
const USERS = join(RUN_DIR, 'users');
const LOCK = join(RUN_DIR, 'lock');
const PIDFILE = join(RUN_DIR, 'docker.pid');
const OUR_HOST = `unix://${RUN_DIR}/docker.sock`;
export const SYSTEM_SOCKET = '/var/run/docker.sock';
const SYSTEM_HOST = `unix://${SYSTEM_SOCKET}`;

export interface DockerEngine {
  readonly host: string;
  /** True when the engine is the one this harness starts (ours to stop when the last run ends). */
  readonly ours: boolean;
}

/** True while `pid` runs (a zombie counts as gone: whoever reaps it is not necessarily us). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** A lock shared by concurrent vitest runs (mkdir is atomic); a lock whose holder died is broken. */
async function withLock<T>(fn: () => Promise<T>, waitMs = 15 * 60_000): Promise<T> {
  mkdirSync(RUN_DIR, { recursive: true });
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      mkdirSync(LOCK);
      writeFileSync(join(LOCK, 'pid'), String(process.pid));
      break;
    } catch {
      let holder = NaN;
      try {
        holder = Number(readFileSync(join(LOCK, 'pid'), 'utf8'));
      } catch {
        // being created or removed right now
      }
      if (Number.isInteger(holder) && holder > 0 && !alive(holder)) rmSync(LOCK, { recursive: true, force: true });
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${LOCK}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  try {
    return await fn();
  } finally {
    rmSync(LOCK, { recursive: true, force: true });
  }
}

function liveUsers(): number[] {
  mkdirSync(USERS, { recursive: true });
  const live: number[] = [];
  for (const f of readdirSync(USERS)) {
    const pid = Number(f);
    if (Number.isInteger(pid) && alive(pid)) live.push(pid);
    else rmSync(join(USERS, f), { force: true });
  }
  return live;
}

async function answers(host: string): Promise<boolean> {
  try {
    await run('docker', ['-H', host, 'version', '--format', '{{.Server.Version}}'], { timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

/**
 * Finds a reachable engine or starts ours (root only), and registers this process as a user of it.
 * Resolves `{ unavailable }` with the reason when impossible.
 */
export async function ensureDockerEngine(log: (s: string) => void): Promise<DockerEngine | { unavailable: string }> {
  const external = process.env['DOCKER_HOST'];
  if (external && external !== OUR_HOST) {
    return (await answers(external)) ? { host: external, ours: false } : { unavailable: `DOCKER_HOST=${external} does not answer` };
  }
  // An engine the machine already runs (CI with Docker, a developer's laptop) is used as is: starting a
  // second dockerd next to it would fight over docker0 and containerd.
  if (existsSync(SYSTEM_SOCKET) && (await answers(SYSTEM_HOST))) return { host: SYSTEM_HOST, ours: false };
  if (process.getuid?.() !== 0) return { unavailable: 'no Docker engine reachable, and not root to start one' };
  return withLock(async () => {
    liveUsers();
    writeFileSync(join(USERS, String(process.pid)), '');
    if (await answers(OUR_HOST)) return { host: OUR_HOST, ours: true };
    if (!existsSync('/usr/sbin/dockerd') && !existsSync('/usr/bin/dockerd')) {
      rmSync(join(USERS, String(process.pid)), { force: true });
      return { unavailable: 'dockerd is not installed (apt-get install docker.io)' };
    }
    mkdirSync(DATA_ROOT, { recursive: true });
    log(`[harness] starting dockerd (data root ${DATA_ROOT}, socket ${OUR_HOST})`);
    const started = Date.now();
    const args = ['--data-root', DATA_ROOT, '--exec-root', join(RUN_DIR, 'exec'), '--pidfile', PIDFILE, '-H', OUR_HOST,
      '--iptables=false', '--ip-forward=false', '--ip-masq=false'];
    const logPath = join(RUN_DIR, 'dockerd.log');
    const child = spawn('sh', ['-c', `exec dockerd "$@" >>${logPath} 2>&1`, 'dockerd', ...args], { stdio: 'ignore' });
    // Other runs may still use it after we exit; it is stopped by PID by the last one.
    child.unref();
    let exited: string | undefined;
    child.once('exit', (code) => (exited = `dockerd exited with ${code} (see ${logPath})`));
    child.once('error', (e) => (exited = `cannot run dockerd: ${e.message}`));
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (await answers(OUR_HOST)) {
        log(`[harness] dockerd ready in ${Date.now() - started} ms`);
        return { host: OUR_HOST, ours: true };
      }
      if (exited) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    rmSync(join(USERS, String(process.pid)), { force: true });
    if (!exited) {
      child.kill('SIGKILL');
      exited = `dockerd did not answer within 30 s (see ${logPath})`;
    }
    const tail = existsSync(logPath) ? readFileSync(logPath, 'utf8').trim().split('\n').slice(-1)[0] ?? '' : '';
    return { unavailable: `${exited}${tail ? `: ${tail.slice(0, 300)}` : ''}` };
  });
}

export function debianMirror(): string {
  const files: string[] = [];
  try {
    files.push(
      '/etc/apt/sources.list',
      ...readdirSync('/etc/apt/sources.list.d')
        .filter((f) => /\.(sources|list)$/.test(f))
        .sort()
        .map((f) => join('/etc/apt/sources.list.d', f)),
    );
  } catch {
    // no sources.list.d
  }
  for (const f of files) {
    try {
      const text = readFileSync(f, 'utf8');
      const m = /^URIs:\s*(\S+)\s*$/m.exec(text) ?? /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s/m.exec(text);
      if (m && !/security/.test(m[1]!)) return m[1]!;
    } catch {
      // unreadable: try the next
    }
  }
  return 'http://deb.debian.org/debian';
}

/** Builds the test image (debootstrap + docker import) unless it exists; serialized across runs. */
export async function ensureTestImage(host: string, log: (s: string) => void, image = TEST_IMAGE): Promise<void> {
  const exists = async () => {
    try {
      await run('docker', ['-H', host, 'image', 'inspect', image], { timeout: 10_000 });
      return true;
    } catch {
      return false;
    }
  };
  if (await exists()) return;
  const build = async () => {
    if (await exists()) return;
    const rootfs = `/var/lib/tpmfleet-rootfs-${process.pid}`;
    rmSync(rootfs, { recursive: true, force: true });
    const mirror = debianMirror();
    log(`[harness] building ${image}: debootstrap bookworm from ${mirror} (about a minute, once per machine)`);
    const started = Date.now();
    try {
      await run('debootstrap', ['--variant=minbase', '--include=mosquitto,swtpm,swtpm-tools', 'bookworm', rootfs, mirror], {
        timeout: 15 * 60_000,
        maxBuffer: 256 * 1024 * 1024,
      });
      log(`[harness] debootstrap done in ${((Date.now() - started) / 1000).toFixed(1)} s; docker import`);
      await run('sh', ['-c', `tar -C ${rootfs} -c . | docker -H ${host} import - ${image}`], { timeout: 10 * 60_000, maxBuffer: 64 * 1024 * 1024 });
    } finally {
      rmSync(rootfs, { recursive: true, force: true });
    }
    log(`[harness] ${image} ready in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  };
  if (host === OUR_HOST) await withLock(build);
  else await build();
}

async function removeContainers(host: string, filter: string): Promise<void> {
  try {
    const { stdout } = await run('docker', ['-H', host, 'ps', '-aq', '--filter', filter], { timeout: 10_000 });
    const ids = stdout.split(/\s+/).filter(Boolean);
    if (ids.length) await run('docker', ['-H', host, 'rm', '-f', ...ids], { timeout: 30_000 });
  } catch {
    // engine already gone
  }
}

/**
 * Removes this run's containers; if this was the last run using our engine, also every testcontainers
 * container on it, stops dockerd by its PID (waiting for it to exit) and deletes docker0.
 */
export async function releaseDockerEngine(engine: DockerEngine, runId: string): Promise<void> {
  await removeContainers(engine.host, `label=tpmfleet.run=${runId}`);
  if (!engine.ours) return;
  await withLock(async () => {
    rmSync(join(USERS, String(process.pid)), { force: true });
    if (liveUsers().length > 0) return;
    await removeContainers(engine.host, 'label=org.testcontainers=true');
    let pid = NaN;
    try {
      pid = Number(readFileSync(PIDFILE, 'utf8').trim());
    } catch {
      // no pidfile: dockerd is not running
    }
    if (Number.isInteger(pid) && pid > 0 && alive(pid)) {
      process.kill(pid, 'SIGTERM');
      const deadline = Date.now() + 20_000;
      while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      if (alive(pid)) process.kill(pid, 'SIGKILL');
      while (alive(pid)) await new Promise((r) => setTimeout(r, 50));
    }
    await run('ip', ['link', 'del', 'docker0']).catch(() => undefined);
  });
}
