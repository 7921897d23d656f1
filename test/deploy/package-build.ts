import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** What scripts/package.sh reports in its last line (JSON), and where the package is. */
export interface BuiltPackage {
  /** The .deb, relative to the checkout it was built in. */
  readonly package: string;
  readonly packageBytes: number;
  readonly installedKiB: number;
  readonly node: string;
  readonly systemdExposure: number;
  /** The .deb, absolute. */
  readonly deb: string;
}

/**
 * Runs scripts/package.sh in the checkout `root` (this one, or an older build's) with `env` added to the
 * environment (TPM_FLEET_DEB_VERSION, TPM_FLEET_DEB_COMPRESSION, …) and reads its JSON line.
 */
export async function runPackageScript(root: string, env: NodeJS.ProcessEnv = {}): Promise<BuiltPackage> {
  const { stdout } = await run('bash', ['scripts/package.sh'], { cwd: root, timeout: 300_000, maxBuffer: 16 << 20, env: { ...process.env, ...env } });
  const built = JSON.parse(stdout.trim().split('\n').pop()!) as Omit<BuiltPackage, 'deb'>;
  return { ...built, deb: join(root, built.package) };
}
