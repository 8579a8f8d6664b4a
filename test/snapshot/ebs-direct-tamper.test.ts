import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { callDaemon, socketPathFor } from '../../src/cli/client.js';

/**
 * The EBS direct APIs over a store whose manifests were altered (real daemon, real KMS core,
 * directory store): a manifest whose wrapped key or header is another snapshot's names a data
 * key its blocks were not encrypted under. GetSnapshotBlock must refuse rather than decrypt the
 * blocks to wrong bytes handed out with a matching Checksum, and StartSnapshot must not begin a
 * child under it (docs/architecture.md §15, "Keys").
 */
const BLOCK = 512 * 1024;
type R = Record<string, any>;
const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

describe('EBS direct APIs over a store whose manifest names another snapshot\'s key or header', () => {
  const env = new Env('ebs-tamper');
  let keyArn = '';
  const ebs = (op: string, body: R): Promise<R> => callDaemon(socketPathFor(env.state), `ebs.${op}`, body);
  const manifestDir = (): string => join(env.state, 'snapshots', 'manifests');
  const manifestPath = (snap: string): string => join(manifestDir(), `${snap}.json`);
  /** A completed encrypted snapshot holding `d` at index 3, under the test's key. */
  const snapshotOf = async (d: Buffer): Promise<string> => {
    const snap = (await ebs('StartSnapshot', { VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn })).SnapshotId as string;
    await ebs('PutSnapshotBlock', { SnapshotId: snap, BlockIndex: 3, BlockData: d.toString('base64'), DataLength: BLOCK, Checksum: sha(d).toString('base64'), ChecksumAlgorithm: 'SHA256' });
    await ebs('CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 1 });
    return snap;
  };
  /** Block 3 of `snap`: its bytes, or the refusal as `awsName: message`. */
  const read3 = async (snap: string): Promise<{ data?: Buffer; error?: string }> => {
    const token = (await ebs('ListSnapshotBlocks', { SnapshotId: snap })).Blocks[0].BlockToken;
    return ebs('GetSnapshotBlock', { SnapshotId: snap, BlockIndex: 3, BlockToken: token })
      .then((r) => ({ data: Buffer.from(r.BlockData, 'base64') }), (e: { awsName?: string; message?: string }) => ({ error: `${e.awsName}: ${e.message}` }));
  };
  /** Replace members of a stored manifest, before the daemon first reads it for the EBS direct APIs (it keeps completed ones). */
  const alter = (snap: string, from: string, members: string[]): void => {
    const m = JSON.parse(readFileSync(manifestPath(snap), 'utf8'));
    const other = JSON.parse(readFileSync(manifestPath(from), 'utf8'));
    for (const k of members) m[k] = other[k];
    writeFileSync(manifestPath(snap), JSON.stringify(m));
  };

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    keyArn = (await env.api('TrentService.CreateKey', { Description: 'ebs-direct tamper test' })).KeyMetadata.Arn;
  }, 120_000);
  afterAll(() => env.cleanup());

  it('a manifest carrying another snapshot\'s wrapped key: GetSnapshotBlock is InternalServerException naming the digest, never other bytes; StartSnapshot of a child is refused with nothing left pending', async () => {
    const d = randomBytes(BLOCK);
    const a = await snapshotOf(d);
    const b = await snapshotOf(randomBytes(BLOCK));
    alter(a, b, ['wrappedKey']);
    const got = await read3(a);
    expect(got.data?.equals(d), 'the block was served, decrypted under the wrong key').toBeUndefined();
    expect(got.error).toMatch(new RegExp(`^InternalServerException: GetSnapshotBlock: the data key KMS unwrapped for ${a} in .* does not match the LUKS2 digest of its header`));
    // The untouched snapshot still reads back as written (the check refuses only a key its header does not name).
    expect((await read3(b)).data).toBeDefined();

    const before = readdirSync(manifestDir()).length;
    const child = await ebs('StartSnapshot', { VolumeSize: 1, ParentSnapshotId: a }).then(() => 'started', (e: { awsName?: string; message?: string }) => `${e.awsName}: ${e.message}`);
    expect(child).toMatch(new RegExp(`^InternalServerException: StartSnapshot: the data key KMS unwrapped for ${a} in .* does not match the LUKS2 digest of its header`));
    expect(readdirSync(manifestDir()).length).toBe(before);
  });

  it('a manifest naming another snapshot\'s header: GetSnapshotBlock is refused the same way, as a restore refuses a key its header does not name', async () => {
    const d = randomBytes(BLOCK);
    const a = await snapshotOf(d);
    const b = await snapshotOf(randomBytes(BLOCK));
    alter(a, b, ['header']);
    const got = await read3(a);
    expect(got.data, 'a block was served from a snapshot whose key and header disagree').toBeUndefined();
    expect(got.error).toMatch(/^InternalServerException: GetSnapshotBlock: .* does not match the LUKS2 digest of its header/);
  });

  it('a manifest flipped to encrypted false: GetSnapshotBlock is refused, never the ciphertext handed out as the block', async () => {
    const d = randomBytes(BLOCK);
    const a = await snapshotOf(d);
    const m = JSON.parse(readFileSync(manifestPath(a), 'utf8'));
    m.encrypted = false;
    writeFileSync(manifestPath(a), JSON.stringify(m));
    const got = await read3(a);
    expect(got.data, 'the stored ciphertext was served as the block').toBeUndefined();
    expect(got.error).toMatch(new RegExp(`^InternalServerException: GetSnapshotBlock: the manifest of ${a} in .* says it is unencrypted, but its header is not an unencrypted snapshot's`));
  });

  it('a manifest carrying another snapshot\'s wrapped key: a same-key restore and copy are refused naming it, not left to fail at the first attach', async () => {
    const a = await snapshotOf(randomBytes(BLOCK));
    const b = await snapshotOf(randomBytes(BLOCK));
    alter(a, b, ['wrappedKey']);
    const volumesBefore = (await env.api('ebsd.DescribeVolumes')).Volumes.length;
    const snapshotsBefore = (await env.api('ebsd.DescribeSnapshots')).Snapshots.length;
    // Refused with the store's corruption (InternalFailure, exit 10) before anything is created.
    const restore = await env.cli(['volume', 'create', '--snapshot-id', a, '--wait', '--output', 'json']);
    expect(restore.code, restore.stdout).toBe(10);
    expect(restore.stderr).toContain(`InternalFailure: Snapshot '${a}' cannot be read: its wrapped data key is not the one its LUKS2 header names`);
    expect((await env.api('ebsd.DescribeVolumes')).Volumes.length).toBe(volumesBefore);
    const copy = await env.cli(['snapshot', 'copy', a, '--wait', '--output', 'json']);
    expect(copy.code, copy.stdout).toBe(10);
    expect(copy.stderr).toContain(`InternalFailure: Snapshot '${a}' cannot be read: its wrapped data key is not the one its LUKS2 header names`);
    expect((await env.api('ebsd.DescribeSnapshots')).Snapshots.length).toBe(snapshotsBefore);
  });

  it('an unaltered encrypted snapshot and a child of it read back as written (the key check passes)', async () => {
    const d = randomBytes(BLOCK);
    const a = await snapshotOf(d);
    expect((await read3(a)).data?.equals(d)).toBe(true);
    const child = (await ebs('StartSnapshot', { VolumeSize: 1, ParentSnapshotId: a })).SnapshotId as string;
    await ebs('CompleteSnapshot', { SnapshotId: child, ChangedBlocksCount: 0 });
    expect((await read3(child)).data?.equals(d)).toBe(true);
  });
});
