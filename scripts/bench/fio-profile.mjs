#!/usr/bin/env node
// Summarises a V8 .cpuprofile (from `scripts/bench/fio.sh --cpu-prof DIR`, i.e.
// `node --cpu-prof`) without a browser: self and inclusive time per function, and
// self time per area (ebsd layer, fuse-native, node internals, GC, idle).
//
//   node scripts/bench/fio-profile.mjs FILE.cpuprofile [--top 25]
//
// Only the main JS thread is profiled: time the libuv pool spends in pread/pwrite
// and in the native XTS addon shows up as "(idle)" here, and fuse-native's own
// worker threads (libfuse's fuse_loop_mt) are not sampled at all.

import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

const { values: args, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' } } })
if (!positionals[0]) { console.error('usage: fio-profile.mjs FILE.cpuprofile [--top N]'); process.exit(2) }
const prof = JSON.parse(readFileSync(positionals[0], 'utf8'))
const TOP = Number(args.top)

const byId = new Map()
for (const n of prof.nodes) byId.set(n.id, { ...n, self: 0, parent: null })
for (const n of byId.values()) for (const c of n.children ?? []) byId.get(c).parent = n

for (let i = 0; i < prof.samples.length; i++) {
  const n = byId.get(prof.samples[i])
  if (n) n.self += (prof.timeDeltas[i] ?? 0) / 1000 // µs -> ms
}
const total = [...byId.values()].reduce((a, n) => a + n.self, 0)

const short = url => url.replace(/^file:\/\//, '').replace(/^.*\/(dist|node_modules|scripts)\//, '$1/')
const key = n => `${n.callFrame.functionName || '(anonymous)'}  ${short(n.callFrame.url)}${n.callFrame.url ? ':' + (n.callFrame.lineNumber + 1) : ''}`

function area (n) {
  const f = n.callFrame; const u = f.url
  if (f.functionName === '(idle)') return 'idle (waiting: FUSE requests, thread pool)'
  if (f.functionName === '(garbage collector)') return 'garbage collector'
  if (f.functionName === '(program)') return '(program: native code outside JS, e.g. N-API calls, uv)'
  const m = /\/dist\/([^/]+)\//.exec(u)
  if (m) return `ebsd src/${m[1]}`
  if (u.includes('fuse-native')) return 'fuse-native (index.js)'
  if (u.includes('node_modules/pino') || u.includes('node_modules/sonic-boom')) return 'pino logging'
  if (u.includes('node_modules')) return 'other node_modules'
  if (u.startsWith('node:')) return `node internals (${u.replace(/^node:internal\//, '').split('/')[0]})`
  if (u.includes('scripts/bench')) return 'bench harness'
  return f.functionName ? `native/builtin: ${f.functionName}` : 'other'
}

const selfBy = new Map(); const areaBy = new Map(); const incl = new Map()
for (const n of byId.values()) {
  if (!n.self) continue
  selfBy.set(key(n), (selfBy.get(key(n)) ?? 0) + n.self)
  areaBy.set(area(n), (areaBy.get(area(n)) ?? 0) + n.self)
  // inclusive: charge every distinct function on the stack once
  const seen = new Set()
  for (let p = n; p; p = p.parent) {
    const k = key(p)
    if (seen.has(k)) continue
    seen.add(k)
    incl.set(k, (incl.get(k) ?? 0) + n.self)
  }
}

const pct = v => `${(100 * v / total).toFixed(1).padStart(5)}%`
const print = (title, map, skip = () => false) => {
  console.log(`\n${title}`)
  const rows = [...map].filter(([k]) => !skip(k)).sort((a, b) => b[1] - a[1]).slice(0, TOP)
  for (const [k, v] of rows) console.log(`${pct(v)} ${v.toFixed(0).padStart(7)} ms  ${k}`)
}
const wall = (prof.endTime - prof.startTime) / 1e3
console.log(`profile: ${positionals[0]}\nwall ${wall.toFixed(0)} ms, sampled ${total.toFixed(0)} ms, ${prof.samples.length} samples`)
print('self time by area (main thread)', areaBy)
print('self time by function', selfBy)
print('inclusive time by function (excluding the roots)', incl, k => /^\((root|idle|program|garbage collector)\)/.test(k))
