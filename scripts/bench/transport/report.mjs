#!/usr/bin/env node
// Turns one scripts/bench/transport/run.sh run into markdown tables (stdout):
// medians over rounds per figure, medians of per-round ratios per ratio (to the
// raw file and to fuse-native's no-op), CPU per I/O, latency at QD1.
//
//   node scripts/bench/transport/report.mjs --results DIR --meta meta.json [--json FILE]
//   node scripts/bench/transport/report.mjs --one RESULT.json      # one progress line
//
// Result files: <target>--<workload>--r<round>.json (fio JSON) beside
// <same>.cpu ({"serverTicks", "hz"}: the server's utime+stime over the run).

import { readFileSync, readdirSync, existsSync, writeFileSync } from 'node:fs'
import { basename, join } from 'node:path'
import { parseArgs } from 'node:util'

const { values: args } = parseArgs({
  options: { one: { type: 'string' }, results: { type: 'string' }, meta: { type: 'string' }, json: { type: 'string' } }
})

const TARGETS = [
  ['raw', 'raw file'],
  ['fuse-native', 'fuse-native no-op'],
  ['c-classic', 'C classic no-op'],
  ['c-uring', 'C io_uring no-op'],
  ['c-uring-nopin', 'C io_uring no-op, unpinned'],
  ['c-classic-xts', 'C classic XTS+file'],
  ['c-uring-xts', 'C io_uring XTS+file']
]
const ROWS = [
  { w: 'seq-read', label: '1 MiB seq read, QD8', unit: 'MB/s', metric: 'bwMBps' },
  { w: 'seq-write', label: '1 MiB seq write, QD8', unit: 'MB/s', metric: 'bwMBps' },
  { w: 'rand-read', label: '4 KiB rand read, 4×QD32', unit: 'IOPS', metric: 'iops' },
  { w: 'rand-write', label: '4 KiB rand write, 4×QD32', unit: 'IOPS', metric: 'iops' },
  { w: 'rand-rw', label: '4 KiB 70/30 mix, 4×QD32', unit: 'IOPS', metric: 'iops' },
  { w: 'lat-read', label: '4 KiB rand read QD1', unit: 'IOPS', metric: 'iops' }
]

function metrics (file) {
  const job = JSON.parse(readFileSync(file, 'utf8')).jobs[0]
  const r = job.read; const w = job.write
  const side = r.io_bytes > 0 ? r : w
  const pct = (o, k) => (o && o.percentile ? o.percentile[k] / 1000 : null)
  const ios = r.total_ios + w.total_ios
  const cpuFile = file.replace(/\.json$/, '.cpu')
  const srv = existsSync(cpuFile) ? JSON.parse(readFileSync(cpuFile, 'utf8')) : { serverTicks: 0, hz: 100 }
  const fioCpuSec = ((job.usr_cpu + job.sys_cpu) / 100) * (job.job_runtime / 1000)
  const srvCpuSec = srv.serverTicks / srv.hz
  return {
    iops: r.iops + w.iops,
    bwMBps: (r.bw_bytes + w.bw_bytes) / 1e6,
    latMeanUs: side.lat_ns.mean / 1000,
    latP99Us: pct(side.lat_ns, '99.000000'),
    cpuUsPerIo: ios > 0 ? ((fioCpuSec + srvCpuSec) / ios) * 1e6 : null,
    srvUsPerIo: ios > 0 ? (srvCpuSec / ios) * 1e6 : null,
    errors: job.error
  }
}

if (args.one) {
  const m = metrics(args.one)
  const [t, w, r] = basename(args.one, '.json').split('--')
  const fig = w.startsWith('seq') ? `${m.bwMBps.toFixed(0)} MB/s` : `${Math.round(m.iops)} IOPS`
  console.log(`  ${t.padEnd(13)} ${w.padEnd(10)} ${r}  ${fig.padStart(11)}  p99 ${m.latP99Us?.toFixed(0)} µs  cpu ${m.cpuUsPerIo?.toFixed(1)} µs/io`)
  process.exit(0)
}

const median = xs => {
  const v = xs.filter(x => x !== null && Number.isFinite(x)).sort((a, b) => a - b)
  if (!v.length) return null
  const h = v.length >> 1
  return v.length % 2 ? v[h] : (v[h - 1] + v[h]) / 2
}
const fmt = (v, unit) => {
  if (v === null || v === undefined) return '—'
  if (unit === 'IOPS') return v >= 10000 ? `${(v / 1000).toFixed(1)}k` : Math.round(v).toString()
  if (unit === 'µs') return v >= 100 ? v.toFixed(0) : v.toFixed(1)
  return Math.round(v).toString()
}
const fr = v => (v === null ? '—' : v.toFixed(2))

