#!/usr/bin/env bash
# npm run package: builds dist/tpm-fleet-agent_<version>_<arch>.deb with Debian's dpkg-deb (docs/install.md).
#
# The package holds everything the agent needs but Debian's libraries, which it depends on (libtss2-*):
#   /usr/lib/tpm-fleet-agent/   agent.mjs (the bundle), tpm_native.node (the TPM addon), node (Node 24 LTS,
#                               from the npm registry's node-linux-<arch> package), node_modules/ (level and
#                               its dependencies, classic-level's prebuilt binary for this architecture only)
#   /usr/bin/agent              the CLI (run, check, verify)
#   /etc/tpm-fleet/agent.json   runtime config (a conffile; the factory's bootstrap.json goes next to it)
#   /lib/systemd/system/tpm-fleet-agent.service   the hardened unit (deploy/agent/)
# Then it checks the unit with systemd-analyze (verify, and security --offline: the exposure is printed)
# and prints the package's size.
#
# Environment: TPM_FLEET_DEB_VERSION overrides the Debian version (default package.json's version);
# TPM_FLEET_DEB_COMPRESSION the dpkg-deb compressor and level (default "xz 6");
# TPM_FLEET_NODE_CACHE where the Node runtime package is kept between builds (default ~/.cache/tpm-fleet;
# scripts/setup.sh --test fetches the same one for the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log() { echo "package: $*" >&2; }
source scripts/lib/apt.sh
source scripts/lib/node-runtime.sh
# dpkg-deb (dpkg) builds the package; systemd-analyze (systemd) checks its unit.
ensure_apt_packages dpkg systemd

NODE_RANGE=24
arch=$(dpkg --print-architecture)
case $arch in
  amd64) node_arch=x64 ;;
  arm64) node_arch=arm64 ;;
  *) echo "package: unsupported architecture $arch (amd64, arm64)" >&2; exit 2 ;;
esac
version=${TPM_FLEET_DEB_VERSION:-$(node -p "require('./package.json').version")}
# xz at level 6 (30.6 MB, ~45 s here); the tests build at level 1 (36 MB, ~6 s): the same format.
compression=${TPM_FLEET_DEB_COMPRESSION:-xz 6}
read -r compressor level <<<"$compression"
if ! [[ $compressor =~ ^(xz|gzip|zstd)$ && $level =~ ^[0-9]+$ ]]; then echo "package: TPM_FLEET_DEB_COMPRESSION=$compression: expected 'xz|gzip|zstd LEVEL'" >&2; exit 2; fi
if ! [[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]]; then echo "package: $version is not a Debian version" >&2; exit 2; fi

[[ -f dist/agent.mjs && -f dist/tpm_native.node ]] || node build.mjs

stage=$(mktemp -d)
analyze=$(mktemp -d)
trap 'rm -rf "$stage" "$analyze"' EXIT
lib=$stage/usr/lib/tpm-fleet-agent
mkdir -p "$lib" "$stage/usr/bin" "$stage/etc/tpm-fleet" "$stage/lib/systemd/system" "$stage/usr/share/doc/tpm-fleet-agent" "$stage/DEBIAN"

# --- Node runtime: node-linux-<arch>@24 from the npm registry, cached (scripts/lib/node-runtime.sh) -------
node_bin=$(ensure_node_runtime "$NODE_RANGE")
install -m 0755 "$node_bin" "$lib/node"
node_version=$("$lib/node" --version)

# --- The agent -----------------------------------------------------------------------------------------
install -m 0644 dist/agent.mjs "$lib/agent.mjs"
install -m 0644 dist/tpm_native.node "$lib/tpm_native.node"
# level and what it requires, from this checkout's node_modules; classic-level keeps only this platform's
# prebuilt binary (no sources, no other platforms).
node - "$lib/node_modules" "$node_arch" <<'JS'
const { cpSync, existsSync, readFileSync, rmSync, readdirSync } = require('node:fs');
const { join, dirname } = require('node:path');
const [out, arch] = process.argv.slice(2);
const seen = new Set();
const find = (name, from) => {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    if (dir === dirname(dir)) throw new Error(`package: cannot find ${name} from ${from}`);
  }
};
const copy = (name, from) => {
  const dir = find(name, from);
  if (seen.has(dir)) return;
  seen.add(dir);
  const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  cpSync(dir, join(out, name), { recursive: true, dereference: true });
  for (const dep of Object.keys(pkg.dependencies ?? {})) copy(dep, dir);
};
copy('level', process.cwd());
const classic = join(out, 'classic-level');
for (const p of readdirSync(join(classic, 'prebuilds'))) if (p !== `linux-${arch}`) rmSync(join(classic, 'prebuilds', p), { recursive: true });
for (const d of ['deps', 'binding.cc', 'binding.gyp', 'build']) rmSync(join(classic, d), { recursive: true, force: true });
JS
find "$lib/node_modules" \( -name '*.md' -o -name '*.ts' -o -name '*.map' -o -name 'CHANGELOG*' \) -type f -delete

