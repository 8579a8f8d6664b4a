#!/usr/bin/env node
// Turns the fio JSON files of one scripts/bench/fio.sh run into:
//   --json FILE       a summary (docs/bench/fio-latest.json)
//   --svg FILE        a grouped bar chart normalised to the no-op ceiling (docs/bench/fio.svg)
//   --markdown FILE   the `## fio` section of docs/benchmarks.md, between
//                     <!-- fio:begin --> and <!-- fio:end --> (the rest of the file is
//                     other suites' and is left byte for byte as it is)
// and prints the markdown tables on stdout. No dependencies.
//
//   node scripts/bench/fio-report.mjs --results DIR --meta meta.json [--json F] [--svg F] [--markdown F]
//   node scripts/bench/fio-report.mjs --one RESULT.json     # one line, for progress output
//
// Result files are named <target>--<workload>.json.

import { readFileSync, writeFileSync, readdirSync, renameSync, mkdirSync, existsSync, mkdtempSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, basename, join } from 'node:path'
import { parseArgs } from 'node:util'

const { values: args } = parseArgs({
  options: {
    one: { type: 'string' },
    results: { type: 'string' },
    meta: { type: 'string' },
    json: { type: 'string' },
    svg: { type: 'string' },
    markdown: { type: 'string' },
    'from-json': { type: 'string' }
  }
})
let FROM_SUMMARY = null

const TARGETS = [
  { id: 'encrypted', label: 'encrypted (ebsd, AES-256-XTS)', legend: 'encrypted (ebsd)', short: 'encrypted', color: '#2563eb' },
  { id: 'plaintext', label: 'plaintext passthrough (ebsd volume --cipher none)', legend: 'plaintext (ebsd volume --cipher none)', short: 'plaintext', color: '#f59e0b' },
  { id: 'ceiling', label: 'no-op fuse-native ceiling', legend: 'no-op FUSE ceiling', short: 'ceiling', color: '#6b7280' },
  { id: 'raw', label: 'raw backing file (no FUSE)', legend: 'raw file, no FUSE', short: 'raw file', color: '#10b981' }
]

// One row per figure. `higher`: true when bigger is better. Reference figures: the
// issue's no-op fuse-native measurements on a 2-core machine of this kind.
const ROWS = [
  { id: 'seq-read', workload: 'seq-read', label: '1 MiB seq read, QD8', chart: ['1 MiB seq read', 'QD8'], unit: 'MB/s', higher: true, ref: 1000, metric: 'bwMBps' },
  { id: 'seq-write', workload: 'seq-write', label: '1 MiB seq write, QD8', chart: ['1 MiB seq write', 'QD8'], unit: 'MB/s', higher: true, ref: 850, metric: 'bwMBps' },
  { id: 'rand-read', workload: 'rand-read', label: '4 KiB rand read, 4×QD32', chart: ['4K rand read', '4×QD32'], unit: 'IOPS', higher: true, ref: 36000, metric: 'iops' },
  { id: 'rand-write', workload: 'rand-write', label: '4 KiB rand write, 4×QD32', chart: ['4K rand write', '4×QD32'], unit: 'IOPS', higher: true, ref: 11000, metric: 'iops' },
  { id: 'rand-rw', workload: 'rand-rw', label: '4 KiB 70/30 mix, 4×QD32', chart: ['4K 70/30 mix', '4×QD32'], unit: 'IOPS', higher: true, ref: null, metric: 'iops' },
  { id: 'lat-mean', workload: 'lat-read', label: '4 KiB rand read QD1, mean', chart: ['4K read QD1', 'mean latency'], unit: 'µs', higher: false, ref: null, metric: 'latMeanUs' },
  { id: 'lat-p99', workload: 'lat-read', label: '4 KiB rand read QD1, p99', chart: ['4K read QD1', 'p99 latency'], unit: 'µs', higher: false, ref: null, metric: 'latP99Us' }
]

const GOALS = { encOverPlain: 0.90, plainOverCeiling: 0.80, encP99OverCeilingP99: 1.5 }

