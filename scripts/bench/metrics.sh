#!/usr/bin/env bash
# What Prometheus metrics cost the data path (issue 18): fio 4 KiB random read
# IOPS (scripts/bench/fio/rand-read.fio) on an encrypted volume of a daemon
# started WITHOUT --metrics-listen and of one started WITH it, in the same run,
# on the same backing filesystem, rounds interleaved (off,on / on,off / ...).
#
#   scripts/bench/metrics.sh [--quick] [--rounds N] [--no-publish] [--control]
#
# Before timing: both volumes pass a fio crc32c verify, and the metrics daemon's
# /metrics must count at least the reads fio did (else "on" measured nothing).
# Figure: median over rounds of the per-round ratio on/off; written to the
# `## Metrics overhead` section of docs/benchmarks.md (between <!-- metrics:begin -->
# and <!-- metrics:end -->) unless --no-publish. The goal is >= 0.97.
# Full: 256 MiB, 6 rounds of 3 s (+1 s ramp). --quick: 64 MiB, 2 rounds of 1 s.
# --control: an A/A run, both daemons WITHOUT metrics (the noise floor of the
#   method on this machine); never published.
# Needs root (FUSE), fio, node, curl. Cleans up daemons, mounts, temp dirs on any exit.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

SIZE_MIB=256; RUNTIME=3; RAMP=1; ROUNDS=6; PUBLISH=1; CONTROL=0
while (($#)); do
  case $1 in
    --quick) SIZE_MIB=64; RUNTIME=1; RAMP=0; ROUNDS=2 ;;
    --rounds) ROUNDS=$2; shift ;;
    --no-publish) PUBLISH=0 ;;
    --control) CONTROL=1; PUBLISH=0 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "metrics.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
