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
//
// Prints "ready <encrypted-file> <plaintext-file> <enc-image> <plain-image>" once mounted;
// unmounts and closes on SIGTERM/SIGINT.

import { parseArgs } from 'node:util'
import { randomBytes } from 'node:crypto'
import { openSync, closeSync, ftruncateSync } from 'node:fs'
import { join, resolve, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')
const dist = p => import(join(ROOT, 'dist', p))

const { values: args } = parseArgs({
  options: {
    mount: { type: 'string' },
    dir: { type: 'string' },
    size: { type: 'string', default: '1GiB' },
    engine: { type: 'string', default: 'auto' }
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
  return { path, backing: await openBackingFile(path) }
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
const fs = new BlockFileSystem({ logger: log })
for (const d of devices) fs.add(d)
const mount = new FuseMount(args.mount, fs.ops(), { logger: log })
await mount.mount()
process.stdout.write(`ready ${join(args.mount, devices[0].volumeId)} ${join(args.mount, devices[1].volumeId)} ${enc.path} ${plain.path} engine=${engine.name}\n`)

let closing = false
async function shutdown () {
  if (closing) return
  closing = true
  try {
    await mount.unmount()
    for (const d of devices) await d.close()
  } finally {
    process.exit(0)
  }
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