// ------------------------------------------------------------------ parsing ---
function metrics (file) {
  const j = JSON.parse(readFileSync(file, 'utf8'))
  const job = j.jobs[0]
  const r = job.read; const w = job.write
  const p = (o, k) => (o && o.percentile ? o.percentile[k] : undefined)
  // On FUSE, libaio O_DIRECT is submitted synchronously (no FUSE_ASYNC_DIO), so the
  // time sits in slat; lat = slat + clat is the figure a user sees. clat is kept too.
  const side = r.io_bytes > 0 ? r : w
  const ns = v => (v === undefined ? null : v / 1000)
  return {
    jobname: job.jobname,
    iops: r.iops + w.iops,
    readIops: r.iops,
    writeIops: w.iops,
    bwMBps: (r.bw_bytes + w.bw_bytes) / 1e6,
    latMeanUs: ns(side.lat_ns.mean),
    latP50Us: ns(p(side.lat_ns, '50.000000')),
    latP99Us: ns(p(side.lat_ns, '99.000000')),
    latP999Us: ns(p(side.lat_ns, '99.900000')),
    clatMeanUs: ns(side.clat_ns.mean),
    clatP99Us: ns(p(side.clat_ns, '99.000000')),
    slatMeanUs: ns(side.slat_ns.mean),
    errors: job.error,
    usrCpu: job.usr_cpu,
    sysCpu: job.sys_cpu
  }
}

function fmt (v, unit) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—'
  if (unit === 'IOPS') return v >= 10000 ? `${(v / 1000).toFixed(1)}k` : Math.round(v).toString()
  if (unit === 'MB/s') return Math.round(v).toString()
  if (unit === 'µs') return v >= 1000 ? v.toFixed(0) : v.toFixed(1)
  return String(v)
}
const fr = v => (v === null || v === undefined || !Number.isFinite(v) ? '—' : v.toFixed(2))

if (args.one) {
  const m = metrics(args.one)
  const [target, workload = m.jobname, round = ''] = basename(args.one, '.json').split('--')
  const parts = [`${target.padEnd(9)} ${workload.padEnd(10)} ${round.padEnd(2)}`]
  if (workload.startsWith('seq')) parts.push(`${m.bwMBps.toFixed(0)} MB/s`)
  else parts.push(`${Math.round(m.iops)} IOPS`)
  parts.push(`lat mean ${m.latMeanUs.toFixed(1)} µs p99 ${m.latP99Us?.toFixed(1)} µs`)
  console.log('  ' + parts.join('  '))
  process.exit(0)
}

if (args['from-json']) {
  // Re-render the markdown and the chart from a summary this script wrote before.
  const old = JSON.parse(readFileSync(args['from-json'], 'utf8'))
  const dir = mkdtempSync(join(tmpdir(), 'fio-report-'))
  writeFileSync(join(dir, 'meta.json'), JSON.stringify(old.meta))
  mkdirSync(join(dir, 'results'))
  args.meta = join(dir, 'meta.json'); args.results = join(dir, 'results')
  FROM_SUMMARY = old
}
if (!args.results || !args.meta) {
  console.error('usage: fio-report.mjs --results DIR --meta META [--json F] [--svg F] [--markdown F] | --from-json SUMMARY [...] | --one FILE')
  process.exit(2)
}

const meta = JSON.parse(readFileSync(args.meta, 'utf8'))
// Several rounds of one target x workload (<target>--<workload>--rN.json). Each
// figure shown is the median over the rounds; each RATIO is the median of the
// per-round ratios: fio.sh runs the targets of one workload back to back within a
// round, so a pair measured seconds apart shares the machine's state, while two
// per-target medians may come from different rounds (the machine is shared and
// its speed moves 2-3x within a run). Every round's values and ratios are kept.
const runs = {}
for (const f of readdirSync(args.results)) {
  if (!f.endsWith('.json')) continue
  const [target, workload, r = 'r1'] = basename(f, '.json').split('--')
  const m = metrics(join(args.results, f))
  // CPU steal during this run (fio.sh writes <run>.steal beside the JSON).
  const stealFile = join(args.results, f.replace(/\.json$/, '.steal'))
  m.stealPct = existsSync(stealFile) ? Number(readFileSync(stealFile, 'utf8')) : null
  ;((runs[workload] ??= {})[target] ??= []).push({ round: Number(r.slice(1)), m })
}
const median = xs => {
  const a = xs.filter(x => x !== null && x !== undefined).sort((p, q) => p - q)
  if (!a.length) return null
  return a.length % 2 ? a[(a.length - 1) / 2] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2
}
const PER_ROUND = ['bwMBps', 'iops', 'latMeanUs', 'latP99Us', 'stealPct']
const raw = FROM_SUMMARY ? FROM_SUMMARY.perWorkload : {}
for (const [w, byT] of Object.entries(runs)) {
  raw[w] = {}
  for (const [t, entries] of Object.entries(byT)) {
    entries.sort((a, b) => a.round - b.round)
    const list = entries.map(e => e.m)
    const m = {}
    for (const k of Object.keys(list[0])) m[k] = typeof list[0][k] === 'number' ? median(list.map(x => x[k])) : list[0][k]
    m.rounds = list.length
    m.perRound = entries.map(({ round, m: x }) => Object.fromEntries([['round', round], ...PER_ROUND.map(k => [k, x[k]])]))
    raw[w][t] = m
  }
}
const present = TARGETS.filter(t => Object.values(raw).some(w => w[t.id]))

