#!/usr/bin/env bash
# `npm run docs:dashboard`: renders docs/grafana/dashboard.png, a picture of the Grafana dashboard
# (docs/grafana/fleet-dashboard.json) with real numbers. Grafana is not in Debian, so the panels'
# PromQL is evaluated by Debian's Prometheus scraping a real embedded fleet, drawn on a static page and
# screenshotted by headless Chromium (test/metrics/render-dashboard.ts says how). Not part of the tests.
# Idempotent: installs only the Debian packages that are missing (as root, like scripts/setup.sh).
# Environment: OUT (default docs/grafana/dashboard.png), DEVICES (default 6).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[render-dashboard] %s\n' "$*" >&2; }
source scripts/lib/apt.sh

# prometheus: evaluates the queries; chromium-headless-shell: the screenshot; fonts-dejavu-core: text.
apt_packages=(prometheus chromium-headless-shell fonts-dejavu-core)
ensure_apt_packages "${apt_packages[@]}"
# Debian's package may start its own Prometheus service; this script runs its own on a free port and
# leaves that one alone.

# swtpm, mosquitto, npm dependencies and the native addon, as for the demo.
bash scripts/setup.sh

# Bundled into a directory inside the checkout, so that the bundle's external packages (level, ...)
# resolve from ./node_modules; removed on exit.
work=$(mktemp -d "$PWD/.render-dashboard.XXXXXX")
trap 'rm -rf "$work"' EXIT
npx --no-install esbuild test/metrics/render-dashboard.ts --bundle --platform=node --target=node20 --format=esm \
  --outfile="$work/render-dashboard.mjs" --log-level=warning \
  --external:'*.node' --external:level --external:classic-level --external:pkcs11js \
  --banner:js="import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);"
# Local processes (no containers): the harness starts swtpm and mosquitto on free loopback ports.
TEST_BACKEND=process TPM_NATIVE_ADDON="$PWD/native/build/Release/tpm_native.node" node "$work/render-dashboard.mjs"
