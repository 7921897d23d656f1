#!/usr/bin/env bash
# The whole suite, on the machine's Node and on Node 24 LTS (the runtime the device package carries,
# fetched by scripts/setup.sh --test). TEST_NODE=both|machine|24 (default both) picks the runtimes;
# TEST_BACKEND=process|container|auto (default auto) how swtpm and mosquitto run (docs/testing.md).
# Extra arguments go to vitest (e.g. a file filter). Exits non-zero when any runtime's run failed, after
# running all of them.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[test] %s\n' "$*" >&2; }
source scripts/lib/node-runtime.sh
npx --no-install tsc --noEmit -p tsconfig.json

runtimes=()
case ${TEST_NODE:-both} in
  both) runtimes=(machine 24) ;;
  machine | 24) runtimes=("$TEST_NODE") ;;
  *) log "TEST_NODE=$TEST_NODE: expected both, machine or 24"; exit 2 ;;
esac
failed=()
for r in "${runtimes[@]}"; do
  path=$PATH
  [[ $r == machine ]] || path="$(dirname "$(ensure_node_runtime "$r")"):$PATH"
  log "vitest on Node $(PATH=$path node --version) ($r)"
  start=$SECONDS
  if PATH=$path npx --no-install vitest run "$@" </dev/null; then
    log "Node $r: passed in $((SECONDS - start)) s"
  else
    log "Node $r: FAILED after $((SECONDS - start)) s"
    failed+=("$r")
  fi
done
if ((${#failed[@]})); then
  log "failed on Node: ${failed[*]}"
  exit 1
fi