// ------------------------------------------------------------------- ratios ---
// A "speed" ratio a/b is always oriented so that > 1 means a is faster:
// throughput a/b, latency b/a.
const speed = (higherIsBetter, a, b) => {
  if (a == null || b == null || a === 0 || b === 0) return null
  return higherIsBetter ? a / b : b / a
}
// The ratio of two targets, round by round (rounds both measured), and its median.
// Summaries written before per-round figures were kept fall back to the ratio of
// the medians.
const RATIO_PAIRS = {
  encryptedOverPlaintext: ['encrypted', 'plaintext'],
  plaintextOverCeiling: ['plaintext', 'ceiling'],
  encryptedOverCeiling: ['encrypted', 'ceiling'],
  rawOverCeiling: ['raw', 'ceiling']
}
function pairedRatio (row, a, b, v) {
  const ra = raw[row.workload]?.[a]?.perRound; const rb = raw[row.workload]?.[b]?.perRound
  if (!ra || !rb) return { median: speed(row.higher, v[a], v[b]), rounds: [] }
  const rounds = []
  for (const x of ra) {
    const y = rb.find(z => z.round === x.round)
    const q = y ? speed(row.higher, x[row.metric], y[row.metric]) : null
    if (q !== null) rounds.push(q)
  }
  return { median: median(rounds), rounds }
}
const rows = ROWS.map(row => {
  const v = {}
  for (const t of TARGETS) {
    const m = raw[row.workload]?.[t.id]
    v[t.id] = m ? m[row.metric] : null
  }
  const paired = Object.fromEntries(Object.entries(RATIO_PAIRS).map(([k, [a, b]]) => [k, pairedRatio(row, a, b, v)]))
  return {
    id: row.id,
    label: row.label,
    chart: row.chart,
    unit: row.unit,
    higherIsBetter: row.higher,
    reference: row.ref,
    values: v,
    ratios: Object.fromEntries(Object.entries(paired).map(([k, p]) => [k, p.median])),
    roundRatios: Object.fromEntries(Object.entries(paired).map(([k, p]) => [k, p.rounds])),
    ratiosOfMedians: Object.fromEntries(Object.entries(RATIO_PAIRS).map(([k, [a, b]]) => [k, speed(row.higher, v[a], v[b])]))
  }
})

const minOf = key => {
  let best = null
  for (const r of rows) {
    const x = r.ratios[key]
    if (x !== null && (best === null || x < best.value)) best = { value: x, row: r.label }
  }
  return best
}
const latP99 = rows.find(r => r.id === 'lat-p99')
// Encrypted p99 ÷ ceiling p99 (a slowdown, so not a speed ratio), round by round.
const p99Ratio = pairedRatio({ ...ROWS.find(r => r.id === 'lat-p99'), higher: true }, 'encrypted', 'ceiling', latP99.values).median
const goals = [
  {
    goal: `encrypted ≥ ${GOALS.encOverPlain.toFixed(2)}× plaintext, every workload`,
    worst: minOf('encryptedOverPlaintext'),
    met: (x => (x ? x.value >= GOALS.encOverPlain : null))(minOf('encryptedOverPlaintext'))
  },
  {
    goal: `plaintext ≥ ${GOALS.plainOverCeiling.toFixed(2)}× no-op ceiling, every workload`,
    worst: minOf('plaintextOverCeiling'),
    met: (x => (x ? x.value >= GOALS.plainOverCeiling : null))(minOf('plaintextOverCeiling'))
  },
  {
    goal: `encrypted 4 KiB QD1 p99 ≤ ${GOALS.encP99OverCeilingP99}× ceiling p99`,
    worst: p99Ratio ? { value: p99Ratio, row: latP99.label } : null,
    met: p99Ratio ? p99Ratio <= GOALS.encP99OverCeilingP99 : null
  }
]