const meta = JSON.parse(readFileSync(args.meta, 'utf8'))
const runs = {} // runs[target][workload][round] = metrics
for (const f of readdirSync(args.results).filter(f => f.endsWith('.json'))) {
  const [t, w, r] = basename(f, '.json').split('--')
  ;((runs[t] ??= {})[w] ??= {})[r] = metrics(join(args.results, f))
}
const present = TARGETS.filter(([id]) => runs[id])
const rounds = [...new Set(Object.values(runs).flatMap(ws => Object.values(ws).flatMap(rs => Object.keys(rs))))]

const fig = (t, w, m) => median(rounds.map(r => runs[t]?.[w]?.[r]?.[m] ?? null))
const ratio = (t, ref, w, m) => median(rounds.map(r => {
  const a = runs[t]?.[w]?.[r]?.[m]; const b = runs[ref]?.[w]?.[r]?.[m]
  return a && b ? a / b : null
}))

const out = []
const head = cols => { out.push(`| ${cols.join(' | ')} |`); out.push(`|${cols.map((_, i) => (i ? '---:' : '---')).join('|')}|`) }
const labels = present.map(([, l]) => l)

out.push(`Medians of ${rounds.length} interleaved round(s) × ${meta.runtimeSec} s, ${meta.sizeMiB} MiB file, XTS targets' backing file ${meta.backingMode ?? 'buffered'}, filled in ${meta.fillBs ?? '1m'} writes, kernel ${meta.kernel}, ${meta.cpus} CPUs (${meta.cpuModel}), fio ${meta.fio}, ${meta.backingFs}; load average ${meta.loadAvgStart} at the start, ${meta.loadAvgEnd} at the end, steal ${meta.stealPct} %, ${meta.elapsedSec} s of timing.${meta.skipped ? ` Skipped: ${meta.skipped}` : ''}`)
out.push('')
out.push('**Throughput** (MB/s for sequential, IOPS for random):')
out.push('')
head(['workload', ...labels])
for (const row of ROWS) out.push(`| ${row.label} | ${present.map(([t]) => fmt(fig(t, row.w, row.metric), row.unit)).join(' | ')} |`)
for (const [ref, refLabel] of [['raw', 'the raw file'], ['fuse-native', "fuse-native's no-op"]]) {
  if (!runs[ref]) continue
  out.push('')
  out.push(`**Ratio to ${refLabel}** (median of per-round ratios; > 1 is faster):`)
  out.push('')
  head(['workload', ...labels])
  for (const row of ROWS) out.push(`| ${row.label} | ${present.map(([t]) => fr(ratio(t, ref, row.w, row.metric))).join(' | ')} |`)
}
out.push('')
out.push('**CPU per I/O**, µs (fio + server, user + system; the server\'s share in brackets):')
out.push('')
head(['workload', ...labels])
for (const row of ROWS) {
  out.push(`| ${row.label} | ${present.map(([t]) => {
    const c = fig(t, row.w, 'cpuUsPerIo'); const s = fig(t, row.w, 'srvUsPerIo')
    return t === 'raw' ? fmt(c, 'µs') : `${fmt(c, 'µs')} (${fmt(s, 'µs')})`
  }).join(' | ')} |`)
}
out.push('')
out.push('**Latency**, µs (submission + completion):')
out.push('')
head(['figure', ...labels])
out.push(`| 4 KiB rand read QD1, mean | ${present.map(([t]) => fmt(fig(t, 'lat-read', 'latMeanUs'), 'µs')).join(' | ')} |`)
out.push(`| 4 KiB rand read QD1, p99 | ${present.map(([t]) => fmt(fig(t, 'lat-read', 'latP99Us'), 'µs')).join(' | ')} |`)
out.push(`| 4 KiB rand write 4×QD32, p99 | ${present.map(([t]) => fmt(fig(t, 'rand-write', 'latP99Us'), 'µs')).join(' | ')} |`)
const errs = Object.entries(runs).flatMap(([t, ws]) => Object.entries(ws).flatMap(([w, rs]) => Object.entries(rs).filter(([, m]) => m.errors).map(([r]) => `${t}/${w}/${r}`)))
if (errs.length) { out.push(''); out.push(`fio reported errors in: ${errs.join(', ')}`) }
console.log(out.join('\n'))
if (args.json) writeFileSync(args.json, JSON.stringify({ meta, runs }, null, 1))
