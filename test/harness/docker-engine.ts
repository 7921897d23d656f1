import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * A Docker engine and the local test image for the container backend, as FACTS.md describes for this
 * machine kind: no engine runs by default, so dockerd is started by hand (own data root, no iptables),
 * and with no registry reachable the image is built locally with debootstrap and `docker import`
 * (once per machine: the data root persists, later runs reuse the image).
 */
const run = promisify(execFile);

export const TEST_IMAGE = 'tpmfleet-test:bookworm';
const DATA_ROOT = '/var/lib/tpmfleet-docker';
const RUN_DIR = '/run/tpmfleet-docker';

export interface DockerEngine {
  readonly host: string;
  /** Set when we started dockerd and must stop it. */
  readonly child?: ChildProcess;
}

async function answers(host: string): Promise<boolean> {
  try {
    await run('docker', ['-H', host, 'version', '--format', '{{.Server.Version}}'], { timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

/** Finds a reachable engine or starts one (root only). Resolves undefined with a reason when impossible. */
export async function ensureDockerEngine(log: (s: string) => void): Promise<DockerEngine | { unavailable: string }> {
  for (const host of [process.env['DOCKER_HOST'], `unix://${RUN_DIR}/docker.sock`, 'unix:///var/run/docker.sock']) {
    if (host && (await answers(host))) return { host };
  }
  if (process.getuid?.() !== 0) return { unavailable: 'no Docker engine reachable and not root to start one' };
  if (!existsSync('/usr/sbin/dockerd') && !existsSync('/usr/bin/dockerd')) return { unavailable: 'dockerd is not installed' };
  mkdirSync(RUN_DIR, { recursive: true });
  mkdirSync(DATA_ROOT, { recursive: true });
  const host = `unix://${RUN_DIR}/docker.sock`;
  log(`[harness] starting dockerd (data root ${DATA_ROOT})`);
  const child = spawn(
    'dockerd',
    ['--data-root', DATA_ROOT, '--exec-root', join(RUN_DIR, 'exec'), '--pidfile', join(RUN_DIR, 'docker.pid'), '-H', host,
      '--iptables=false', '--ip-forward=false', '--ip-masq=false'],
    { stdio: 'ignore' },
  );
  const exited = new Promise<string>((resolve) => child.once('exit', (code) => resolve(`dockerd exited with ${code}`)));
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (await answers(host)) return { host, child };
    const done = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 300))]);
    if (done) return { unavailable: done };
  }
  child.kill('SIGKILL');
  return { unavailable: 'dockerd did not answer within 30 s' };
}

function debianMirror(): string {
  try {
    for (const f of readdirSync('/etc/apt/sources.list.d')) {
      if (!f.endsWith('.sources') && !f.endsWith('.list')) continue;
      const m = /URIs:\s*(\S+\/debian)\s*$/m.exec(readFileSync(join('/etc/apt/sources.list.d', f), 'utf8'));
      if (m) return m[1]!;
    }
  } catch {
    // fall through to the default mirror
  }
  return 'http://deb.debian.org/debian';
}

/** Builds the test image (debootstrap + docker import) unless it exists. */
export async function ensureTestImage(host: string, log: (s: string) => void): Promise<void> {
  try {
    await run('docker', ['-H', host, 'image', 'inspect', TEST_IMAGE], { timeout: 10_000 });
    return;
  } catch {
    // not built yet
  }
  const rootfs = '/var/lib/tpmfleet-rootfs';
  rmSync(rootfs, { recursive: true, force: true });
  log(`[harness] building ${TEST_IMAGE} with debootstrap (about a minute, once per machine)`);
  await run('debootstrap', ['--variant=minbase', '--include=mosquitto,swtpm,swtpm-tools', 'bookworm', rootfs, debianMirror()], {
    timeout: 15 * 60_000,
    maxBuffer: 64 * 1024 * 1024,
  });
  await run('sh', ['-c', `tar -C ${rootfs} -c . | docker -H ${host} import - ${TEST_IMAGE}`], { timeout: 10 * 60_000, maxBuffer: 64 * 1024 * 1024 });
  rmSync(rootfs, { recursive: true, force: true });
  log(`[harness] ${TEST_IMAGE} ready`);
}

/** Removes test containers, stops a dockerd we started, and removes the bridge it created. */
export async function stopDockerEngine(engine: DockerEngine): Promise<void> {
  try {
    const { stdout } = await run('docker', ['-H', engine.host, 'ps', '-aq', '--filter', 'label=org.testcontainers=true']);
    const ids = stdout.split(/\s+/).filter(Boolean);
    if (ids.length) await run('docker', ['-H', engine.host, 'rm', '-f', ...ids]);
  } catch {
    // engine already gone
  }
  if (!engine.child) return;
  const exited = new Promise((r) => engine.child!.once('exit', r));
  engine.child.kill('SIGTERM');
  const timer = setTimeout(() => engine.child!.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
  await run('ip', ['link', 'del', 'docker0']).catch(() => undefined);
}
