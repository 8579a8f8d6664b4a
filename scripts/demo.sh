#!/usr/bin/env bash
# The journey of docs/architecture.md §1, end to end, in a throwaway state dir and mount.
# Run by `npm run demo` (after scripts/setup.sh built dist/). Needs root
# (FUSE, losetup, mount). Everything is cleaned up on exit, even on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EBSD=(node "$ROOT/dist/cli/main.js")
WORK="$(mktemp -d /tmp/ebsd-demo.XXXXXX)"
chmod 755 "$WORK"
export EBSD_STATE_DIR="$WORK/state"
MNT="$WORK/mnt"
FS="$WORK/fs"
LOG="$WORK/daemon.log"
DAEMON_PID=""
LOOP=""

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say()  { printf '   $ %s\n' "$*"; }
ebsd() { say "ebsd $*"; "${EBSD[@]}" "$@"; }

cleanup() {
  local rc=$?
  set +e
  bold "cleaning up"
  mountpoint -q "$FS" 2>/dev/null && umount "$FS"
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -TERM "$DAEMON_PID"
    for _ in $(seq 50); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$DAEMON_PID" 2>/dev/null && kill -KILL "$DAEMON_PID"
  fi
  mountpoint -q "$MNT" 2>/dev/null && fusermount -uz "$MNT"
  if [ $rc -ne 0 ]; then
    echo "   demo FAILED (exit $rc); last daemon log lines:"
    tail -n 15 "$LOG" 2>/dev/null | sed 's/^/   | /'
  fi
  rm -rf "$WORK"
  echo "   removed $WORK"
  exit $rc
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "the demo needs root (FUSE mount, losetup, mount)"; exit 1; }
[ -f "$ROOT/dist/cli/main.js" ] || { echo "dist/ is missing: run bash scripts/setup.sh first"; exit 1; }

bold "1. start the daemon (state $EBSD_STATE_DIR, mount $MNT; JSON logs go to $LOG)"
say "ebsd daemon --state-dir $EBSD_STATE_DIR --mount $MNT &"
"${EBSD[@]}" daemon --state-dir "$EBSD_STATE_DIR" --mount "$MNT" > "$LOG" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do grep -q '"ebsd daemon ready"' "$LOG" 2>/dev/null && break; kill -0 "$DAEMON_PID" || { cat "$LOG"; exit 1; }; sleep 0.1; done
grep -q '"ebsd daemon ready"' "$LOG" || { echo "daemon did not become ready"; cat "$LOG"; exit 1; }
echo "   daemon pid $DAEMON_PID is ready"

bold "2. a customer managed KMS key with an alias"
KEY_ARN=$(ebsd kms create-key --description "app data" --alias alias/app --query KeyMetadata.Arn --output text)
echo "   key: $KEY_ARN"

bold "3. an encrypted 256 MiB volume under that key"
ebsd volume create --size 256MiB --kms-key alias/app --name data --output table
VOL=$("${EBSD[@]}" volume ls --name data --query 'Volumes[0].VolumeId' --output text)

bold "4. attach: the key is unwrapped through a grant, the block file appears"
ebsd attach "$VOL" --output table
ls -l "$MNT"

bold "5. use it as a disk: losetup + mkfs.ext4 + mount"
say "losetup -f --show $MNT/$VOL"
LOOP=$(losetup -f --show "$MNT/$VOL"); echo "   $LOOP"
say "mkfs.ext4 -q $LOOP"; mkfs.ext4 -q "$LOOP"
mkdir -p "$FS"; say "mount $LOOP $FS"; mount "$LOOP" "$FS"

bold "6. write and read files"
echo "hello from an encrypted EBS-style volume" > "$FS/hello.txt"
head -c 8M /dev/urandom > "$FS/random.bin"
sync
cat "$FS/hello.txt"
sha256sum "$FS/random.bin" | sed 's/^/   /'
df -h "$FS" | sed 's/^/   /'

bold "7. a short fio run on the filesystem (4 KiB random read/write, O_DIRECT, libaio)"
say "fio --direct=1 --ioengine=libaio --rw=randrw --bs=4k --size=32m --runtime=5"
fio --name=demo --directory="$FS" --direct=1 --ioengine=libaio --rw=randrw --bs=4k --size=32m \
    --iodepth=16 --runtime=5 --time_based --group_reporting --output-format=terse --terse-version=3 \
  | awk -F';' '{ printf "   read: %d IOPS, %.1f MiB/s   write: %d IOPS, %.1f MiB/s\n", $8, $7/1024, $49, $48/1024 }'

bold "8. the key never sits on disk in plaintext: the image holds only ciphertext"
if grep -q "hello from an encrypted" "$EBSD_STATE_DIR/volumes/$VOL.img"; then echo "   PLAINTEXT FOUND IN IMAGE"; exit 1; else echo "   no plaintext of hello.txt in $VOL.img"; fi

bold "9. status while attached, then unmount and detach"
ebsd status --output table
ebsd detach "$VOL" || echo "   (refused while the loop device holds the file open, as designed)"
say "umount $FS && losetup -d $LOOP"
umount "$FS"; losetup -d "$LOOP"; LOOP=""
sleep 0.3
ebsd detach "$VOL" --output table

bold "10. the audit trail: who used which key, when, for what"
ebsd audit tail -n 15 --output table
ebsd audit verify --output table

bold "11. stop the daemon (SIGTERM: drain, fdatasync, wipe keys, unmount)"
kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || true
echo "   daemon exited"; DAEMON_PID=""

bold "demo complete"
