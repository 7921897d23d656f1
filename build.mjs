// Bundles each program into one ESM file under dist/. The TPM addon (.node) stays outside the bundle:
// it is copied next to the bundles and located at run time by native/lib/binding.ts. Packages with
// their own native parts (level/classic-level, pkcs11js) stay external and load from node_modules.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';

const programs = {
  agent: 'agent/src/main.ts',
  bridge: 'broker-bridge/src/main.ts',
  station: 'provisioning/src/main.ts',
  operator: 'operator/src/main.ts',
  demo: 'sim/src/demo.ts',
  sim: 'sim/src/sim.ts',
  'sim-worker': 'sim/src/sim/worker.ts',
  'tpm-proxy': 'sim/src/tpm-proxy-main.ts',
  'bench-tpm': 'test/bench/tpm.ts',
  'bench-ca': 'test/bench/ca.ts',
  'bench-agent': 'test/bench/agent.ts',
  'bench-revocation': 'test/bench/revocation.ts',
  'bench-factory': 'test/bench/factory.ts',
  'bench-enroll-cpu': 'test/bench/enroll-cpu.ts',
  bench: 'test/bench/all.ts',
};

// Stamped into the agent (agent/src/version.ts) and reported in its status: package version + commit.
const pkgVersion = JSON.parse(readFileSync('package.json', 'utf8')).version;
let commit = 'unknown';
try {
  commit = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
} catch {
  // not a git checkout (a source tarball): the version alone
}
const version = `${pkgVersion}+${commit}`.slice(0, 32);

mkdirSync('dist', { recursive: true });
const entryPoints = Object.fromEntries(Object.entries(programs).filter(([, src]) => existsSync(src)));
await build({
  entryPoints,
  outdir: 'dist',
  outExtension: { '.js': '.mjs' },
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'esm',
  sourcemap: 'linked',
  logLevel: 'warning',
  define: { AGENT_BUILD_VERSION: JSON.stringify(version) },
  external: ['*.node', 'level', 'classic-level', 'pkcs11js'],
  // CommonJS dependencies inside an ESM bundle still call require() for Node built-ins.
  banner: { js: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);" },
});
const addon = 'native/build/Release/tpm_native.node';
// Copy, then rename over: a process running from dist/ has the old file mapped, and overwriting it in
// place kills that process with SIGBUS (even with identical content); a rename leaves its inode alone.
if (existsSync(addon)) {
  copyFileSync(addon, 'dist/.tpm_native.node.tmp');
  renameSync('dist/.tpm_native.node.tmp', 'dist/tpm_native.node');
}
