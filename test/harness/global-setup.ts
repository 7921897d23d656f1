import { requestedBackend } from './backend.js';
import { TEST_IMAGE, ensureDockerEngine, ensureTestImage, stopDockerEngine } from './docker-engine.js';

/**
 * vitest global setup. TEST_BACKEND=process: nothing to do. auto (default) / container: make a Docker
 * engine and the test image available (starting dockerd as root if needed) and hand them to the test
 * workers through the environment they inherit. In auto mode any failure falls back to local
 * processes with one line saying why; TEST_BACKEND=container fails instead.
 */
export default async function setup(): Promise<(() => Promise<void>) | void> {
  const want = requestedBackend();
  if (want === 'process') return;
  const log = (s: string) => process.stderr.write(`${s}\n`);
  const engine = await ensureDockerEngine(log);
  if ('unavailable' in engine) {
    if (want === 'container') throw new Error(`TEST_BACKEND=container: ${engine.unavailable}`);
    log(`[harness] container backend unavailable (${engine.unavailable}); using local processes`);
    process.env['TEST_BACKEND'] = 'process';
    return;
  }
  try {
    await ensureTestImage(engine.host, log);
  } catch (e) {
    await stopDockerEngine(engine);
    const why = (e as Error).message.split('\n')[0];
    if (want === 'container') throw new Error(`TEST_BACKEND=container: cannot build ${TEST_IMAGE}: ${why}`);
    log(`[harness] cannot build ${TEST_IMAGE} (${why}); using local processes`);
    process.env['TEST_BACKEND'] = 'process';
    return;
  }
  process.env['DOCKER_HOST'] = engine.host;
  process.env['TPMFLEET_TEST_IMAGE'] = TEST_IMAGE;
  // Ryuk's image cannot be pulled here; teardown removes our containers itself. Without the override
  // testcontainers would pull an image just to find the host address.
  process.env['TESTCONTAINERS_RYUK_DISABLED'] = 'true';
  process.env['TESTCONTAINERS_HOST_OVERRIDE'] = 'localhost';
  log(`[harness] container backend: ${TEST_IMAGE} on ${engine.host}`);
  return () => stopDockerEngine(engine);
}
