import { GenericContainer } from 'testcontainers';
import type { ServiceRunner } from './backend.js';

/**
 * Runs harness services in the local test image (tpmfleet-test:bookworm, built by global setup)
 * through testcontainers. Each host port maps to the same port number in the container
 * (`{ container: p, host: p }`), and the directories the service uses are bind-mounted at the same
 * paths, so configs written for the process backend work unchanged (services bind 0.0.0.0 inside);
 * restart() starts a new container on the same host ports with the same files. TPM state is
 * manufactured on the host with swtpm_setup; the container only runs `swtpm socket` / `mosquitto`.
 * Containers carry the label tpmfleet.run=<run id> so teardown removes this run's containers only.
 */
export function containerRunner(): ServiceRunner {
  const image = process.env['TPMFLEET_TEST_IMAGE'];
  if (!image || !process.env['DOCKER_HOST']) {
    throw new Error('TEST_BACKEND=container needs a Docker engine and the test image; global setup could not provide them (see its [harness] line)');
  }
  const runId = process.env['TPMFLEET_TEST_RUN'] ?? 'unknown';
  return {
    backend: 'container',
    bindAddress: '0.0.0.0',
    async start(spec) {
      const container = await new GenericContainer(image)
        .withCommand([spec.command, ...spec.args.map((a) => a.replaceAll('{bind}', '0.0.0.0'))])
        .withBindMounts(spec.mounts.map((m) => ({ source: m, target: m, mode: 'rw' as const })))
        .withExposedPorts(...spec.ports.map((p) => ({ container: p, host: p })))
        .withPullPolicy({ shouldPull: () => false })
        .withLabels({ 'tpmfleet.service': spec.name, 'tpmfleet.run': runId })
        .start();
      return { stop: async () => void (await container.stop({ timeout: 2000 })) };
    },
  };
}
