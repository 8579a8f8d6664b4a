#!/usr/bin/env bash
# XTS engine vs `openssl speed -evp aes-256-xts -bytes 4096`, single thread, and
# the async API's aggregate on all cores. Usage: scripts/bench/xts.sh [--seconds N] [--rounds N] [--json]
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ ! -f native/build/Release/ebsd_native.node ]]; then
  EBSD_REQUIRE_NATIVE=1 node scripts/build-native.mjs >&2
fi
# Build dist/. Other layers may be mid-edit; tsc still emits, and all we need is dist/crypto.
if ! npx tsc -p tsconfig.json >/tmp/ebsd-xts-bench-tsc.log 2>&1; then
  echo "note: tsc reported errors (see /tmp/ebsd-xts-bench-tsc.log); using whatever it emitted" >&2
fi
for f in dist/crypto/xts-engine.js dist/crypto/speed.js dist/native/addon.js; do
  [[ -f $f ]] || { echo "error: $f was not built" >&2; exit 1; }
done
command -v openssl >/dev/null || echo "warning: openssl CLI not found; no reference figure" >&2
exec node scripts/bench/xts-bench.mjs "$@"
