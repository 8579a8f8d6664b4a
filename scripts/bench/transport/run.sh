#!/usr/bin/env bash
# The transport ceiling study (issue 19, docs/perf-notes.md §9): what a FUSE
# server on this kernel can reach beyond fuse-native. A benchmark, not product.
#
#   scripts/bench/transport/run.sh [--rounds N] [--runtime S] [--size MiB]
#                                  [--targets LIST] [--out DIR] [--keep]
#                                  [--backing-mode buffered|direct] [--fill-bs SIZE]
#
# Six targets, measured in ONE run, interleaved:
#   raw           the raw file on the work dir's filesystem, no FUSE
#   fuse-native   scripts/bench/noop-fuse.mjs: the no-op fuse-native ceiling (libfuse 2.9)
#   c-classic     transport-fuse --mode classic: no-op, 4 threads on cloned /dev/fuse fds
#   c-uring       transport-fuse --mode uring: no-op, FUSE over io_uring, a queue per CPU
#   c-classic-xts c-classic doing the volume's work: AES-256-XTS + pread/pwrite of a backing file
#   c-uring-xts   c-uring doing the same
# and, on request (--targets), c-uring-nopin: c-uring with its queue threads not
# pinned to their CPUs.
# with the six fio workloads of scripts/bench/fio.sh (scripts/bench/fio/*.fio).
# Workload-major: the targets of one workload run back to back, the first one
# rotating per round, so machine drift (seven other engineers share the two
# cores) moves them together; ratios are medians of per-round ratios.
#
# Before timing: every target is filled once (no read lands on a hole); no-op
# targets must accept an O_DIRECT write and read back zeros; XTS targets must
# pass fio verify (crc32c, 4 KiB random) and read back a marker that their
# backing file must NOT hold in plaintext.
#
# CPU per I/O = (fio's usr+sys CPU + the server's utime+stime over the run,
# from /proc/PID/stat) / I/Os. The kernel's FUSE work runs in those two
# processes (fio's submission, the server's read/writev or io_uring task work);
# kworkers are not counted.
#
# The io_uring targets need /sys/module/fuse/parameters/enable_uring = Y at
# their mount; the script sets it and restores the old value on any exit. The
# switch only offers FUSE_OVER_IO_URING at INIT: servers that do not answer
# with it (libfuse 2.9, fuse-native, the daemon) stay on read/write. If an
# io_uring server cannot start, its stderr says the step and errno, and the
# run goes on without it.
#
# Writes results to --out (default: a temp dir, removed unless --keep) and
# prints the report (scripts/bench/transport/report.mjs) on stdout. Default:
# 3 rounds x 6 workloads x 6 targets x 2 s, 1 GiB: about 8 minutes.
# --backing-mode: how the XTS targets open their backing file: buffered (default,
# the page cache, as the daemon opens volume images) or direct (O_DIRECT, the same
# path to the disk as the raw target).
# --fill-bs: the request size of the fill that precedes timing (default 1m). On ext4
# with large folios a later 4 KiB buffered write into the XTS targets' image costs in
# proportion to the folio the fill left (docs/perf-notes.md §8); 4k fills in small ones.
# Needs root, fio, node, a C compiler, libgcrypt headers, /dev/fuse.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
ROUNDS=3
RUNTIME=2
SIZE_MIB=1024
TARGETS=raw,fuse-native,c-classic,c-uring,c-classic-xts,c-uring-xts
OUT=
KEEP=0
BACKING_MODE=buffered
FILL_BS=1m
while (($#)); do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --runtime) RUNTIME=$2; shift ;;
    --size) SIZE_MIB=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --keep) KEEP=1 ;;
    --backing-mode) BACKING_MODE=$2; shift ;;
    --fill-bs) FILL_BS=$2; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
WORKLOADS=(seq-write seq-read rand-read rand-write rand-rw lat-read)
URING_PARAM=/sys/module/fuse/parameters/enable_uring

