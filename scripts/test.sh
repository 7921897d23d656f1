#!/usr/bin/env bash
# The whole suite, on the machine's Node and then on Node 24 LTS (the runtime the device package
# carries, fetched by scripts/setup.sh --test).
#   TEST_NODE=both|machine|24   which runtimes (default both);
#   TEST_FORKS=N                test files at once (vitest.config.ts; default 3 on the 2-core CI
#                               machine, see docs/testing.md);
#   TEST_BACKEND=process|container|auto   how swtpm and mosquitto run (default process here: local
#                               processes on loopback ports. The container backend ran the suite about
#                               100 s slower per runtime on the 2-core machine; docs/testing.md).
# test/deploy/package.test.ts runs in the Node 24 run only: what it tests (the package, its agent on the
# package's own Node 24, dpkg in a Debian root) is the same whatever Node runs vitest.
# Extra arguments go to vitest (e.g. a file filter). Exits non-zero when any runtime's run failed, after
# running all of them. Measured on the 2-core machine: about 7 min per runtime; the two runs at once
# were slower and timing-sensitive tests failed under the load.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[test] %s\n' "$*" >&2; }
source scripts/lib/node-runtime.sh
export TEST_BACKEND=${TEST_BACKEND:-process}
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
  extra=()
  if [[ $r == machine ]]; then
    [[ ${#runtimes[@]} -gt 1 ]] && extra=(--exclude test/deploy/package.test.ts --passWithNoTests)
  else
    path="$(dirname "$(ensure_node_runtime "$r")"):$PATH"
  fi
  log "vitest on Node $(PATH=$path node --version) ($r)"
  start=$SECONDS
  if PATH=$path npx --no-install vitest run "${extra[@]}" "$@" </dev/null; then
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
log "passed on Node: ${runtimes[*]}"
