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

/** Bundles that run on devices (source → output name), built lean below. */
const deviceBundles = { 'agent/src/main.ts': 'agent' };

/** esbuild plugin: MQTT.js's ws:// and socks proxy transports, replaced by a module that refuses. */
const withoutUnusedMqttTransports = {
  name: 'without-unused-mqtt-transports',
  setup(b) {
    b.onResolve({ filter: /^\.\/(ws|socks)$/ }, (args) => (/[\\/]mqtt[\\/]build[\\/]lib[\\/]connect$/.test(args.resolveDir) ? { path: args.path, namespace: 'unused-mqtt-transport' } : undefined));
    b.onLoad({ filter: /.*/, namespace: 'unused-mqtt-transport' }, (args) => ({
      loader: 'js',
      contents: `const refuse = () => { throw Object.assign(new Error('the device agent connects with mqtts:// or mqtt:// only: MQTT.js ${args.path.slice(2)} transport is not in its bundle'), { code: 'AGENT_TRANSPORT_UNSUPPORTED' }); };
module.exports = { default: refuse, streamBuilder: refuse, browserStreamBuilder: refuse };`,
    }));
  },
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
const entryPoints = Object.fromEntries(Object.entries(programs).filter(([, src]) => existsSync(src) && !(src in deviceBundles)));
const common = {
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
};
await build({ ...common, entryPoints });
// The device agent: what runs on the device, built for a small resident footprint (docs/install.md,
// "Footprint"). V8 keeps a bundle's source in memory for as long as the process lives, as two bytes per
// character once a single character is outside Latin-1 (a "→" in a comment does it): whitespace and
// comments go, and the output is ASCII. Identifiers stay, so stack traces read as the source does.
// MQTT.js loads its WebSocket and SOCKS transports on the first connect although the agent speaks
// mqtts:// only: they are replaced by a module that refuses with a clear error.
await build({
  ...common,
  entryPoints: Object.fromEntries(Object.entries(deviceBundles).filter(([src]) => existsSync(src)).map(([src, name]) => [name, src])),
  minifyWhitespace: true,
  minifySyntax: true,
  charset: 'ascii',
  legalComments: 'none',
  plugins: [withoutUnusedMqttTransports],
});
const addon = 'native/build/Release/tpm_native.node';
// Copy, then rename over: a process running from dist/ has the old file mapped, and overwriting it in
// place kills that process with SIGBUS (even with identical content); a rename leaves its inode alone.
if (existsSync(addon)) {
  copyFileSync(addon, 'dist/.tpm_native.node.tmp');
  renameSync('dist/.tpm_native.node.tmp', 'dist/tpm_native.node');
}