say() { printf '[transport %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds wants a whole number >= 1"
[[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "--runtime wants whole seconds >= 1"
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || die "--size wants MiB"
[[ $BACKING_MODE == buffered || $BACKING_MODE == direct ]] || die "--backing-mode is buffered or direct"
[[ $(id -u) -eq 0 ]] || die "run as root (FUSE mounts, $URING_PARAM)"
command -v fio >/dev/null || die "fio is not installed"
[[ -c /dev/fuse ]] || die "/dev/fuse is missing"

WORK=$(mktemp -d "${TMPDIR_BENCH:-/var/tmp}/ebsd-transport.XXXXXX")
[[ -n $OUT ]] || { OUT=$WORK/out; }
mkdir -p "$OUT/results"
declare -A FILE=() PID=() BACKING=()
MOUNTS=()
URING_OLD=

cleanup() {
  local rc=$? t p
  trap - EXIT INT TERM
  set +eu
  for t in "${!PID[@]}"; do kill -TERM "${PID[$t]}" 2>/dev/null; done
  for t in "${!PID[@]}"; do
    p=${PID[$t]}
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  for m in "${MOUNTS[@]}"; do
    grep -qs " $m " /proc/mounts && { fusermount -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; }
  done
  if [[ -n $URING_OLD ]]; then
    echo "$URING_OLD" >"$URING_PARAM" && say "enable_uring restored to $URING_OLD"
  fi
  if ((KEEP)); then say "kept $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

has_target() { [[ ,$TARGETS, == *,$1,* ]]; }

# ------------------------------------------------------------------ build ---
make -s -C "$HERE" >&2 || die "building transport-fuse failed"
SERVER=$HERE/build/transport-fuse
if has_target fuse-native && [[ ! -f $ROOT/dist/fuse/mount-options.js ]]; then
  say "building dist/ for noop-fuse.mjs (npx tsc -p .)"
  (cd "$ROOT" && npx tsc -p .) >&2 || die "tsc failed"
fi
if has_target c-uring || has_target c-uring-nopin || has_target c-uring-xts; then
  [[ -w $URING_PARAM ]] || die "$URING_PARAM is missing or not writable (kernel without CONFIG_FUSE_IO_URING)"
  URING_OLD=$(cat "$URING_PARAM")
  echo Y >"$URING_PARAM"
  say "enable_uring: $URING_OLD -> $(cat "$URING_PARAM") for this run"
fi

# ---------------------------------------------------------------- targets ---
# wait_ready NAME OUTFILE ERRFILE: the file path the server printed, or fail.
wait_ready() {
  local t=$1 out=$2 err=$3
  for _ in $(seq 200); do
    grep -q '^ready ' "$out" 2>/dev/null && { sed -n 's/^ready //p' "$out"; return 0; }
    kill -0 "${PID[$t]}" 2>/dev/null || break
    sleep 0.05
  done
  say "$t did not become ready:"; sed 's/^/    /' "$err" >&2
  return 1
}

start_target() {
  local t=$1 mnt=$WORK/mnt-$1 out=$WORK/$1.out err=$WORK/$1.err args=()
  case $t in
    raw) FILE[raw]=$WORK/raw.img; truncate -s "${SIZE_MIB}M" "${FILE[raw]}"; return 0 ;;
    fuse-native)
      mkdir -p "$mnt"; MOUNTS+=("$mnt")
      node "$ROOT/scripts/bench/noop-fuse.mjs" --mount "$mnt" --size "${SIZE_MIB}MiB" --name vol-noop >"$out" 2>"$err" &
      ;;
    c-*)
      mkdir -p "$mnt"; MOUNTS+=("$mnt")
      args=(--mount "$mnt" --size "${SIZE_MIB}M" --name vol-noop)
      # Classic XTS on an O_DIRECT file blocks a worker per disk I/O: 16 workers
      # (libfuse's multithreaded loop keeps up to 10 idle) so the disk sees a queue.
      if [[ $t == c-uring-nopin ]]; then args+=(--mode uring --no-pin)
      elif [[ $t == c-uring* ]]; then args+=(--mode uring)
      elif [[ $t == c-classic-xts && $BACKING_MODE == direct ]]; then args+=(--mode classic --threads 16)
      else args+=(--mode classic --threads 4); fi
      if [[ $t == *-xts ]]; then
        BACKING[$t]=$WORK/$t-backing.img
        truncate -s "${SIZE_MIB}M" "${BACKING[$t]}"
        args+=(--backing "${BACKING[$t]}")
        [[ $BACKING_MODE == direct ]] && args+=(--direct)
      fi
      "$SERVER" "${args[@]}" >"$out" 2>"$err" &
      ;;
  esac
  PID[$t]=$!
  FILE[$t]=$(wait_ready "$t" "$out" "$err") || { unset "PID[$t]"; return 1; }
  say "$t: ${FILE[$t]} (pid ${PID[$t]}) $(grep -m1 INIT "$err" 2>/dev/null | sed 's/^transport-fuse: //')"
}

ACTIVE=()
for t in raw fuse-native c-classic c-uring c-uring-nopin c-classic-xts c-uring-xts; do
  has_target "$t" || continue
  if start_target "$t"; then ACTIVE+=("$t"); else
    [[ $t == c-uring* ]] || die "$t could not start"
    echo "$t: $(grep -v '^transport-fuse: unmounted' "$WORK/$t.err" | tr '\n' ' ')" >>"$OUT/skipped.txt"
    say "$t skipped (see above); going on without it"
  fi
done
((${#ACTIVE[@]})) || die "no target started"

# ------------------------------------------------------------ correctness ---
fill() {
  fio --name=fill --filename="$1" --size="${SIZE_MIB}m" --rw=write --bs="$FILL_BS" --ioengine=libaio \
      --direct=1 --iodepth=8 --output="$WORK/fill.log" || { cat "$WORK/fill.log" >&2; die "fill of $1 failed"; }
}
for t in "${ACTIVE[@]}"; do
  f=${FILE[$t]}
  case $t in
    raw) fill "$f" ;;
    fuse-native|c-classic|c-uring|c-uring-nopin)
      head -c 1048576 /dev/urandom >"$WORK/pattern"
      dd if="$WORK/pattern" of="$f" bs=1M count=1 seek=3 oflag=direct conv=notrunc status=none || die "$t: O_DIRECT write failed"
      cmp -s <(dd if="$f" bs=1M count=1 skip=3 iflag=direct status=none) <(head -c 1048576 /dev/zero) \
        || die "$t: an O_DIRECT read did not return zeros"
      ;;
    *-xts)
      fill "$f"
      fio --name=verify --filename="$f" --size=8m --offset=40m --rw=randwrite --bs=4k --ioengine=libaio \
          --direct=1 --iodepth=16 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
          --output="$WORK/verify-$t.log" || { cat "$WORK/verify-$t.log" >&2; die "$t: fio verify failed"; }
      marker="ebsd-transport-marker-$$-$RANDOM"
      yes "$marker" | head -c 1048576 >"$WORK/marker" || true
      dd if="$WORK/marker" of="$f" bs=1M count=1 seek=5 oflag=direct conv=notrunc status=none || die "$t: marker write failed"
      cmp -s "$WORK/marker" <(dd if="$f" bs=1M count=1 skip=5 iflag=direct status=none) || die "$t: marker did not read back"
      grep -qa "$marker" "${BACKING[$t]}" && die "$t: the backing file holds the plaintext marker"
      ;;
  esac
  say "check $t: ok"
done

# ---------------------------------------------------------------- running ---
cpu_ticks() { awk '/^cpu / { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat; }
proc_ticks() { [[ -n ${PID[$1]-} ]] && awk '{ print $14 + $15 }' "/proc/${PID[$1]}/stat" || echo 0; }

fio_job() { # TARGET WORKLOAD OUTPUT
  sync
  FIO_FILE=${FILE[$1]} FIO_SIZE=${SIZE_MIB}m FIO_RUNTIME=$RUNTIME FIO_RAMP=0 \
    fio --output-format=json --output="$3" "$ROOT/scripts/bench/fio/$2.fio"
}

run_one() { # TARGET WORKLOAD ROUND
  local t=$1 w=$2 r=$3 out=$OUT/results/$1--$2--r$3.json p0 p1
  p0=$(proc_ticks "$t")
  fio_job "$t" "$w" "$out" || die "fio $w on $t failed"
  p1=$(proc_ticks "$t")
  echo "{\"serverTicks\": $((p1 - p0)), \"hz\": $(getconf CLK_TCK)}" >"${out%.json}.cpu"
  node "$HERE/report.mjs" --one "$out" >&2
}

say "warm-up (not recorded): seq-write, 1 s per target"
for t in "${ACTIVE[@]}"; do
  FIO_FILE=${FILE[$t]} FIO_SIZE=${SIZE_MIB}m FIO_RUNTIME=1 FIO_RAMP=0 fio --output=/dev/null "$ROOT/scripts/bench/fio/seq-write.fio" \
    || die "warm-up on $t failed"
done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
TICKS_START=$(cpu_ticks)
T0=$SECONDS
N=${#ACTIVE[@]}
say "timing ${#WORKLOADS[@]} workloads x $N targets x $ROUNDS rounds, ${RUNTIME} s each; load average $LOAD_START"
for r in $(seq "$ROUNDS"); do
  for w in "${WORKLOADS[@]}"; do
    for i in $(seq 0 $((N - 1))); do run_one "${ACTIVE[$(((i + r - 1) % N))]}" "$w" "$r"; done
  done
done

read -r s0 t0 <<<"$TICKS_START"; read -r s1 t1 <<<"$(cpu_ticks)"
cat >"$OUT/meta.json" <<EOF
{
  "rounds": $ROUNDS, "backingMode": "$BACKING_MODE", "fillBs": "$FILL_BS", "runtimeSec": $RUNTIME, "sizeMiB": $SIZE_MIB,
  "targets": "$(IFS=,; echo "${ACTIVE[*]}")",
  "skipped": "$( [[ -f $OUT/skipped.txt ]] && sed 's/"/\\"/g' "$OUT/skipped.txt" | tr '\n' ' ')",
  "kernel": "$(uname -r)", "cpus": $(nproc), "fio": "$(fio --version)",
  "cpuModel": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')",
  "backingFs": "$(df --output=source,fstype "$WORK" | tail -1 | tr -s ' ')",
  "loadAvgStart": "$LOAD_START", "loadAvgEnd": "$(cut -d' ' -f1-3 /proc/loadavg)",
  "stealPct": $(awk -v a="$s0" -v b="$s1" -v c="$t0" -v d="$t1" 'BEGIN { printf "%.1f", (d > c) ? 100 * (b - a) / (d - c) : 0 }'),
  "elapsedSec": $((SECONDS - T0))
}
EOF
# Stop the servers now, so their last words (requests served by each path) are in.
for t in "${!PID[@]}"; do kill -TERM "${PID[$t]}" 2>/dev/null || true; done
for t in "${!PID[@]}"; do
  for _ in $(seq 100); do kill -0 "${PID[$t]}" 2>/dev/null || break; sleep 0.05; done
  [[ -f $WORK/$t.err ]] && grep -h 'INIT\|served\|unmounted' "$WORK/$t.err" | sed "s/^/$t: /" >>"$OUT/servers.txt" || true
done
node "$HERE/report.mjs" --results "$OUT/results" --meta "$OUT/meta.json"
say "done in $((SECONDS - T0)) s of timing"
