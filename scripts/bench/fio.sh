#!/usr/bin/env bash
# fio performance suite for ebsd (issue 7, DESIGN §8).
#
#   scripts/bench/fio.sh [--quick] [--no-publish] [--targets LIST] [--work-dir DIR]
#                        [--cpu-prof DIR]
#
# Measures, in ONE run and on the same backing filesystem:
#   encrypted  an AES-256-XTS volume attached through a daemon this script starts
#   plaintext  the same daemon serving a `--cipher none` passthrough volume
#   ceiling    scripts/bench/noop-fuse.mjs: a no-op in-memory fuse-native file
#   raw        the raw backing file, no FUSE
# with the workloads in scripts/bench/fio/*.fio. Before timing anything it checks
# every target returns what was written (fio verify), that the encrypted image holds
# no plaintext and that the passthrough image does.
#
# Results: docs/bench/fio-latest.json, the `## fio` section of docs/benchmarks.md
# (between <!-- fio:begin --> / <!-- fio:end -->) and docs/bench/fio.svg.
# --quick: small working set, 1 s per workload, under a minute. Full: under ten.
# --no-publish: print the table, leave docs/ untouched (results stay in the work dir
#   only with --keep).
# --cpu-prof DIR: run the daemon under `node --cpu-prof --cpu-prof-dir DIR`.
# --targets: comma list, default encrypted,plaintext,ceiling,raw.
#
# Needs root (FUSE mounts, fusermount), fio, node; builds dist/ with `npx tsc -p .`
# if it is missing or older than src/. Cleans up daemon, mounts and temp dirs on any exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

MODE=full
PUBLISH=1
KEEP=0
TARGETS=encrypted,plaintext,ceiling,raw
WORK_PARENT=${TMPDIR_BENCH:-/var/tmp}
CPU_PROF=
while (($#)); do
  case $1 in
    --quick) MODE=quick ;;
    --no-publish) PUBLISH=0 ;;
    --keep) KEEP=1 ;;
    --targets) TARGETS=$2; shift ;;
    --work-dir) WORK_PARENT=$2; shift ;;
    --cpu-prof) CPU_PROF=$(realpath -m "$2"); shift ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fio.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [[ $MODE == quick ]]; then
  SIZE_MIB=256; RUNTIME=1; RAMP=0
else
  SIZE_MIB=1024; RUNTIME=15; RAMP=2
fi
WORKLOADS=(seq-write seq-read rand-read rand-write rand-rw lat-read)