// When the run ended: its last result file (so that rendering a kept run later
// does not date it to the rendering).
function lastResultTime () {
  const ms = readdirSync(args.results).filter(f => f.endsWith('.json')).map(f => statSync(join(args.results, f)).mtimeMs)
  return ms.length ? new Date(Math.max(...ms)).toISOString() : null
}

const summary = {
  generatedAt: FROM_SUMMARY?.generatedAt ?? lastResultTime() ?? new Date().toISOString(),
  meta,
  targets: present.map(t => ({ id: t.id, label: t.label })),
  rows,
  goals,
  perWorkload: raw
}

// ----------------------------------------------------------------- markdown ---
function stealRange () {
  const xs = Object.values(raw).flatMap(byT => Object.values(byT).flatMap(m => (m.perRound ?? []).map(x => x.stealPct))).filter(x => x != null)
  return xs.length ? `${Math.min(...xs).toFixed(1)}–${Math.max(...xs).toFixed(1)} %` : '?'
}

function markdown () {
  const L = []
  const tcols = present.map(t => t.short)
  L.push(`Run: ${summary.generatedAt.slice(0, 16).replace('T', ' ')} UTC, \`scripts/bench/fio.sh${meta.mode === 'quick' ? ' --quick' : ''}\` ` +
    `(${meta.mode}: ${meta.runtimeSec} s per workload after ${meta.rampSec} s ramp, ${meta.rounds ?? 1} round${(meta.rounds ?? 1) > 1 ? 's, target order rotated each round' : ''}, ${meta.sizeMiB} MiB working set), ` +
    `${meta.cpus} × ${meta.cpuModel}, kernel ${meta.kernel}, ${meta.fio}, backing fs \`${meta.backingFs}\`. ` +
    `All targets: libaio, \`direct=1\`, on the same filesystem. Load average ${meta.loadAvgStart ?? '?'} at the start, ${meta.loadAvgEnd ?? '?'} at the end` +
    (meta.stealPct != null ? `; CPU steal (time the hypervisor gave our vCPUs to other guests) ${meta.stealPct} % over the timed runs, ${stealRange()} per run` : '') +
    ' (other work on a shared machine inflates the spread).' + (meta.daemon
      ? meta.daemon.via === 'harness'
        ? ` **Encrypted and plaintext served by \`scripts/bench/fio-harness.mjs\`** (the daemon's FUSE adapter and block devices from \`dist/\` at \`${meta.daemon.commit}\`, without KMS or control socket): the daemon itself was not available.`
        : meta.daemon.oneDaemon
          ? ` Encrypted and plaintext served by ONE \`ebsd daemon --allow-unencrypted\` at \`${meta.daemon.commit}\`: an encrypted volume and a measurement-only plaintext volume (\`ebsd volume create --cipher none\`) side by side.`
          : ` Encrypted and plaintext served by \`ebsd daemon\` at \`${meta.daemon.commit}\`: two daemons of that build side by side, the second with \`--cipher none --allow-unencrypted\` (then a daemon-wide switch).`
      : ' **Daemon not measured in this run** (encrypted/plaintext columns empty).'))
  L.push('')
  L.push('![fio: each target relative to the no-op FUSE ceiling](bench/fio.svg)')
  L.push('')
  L.push(`| Workload | ${tcols.join(' | ')} | enc / plain | plain / ceiling | enc / ceiling | ceiling ref. |`)
  L.push(`|---|${tcols.map(() => '--:').join('|')}|--:|--:|--:|--:|`)
  for (const r of rows) {
    const vals = present.map(t => fmt(r.values[t.id], r.unit))
    const cell = k => fr(r.ratios[k]) + (r.roundRatios[k].length > 1 ? ` <sub>${fr(Math.min(...r.roundRatios[k]))}–${fr(Math.max(...r.roundRatios[k]))}</sub>` : '')
    L.push(`| ${r.label} (${r.unit}) | ${vals.join(' | ')} | ${cell('encryptedOverPlaintext')} | ${cell('plaintextOverCeiling')} | ${cell('encryptedOverCeiling')} | ${r.reference ? fmt(r.reference, r.unit) : ''} |`)
  }
  L.push('')
  L.push(((meta.rounds ?? 1) > 1
    ? 'Figures: median of the rounds. Ratios: median of the per-round ratios, smallest–largest round in small type. ' +
      'The targets of one workload run back to back inside a round, so each per-round ratio compares two measurements taken ' +
      'seconds apart; a ratio of two medians could compare a quiet round with a busy one (`ratiosOfMedians` in the JSON has those too). '
    : '') + 'Ratios are speed ratios (> 1 = faster): throughput a/b; for latency rows b/a. ' +
    'Latency is fio total latency (`lat` = submission + completion): on FUSE, libaio O_DIRECT is submitted ' +
    'synchronously (libfuse 2.9 does not negotiate `FUSE_ASYNC_DIO`), so `clat` alone is near zero. ' +
    '"ceiling ref." is the issue\'s reference for the no-op ceiling on this machine class.')
  L.push('')
  L.push('| Goal | Measured (worst case) | Met |')
  L.push('|---|---|:-:|')
  for (const g of goals) {
    const m = g.worst ? `${g.worst.value.toFixed(2)} (${g.worst.row})` : 'not measured'
    L.push(`| ${g.goal} | ${m} | ${g.met === null ? '—' : g.met ? 'yes' : '**no**'} |`)
  }
  L.push('')
  L.push('p99 total latency per workload (µs):')
  L.push('')
  L.push(`| Workload | ${tcols.join(' | ')} |`)
  L.push(`|---|${tcols.map(() => '--:').join('|')}|`)
  for (const w of ['seq-read', 'seq-write', 'rand-read', 'rand-write', 'rand-rw', 'lat-read']) {
    if (!raw[w]) continue
    L.push(`| ${w} | ${present.map(t => fmt(raw[w][t.id]?.latP99Us, 'µs')).join(' | ')} |`)
  }
  L.push('')
  L.push('Raw per-job figures (IOPS split, clat, slat, CPU, every round): `docs/bench/fio-latest.json`. ' +
    'Why the daemon sits where it does, the transport\'s limits (synchronous libaio, serialised direct writes on a FUSE file) ' +
    'and what to change: [perf-notes.md](perf-notes.md).')
  return L.join('\n')
}

