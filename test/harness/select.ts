import { processRunner, requestedBackend, type Backend, type ServiceRunner } from './backend.js';

let chosen: Promise<ServiceRunner> | undefined;

/**
 * The runner for this worker: `container` when TEST_BACKEND asks for it or (auto) when global setup
 * left a reachable Docker engine and the test image in DOCKER_HOST/TPMFLEET_TEST_IMAGE; else `process`.
 */
export function runner(): Promise<ServiceRunner> {
  chosen ??= (async () => {
    const want = requestedBackend();
    if (want === 'process') return processRunner;
    if (want === 'auto' && !process.env['TPMFLEET_TEST_IMAGE']) return processRunner;
    const { containerRunner } = await import('./container-backend.js');
    return containerRunner();
  })();
  return chosen;
}

export async function selectedBackend(): Promise<Backend> {
  return (await runner()).backend;
}