say() { printf '[fio.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
has_target() { [[ ,$TARGETS, == *,$1,* ]]; }

[[ $(id -u) -eq 0 ]] || die "run as root (FUSE mounts and fusermount)"
command -v fio >/dev/null || die "fio is not installed"
[[ -c /dev/fuse ]] || die "/dev/fuse is missing"

# ---------------------------------------------------------------- clean-up ---
mkdir -p "$WORK_PARENT"
WORK=$(mktemp -d "$WORK_PARENT/ebsd-fio.XXXXXX")
RESULTS=$WORK/results
mkdir -p "$RESULTS"
NOOP_PID=
DAEMON_PID=
MOUNTS=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    daemon_stop
  fi
  if [[ -n $NOOP_PID ]] && kill -0 "$NOOP_PID" 2>/dev/null; then
    kill -TERM "$NOOP_PID"
    for _ in $(seq 50); do kill -0 "$NOOP_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NOOP_PID" 2>/dev/null
  fi
  for m in "${MOUNTS[@]}"; do
    if grep -qs " $m " /proc/mounts; then fusermount -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; fi
  done
  if ((KEEP)); then say "kept work dir $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ----------------------------------------------------------------- targets ---
declare -A FILE=()

start_ceiling() {
  local mnt=$WORK/noop-mnt out=$WORK/noop.out
  mkdir -p "$mnt"; MOUNTS+=("$mnt")
  node "$HERE/noop-fuse.mjs" --mount "$mnt" --size "${SIZE_MIB}MiB" --name vol-noop >"$out" 2>"$WORK/noop.err" &
  NOOP_PID=$!
  for _ in $(seq 100); do
    grep -q '^ready ' "$out" 2>/dev/null && break
    kill -0 "$NOOP_PID" 2>/dev/null || { cat "$WORK/noop.err" >&2; die "noop-fuse exited"; }
    sleep 0.1
  done
  grep -q '^ready ' "$out" || die "noop-fuse did not become ready"
  FILE[ceiling]=$(sed -n 's/^ready //p' "$out")
  say "ceiling: ${FILE[ceiling]} (pid $NOOP_PID)"
}

start_raw() {
  FILE[raw]=$WORK/raw.img
  # Same shape as a volume image: sparse, filled by the pre-conditioning pass below.
  truncate -s "${SIZE_MIB}M" "${FILE[raw]}"
  say "raw: ${FILE[raw]}"
}

# ------------------------------------------------------------------ daemon ---
# The encrypted and plaintext targets: one daemon, two volumes.
STATE=$WORK/state
DMNT=$WORK/ebsd-mnt
DAEMON_MISSING=
declare -A VOL=()

ebsd() { node "$ROOT/dist/cli/main.js" "$@"; }

daemon_available() {
  if [[ ! -f $ROOT/src/cli/main.ts && ! -f $ROOT/dist/cli/main.js ]]; then
    DAEMON_MISSING="no src/cli/main.ts"; return 1
  fi
  if [[ -f $ROOT/src/cli/main.ts ]] && { [[ ! -f $ROOT/dist/cli/main.js ]] ||
       [[ -n $(find "$ROOT/src" -newer "$ROOT/dist/cli/main.js" -name '*.ts' -print -quit) ]]; }; then
    say "building dist/ (npx tsc -p .)"
    (cd "$ROOT" && npx tsc -p .) >&2 || { DAEMON_MISSING="tsc failed"; return 1; }
  fi
  return 0
}

daemon_start() {
  mkdir -p "$STATE" "$DMNT"; MOUNTS+=("$DMNT")
  local node_args=()
  [[ -n $CPU_PROF ]] && { mkdir -p "$CPU_PROF"; node_args+=(--cpu-prof --cpu-prof-dir "$CPU_PROF"); }
  node "${node_args[@]}" "$ROOT/dist/cli/main.js" daemon --state-dir "$STATE" --mount "$DMNT" \
    >"$WORK/daemon.log" 2>&1 &
  DAEMON_PID=$!
  export EBSD_STATE_DIR=$STATE
  for _ in $(seq 150); do
    [[ -S $STATE/control.sock ]] && break
    kill -0 "$DAEMON_PID" 2>/dev/null || { tail -20 "$WORK/daemon.log" >&2; die "daemon exited"; }
    sleep 0.1
  done
  [[ -S $STATE/control.sock ]] || { tail -20 "$WORK/daemon.log" >&2; die "daemon did not open its control socket"; }
  say "daemon: pid $DAEMON_PID, state $STATE, mount $DMNT"
}

daemon_attach() {
  local t=$1 extra=() id
  [[ $t == plaintext ]] && extra=(--cipher none --i-understand-this-is-unencrypted)
  id=$(ebsd volume create --size "${SIZE_MIB}MiB" --name "bench-$t" "${extra[@]}" | grep -o 'vol-[0-9a-f]*' | head -1) \
    || die "volume create ($t) failed"
  ebsd attach "$id" >/dev/null || die "attach $id ($t) failed"
  VOL[$t]=$id
  FILE[$t]=$DMNT/$id
  [[ -e ${FILE[$t]} ]] || die "$t: ${FILE[$t]} did not appear"
  say "$t: ${FILE[$t]}"
}

daemon_stop() {
  local id
  for id in "${VOL[@]}"; do ebsd detach --force "$id" >/dev/null 2>&1; done
  kill -TERM "$DAEMON_PID" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || return 0; sleep 0.1; done
  say "daemon did not exit on SIGTERM; SIGKILL"
  kill -KILL "$DAEMON_PID" 2>/dev/null
}

# The image of an encrypted volume must not hold the plaintext; a passthrough one must.
daemon_check_image() {
  local t=$1 img marker
  img=$(find "$STATE" -type f -name "${VOL[$t]}*" ! -name '*.json' | head -1)
  [[ -n $img ]] || die "$t: cannot find the image of ${VOL[$t]} under $STATE"
  marker="ebsd-fio-marker-$$-$RANDOM"
  yes "$marker" | head -c 1048576 >"$WORK/marker"
  dd if="$WORK/marker" of="${FILE[$t]}" bs=1M count=1 seek=5 oflag=direct conv=notrunc,fsync status=none
  cmp -s "$WORK/marker" <(dd if="${FILE[$t]}" bs=1M count=1 skip=5 iflag=direct status=none) \
    || die "$t: marker did not read back"
  if grep -qa "$marker" "$img"; then
    [[ $t == plaintext ]] || die "$t: plaintext marker found in the image $img"
  else
    [[ $t == encrypted ]] || die "$t: marker not found in the passthrough image $img"
  fi
  say "image check $t: ok ($([[ $t == encrypted ]] && echo 'no plaintext in image' || echo 'plaintext visible, as expected'))"
}

daemon_describe() {
  if [[ -n $DAEMON_PID ]]; then
    printf '{"commit":"%s","volumes":{"encrypted":"%s","plaintext":"%s"},"uvThreadpoolSize":"%s"}' \
      "$(git -C "$ROOT" rev-parse --short HEAD)" "${VOL[encrypted]-}" "${VOL[plaintext]-}" "${UV_THREADPOOL_SIZE:-default}"
  else
    printf 'null'
  fi
}

# ------------------------------------------------------------- correctness ---
# fio with verify: writes the whole working set (which also pre-conditions it, so
# no timed read lands on a hole), then reads it back checking crc32c + header
# (offset, block number) of every block; then random 4 KiB writes verified the same way.
verify_target() {
  local t=$1 f=${FILE[$1]}
  say "verify $t: sequential fill + read-back of ${SIZE_MIB} MiB, random 4 KiB write + read-back"
  fio --name=fill --filename="$f" --size="${SIZE_MIB}m" --rw=write --bs=1m --ioengine=libaio \
      --direct=1 --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \
      --output="$WORK/verify-$t-seq.log" || { cat "$WORK/verify-$t-seq.log" >&2; die "$t: sequential verify failed"; }
  fio --name=rand --filename="$f" --size=32m --offset=8m --rw=randwrite --bs=4k --ioengine=libaio \
      --direct=1 --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 \
      --output="$WORK/verify-$t-rand.log" || { cat "$WORK/verify-$t-rand.log" >&2; die "$t: random verify failed"; }
}

verify_ceiling() {
  local f=${FILE[ceiling]}
  say "verify ceiling: reads return zeros, writes are accepted"
  dd if=/dev/urandom of="$WORK/pattern" bs=1M count=1 status=none
  dd if="$WORK/pattern" of="$f" bs=1M count=1 seek=3 oflag=direct conv=notrunc status=none \
    || die "ceiling: O_DIRECT write failed"
  cmp -s <(dd if="$f" bs=1M count=1 skip=3 iflag=direct status=none) <(head -c 1048576 /dev/zero) \
    || die "ceiling: O_DIRECT read did not return zeros"
}

# ----------------------------------------------------------------- running ---
run_workload() {
  local t=$1 w=$2
  FIO_FILE=${FILE[$t]} FIO_SIZE=${SIZE_MIB}m FIO_RUNTIME=$RUNTIME FIO_RAMP=$RAMP \
    fio --output-format=json --output="$RESULTS/$t--$w.json" "$HERE/fio/$w.fio" \
    || die "fio $w on $t failed"
  node "$HERE/fio-report.mjs" --one "$RESULTS/$t--$w.json" >&2
}

T0=$SECONDS
ACTIVE=()
for t in encrypted plaintext ceiling raw; do has_target "$t" && ACTIVE+=("$t"); done

if has_target encrypted || has_target plaintext; then
  if daemon_available; then
    daemon_start
    has_target encrypted && daemon_attach encrypted
    has_target plaintext && daemon_attach plaintext
  else
    say "daemon not available yet ($DAEMON_MISSING): skipping encrypted and plaintext targets"
    ACTIVE=("${ACTIVE[@]/encrypted}"); ACTIVE=("${ACTIVE[@]/plaintext}")
  fi
fi
has_target ceiling && start_ceiling
has_target raw && start_raw
read -r -a ACTIVE <<<"${ACTIVE[*]}"
((${#ACTIVE[@]})) || die "no target to measure"

for t in "${ACTIVE[@]}"; do
  if [[ $t == ceiling ]]; then verify_ceiling; else verify_target "$t"; fi
done
for t in encrypted plaintext; do
  [[ " ${ACTIVE[*]} " == *" $t "* ]] && daemon_check_image "$t"
done
say "correctness checks passed ($((SECONDS - T0)) s); timing ${#WORKLOADS[@]} workloads x ${#ACTIVE[@]} targets, ${RUNTIME}s each (+${RAMP}s ramp)"

# Workload-major order: the targets of one workload run back to back, so a drift
# of the machine during the run moves all of them together and the ratios hold.
for w in "${WORKLOADS[@]}"; do
  for t in "${ACTIVE[@]}"; do run_workload "$t" "$w"; done
done

META=$WORK/meta.json
cat >"$META" <<EOF
{
  "mode": "$MODE",
  "sizeMiB": $SIZE_MIB,
  "runtimeSec": $RUNTIME,
  "rampSec": $RAMP,
  "targets": "$(IFS=,; echo "${ACTIVE[*]}")",
  "backingFs": "$(df --output=source,fstype "$WORK" | tail -1 | tr -s ' ')",
  "fio": "$(fio --version)",
  "kernel": "$(uname -r)",
  "cpus": $(nproc),
  "cpuModel": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//; s/"/\\"/g')",
  "daemon": $(daemon_describe),
  "elapsedSec": $((SECONDS - T0))
}
EOF

REPORT_ARGS=(--results "$RESULTS" --meta "$META")
if ((PUBLISH)); then
  REPORT_ARGS+=(--json docs/bench/fio-latest.json --svg docs/bench/fio.svg --markdown docs/benchmarks.md)
fi
node "$HERE/fio-report.mjs" "${REPORT_ARGS[@]}"
say "done in $((SECONDS - T0)) s"
