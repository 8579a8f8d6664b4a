#!/usr/bin/env node
// A/B experiments on the data path for docs/perf-notes.md: runs scripts/bench/fio-harness.mjs
// (or noop-fuse.mjs) once per configuration, fills the files, then runs the chosen fio
// workloads on each, alternating configurations round by round so machine drift hits
// all of them alike, and prints the median of the rounds.
//
//   node scripts/bench/fio-experiment.mjs [--rounds 3] [--runtime 4] [--workloads rand-read,rand-write]
//        --config 'name|ENV=V ...|--harness-arg ...' [--config ...]
//
// A config is `name|env|args`: env is space-separated K=V for the server process (e.g.
// UV_THREADPOOL_SIZE=8); args go to fio-harness.mjs (e.g. --backing sync), or, when args
// start with `noop`, to noop-fuse.mjs (e.g. `noop --extra-opts direct_io`).
// Targets measured: encrypted and plaintext for the harness, the no-op file for noop.

import { spawn, execFileSync } from 'node:child_process'
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

const HERE = dirname(fileURLToPath(import.meta.url))
const { values: args } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    runtime: { type: 'string', default: '4' },
    size: { type: 'string', default: '512' },
    workloads: { type: 'string', default: 'rand-read,rand-write,seq-read,seq-write,lat-read' },
    config: { type: 'string', multiple: true, default: [] }
  }
})
const configs = args.config.map(c => {
  const [name, env = '', a = ''] = c.split('|')
  return {
    name,
    env: Object.fromEntries(env.split(' ').filter(Boolean).map(kv => kv.split('='))),
    args: a.split(' ').filter(Boolean)
  }
})
if (!configs.length) { console.error('need at least one --config'); process.exit(2) }
const workloads = args.workloads.split(',')
const sizeMiB = Number(args.size)
const work = mkdtempSync('/var/tmp/ebsd-fio-exp.')

async function start (cfg, i) {
  const mnt = join(work, `mnt${i}`); const dir = join(work, `d${i}`)
  mkdirSync(mnt, { recursive: true }); mkdirSync(dir, { recursive: true })
  const noop = cfg.args[0] === 'noop'
  const script = noop ? join(HERE, 'noop-fuse.mjs') : join(HERE, 'fio-harness.mjs')
  const a = noop
    ? ['--mount', mnt, '--size', `${sizeMiB}MiB`, ...cfg.args.slice(1)]
    : ['--mount', mnt, '--dir', dir, '--size', `${sizeMiB}MiB`, ...cfg.args]
  const child = spawn(process.execPath, [script, ...a], { env: { ...process.env, ...cfg.env }, stdio: ['ignore', 'pipe', 'inherit'] })
  const line = await new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', d => { out += d; if (out.includes('\n')) resolve(out.split('\n')[0]) })
    child.on('exit', c => reject(new Error(`${cfg.name}: server exited ${c}`)))
  })
  const parts = line.split(' ')
  const files = noop ? { noop: parts[1] } : { encrypted: parts[1], plaintext: parts[2] }
  for (const f of Object.values(files)) {
    if (!noop) execFileSync('fio', ['--name=fill', `--filename=${f}`, `--size=${sizeMiB}m`, '--rw=write', '--bs=1m', '--ioengine=libaio', '--direct=1', '--iodepth=8', '--output=/dev/null'])
  }
  return { cfg, child, mnt, files }
}

function fio (file, w) {
  execFileSync('sync') // no dirty pages of the previous run left to throttle this one
  const out = execFileSync('fio', ['--output-format=json', join(HERE, 'fio', `${w}.fio`)], {
    env: { ...process.env, FIO_FILE: file, FIO_SIZE: `${sizeMiB}m`, FIO_RUNTIME: args.runtime, FIO_RAMP: '1' },
    maxBuffer: 64 << 20,
    cwd: work
  })
  const j = JSON.parse(out.toString().slice(out.indexOf('{'))).jobs[0]
  const side = j.read.io_bytes > 0 ? j.read : j.write
  return {
    value: w.startsWith('seq') ? (j.read.bw_bytes + j.write.bw_bytes) / 1e6 : w === 'lat-read' ? side.lat_ns.mean / 1000 : j.read.iops + j.write.iops,
    p99: side.lat_ns.percentile['99.000000'] / 1000
  }
}

const servers = []
const results = {}
try {
  for (let i = 0; i < configs.length; i++) servers.push(await start(configs[i], i))
  for (let r = 0; r < Number(args.rounds); r++) {
    for (const w of workloads) {
      for (const s of servers) {
        for (const [t, f] of Object.entries(s.files)) {
          const k = `${w}\t${s.cfg.name}\t${t}`
          ;(results[k] ??= []).push(fio(f, w))
        }
      }
    }
    process.stderr.write(`round ${r + 1} done\n`)
  }
} finally {
  for (const s of servers) {
    s.child.kill('SIGTERM')
    await new Promise(resolve => { s.child.once('exit', resolve); setTimeout(resolve, 5000) })
    try { execFileSync('fusermount', ['-uz', s.mnt], { stdio: 'ignore' }) } catch {}
  }
  rmSync(work, { recursive: true, force: true })
}

const med = xs => { const a = [...xs].sort((x, y) => x - y); return a[Math.floor(a.length / 2)] }
console.log('workload\tconfig\ttarget\tmedian\tunit\tp99 µs (median)\tall rounds')
for (const [k, rs] of Object.entries(results)) {
  const w = k.split('\t')[0]
  const unit = w.startsWith('seq') ? 'MB/s' : w === 'lat-read' ? 'µs mean' : 'IOPS'
  console.log(`${k}\t${med(rs.map(r => r.value)).toFixed(0)}\t${unit}\t${med(rs.map(r => r.p99)).toFixed(0)}\t${rs.map(r => r.value.toFixed(0)).join(' ')}`)
}
