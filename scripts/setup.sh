#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian bookworm machine, and fast (~1 s) when everything is present:
#   1. Debian packages (only installs what is missing; needs root, else prints the apt command),
#   2. npm dependencies (when package-lock.json changed or node_modules is missing),
#   3. the native TPM addon (node-gyp rebuild when native/ sources changed),
#   4. the esbuild bundles in dist/.
# Non-interactive: safe with no stdin (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
stamps="$root/.setup-stamps"
mkdir -p "$stamps"
log() { printf '[setup] %s\n' "$*" >&2; }

# --- 1. Debian packages -------------------------------------------------------------------------
# swtpm/swtpm-tools: software TPM + manufacturing (EK certs); libtss2-*: ESAPI for native/;
# mosquitto: the broker; softhsm2: PKCS#11 token for the CA key; tpm2-tools: debugging and the
# benchmark baseline only; docker.io + debootstrap + iproute2: the container test backend;
# build-essential/python3: node-gyp.
apt_packages=(swtpm swtpm-tools libtss2-dev libtss2-tcti-swtpm0 libtss2-tcti-device0 mosquitto mosquitto-clients softhsm2 tpm2-tools
  openssl g++ make python3 docker.io debootstrap iproute2 procps)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "missing Debian packages: ${missing[*]}"
    log "run as root: apt-get install -y ${missing[*]}"
    exit 1
  fi
fi

# --- 2. npm dependencies ------------------------------------------------------------------------
lock_hash=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -d node_modules || ! -f "$stamps/npm" || $(cat "$stamps/npm") != "$lock_hash" ]]; then
  log "npm install (from package-lock.json)"
  # Not `npm ci`: npm 11 records only this platform's optional packages (rollup's native binaries) in
  # the lockfile and then `npm ci` refuses that same lockfile as out of sync. `npm install` installs the
  # locked versions all the same.
  npm install --no-audit --no-fund --loglevel=error </dev/null
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
