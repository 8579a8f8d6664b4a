#!/usr/bin/env bash
# fio performance suite for ebsd (issue 7, docs/architecture.md §10).
#
#   scripts/bench/fio.sh [--quick] [--rounds N] [--no-publish] [--targets LIST]
#                        [--work-dir DIR] [--cpu-prof DIR]
#
# Measures, in ONE run and on the same backing filesystem:
#   encrypted  an AES-256-XTS volume attached through a daemon this script starts
#   plaintext  the SAME daemon (started with --allow-unencrypted) serving a
#              measurement-only passthrough volume (`ebsd volume create --cipher none`)
#   ceiling    scripts/bench/noop-fuse.mjs: a no-op in-memory fuse-native file
#   raw        the raw backing file, no FUSE
# with the workloads in scripts/bench/fio/*.fio. Before timing anything it checks
# every target returns what was written (fio verify), that the encrypted image holds
# no plaintext and that the passthrough image does.
#
# Results: docs/bench/fio-latest.json, the `## fio` section of docs/benchmarks.md
# (between <!-- fio:begin --> / <!-- fio:end -->) and docs/bench/fio.svg.
# --quick: 128 MiB, 1 s per workload, one round: under a minute (plus a tsc build
#   when dist/ is older than src/). Full: 1 GiB, 5 rounds of 2 s (+1 s ramp), target
#   order rotated each round; median per figure, median of the per-round ratios per
#   ratio, after an unrecorded warm-up: under ten minutes.
# --rounds N: this many rounds instead of the mode's (quick 1, full 5).
# --no-publish: print the table, leave docs/ untouched (results stay in the work dir
#   only with --keep).
# --cpu-prof DIR: run the daemon under `node --cpu-prof --cpu-prof-dir DIR`.
# --targets: comma list, default encrypted,plaintext,ceiling,raw.
# --via daemon|harness|auto: who serves encrypted/plaintext. daemon: `ebsd daemon`
#   (KMS, catalog, attach); harness: scripts/bench/fio-harness.mjs, the daemon's FUSE
#   adapter and block devices without KMS (for profiling the data path alone).
#   auto (default): the daemon when dist/ has one, else the harness.
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
VIA=auto
ROUNDS_ARG=
while (($#)); do
  case $1 in
    --quick) MODE=quick ;;
    --rounds) ROUNDS_ARG=$2; shift ;;
    --no-publish) PUBLISH=0 ;;
    --keep) KEEP=1 ;;
    --targets) TARGETS=$2; shift ;;
    --work-dir) WORK_PARENT=$2; shift ;;
    --via) VIA=$2; shift ;;
    --cpu-prof) CPU_PROF=$(realpath -m "$2"); shift ;;
    -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fio.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

# Full: five rounds of 2 s (+1 s ramp), workload-major inside each round; figures
# are medians over the rounds and ratios medians of the per-round ratios. The
# machine is shared: one 15 s sample per figure was seen to swing ±30 %, and
# whole rounds 2-3x; more, shorter rounds pair the targets more closely in time.
if [[ $MODE == quick ]]; then
  SIZE_MIB=128; RUNTIME=1; RAMP=0; ROUNDS=1; WARMUP=0
else
  SIZE_MIB=1024; RUNTIME=2; RAMP=1; ROUNDS=5; WARMUP=1
fi
WORKLOADS=(seq-write seq-read rand-read rand-write rand-rw lat-read)

