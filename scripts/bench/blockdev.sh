#!/usr/bin/env bash
# Block-device benchmark: builds a private copy of dist/ (other layers may be
# mid-edit; tsc still emits) so the shared dist/ is left alone, then runs
# scripts/bench/blockdev.mjs with the native XTS addon.
#   scripts/bench/blockdev.sh [--seconds 2] [--size-mib 256] [--mode both|cache|direct] [--json]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=node_modules/.cache/ebsd-bench-blockdev
if [[ ! -f native/build/Release/ebsd_native.node ]]; then
  EBSD_REQUIRE_NATIVE=1 node scripts/build-native.mjs >&2
fi
npx tsc -p tsconfig.json --outDir "$out" >/tmp/ebsd-blockdev-bench-tsc.log 2>&1 || echo "note: tsc reported errors (see /tmp/ebsd-blockdev-bench-tsc.log); using what it emitted" >&2
EBSD_DIST="$out" EBSD_NATIVE_PATH="$PWD/native/build/Release/ebsd_native.node" exec node scripts/bench/blockdev.mjs "$@"
