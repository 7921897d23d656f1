import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { runPackageScript } from './package-build.js';

const run = promisify(execFile);

/**
 * The last commit whose agent wrote its store without a schema record (version 0): the upgrade test
 * installs the package built from it, then upgrades to this checkout's package, which must migrate
 * that store (agent/src/store-migrations.ts) and keep the device's identity.
 */
export const PREVIOUS_BUILD_COMMIT = 'ef162ba';

/**
 * Builds the agent package of `commit` as its own scripts did: its sources from git (`git archive`), this
 * checkout's node_modules and native addon (the addon's N-API interface is unchanged, and the old
 * agent calls only what it had), its build.mjs and scripts/package.sh (xz at level 1), under Debian
 * version `version`.
 * Returns the path of the .deb. Fails with a clear message where there is no git history (a tarball).
 */
export async function buildPreviousPackage(root: string, commit: string, into: string, version: string): Promise<string> {
  try {
    await run('git', ['-C', root, 'cat-file', '-e', `${commit}^{commit}`]);
  } catch (e) {
    throw new Error(`the upgrade test needs commit ${commit} in the repository's history (a git clone, not a source tarball): ${(e as Error).message}`);
  }
  mkdirSync(into, { recursive: true });
  await run('sh', ['-c', `git -C "$1" archive --format=tar "$2" | tar -x -C "$3"`, 'sh', root, commit, into]);
  symlinkSync(join(root, 'node_modules'), join(into, 'node_modules'));
  mkdirSync(join(into, 'native/build/Release'), { recursive: true });
  copyFileSync(join(root, 'native/build/Release/tpm_native.node'), join(into, 'native/build/Release/tpm_native.node'));
  // Its package.sh compresses with xz at dpkg-deb's default level (about 45 s here); level 1 makes the
  // same kind of package in a few seconds.
  await run('sed', ['-i', 's/dpkg-deb --root-owner-group -Zxz --build/dpkg-deb --root-owner-group -Zxz -z1 --build/', join(into, 'scripts/package.sh')]);
  await run('node', ['build.mjs'], { cwd: into, timeout: 120_000 });
  return (await runPackageScript(into, { TPM_FLEET_DEB_VERSION: version })).deb;
}
