#!/usr/bin/env node
// What one FUSE request pays for metrics, without FUSE: the per-volume observer
// (src/daemon/metrics.ts VolumeIoStats) and the clock reads of the sampled latency
// (src/fuse/block-file-system.ts LATENCY_SAMPLE). Checks the counts first, then times.
//   node scripts/bench/metrics-observer.mjs      (after npx tsc -p .)
import { VolumeIoStats } from '../../dist/daemon/metrics.js';
import { LATENCY_SAMPLE } from '../../dist/fuse/block-file-system.js';

const N = 3_000_000;
const s = new VolumeIoStats('vol-0');
for (let i = 0; i < 1000; i++) s.observe('read', 4096, i % LATENCY_SAMPLE === 0 ? 20 : -1, 0);
if (s.ops[0] !== 1000 || s.bytes[0] !== 4096 * 1000 || s.timed[0] !== Math.ceil(1000 / LATENCY_SAMPLE)) {
  throw new Error(`observer miscounted: ops ${s.ops[0]} bytes ${s.bytes[0]} timed ${s.timed[0]}`);
}
const time = (fn) => { const t0 = performance.now(); fn(); return ((performance.now() - t0) * 1e6) / N; };
let sink = 0;
const rows = [];
for (let round = 0; round < 3; round++) {
  const clock = time(() => { for (let i = 0; i < N; i++) sink += performance.now(); });
  const observe = time(() => { for (let i = 0; i < N; i++) s.observe('read', 4096, -1, 0); });
  let tick = 0;
  const perRequest = time(() => {
    for (let i = 0; i < N; i++) {
      const t0 = ++tick % LATENCY_SAMPLE === 1 ? performance.now() : 0;
      s.observe('read', 4096, t0 === 0 ? -1 : (performance.now() - t0) * 1000, 0);
    }
  });
  rows.push({ clock, observe, perRequest });
}
const med = (k) => rows.map((r) => r[k]).sort((a, b) => a - b)[1];
console.log(`performance.now(): ${med('clock').toFixed(0)} ns; observe: ${med('observe').toFixed(0)} ns; per request with 1-in-${LATENCY_SAMPLE} timing: ${med('perRequest').toFixed(0)} ns (unsampled it would be ~${(2 * med('clock') + med('observe')).toFixed(0)} ns)${sink ? '' : ''}`);
