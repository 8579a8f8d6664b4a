/**
 * The warning for a refused snapshot manifest (--snapshot-manifest-key, docs/architecture.md §13.5)
 * through a real daemon and its embedded KMS: given once per daemon life for each (snapshot, content
 * or error), not once per DescribeSnapshots that lists it or names it (a console polling the listing
 * would repeat it every few seconds for ever); the manifest rewritten with other bad content is
 * warned of again, once. What the log quotes of the manifest (the key its MAC names, JSON.parse's
 * excerpt of a manifest that is not JSON) is cut to 128 characters: a store writer chooses it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';

const BLOCK = 512 * 1024;
const WARNING = 'snapshot manifest refused';

describe('warnings for refused manifests', () => {
  const env = new Env('refused-warnings');
  let flags: string[] = [];
  const manifestFile = (id: string): string => join(env.state, 'snapshots', 'manifests', `${id}.json`);
  /** The daemon's warnings about `id`'s refused manifest. */
  const warnings = (id: string): string[] => env.daemonLog().split('\n').filter((l) => l.includes(WARNING) && l.includes(`"snapshotId":"${id}"`));
  /** DescribeSnapshots listed, then by id, `n` times each; returns the state shown. */
  const describe3 = async (id: string, n = 3): Promise<string[]> => {
    const states: string[] = [];
    for (let i = 0; i < n; i++) {
      states.push((await env.api('ebsd.DescribeSnapshots', {})).Snapshots.find((s: any) => s.SnapshotId === id)?.State);
      states.push((await env.api('ebsd.DescribeSnapshots', { SnapshotIds: [id] })).Snapshots[0].State);
    }
    return states;
  };
  const upload = async (): Promise<string> => {
    const snap = (await env.api('ebs.StartSnapshot', { VolumeSize: 1, Encrypted: false })).SnapshotId as string;
    const data = randomBytes(BLOCK);
    await env.api('ebs.PutSnapshotBlock', { SnapshotId: snap, BlockIndex: 0, BlockData: data.toString('base64'), DataLength: BLOCK, Checksum: createHash('sha256').update(data).digest('base64'), ChecksumAlgorithm: 'SHA256' });
    expect(await env.api('ebs.CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 1 })).toEqual({ Status: 'completed' });
    return snap;
  };

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--allow-unencrypted']);
    const macKey = (await env.api('TrentService.CreateKey', { KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC', Description: 'manifests' })).KeyMetadata.Arn;
    await env.stop();
    flags = ['--allow-unencrypted', '--snapshot-manifest-key', macKey];
    await env.start(flags);
  }, 60_000);

  afterAll(() => env.cleanup(), 60_000);

  it('warns once per snapshot and content, however often it is listed, and quotes at most 128 characters of what the manifest names', async () => {
    const snap = await upload();
    // Changed (its description), and its MAC said to be another key's, a long one (as a store writer may write):
    // refused, and the error names the key the manifest names.
    const longKey = `arn:aws:kms:us-east-1:111122223333:key/${'k'.repeat(2000)}`;
    const m = JSON.parse(readFileSync(manifestFile(snap), 'utf8'));
    m.description = 'changed';
    m.manifestMac.keyArn = longKey;
    writeFileSync(manifestFile(snap), `${JSON.stringify(m)}\n`);

    expect(await describe3(snap)).toEqual(Array(6).fill('error'));
    expect(await env.untilLog((l) => l.includes(WARNING) && l.includes(snap))).toContain(snap);
    const first = warnings(snap);
    expect(first).toHaveLength(1);
    expect(first[0]).toContain('it names key arn:aws:kms:us-east-1:111122223333:key/k');
    expect(first[0]).not.toContain('k'.repeat(129));
    expect(first[0]).toContain('more characters)');

    // Other bad content: not JSON at all (a long line, of which JSON.parse's message may quote a part). Warned of once more.
    writeFileSync(manifestFile(snap), `{"snapshotId":"${snap}", ${'x'.repeat(3000)}\n`);
    expect(await describe3(snap)).toEqual(Array(6).fill('error'));
    expect(await env.untilLog((l) => warnings(snap).length >= 2)).toBeTruthy();
    const second = warnings(snap);
    expect(second).toHaveLength(2);
    expect(second[1]).toContain('is not valid JSON');
    expect(second[1]).not.toContain('x'.repeat(129));

    // Put back as the first bad content: already warned of in this daemon's life, so not again.
    writeFileSync(manifestFile(snap), `${JSON.stringify(m)}\n`);
    expect(await describe3(snap, 2)).toEqual(Array(4).fill('error'));
    expect(warnings(snap)).toHaveLength(2);
  }, 90_000);
});
