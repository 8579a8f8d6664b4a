#!/usr/bin/env bash
# Idempotent set-up for ebsd on a Debian machine.
#   - installs the system packages ebsd needs (as root; otherwise says what to install and stops)
#   - npm ci (only when package-lock.json changed since the last install)
#   - builds fuse-native's binding, ebsd's native addon and the TypeScript
#   - puts `ebsd` on the PATH (/usr/local/bin/ebsd)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
say() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages --------------------------------------------------------
# package -> a file or command that proves it is there
declare -A NEED=(
  [libfuse2]=/usr/lib/x86_64-linux-gnu/libfuse.so.2
  [fuse]=/bin/fusermount
  [fio]=/usr/bin/fio
  [e2fsprogs]=/sbin/mkfs.ext4
  [cryptsetup-bin]=/sbin/cryptsetup
  [mount]=/sbin/losetup
  [make]=/usr/bin/make
  [g++]=/usr/bin/g++
  [python3]=/usr/bin/python3
  [libgcrypt20-dev]=/usr/include/gcrypt.h
  [awscli]=/usr/bin/aws
  [openssl]=/usr/bin/openssl
  [systemd]=/usr/bin/systemd-analyze
  [tmux]=/usr/bin/tmux
  [nghttp2-client]=/usr/bin/h2load
  [prometheus]=/usr/bin/promtool
  [strace]=/usr/bin/strace
)
missing=()
for pkg in "${!NEED[@]}"; do
  # The file is the proof, not dpkg's database: a removed package keeps a
  # "config-files" record that `dpkg -s` still reports as present.
  [[ -e ${NEED[$pkg]} ]] && continue
  [[ $pkg == libfuse2 ]] && ldconfig -p 2>/dev/null | grep -q 'libfuse.so.2 ' && continue
  missing+=("$pkg")
done
read -r -a missing <<<"${missing[*]-}"
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    say "missing system packages: ${missing[*]}"
    say "run as root:  apt-get update && apt-get install -y ${missing[*]}"
    exit 1
  fi
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ ! -c /dev/fuse ]]; then
  modprobe fuse 2>/dev/null || true
  [[ -c /dev/fuse ]] || { say "/dev/fuse is missing: load the fuse kernel module (modprobe fuse)"; exit 1; }
fi

# --- node dependencies ------------------------------------------------------
if [[ ! -f node_modules/.package-lock.json ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  say "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

# fuse-native's install script (node-gyp-build) is not run by npm 11 unless allowed;
# build its binding here when it is not there yet.
if ! node -e "require('fuse-native')" >/dev/null 2>&1; then
  say "building fuse-native"
  (cd node_modules/fuse-native && "$ROOT/node_modules/.bin/node-gyp" rebuild --loglevel=error >/dev/null)
  node -e "require('fuse-native')"
fi

# --- our native addon + TypeScript -----------------------------------------
# Rebuilt when a C source changed or Node's ABI / libuv did (build-native.mjs decides).
EBSD_REQUIRE_NATIVE=1 node scripts/build-native.mjs --if-stale
# Incremental (tsconfig.json: the build info is dist/.tsbuildinfo, kept by every `tsc -p`, so
# no other build leaves it stale; removing dist/ rebuilds everything): an unchanged tree is
# checked in seconds, a changed source compiled and type-checked as before. The build info
# does not notice an output removed by hand: then build afresh.
say "tsc"
tsc_incremental() { node_modules/.bin/tsc -p tsconfig.json; }
tsc_incremental
outputs_missing() {
  local f
  while IFS= read -r f; do
    f=${f#src/}
    [[ -e dist/${f%.ts}.js ]] || return 0
  done < <(find src -name '*.ts' ! -name '*.d.ts')
  return 1
}
if outputs_missing; then
  say "tsc: an output is missing, building afresh"
  rm -f dist/.tsbuildinfo
  tsc_incremental
fi
chmod +x dist/cli/main.js 2>/dev/null || true

# --- ebsd on the PATH -------------------------------------------------------
if [[ -f dist/cli/main.js ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    ln -sfn "$ROOT/dist/cli/main.js" /usr/local/bin/ebsd
  elif ! command -v ebsd >/dev/null; then
    say "not root: add ebsd to your PATH with:  ln -s $ROOT/dist/cli/main.js ~/.local/bin/ebsd"
  fi
fi
say "ready"