say() { printf '[metrics.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (FUSE mounts)"
for c in fio node curl; do command -v $c >/dev/null || die "$c is not installed"; done
[[ -f dist/cli/main.js && -z $(find src -newer dist/cli/main.js -name '*.ts' -print -quit) ]] || npx tsc -p .

WORK=$(mktemp -d "${TMPDIR_BENCH:-/var/tmp}/ebsd-bench-metrics-XXXXXX")
declare -A PID=()
cleanup() {
  for k in "${!PID[@]}"; do kill -TERM "${PID[$k]}" 2>/dev/null || true; done
  for k in "${!PID[@]}"; do for _ in $(seq 100); do kill -0 "${PID[$k]}" 2>/dev/null || break; sleep 0.1; done; done
  for m in "$WORK"/mnt-*; do [[ -d $m ]] && fusermount -uz "$m" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# start NAME [daemon flags...]: a daemon on its own state dir and mount; waits for ready.
start() {
  local name=$1; shift
  node dist/cli/main.js daemon --state-dir "$WORK/state-$name" --mount "$WORK/mnt-$name" --log-level info --log-format json "$@" \
    >"$WORK/$name.log" 2>&1 &
  PID[$name]=$!
  for _ in $(seq 300); do grep -q '"ebsd daemon ready"' "$WORK/$name.log" && return 0; kill -0 "${PID[$name]}" || break; sleep 0.1; done
  die "daemon $name did not start: $(cat "$WORK/$name.log")"
}
ebsd() { local name=$1; shift; EBSD_STATE_DIR="$WORK/state-$name" node dist/cli/main.js "$@"; }

start off
if ((CONTROL)); then start on; else
  start on --metrics-listen 127.0.0.1:0
  URL=$(grep -o '"metrics":"http://[^"]*"' "$WORK/on.log" | head -1 | cut -d'"' -f4)
  [[ -n $URL ]] || die "no metrics address in the log"
fi
declare -A FILE=()
for t in off on; do
  vol=$(ebsd $t volume create --size "${SIZE_MIB}MiB" --output text)
  ebsd $t attach "$vol" --output json >/dev/null
  FILE[$t]="$WORK/mnt-$t/$vol"
  say "$t: $vol; fill ${SIZE_MIB} MiB, then fio crc32c verify"
  fio --name=fill --filename="${FILE[$t]}" --size="${SIZE_MIB}m" --rw=write --bs=1m --ioengine=libaio --direct=1 --iodepth=4 --output=/dev/null
  fio --name=verify --filename="${FILE[$t]}" --size=8m --rw=randwrite --bs=4k --ioengine=libaio --direct=1 --iodepth=8 \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --output=/dev/null || die "fio verify on $t"
done
VOL_ON=$(basename "${FILE[on]}")

# randread T OUT: one timed rand-read run on T; prints its IOPS.
randread() {
  FIO_FILE=${FILE[$1]} FIO_SIZE=${SIZE_MIB}m FIO_RUNTIME=$RUNTIME FIO_RAMP=$RAMP \
    fio --output-format=json --output="$2" "$HERE/fio/rand-read.fio" || die "fio rand-read on $1"
  node -e 'const j=require(process.argv[1]); process.stdout.write(String(Math.round(j.jobs[0].read.iops)))' "$2"
}
reads_counted() {
  curl -sf "$URL" | awk -v v="$VOL_ON" '$0 ~ "^ebsd_volume_operations_total\\{volume_id=\"" v "\",operation=\"read\"\\}" {print $2}'
}

say "warm-up (not recorded): one rand-read run on each"
for t in off on; do randread $t "$WORK/warm-$t.json" >/dev/null; done

RATIOS=(); OFFS=(); ONS=()
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order=(off on); else order=(on off); fi
  declare -A IOPS=()
  for t in "${order[@]}"; do
    before=$( [[ $t == on ]] && ((!CONTROL)) && reads_counted || echo 0 )
    IOPS[$t]=$(randread $t "$WORK/r$r-$t.json")
    if [[ $t == on ]] && ((!CONTROL)); then
      after=$(reads_counted)
      ios=$(node -e 'const j=require(process.argv[1]); process.stdout.write(String(j.jobs[0].read.total_ios))' "$WORK/r$r-$t.json")
      # fio's total_ios excludes the ramp, so the counter must have moved by at least that much.
      node -e 'process.exit(Number(process.argv[2]) - Number(process.argv[1]) >= Number(process.argv[3]) ? 0 : 1)' "$before" "$after" "$ios" \
        || die "metrics counted $((${after%.*} - ${before%.*})) reads, fio did $ios: metrics are not on"
    fi
  done
  ratio=$(node -e 'process.stdout.write((Number(process.argv[2]) / Number(process.argv[1])).toFixed(3))' "${IOPS[off]}" "${IOPS[on]}")
  say "round $r (${order[*]}): off ${IOPS[off]} IOPS, on ${IOPS[on]} IOPS, on/off $ratio"
  RATIOS+=("$ratio"); OFFS+=("${IOPS[off]}"); ONS+=("${IOPS[on]}")
  unset IOPS
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
M_RATIO=$(median "${RATIOS[@]}"); M_OFF=$(median "${OFFS[@]}"); M_ON=$(median "${ONS[@]}")
RANGE="$(printf '%s\n' "${RATIOS[@]}" | sort -g | head -1)-$(printf '%s\n' "${RATIOS[@]}" | sort -g | tail -1)"
# The verdict names the per-round range: a range wider than the effect means the machine was too noisy to judge.
VERDICT=$(node -e 'process.stdout.write((Number(process.argv[1]) >= 0.97 ? ">= 0.97" : "BELOW 0.97") + " (per-round range " + process.argv[2] + ")")' "$M_RATIO" "$RANGE")
TABLE="| round | metrics off (IOPS) | metrics on (IOPS) | on/off |
|---|---|---|---|"
for ((i = 0; i < ROUNDS; i++)); do TABLE+=$'\n'"| $((i + 1)) | ${OFFS[$i]} | ${ONS[$i]} | ${RATIOS[$i]} |"; done
TABLE+=$'\n'"| **median** | **$M_OFF** | **$M_ON** | **$M_RATIO** |"
printf '%s\n\non/off median %s: %s\n' "$TABLE" "$M_RATIO" "$VERDICT"

if ((PUBLISH)); then
  SECTION="<!-- metrics:begin -->
Measured $(date -u +%Y-%m-%dT%H:%MZ) by \`scripts/bench/metrics.sh\` ($(nproc) CPUs, $(fio --version), node $(node --version)):
fio 4 KiB random read (\`scripts/bench/fio/rand-read.fio\`, 4 jobs x QD 32, O_DIRECT) on a
${SIZE_MIB} MiB encrypted volume, a daemon without \`--metrics-listen\` beside one with it,
${ROUNDS} interleaved rounds of ${RUNTIME} s. Median on/off **${M_RATIO}**: ${VERDICT}.

${TABLE}
<!-- metrics:end -->"
  node -e '
    const fs = require("fs"); const [file, section] = process.argv.slice(1);
    let md = fs.readFileSync(file, "utf8");
    const re = /<!-- metrics:begin -->[\s\S]*<!-- metrics:end -->/;
    md = re.test(md) ? md.replace(re, section) : md.trimEnd() + "\n\n## Metrics overhead\n\n" + section + "\n";
    fs.writeFileSync(file, md);' docs/benchmarks.md "$SECTION"
  say "wrote docs/benchmarks.md (## Metrics overhead)"
fi