say() { printf '[fio.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
has_target() { [[ ,$TARGETS, == *,$1,* ]]; }

if [[ -n $ROUNDS_ARG ]]; then
  [[ $ROUNDS_ARG =~ ^[1-9][0-9]*$ ]] || die "--rounds wants a whole number of rounds, 1 or more (got '$ROUNDS_ARG')"
  ROUNDS=$ROUNDS_ARG
fi

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
DAEMON_PIDS=()
MOUNTS=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +eu
  ((${#DAEMON_PIDS[@]})) && daemon_stop
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
# The encrypted and plaintext targets: ONE `ebsd daemon` from dist/ on a temporary
# state dir, started with --allow-unencrypted, serving an encrypted volume and a
# measurement-only plaintext volume (`volume create --cipher none`) side by side,
# so both go through the same process, FUSE mount, thread pool and data path.
# --via harness instead runs scripts/bench/fio-harness.mjs: the same FUSE adapter and
# block devices from dist/, one process, no KMS and control socket.
STATE=$WORK/state
DMNT=$WORK/ebsd-mnt
DAEMON_MISSING=
declare -A VOL=() IMAGE=()

ebsd() { node "$ROOT/dist/cli/main.js" --state-dir "$STATE" "$@"; }

build_dist() {
  if [[ ! -d $ROOT/dist ]] || [[ -n $(find "$ROOT/src" -name '*.ts' -newer "$ROOT/dist" -print -quit 2>/dev/null) ]]; then
    say "building dist/ (npx tsc -p .)"
    (cd "$ROOT" && npx tsc -p . && touch dist) >&2 || return 1
  fi
}

daemon_available() {
  build_dist || [[ -f $ROOT/dist/daemon/daemon.js ]] || { DAEMON_MISSING="tsc failed"; return 1; }
  [[ -f $ROOT/dist/cli/main.js ]] || { DAEMON_MISSING="no dist/cli/main.js"; return 1; }
  [[ -f $ROOT/dist/daemon/daemon.js ]] || { DAEMON_MISSING="no dist/daemon/daemon.js"; return 1; }
}

node_prof_args() {
  [[ -n $CPU_PROF ]] || return 0
  mkdir -p "$CPU_PROF"
  printf '%s\n' --cpu-prof --cpu-prof-dir "$CPU_PROF"
}

daemon_start() {
  local node_args
  mkdir -p "$DMNT"; MOUNTS+=("$DMNT")
  mapfile -t node_args < <(node_prof_args)
  node "${node_args[@]}" "$ROOT/dist/cli/main.js" daemon --state-dir "$STATE" --mount "$DMNT" --log-level warn --allow-unencrypted \
    >"$WORK/daemon.log" 2>&1 &
  DAEMON_PID=$!; DAEMON_PIDS+=("$DAEMON_PID")
  for _ in $(seq 150); do
    [[ -S $STATE/ebsd.sock ]] && break
    kill -0 "$DAEMON_PID" 2>/dev/null || { tail -20 "$WORK/daemon.log" >&2; die "daemon exited"; }
    sleep 0.1
  done
  [[ -S $STATE/ebsd.sock ]] || { tail -20 "$WORK/daemon.log" >&2; die "daemon did not open its control socket"; }
  say "daemon: pid $DAEMON_PID (--allow-unencrypted), mount $DMNT"
}

# daemon_attach TARGET: create and attach TARGET's volume on the one daemon.
daemon_attach() {
  local t=$1 extra=() id
  [[ $t == plaintext ]] && extra=(--cipher none)
  id=$(ebsd --output text volume create --size "${SIZE_MIB}MiB" --name "fio-$t" "${extra[@]}" 2>"$WORK/create-$t.err") \
    || { cat "$WORK/create-$t.err" >&2; die "volume create ($t) failed"; }
  [[ $id =~ ^vol-[0-9a-f]{17}$ ]] || die "volume create ($t) printed '$id', not a volume id"
  ebsd --output json attach "$id" >"$WORK/attach-$t.json" 2>>"$WORK/create-$t.err" || { cat "$WORK/create-$t.err" >&2; die "attach $id ($t) failed"; }
  VOL[$t]=$id
  FILE[$t]=$DMNT/$id
  IMAGE[$t]=$STATE/volumes/$id.img
  [[ -e ${FILE[$t]} ]] || die "$t: ${FILE[$t]} did not appear"
  # The daemon must say which is which: plaintext marked unencrypted, encrypted not.
  if [[ $t == plaintext ]]; then
    grep -q '"Unencrypted": *true' "$WORK/attach-$t.json" || die "plaintext: attach did not report an unencrypted volume"
    grep -q 'WARNING: UNENCRYPTED' "$WORK/create-$t.err" || die "plaintext: create printed no UNENCRYPTED warning"
  else
    grep -q '"Encrypted": *true' "$WORK/attach-$t.json" || die "encrypted: attach did not report an encrypted volume"
  fi
  ebsd --output json volume describe "$id" | grep -q "\"Encrypted\": *$([[ $t == plaintext ]] && echo false || echo true)" \
    || die "$t: DescribeVolumes does not say Encrypted=$([[ $t == plaintext ]] && echo false || echo true)"
  say "$t: ${FILE[$t]}$([[ $t == plaintext ]] && echo ' (UNENCRYPTED, --cipher none)')"
}

harness_start() {
  build_dist || [[ -f $ROOT/dist/fuse/index.js ]] || die "tsc failed and there is no dist/ to fall back on"
  mkdir -p "$STATE" "$DMNT"; MOUNTS+=("$DMNT")
  local node_args out=$WORK/harness.out; mapfile -t node_args < <(node_prof_args)
  node "${node_args[@]}" "$HERE/fio-harness.mjs" --mount "$DMNT" --dir "$STATE" --size "${SIZE_MIB}MiB" \
    >"$out" 2>"$WORK/daemon.log" &
  DAEMON_PID=$!; DAEMON_PIDS+=("$DAEMON_PID")
  for _ in $(seq 150); do
    grep -q '^ready ' "$out" 2>/dev/null && break
    kill -0 "$DAEMON_PID" 2>/dev/null || { tail -20 "$WORK/daemon.log" >&2; die "harness exited"; }
    sleep 0.1
  done
  local _r enc plain encimg plainimg _e
  read -r _r enc plain encimg plainimg _e <"$out" || die "harness did not become ready"
  FILE[encrypted]=$enc; FILE[plaintext]=$plain; IMAGE[encrypted]=$encimg; IMAGE[plaintext]=$plainimg
  VOL[encrypted]=$(basename "$enc"); VOL[plaintext]=$(basename "$plain")
  say "harness: pid $DAEMON_PID ($_e), encrypted ${FILE[encrypted]}, plaintext ${FILE[plaintext]}"
}

daemon_stop() {
  local t pid
  if [[ $VIA == daemon ]]; then
    for t in "${!VOL[@]}"; do ebsd detach --force "${VOL[$t]}" >/dev/null 2>&1; done
  fi
  for pid in "${DAEMON_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${DAEMON_PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then say "server $pid did not exit on SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null; fi
  done
}

# The image of an encrypted volume must not hold the plaintext; a passthrough one must.
daemon_check_image() {
  local t=$1 img=${IMAGE[$1]-} marker
  [[ -n $img && -f $img ]] || die "$t: cannot find the image of ${VOL[$t]} ($img)"
  marker="ebsd-fio-marker-$$-$RANDOM"
  yes "$marker" | head -c 1048576 >"$WORK/marker" || true
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
    printf '{"via":"%s","oneDaemon":%s,"commit":"%s","volumes":{"encrypted":"%s","plaintext":"%s"},"uvThreadpoolSize":"%s"}' \
      "$VIA" "$([[ $VIA == daemon ]] && echo true || echo false)" "$(git -C "$ROOT" rev-parse --short HEAD)" "${VOL[encrypted]-}" "${VOL[plaintext]-}" "${UV_THREADPOOL_SIZE:-default}"
  else
    printf 'null'
  fi
}

# ------------------------------------------------------------- correctness ---
# 1. Fill the whole working set once (pre-conditioning: no timed read lands on a
#    never-written sector, which an encrypted volume would answer without decrypting).
# 2. fio verify: 1 MiB sequential and 4 KiB random writes, read back checking a
#    crc32c and header (offset, block number) in every block.
# 3. An unaligned 10000-byte buffered write at byte 12345 (partial first and last
#    sector: the read-modify-write path), read back with O_DIRECT.
verify_target() {
  local t=$1 f=${FILE[$1]}
  say "verify $t: fill ${SIZE_MIB} MiB, fio verify (seq 1 MiB, rand 4 KiB), unaligned read-modify-write"
  fio --name=fill --filename="$f" --size="${SIZE_MIB}m" --rw=write --bs=1m --ioengine=libaio \
      --direct=1 --iodepth=8 --output="$WORK/fill-$t.log" || { cat "$WORK/fill-$t.log" >&2; die "$t: fill failed"; }
  fio --name=seq --filename="$f" --size=16m --offset=16m --rw=write --bs=1m --ioengine=libaio \
      --direct=1 --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
      --output="$WORK/verify-$t-seq.log" || { cat "$WORK/verify-$t-seq.log" >&2; die "$t: sequential verify failed"; }
  fio --name=rand --filename="$f" --size=8m --offset=40m --rw=randwrite --bs=4k --ioengine=libaio \
      --direct=1 --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
      --output="$WORK/verify-$t-rand.log" || { cat "$WORK/verify-$t-rand.log" >&2; die "$t: random verify failed"; }
  head -c 10000 /dev/urandom >"$WORK/odd"
  dd if="$WORK/odd" of="$f" bs=10000 count=1 seek=12345 oflag=seek_bytes conv=notrunc,fsync status=none \
    || die "$t: unaligned write failed"
  cmp -s -n 10000 "$WORK/odd" <(dd if="$f" bs=24576 count=1 skip=8192 iflag=direct,skip_bytes status=none) 0 $((12345 - 8192)) \
    || die "$t: unaligned write did not read back"
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
# "steal total" jiffies of all CPUs (/proc/stat): steal is time the hypervisor ran
# something else while one of our vCPUs wanted to run.
cpu_ticks() { awk '/^cpu / { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat; }
# steal_pct "S0 T0" "S1 T1": steal as a percentage of all CPU time in between.
steal_pct() { echo "$1 $2" | awk '{ d = $4 - $2; p = 0; if (d > 0) p = 100 * ($3 - $1) / d; printf "%.1f", p }'; }

# fio_job TARGET WORKLOAD RAMP [fio options...]: one job file on TARGET's file. It
# starts with no dirty pages left by the previous run (a write run leaves GBs to
# write back, which would throttle whichever target runs next).
fio_job() {
  local t=$1 w=$2 ramp=$3
  shift 3
  sync
  FIO_FILE=${FILE[$t]} FIO_SIZE=${SIZE_MIB}m FIO_RUNTIME=$RUNTIME FIO_RAMP=$ramp \
    fio "$@" "$HERE/fio/$w.fio"
}

run_workload() {
  local t=$1 w=$2 r=$3 out=$RESULTS/$1--$2--r$3.json before
  before=$(cpu_ticks)
  fio_job "$t" "$w" "$RAMP" --output-format=json --output="$out" || die "fio $w on $t failed"
  steal_pct "$before" "$(cpu_ticks)" >"${out%.json}.steal"
  node "$HERE/fio-report.mjs" --one "$out" >&2
}

T0=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
cd "$WORK" # fio drops state files in its working directory
ACTIVE=()
for t in encrypted plaintext ceiling raw; do has_target "$t" && ACTIVE+=("$t"); done

if has_target encrypted || has_target plaintext; then
  if [[ $VIA == auto ]]; then
    if daemon_available; then VIA=daemon; else VIA=harness; say "daemon not available ($DAEMON_MISSING): using the data-path harness"; fi
  fi
  if [[ $VIA == daemon ]]; then
    daemon_available || die "daemon not available: $DAEMON_MISSING"
    daemon_start
    has_target encrypted && daemon_attach encrypted
    has_target plaintext && daemon_attach plaintext
  else
    harness_start
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
say "correctness checks passed ($((SECONDS - T0)) s); timing ${#WORKLOADS[@]} workloads x ${#ACTIVE[@]} targets x $ROUNDS round(s), ${RUNTIME}s each (+${RAMP}s ramp)"

# Full mode warms up first, unrecorded: in one run the first timed workload after
# the 4 GiB of fills ran at half speed for every target (seq write, round 1: 451 /
# 634 / 863 MB/s encrypted / plaintext / ceiling against 1000-1300 in the rounds
# after it).
if ((WARMUP)); then
  say "warm-up (not recorded): ${WORKLOADS[0]}, ${RUNTIME}s on each target"
  for t in "${ACTIVE[@]}"; do
    fio_job "$t" "${WORKLOADS[0]}" 0 --output=/dev/null || die "warm-up fio ${WORKLOADS[0]} on $t failed"
  done
fi

# Workload-major order: the targets of one workload run back to back, so a drift
# of the machine moves all of them together and each round gives one ratio per
# pair (fio-report.mjs reports the median of those). The target that starts a
# workload rotates from round to round, so no target is always first after the
# previous workload's writes or always last.
N=${#ACTIVE[@]}
TICKS_START=$(cpu_ticks)
for r in $(seq "$ROUNDS"); do
  for w in "${WORKLOADS[@]}"; do
    for i in $(seq 0 $((N - 1))); do run_workload "${ACTIVE[$(((i + r - 1) % N))]}" "$w" "$r"; done
  done
done

META=$WORK/meta.json
cat >"$META" <<EOF
{
  "mode": "$MODE",
  "sizeMiB": $SIZE_MIB,
  "runtimeSec": $RUNTIME,
  "rampSec": $RAMP,
  "rounds": $ROUNDS,
  "targets": "$(IFS=,; echo "${ACTIVE[*]}")",
  "backingFs": "$(df --output=source,fstype "$WORK" | tail -1 | tr -s ' ')",
  "fio": "$(fio --version)",
  "kernel": "$(uname -r)",
  "cpus": $(nproc),
  "cpuModel": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//; s/"/\\"/g')",
  "daemon": $(daemon_describe),
  "loadAvgStart": "$LOAD_START",
  "loadAvgEnd": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "stealPct": $(steal_pct "$TICKS_START" "$(cpu_ticks)"),
  "elapsedSec": $((SECONDS - T0))
}
EOF

REPORT_ARGS=(--results "$RESULTS" --meta "$META")
if ((PUBLISH)); then
  REPORT_ARGS+=(--json "$ROOT/docs/bench/fio-latest.json" --svg "$ROOT/docs/bench/fio.svg" --markdown "$ROOT/docs/benchmarks.md")
fi
node "$HERE/fio-report.mjs" "${REPORT_ARGS[@]}"
say "done in $((SECONDS - T0)) s"