// ---------------------------------------------------------------------- svg ---
function esc (s) { return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;') }

function svg () {
  const W = 960; const H = 520
  const m = { l: 64, r: 24, t: 84, b: 108 }
  const pw = W - m.l - m.r; const ph = H - m.t - m.b
  const CAP = 2.0
  const rel = (r, t) => (t === 'ceiling' ? (r.values.ceiling ? 1 : null) : r.ratios[`${t}OverCeiling`] ?? null)
  let top = 1.2
  for (const r of rows) for (const t of present) { const x = rel(r, t.id); if (x) top = Math.max(top, Math.min(x, CAP)) }
  top = Math.ceil(top * 5) / 5
  const y = v => m.t + ph - (Math.min(v, top) / top) * ph
  const gw = pw / rows.length
  const bw = Math.min(26, (gw - 18) / Math.max(1, present.length))
  const o = []
  o.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif" font-size="12">`)
  o.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`)
  o.push(`<text x="${m.l}" y="26" font-size="17" font-weight="600" fill="#111827">ebsd fio: each target relative to the no-op FUSE ceiling (1.0 = ceiling, higher is better)</text>`)
  o.push(`<text x="${m.l}" y="46" fill="#4b5563">${esc(`${meta.mode} run ${summary.generatedAt.slice(0, 10)}, ${meta.cpus} CPUs, kernel ${meta.kernel}, libaio direct=1; throughput/IOPS as target ÷ ceiling, latency as ceiling ÷ target`)}</text>`)
  // legend
  let lx = m.l
  for (const t of present) {
    o.push(`<rect x="${lx}" y="58" width="12" height="12" fill="${t.color}"/><text x="${lx + 16}" y="68" fill="#111827">${esc(t.legend)}</text>`)
    lx += 26 + t.legend.length * 6.6
  }
  o.push(`<line x1="${lx}" x2="${lx + 18}" y1="64" y2="64" stroke="#f59e0b" stroke-dasharray="2 3"/><text x="${lx + 22}" y="68" fill="#b45309">plaintext goal 0.8×</text>`)
  // grid
  for (let v = 0; v <= top + 1e-9; v += top > 1.6 ? 0.4 : 0.2) {
    const yy = y(v)
    o.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${yy}" y2="${yy}" stroke="${Math.abs(v - 1) < 1e-9 ? '#111827' : '#e5e7eb'}" ${Math.abs(v - 1) < 1e-9 ? 'stroke-dasharray="5 4"' : ''}/>`)
    o.push(`<text x="${m.l - 8}" y="${yy + 4}" text-anchor="end" fill="#4b5563">${v.toFixed(1)}×</text>`)
  }
  const yg = y(GOALS.plainOverCeiling)
  o.push(`<line x1="${m.l}" x2="${W - m.r}" y1="${yg}" y2="${yg}" stroke="#f59e0b" stroke-width="1" stroke-dasharray="2 3"/>`)
  rows.forEach((r, i) => {
    const gx = m.l + i * gw + (gw - bw * present.length) / 2
    present.forEach((t, k) => {
      const x = rel(r, t.id); const bx = gx + k * bw
      if (x === null) {
        o.push(`<text x="${bx + bw / 2}" y="${y(0) - 4}" text-anchor="middle" fill="#9ca3af" font-size="10">n/a</text>`)
        return
      }
      const yy = y(x)
      o.push(`<rect x="${bx + 1}" y="${yy}" width="${bw - 2}" height="${y(0) - yy}" fill="${t.color}"><title>${esc(`${t.short}: ${fmt(r.values[t.id], r.unit)} ${r.unit} (${x.toFixed(2)}× ceiling)`)}</title></rect>`)
      o.push(`<text x="${bx + bw / 2}" y="${yy - 4}" text-anchor="middle" fill="#111827" font-size="10">${x > top ? '>' : ''}${x.toFixed(2)}</text>`)
    })
    const cx = m.l + i * gw + gw / 2
    const words = r.chart
    o.push(`<text x="${cx}" y="${m.t + ph + 18}" text-anchor="middle" fill="#111827">${esc(words[0])}</text>`)
    if (words[1]) o.push(`<text x="${cx}" y="${m.t + ph + 33}" text-anchor="middle" fill="#4b5563">${esc(words[1])}</text>`)
    const c = r.values.ceiling
    if (c) o.push(`<text x="${cx}" y="${m.t + ph + 50}" text-anchor="middle" fill="#6b7280" font-size="10">ceiling ${esc(fmt(c, r.unit))} ${esc(r.unit)}</text>`)
  })
  o.push(`<text x="${m.l}" y="${H - 14}" fill="#6b7280" font-size="11">${esc('Generated by scripts/bench/fio.sh (scripts/bench/fio-report.mjs). Figures and ratios: docs/benchmarks.md § fio, docs/bench/fio-latest.json.')}</text>`)
  o.push('</svg>')
  return o.join('\n') + '\n'
}

// ------------------------------------------------------------------ writing ---
function writeAtomic (file, text) {
  mkdirSync(dirname(file), { recursive: true })
  const tmp = `${file}.tmp-${process.pid}`
  writeFileSync(tmp, text)
  renameSync(tmp, file)
}

const md = markdown()
console.log(md)
if (args.json) writeAtomic(args.json, JSON.stringify(summary, null, 2) + '\n')
if (args.svg) writeAtomic(args.svg, svg())
if (args.markdown) {
  // Re-read right before rewriting: other suites own the rest of this file.
  const BEGIN = '<!-- fio:begin -->'; const END = '<!-- fio:end -->'
  const block = `${BEGIN}\n${md}\n${END}`
  let text = existsSync(args.markdown) ? readFileSync(args.markdown, 'utf8') : '# Benchmarks\n'
  const b = text.indexOf(BEGIN); const e = text.indexOf(END)
  if (b !== -1 && e > b) {
    text = text.slice(0, b) + block + text.slice(e + END.length)
  } else {
    text = text.replace(/\n*$/, '\n\n') + `## fio\n\n${block}\n`
  }
  writeAtomic(args.markdown, text)
}
