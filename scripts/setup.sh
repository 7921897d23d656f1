#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian bookworm machine, and fast (~1 s) when everything is present:
#   1. Debian packages (only installs what is missing; needs root, else prints the apt command),
#   2. npm dependencies with `npm ci` (when package-lock.json changed or node_modules is missing),
#   3. the native TPM addon (node-gyp rebuild when native/ sources changed),
#   4. the esbuild bundles in dist/.
# With --test also Node 24 LTS from the npm registry (scripts/lib/node-runtime.sh), for scripts/test.sh.
# Usage: scripts/setup.sh [--test]
#   no option: what the programs and the demo use;
#   --test:    also what the tests and benchmarks use (`npm test`, `npm run bench:*`, `npm run fuzz`).
# Non-interactive: safe with no stdin (CI). Never writes a tracked file: a fresh clone stays clean.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
stamps="$root/.setup-stamps"
log() { printf '[setup] %s\n' "$*" >&2; }
source "$root/scripts/lib/apt.sh"
source "$root/scripts/lib/node-runtime.sh"

profile=run
case "${1:-}" in
  '') ;;
  --test) profile=test ;;
  *) log "unknown option: $1 (usage: scripts/setup.sh [--test])"; exit 2 ;;
esac
mkdir -p "$stamps"

# --- 1. Debian packages -------------------------------------------------------------------------
# The programs and the demo: swtpm/swtpm-tools: software TPM + manufacturing (EK certs); libtss2-*:
# ESAPI for native/ (swtpm TCTI for the demo, device TCTI for real TPMs); mosquitto: the broker;
# g++/make/python3: node-gyp.
apt_packages=(swtpm swtpm-tools libtss2-dev libtss2-tcti-swtpm0 libtss2-tcti-device0 mosquitto g++ make python3)
# The tests and benchmarks besides: mosquitto-clients: an independent MQTT client; softhsm2: PKCS#11
# token for the CA key; tpm2-tools: checks and the benchmark baseline; openssl: independent
# verification; procps: pgrep; tmux: tests on a real TTY; chromium-headless-shell + fonts-dejavu-core:
# the simulator report rendered in a real browser; docker.io + debootstrap + iproute2: the
# container test backend (docs/testing.md); tpm2-abrmd + libtss2-tcti-tabrmd0 (which tpm2-abrmd does
# not pull in) + dbus-daemon/dbus-bin: the agent through the user-space resource manager;
# python3-cryptography: the strict X.509 parser (Rust asn1) keylime uses, to show that the vendor
# EK certificate quirks the tests build are the ones it refuses; systemd: systemd-analyze for the
# agent package's unit (scripts/package.sh).
if [[ $profile == test ]]; then
  apt_packages+=(mosquitto-clients softhsm2 tpm2-tools openssl procps tmux docker.io debootstrap iproute2 chromium-headless-shell fonts-dejavu-core tpm2-abrmd libtss2-tcti-tabrmd0 dbus-daemon dbus-bin python3-cryptography systemd)
fi
ensure_apt_packages "${apt_packages[@]}"

# --- 1b. Node 24 LTS ------------------------------------------------------------------------------
# The runtime the device package carries; the tests run on it as well as on the machine's Node
# (scripts/test.sh). From the npm registry's node-linux-<arch> package, under .tools/ (untracked).
if [[ $profile == test ]]; then
  node24=$(ensure_node_runtime 24)
  log "Node 24: $node24 ($("$node24" --version))"
fi

# --- 2. npm dependencies ------------------------------------------------------------------------
# `npm ci` installs exactly the lockfile and never writes it. package-lock.json records every
# platform's optional packages (rollup's native binaries), so it is in sync on any platform; after a
# dependency change, regenerate it with `npm install` and commit it. The stamp is the lockfile's hash,
# so the next run reinstalls only when the lockfile changed.
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -d node_modules || ! -f "$stamps/npm" || $(cat "$stamps/npm") != "$lock_hash" ]]; then
  log "npm ci (from package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error </dev/null
  echo "$lock_hash" >"$stamps/npm"
fi

# --- 3. native addon ----------------------------------------------------------------------------
native_hash=$( (cat native/binding.gyp; find native/src -type f | sort | xargs cat; node --version) | sha256sum | cut -d' ' -f1)
if [[ ! -f native/build/Release/tpm_native.node || ! -f "$stamps/native" || $(cat "$stamps/native") != "$native_hash" ]]; then
  log "building native addon"
  npx --no-install node-gyp rebuild --directory native --jobs=max >"$stamps/native-build.log" 2>&1 || {
    cat "$stamps/native-build.log" >&2
    exit 1
  }
  echo "$native_hash" >"$stamps/native"
fi

# --- 4. bundles ---------------------------------------------------------------------------------
node build.mjs