cat > "$stage/usr/bin/agent" <<'SH'
#!/bin/sh
# The device agent's CLI on the packaged Node runtime (tpm-fleet-agent package).
# Runtime settings for a small resident footprint (docs/install.md, "Footprint"): a 1 MiB young
# generation (V8 otherwise grows it to 8 MiB and keeps it), V8's lite mode (no optimizing compilers:
# the agent spends its time waiting on the network and the TPM, not in JavaScript), and at most two
# malloc arenas (glibc otherwise keeps one per thread that ever allocated). NODE_OPTIONS and
# MALLOC_ARENA_MAX in the environment still apply on top.
lib=$(dirname "$(readlink -f "$0")")/../lib/tpm-fleet-agent
MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}
export MALLOC_ARENA_MAX
exec "$lib/node" --max-semi-space-size=1 --lite-mode "$lib/agent.mjs" "$@"
SH
chmod 0755 "$stage/usr/bin/agent"
install -m 0644 deploy/agent/debian/agent.json "$stage/etc/tpm-fleet/agent.json"
install -m 0644 deploy/agent/tpm-fleet-agent.service "$stage/lib/systemd/system/tpm-fleet-agent.service"
[[ -f docs/install.md ]] && install -m 0644 docs/install.md "$stage/usr/share/doc/tpm-fleet-agent/install.md"
for s in postinst prerm postrm; do install -m 0755 "deploy/agent/debian/$s" "$stage/DEBIAN/$s"; done
echo /etc/tpm-fleet/agent.json > "$stage/DEBIAN/conffiles"
installed_kib=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: tpm-fleet-agent
Version: $version
Architecture: $arch
Maintainer: TPM fleet maintainers <maintainers@tpm-fleet.invalid>
Installed-Size: $installed_kib
Depends: libtss2-esys-3.0.2-0, libtss2-sys1, libtss2-mu0, libtss2-rc0, libtss2-tctildr0, libtss2-tcti-device0, adduser, libc6, libstdc++6
Recommends: systemd
Suggests: libtss2-tcti-tabrmd0
Section: admin
Priority: optional
Description: TPM fleet device agent
 Keeps the device's identity key inside its TPM 2.0: enrolls with a one-time token, rotates to a
 fresh TPM key before expiry, works offline from its caches and reports its status over MQTT.
 Carries its own Node.js $node_version runtime.
EOF

# --- Check the unit, as systemd on the device will read it --------------------------------------------
mkdir -p "$analyze/lib/systemd/system" "$analyze/usr/bin" "$analyze/etc/tpm-fleet"
cp -a /lib/systemd/system/. "$analyze/lib/systemd/system/"
cp "$stage/lib/systemd/system/tpm-fleet-agent.service" "$analyze/lib/systemd/system/"
cp "$stage/usr/bin/agent" "$analyze/usr/bin/agent"
echo '{}' > "$analyze/etc/tpm-fleet/bootstrap.json"
systemd-analyze verify --root="$analyze" tpm-fleet-agent.service
exposure=$(systemd-analyze security --offline=true --root="$analyze" tpm-fleet-agent.service 2>&1 | sed -n 's/.*Overall exposure level for tpm-fleet-agent.service: \([0-9.]*\).*/\1/p')
[[ -n $exposure ]] || { echo "package: systemd-analyze security printed no exposure level" >&2; exit 1; }

deb=dist/tpm-fleet-agent_${version}_${arch}.deb
dpkg-deb --root-owner-group -Z"$compressor" -z"$level" --build "$stage" "$root/$deb" >/dev/null
bytes=$(stat -c %s "$deb")
echo "package: $deb ($bytes bytes, installed $installed_kib KiB, Node $node_version)"
echo "package: systemd-analyze security exposure $exposure (target <= 2.5)"
printf '{"package":"%s","packageBytes":%s,"installedKiB":%s,"node":"%s","systemdExposure":%s}\n' "$deb" "$bytes" "$installed_kib" "$node_version" "$exposure"
