#!/usr/bin/env node
// The FUSE transport ceiling for scripts/bench/fio.sh.
//
// A minimal fuse-native process serving ONE in-memory no-op file: reads fill the
// kernel's buffer with zeros, writes are acknowledged and dropped. It mounts with
// the options the ebsd daemon uses, imported from the daemon's own source of them
// (dist/fuse/mount-options.js, built from src/fuse/mount-options.ts), so whatever
// fio measures here is the most any fuse-native daemon can reach on this machine.
//
//   node scripts/bench/noop-fuse.mjs --mount DIR [--size 1GiB] [--name vol-noop]
//        [--extra-opts direct_io,max_read=131072] [--no-zero-fill]
//
// Prints "ready <path-of-file>" on stdout once the kernel has answered INIT, and
// unmounts cleanly on SIGTERM/SIGINT. Needs fuse-native and a built dist/ (fio.sh
// builds it) for the mount options, nothing else of ebsd.

import { createRequire } from 'node:module'
import { parseArgs } from 'node:util'
import { execFileSync } from 'node:child_process'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const require = createRequire(import.meta.url)
const Fuse = require('fuse-native')
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
const { EXTRA_MOUNT_OPTIONS, fuseNativeOptions, appendMountOptions } = await import(join(ROOT, 'dist', 'fuse', 'mount-options.js'))

const { values: args } = parseArgs({
  options: {
    mount: { type: 'string' },
    size: { type: 'string', default: '1GiB' },
    name: { type: 'string', default: 'vol-noop' },
    'extra-opts': { type: 'string', default: '' },
    'no-zero-fill': { type: 'boolean', default: false }
  }
})

if (!args.mount) {
  process.stderr.write('usage: noop-fuse.mjs --mount DIR [--size 1GiB] [--name NAME] [--extra-opts a,b=c]\n')
  process.exit(2)
}

function parseSize (text) {
  const m = /^(\d+)\s*(|B|K|KiB|M|MiB|G|GiB|T|TiB)$/i.exec(text.trim())
  if (!m) throw new RangeError(`size: cannot parse ${JSON.stringify(text)}`)
  const unit = m[2].toUpperCase().replace('IB', '').replace('B', '')
  const mult = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[unit]
  return Number(m[1]) * mult
}

const size = parseSize(args.size)
const fileName = args.name
const filePath = '/' + fileName
const zeroFill = !args['no-zero-fill']
const extraOpts = args['extra-opts'].split(',').map(s => s.trim()).filter(Boolean)

// The daemon's transport options (src/fuse/mount-options.ts): big_writes lets the
// kernel send writes larger than one page; max_write=MAX_IO (128 KiB) is libfuse2's
// largest request, so a 1 MiB fio write arrives as 8 FUSE requests; fuse-native's own
// opts give max_read, allow_other (as root) and default_permissions. --extra-opts on top.
class BenchFuse extends Fuse {
  _fuseOptions () {
    return appendMountOptions(super._fuseOptions(), [...EXTRA_MOUNT_OPTIONS, ...extraOpts])
  }
}

const now = new Date()
const dirStat = { mtime: now, atime: now, ctime: now, nlink: 2, size: 4096, mode: 0o40755, uid: 0, gid: 0 }
const fileStat = { mtime: now, atime: now, ctime: now, nlink: 1, size, mode: 0o100600, uid: process.getuid(), gid: process.getgid() }

let opens = 0
const ops = {
  readdir (path, cb) {
    if (path === '/') return cb(0, [fileName])
    return cb(Fuse.ENOENT)
  },
  getattr (path, cb) {
    if (path === '/') return cb(0, dirStat)
    if (path === filePath) return cb(0, fileStat)
    return cb(Fuse.ENOENT)
  },
  open (path, flags, cb) {
    if (path !== filePath) return cb(Fuse.ENOENT)
    opens++
    return cb(0, 42)
  },
  release (path, fd, cb) {
    opens--
    return cb(0)
  },
  truncate (path, len, cb) { return cb(len === size ? 0 : Fuse.EPERM) },
  ftruncate (path, fd, len, cb) { return cb(len === size ? 0 : Fuse.EPERM) },
  flush (path, fd, cb) { return cb(0) },
  fsync (path, datasync, fd, cb) { return cb(0) },
  read (path, fd, buf, len, pos, cb) {
    if (pos >= size) return cb(0)
    const n = Math.min(len, size - pos)
    // The buffer is fuse's own memory (an external buffer), not zeroed: fill it so
    // the ceiling pays the same one pass over the data any real read pays.
    if (zeroFill) buf.fill(0, 0, n)
    return cb(n)
  },
  write (path, fd, buf, len, pos, cb) {
    if (pos >= size) return cb(Fuse.ENOSPC)
    return cb(Math.min(len, size - pos))
  }
}

const fuse = new BenchFuse(args.mount, ops, {
  ...fuseNativeOptions(process.getuid() === 0),
  fsname: 'ebsd-noop',
  force: true,
  mkdir: true
})

let closing = false
function shutdown (signal) {
  if (closing) return
  closing = true
  fuse.unmount(err => {
    if (err) {
      process.stderr.write(`noop-fuse: unmount failed (${err.message}); trying fusermount -uz\n`)
      try { execFileSync('fusermount', ['-uz', args.mount]) } catch {}
    }
    process.stderr.write(`noop-fuse: unmounted after ${signal}\n`)
    process.exit(0)
  })
}
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))

fuse.mount(err => {
  if (err) {
    process.stderr.write(`noop-fuse: mount failed: ${err.message}\n`)
    process.exit(1)
  }
  process.stdout.write(`ready ${args.mount.replace(/\/$/, '')}${filePath}\n`)
})
