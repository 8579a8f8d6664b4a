#!/usr/bin/env node
// A completed manifest read again through the directory store (kept parsed: dir-store.ts) against
// parsing and checking its text each time (manifest-check.ts). Build first (npx tsc -p .).
//   node scripts/bench/manifest-read.mjs [--blocks 2048] [--reads 200]
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { DirSnapshotStore } from '../../dist/snapshot/dir-store.js';
import { parseManifest } from '../../dist/snapshot/manifest-check.js';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const BLOCKS = arg('blocks', 2048);
const READS = arg('reads', 200);
const dir = mkdtempSync('/tmp/ebsd-bench-manifest-');
try {
  const s = await DirSnapshotStore.open(dir);
  const id = 'snap-0123456789abcdef0';
  const blocks = Array.from({ length: BLOCKS }, (_, i) => [i, randomBytes(32).toString('hex')]);
  await s.putManifest({
    formatVersion: 1, snapshotId: id, volumeId: 'vol-0123456789abcdef0', volumeSize: Math.max(1, Math.ceil((BLOCKS * 512) / 1024 / 1024)), state: 'completed', progress: 100,
    startTime: '2026-11-30T09:00:00.000Z', description: '', tags: [], ownerId: '123456789012', encrypted: true,
    kmsKeyId: 'arn:aws:kms:us-east-1:123456789012:key/00000000-0000-4000-8000-000000000000', dataOffset: 16777216, blocks,
  });
  await s.getManifest(id);
  let t = performance.now();
  for (let i = 0; i < READS; i++) await s.getManifest(id);
  const kept = (performance.now() - t) / READS;
  const text = readFileSync(join(dir, 'manifests', `${id}.json`), 'utf8');
  t = performance.now();
  for (let i = 0; i < READS; i++) parseManifest('bench', id, text);
  const parse = (performance.now() - t) / READS;
  console.log(`${BLOCKS}-block manifest (${text.length} bytes), ${READS} reads: read kept ${kept.toFixed(3)} ms, parse and check ${parse.toFixed(3)} ms (a read without the kept copy: both)`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
