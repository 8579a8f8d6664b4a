#!/usr/bin/env node
// Data-path harness for scripts/bench/fio.sh --harness: the daemon's own FUSE adapter
// (dist/fuse: FuseMount + BlockFileSystem) serving one EncryptedBlockDevice (native
// AES-256-XTS, a random throw-away key) and one PlainBlockDevice over sparse backing
// files laid out like LUKS2 images (data at 16 MiB), with no KMS, catalog or control
// socket. It isolates the FUSE -> volume -> backing-file path for timing and
// profiling (`node --cpu-prof scripts/bench/fio-harness.mjs ...`); the suite's
// headline figures come from the real daemon.
//
//   node scripts/bench/fio-harness.mjs --mount DIR --dir DIR [--size 1GiB] [--engine auto]
//        [--backing pool|sync] [--extra-opts direct_io,...] [--no-write-behind]
//
// Experiments (for docs/perf-notes.md, not for the suite's figures):
//   --backing sync     pread/pwrite with fs.readSync/writeSync on the main thread instead
//                      of the libuv pool (what a page-cache hit costs without the hop)
//   --no-write-behind  every write in the backing file before its reply (ebsd daemon --no-write-behind)
//   --extra-opts LIST  extra libfuse -o options on top of the daemon's (mounted through a
//                      fuse-native subclass here instead of src/fuse's FuseMount)
//   EBSD_DIST=DIR      (environment) serve with another build of dist/, e.g. an older commit's
//                      (`git worktree add /tmp/old <commit>`, build it there), so that
//                      fio-experiment.mjs can run old and new side by side in one session
//   EBSD_POLL_STATS=1  (environment) print the stream poller's outcomes and the sync-write
//                      watchdog's trips on exit
//
// Prints "ready <encrypted-file> <plaintext-file> <enc-image> <plain-image>" once mounted;
// unmounts and closes on SIGTERM/SIGINT.

import { parseArgs } from 'node:util'
import { randomBytes } from 'node:crypto'
import { openSync, closeSync, ftruncateSync, readSync, writeSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join, resolve, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
// EBSD_DIST: another build of dist/ (A/B runs of an older commit against this one).
const DIST = process.env.EBSD_DIST ? resolve(process.env.EBSD_DIST) : join(ROOT, 'dist')
const dist = p => import(join(DIST, p))

const { values: args } = parseArgs({
  options: {
    mount: { type: 'string' },
    dir: { type: 'string' },
    size: { type: 'string', default: '1GiB' },
    engine: { type: 'string', default: 'auto' },
    backing: { type: 'string', default: 'pool' },
    'extra-opts': { type: 'string', default: '' },
    'no-write-behind': { type: 'boolean', default: false }
  }
})
if (!args.mount || !args.dir) {
  process.stderr.write('usage: fio-harness.mjs --mount DIR --dir DIR [--size 1GiB] [--engine auto|native|node|reference]\n')
  process.exit(2)
}

const m = /^(\d+)(MiB|GiB)$/.exec(args.size)
if (!m) throw new RangeError(`size: expected NMiB or NGiB, got ${args.size}`)
const size = Number(m[1]) * (m[2] === 'GiB' ? 1024 ** 3 : 1024 ** 2)
const DATA_OFFSET = 16 * 1024 * 1024

const { FuseMount, BlockFileSystem } = await dist('fuse/index.js')
const { EncryptedBlockDevice } = await dist('volume/encrypted-block-device.js')
const { PlainBlockDevice } = await dist('volume/plain-block-device.js')
const { openBackingFile } = await dist('volume/backing-file.js')
const { selectXtsEngine } = await dist('crypto/xts-engine.js')
const { createLogger } = await dist('util/logger.js')

const log = createLogger({ level: process.env.LOG_LEVEL ?? 'warn' })

async function image (name) {
  const path = join(args.dir, name)
  const fd = openSync(path, 'w')
  ftruncateSync(fd, DATA_OFFSET + size)
  closeSync(fd)
  const backing = await openBackingFile(path)
  if (args.backing === 'sync') {
    // Same interface, no thread-pool hop: the call blocks the event loop for the pread/pwrite.
    backing.read = (buf, off, len, pos) => { try { return Promise.resolve(readSync(backing.fd, buf, off, len, pos)) } catch (e) { return Promise.reject(e) } }
    backing.write = (buf, off, len, pos) => { try { return Promise.resolve(writeSync(backing.fd, buf, off, len, pos)) } catch (e) { return Promise.reject(e) } }
  } else if (args.backing !== 'pool') {
    throw new RangeError(`backing: expected pool or sync, got ${args.backing}`)
  }
  return { path, backing }
}

const enc = await image('vol-0e0c0000000000001.img')
const plain = await image('vol-0b1a0000000000002.img')
let key
do key = randomBytes(64); while (key.subarray(0, 32).equals(key.subarray(32)))
const engine = selectXtsEngine(args.engine, log)
const xts = engine.createContext(key)
key.fill(0)

const devices = [
  new EncryptedBlockDevice({ volumeId: 'vol-0e0c0000000000001', size, backing: enc.backing, dataOffset: DATA_OFFSET, xts, logger: log }),
  new PlainBlockDevice({ volumeId: 'vol-0b1a0000000000002', size, backing: plain.backing, dataOffset: DATA_OFFSET, logger: log })
]
const fs = new BlockFileSystem({ logger: log, writeBehind: !args['no-write-behind'] })
for (const d of devices) fs.add(d)
let mount
if (args['extra-opts']) {
  // The daemon's options (src/fuse/mount-options.ts, from this tree's dist/ even under
  // EBSD_DIST, whose older builds may not have the module) plus the experiment's.
  const { EXTRA_MOUNT_OPTIONS, fuseNativeOptions, appendMountOptions } = await import(join(ROOT, 'dist', 'fuse', 'mount-options.js'))
  const Fuse = createRequire(import.meta.url)('fuse-native')
  const extra = [...EXTRA_MOUNT_OPTIONS, ...args['extra-opts'].split(',').filter(Boolean)]
  class ExperimentFuse extends Fuse {
    _fuseOptions () { return appendMountOptions(super._fuseOptions(), extra) }
  }
  const f = new ExperimentFuse(args.mount, fs.ops(), { ...fuseNativeOptions(process.getuid() === 0), mkdir: true, force: true })
  await new Promise((resolve, reject) => f.mount(e => (e ? reject(e) : resolve())))
  mount = { unmount: () => new Promise(resolve => f.unmount(() => resolve())) }
} else {
  mount = new FuseMount(args.mount, fs.ops(), { logger: log })
  await mount.mount()
}
process.stdout.write(`ready ${join(args.mount, devices[0].volumeId)} ${join(args.mount, devices[1].volumeId)} ${enc.path} ${plain.path} engine=${engine.name}\n`)

let closing = false
async function shutdown () {
  if (closing) return
  closing = true
  if (process.env.EBSD_POLL_STATS) {
    const { streamPoller, STREAM_POLL_US, syncWriteGuard } = await dist('volume/native-io.js')
    process.stderr.write(`stream poll (${STREAM_POLL_US} µs) outcomes [timed out, already pending, arrived]: ${streamPoller.outcomes.join(', ')}; sync-write watchdog trips: ${syncWriteGuard.trips}\n`)
  }
  try {
    await mount.unmount()
    for (const d of devices) await d.close()
  } finally {
    process.exit(0)
  }
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
