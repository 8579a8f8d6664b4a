"""Writes 4 KiB stamps to a volume file, one at a time, until SIGTERM.

Usage: stamp-writer.py FILE SECTORS SEED LOG

Write number `seq` goes to a random 4 KiB sector `s` in [0, SECTORS) and
fills it with the 16-byte record (seq, s) (little-endian u64 each) repeated
256 times, through O_DIRECT, so a write that returned has been answered by
the daemon. LOG gets one line per write: `seq sector t_issue t_ack`, the
times from CLOCK_MONOTONIC in ns (the clock Node's process.hrtime reads), so
the test can order them against its own request. Prints `ready` on stdout
after the first 100 writes, and `wrote N` every 100 writes.
"""
import mmap
import os
import random
import signal
import struct
import sys
import time

path, sectors, seed, log_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
stop = False


def on_term(_sig, _frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
rnd = random.Random(seed)
lines = []
seq = 0
while not stop:
    seq += 1
    s = rnd.randrange(sectors)
    buf.seek(0)
    buf.write(struct.pack('<QQ', seq, s) * 256)
    t0 = time.monotonic_ns()
    os.pwrite(fd, buf, s * 4096)
    t1 = time.monotonic_ns()
    lines.append(f'{seq} {s} {t0} {t1}\n')
    if seq == 100:
        print('ready', flush=True)
    if seq % 100 == 0:
        print(f'wrote {seq}', flush=True)
os.close(fd)
with open(log_path, 'w') as f:
    f.writelines(lines)
print('done', flush=True)
