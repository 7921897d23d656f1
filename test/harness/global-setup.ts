import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { requestedBackend } from './backend.js';
import { TEST_IMAGE, ensureDockerEngine, ensureTestImage, releaseDockerEngine } from './docker-engine.js';

/**
 * vitest global setup (runs once, in the main vitest process; the fork workers inherit its
 * process.env). TEST_BACKEND=process: nothing to do. auto (default) / container: make a Docker engine
 * and the test image available (starting dockerd as root if needed, building the image once per
 * machine) and hand them to the workers through DOCKER_HOST and TPMFLEET_TEST_IMAGE. In auto mode any
 * failure prints one `[harness] …` line and falls back to local processes (TEST_BACKEND=process for
 * the workers); TEST_BACKEND=container fails the run instead.
 */
export default async function setup(): Promise<(() => Promise<void>) | void> {
  // Suites that run the shipped bundles (dist/agent.mjs) get them fresh, built once here rather than by
  // each file (parallel workers rebuilding dist/ under each other's running processes).
  execFileSync(process.execPath, ['build.mjs'], { stdio: 'inherit' });
  const want = requestedBackend();
  if (want === 'process') return;
  const log = (s: string) => process.stderr.write(`${s}\n`);
  const fallBack = (why: string) => {
    if (want === 'container') throw new Error(`TEST_BACKEND=container: ${why}`);
    log(`[harness] container backend unavailable (${why}); using local processes`);
    process.env['TEST_BACKEND'] = 'process';
  };
  const started = Date.now();
  let engine;
  try {
    engine = await ensureDockerEngine(log);
  } catch (e) {
    return fallBack((e as Error).message.split('\n')[0] ?? 'unknown error');
  }
  if ('unavailable' in engine) return fallBack(engine.unavailable);
  const runId = randomUUID();
  try {
    await ensureTestImage(engine.host, log);
  } catch (e) {
    await releaseDockerEngine(engine, runId);
    const err = e as { stderr?: string; message: string };
    const why = (err.stderr?.trim().split('\n').slice(-1)[0] || err.message.split('\n')[0]) ?? 'unknown error';
    return fallBack(`cannot build ${TEST_IMAGE}: ${why}`);
  }
  process.env['DOCKER_HOST'] = engine.host;
  process.env['TPMFLEET_TEST_IMAGE'] = TEST_IMAGE;
  process.env['TPMFLEET_TEST_RUN'] = runId;
  // Ryuk's image cannot be pulled here; teardown removes our containers itself. Without the override
  // testcontainers would pull an image just to find the host address.
  process.env['TESTCONTAINERS_RYUK_DISABLED'] = 'true';
  process.env['TESTCONTAINERS_HOST_OVERRIDE'] = 'localhost';
  log(`[harness] container backend: ${TEST_IMAGE} on ${engine.host} (ready in ${Date.now() - started} ms)`);
  const ready = engine;
  return () => releaseDockerEngine(ready, runId);
}
