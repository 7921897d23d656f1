import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { processRunner, requestedBackend, type Backend, type ServiceRunner } from './backend.js';
import { SYSTEM_SOCKET, TEST_IMAGE } from './docker-engine.js';

let probed: boolean | undefined;

/**
 * Outside a vitest run prepared by global setup (a script importing the harness, or vitest without the
 * globalSetup entry): is there an engine (DOCKER_HOST, else /var/run/docker.sock) that has the test
 * image? One synchronous `docker image inspect` per process, which fails both when the engine does not
 * answer and when the image is missing. Global setup's teardown does not cover containers started this
 * way; stop() / stopAll() does.
 */
function engineWithImage(): boolean {
  if (probed !== undefined) return probed;
  const host = process.env['DOCKER_HOST'] ?? (existsSync(SYSTEM_SOCKET) ? `unix://${SYSTEM_SOCKET}` : undefined);
  probed = false;
  if (host) {
    try {
      execFileSync('docker', ['-H', host, 'image', 'inspect', '--format', '{{.Id}}', TEST_IMAGE], { stdio: 'ignore', timeout: 10_000 });
      process.env['DOCKER_HOST'] = host;
      process.env['TPMFLEET_TEST_IMAGE'] = TEST_IMAGE;
      probed = true;
    } catch {
      // no engine answering there, or no test image on it
    }
  }
  return probed;
}

/**
 * The backend for this worker. TEST_BACKEND=process: local processes. auto (default): `container` when a
 * Docker engine is reachable and has the test image, else `process`. Under vitest, global setup decides
 * (it starts dockerd and builds the image where it can) and hands the result to the workers through
 * DOCKER_HOST + TPMFLEET_TEST_IMAGE, or TEST_BACKEND=process after a fallback; without global setup the
 * engine is probed here. TEST_BACKEND=container without an engine and image: a clear error, never a
 * silent fallback.
 */
export function selectedBackend(): Backend {
  const want = requestedBackend();
  if (want === 'process') return 'process';
  const ready = Boolean(process.env['TPMFLEET_TEST_IMAGE'] && process.env['DOCKER_HOST']) || engineWithImage();
  if (want === 'container' && !ready) {
    throw new Error(
      `TEST_BACKEND=container, but no Docker engine with the image ${TEST_IMAGE} is reachable (DOCKER_HOST=${process.env['DOCKER_HOST'] ?? 'unset'}, ` +
        `${SYSTEM_SOCKET} ${existsSync(SYSTEM_SOCKET) ? 'present' : 'absent'}): run through vitest so test/harness/global-setup.ts can start dockerd ` +
        'and build the image (see its [harness] line), or use TEST_BACKEND=process',
    );
  }
  return ready ? 'container' : 'process';
}

let chosen: Promise<ServiceRunner> | undefined;

/** The runner for the selected backend (testcontainers is only loaded for the container backend). */
export function runner(): Promise<ServiceRunner> {
  chosen ??= (async () => {
    if (selectedBackend() === 'process') return processRunner;
    // Global setup sets these too; set them before testcontainers loads in case a worker lacks them.
    // Ryuk's image cannot be pulled here (cleanup is ours), and without the host override
    // testcontainers would pull an image just to find the host address.
    process.env['TESTCONTAINERS_RYUK_DISABLED'] ??= 'true';
    process.env['TESTCONTAINERS_HOST_OVERRIDE'] ??= 'localhost';
    const { containerRunner } = await import('./container-backend.js');
    return containerRunner();
  })();
  chosen.catch(() => (chosen = undefined));
  return chosen;
}
