#!/usr/bin/env bash
# The whole test suite, N times in a row, under a CPU hog: one busy loop per core
# (docs/architecture.md §10). Run from a clean clone that `scripts/setup.sh` has
# set up; it does not touch any other checkout.
#
#   bash scripts/stress-suite.sh [RUNS] [OUT_DIR]     (defaults: 20, /tmp/ebsd-stress)
#
# Each run writes OUT_DIR/run-N.log and run-N.json (vitest's JSON report); one line per
# run goes to OUT_DIR/summary.log: exit status, seconds, load average, and the counts of
# passed, failed and skipped tests read from the JSON. `touch OUT_DIR/stop` ends the
# series after the run in progress. The exit status is 1 if any run had a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
out=${2:-/tmp/ebsd-stress}
mkdir -p "$out"
rm -f "$out/stop"

hogs=()
for _ in $(seq 1 "$(nproc)"); do
  ( while :; do :; done ) &
  hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT

counts() {
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    console.log(`passed ${r.numPassedTests} failed ${r.numFailedTests} skipped ${r.numPendingTests + r.numTodoTests} files-failed ${r.numFailedTestSuites}`);
  ' "$1" 2>/dev/null || echo "no report"
}

echo "series start $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD) runs $runs hogs ${#hogs[@]}" >> "$out/summary.log"
failed_runs=0
for n in $(seq 1 "$runs"); do
  [ -e "$out/stop" ] && { echo "stopped before run $n" >> "$out/summary.log"; break; }
  start=$(date +%s)
  load0=$(cut -d' ' -f1 /proc/loadavg)
  rm -f "$out/run-$n.json"   # a run that dies before its report must not show an earlier series' counts
  npx vitest run --reporter=default --reporter=json --outputFile="$out/run-$n.json" > "$out/run-$n.log" 2>&1
  rc=$?
  [ "$rc" -ne 0 ] && failed_runs=$((failed_runs + 1))
  echo "run $n $(date -u +%T) rc=$rc $(( $(date +%s) - start ))s load $load0 -> $(cut -d' ' -f1 /proc/loadavg) $(counts "$out/run-$n.json")" >> "$out/summary.log"
done
echo "series end $(date -u +%FT%TZ) runs with a failure: $failed_runs" >> "$out/summary.log"
[ "$failed_runs" -eq 0 ]
