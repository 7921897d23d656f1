#!/usr/bin/env bash
# The whole suite. TEST_BACKEND=process|container|auto (default auto) picks how swtpm and mosquitto run;
# see docs/testing.md. Extra arguments go to vitest (e.g. a file filter).
set -euo pipefail
cd "$(dirname "$0")/.."
npx --no-install tsc --noEmit -p tsconfig.json
exec npx --no-install vitest run "$@" </dev/null
