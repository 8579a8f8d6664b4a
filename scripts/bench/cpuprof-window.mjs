#!/usr/bin/env node
// Where a V8 CPU profile's time went within given windows of the monotonic clock (the bench
// prints them: snapshot.mjs --cpu-prof DIR). Self time per function and per source file.
//   node scripts/bench/cpuprof-window.mjs PROFILE.cpuprofile '[[t0, t1], ...]' [--top 30]
// Windows are µs of CLOCK_MONOTONIC, the clock of a profile's startTime and of process.hrtime.
import { readFileSync } from 'node:fs';

const [file, win] = process.argv.slice(2);
const top = process.argv.includes('--top') ? Number(process.argv[process.argv.indexOf('--top') + 1]) : 30;
const prof = JSON.parse(readFileSync(file, 'utf8'));
const windows = win ? JSON.parse(win) : [[-Infinity, Infinity]];
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const self = new Map();
const perFile = new Map();
let t = prof.startTime;
let total = 0;
let all = 0;
for (let i = 0; i < prof.samples.length; i++) {
  t += prof.timeDeltas[i];
  const dt = prof.timeDeltas[i + 1] ?? 0;
  all += dt;
  if (!windows.some(([a, b]) => t >= a && t < b)) continue;
  const n = byId.get(prof.samples[i]);
  const cf = n.callFrame;
  const f = cf.url ? cf.url.replace(/^.*\/(dist|node_modules)\//, '$1/') : '(native)';
  const k = `${cf.functionName || '(anonymous)'} ${f}:${cf.lineNumber + 1}`;
  self.set(k, (self.get(k) ?? 0) + dt);
  perFile.set(f, (perFile.get(f) ?? 0) + dt);
  total += dt;
}
const ms = (us) => (us / 1000).toFixed(1).padStart(9);
console.log(`${(total / 1000).toFixed(0)} ms of samples in the windows (of ${(all / 1000).toFixed(0)} ms in the profile)`);
console.log('self time by function:');
for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${ms(v)} ms ${((v / total) * 100).toFixed(1).padStart(5)} %  ${k}`);
console.log('self time by file:');
for (const [k, v] of [...perFile].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${ms(v)} ms ${((v / total) * 100).toFixed(1).padStart(5)} %  ${k}`);
