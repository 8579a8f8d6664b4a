import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AccessDeniedException, CompleteSnapshotCommand, EBSClient, GetSnapshotBlockCommand, ListChangedBlocksCommand, PutSnapshotBlockCommand,
  ResourceNotFoundException, StartSnapshotCommand, ValidationException, ConflictException, paginateListSnapshotBlocks,
} from '@aws-sdk/client-ebs';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { kmsUrl } from '../kms-net/helpers.js';

/**
 * Issue 17, EBS direct APIs driven by the real AWS SDK (@aws-sdk/client-ebs)
 * against the daemon's network listener (--kms-listen): the SDK's own REST
 * serializers and deserializers, SigV4 (UNSIGNED-PAYLOAD for the block), the
 * standard credential chain (here: the environment), the endpoint setting,
 * and its exception classes carrying EBS's Reason.
 */
const BLOCK = 512 * 1024;
const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

/** An EBSClient whose credentials come from the standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), set only while it resolves them. */
export async function sdkClient(endpoint: string, region: string, key: { AccessKeyId: string; SecretAccessKey: string }, maxAttempts = 3): Promise<EBSClient> {
  const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY, profile: process.env.AWS_PROFILE };
  process.env.AWS_ACCESS_KEY_ID = key.AccessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = key.SecretAccessKey;
  delete process.env.AWS_PROFILE;
  try {
    const client = new EBSClient({ endpoint, region, maxAttempts });
    // The chain resolves once and is memoized: resolve it now, while the environment holds this key.
    const creds = await client.config.credentials();
    expect(creds.accessKeyId).toBe(key.AccessKeyId);
    return client;
  } finally {
    for (const [k, v] of [['AWS_ACCESS_KEY_ID', saved.id], ['AWS_SECRET_ACCESS_KEY', saved.secret], ['AWS_PROFILE', saved.profile]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

/** The error a promise rejects with (the test fails if it resolves). */
async function rejection(p: Promise<unknown>): Promise<any> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected the call to fail');
}

describe('EBS direct APIs through @aws-sdk/client-ebs (real daemon, --kms-listen)', () => {
  const env = new Env('ebs-sdk');
  let ebs: EBSClient;
  let stranger: EBSClient;
  let keyArn = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--kms-listen', '127.0.0.1:0']);
    const base = await kmsUrl(env);
    const st = await env.ok(['status']);
    const region = st.Daemon.Region as string;
    keyArn = (await env.ok(['kms', 'create-key', '--description', 'ebs sdk'])).KeyMetadata.Arn;
    await env.ok(['iam', 'create-user', 'bob']);
    await env.ok(['iam', 'create-user', 'eve']);
    const policy = join(env.dir, 'p.json');
    writeFileSync(policy, JSON.stringify({ Version: '2012-10-17', Statement: [
      { Effect: 'Allow', Action: 'ebs:*', Resource: `arn:aws:ec2:${region}::snapshot/*` },
      { Effect: 'Allow', Action: ['kms:Decrypt', 'kms:GenerateDataKeyWithoutPlaintext', 'kms:DescribeKey', 'kms:CreateGrant'], Resource: '*' },
    ] }));
    await env.ok(['iam', 'put-policy', 'user/bob', '--policy-name', 'ebs', '--policy-document', `file://${policy}`]);
    ebs = await sdkClient(base, region, (await env.ok(['iam', 'create-access-key', '--user-name', 'bob'])).AccessKey);
    stranger = await sdkClient(base, region, (await env.ok(['iam', 'create-access-key', '--user-name', 'eve'])).AccessKey);
  }, 120_000);
  afterAll(async () => {
    ebs?.destroy();
    stranger?.destroy();
    await env.cleanup();
  });

  it('start, put (Checksum, SHA256, Progress), complete (count, LINEAR checksum), list by paginator, get as a stream with x-amz-Checksum, list changed blocks', async () => {
    const start = await ebs.send(new StartSnapshotCommand({ VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn, Description: 'sdk', Tags: [{ Key: 'k', Value: 'v' }] }));
    expect(start).toMatchObject({ Status: 'pending', VolumeSize: 1, BlockSize: BLOCK, KmsKeyArn: keyArn, Description: 'sdk', Tags: [{ Key: 'k', Value: 'v' }] });
    expect(start.StartTime).toBeInstanceOf(Date);
    const snap = start.SnapshotId!;
    const blocks = new Map<number, Buffer>([[0, randomBytes(BLOCK)], [7, randomBytes(BLOCK)], [300, randomBytes(BLOCK)]]);
    let n = 0;
    for (const [i, data] of blocks) {
      const put = await ebs.send(new PutSnapshotBlockCommand({
        SnapshotId: snap, BlockIndex: i, BlockData: data, DataLength: BLOCK, Checksum: sha(data).toString('base64'), ChecksumAlgorithm: 'SHA256', Progress: Math.round((++n / blocks.size) * 100),
      }));
      expect(put).toMatchObject({ Checksum: sha(data).toString('base64'), ChecksumAlgorithm: 'SHA256' });
    }
    const agg = createHash('sha256');
    for (const i of [...blocks.keys()].sort((a, b) => a - b)) agg.update(sha(blocks.get(i)!));
    const done = await ebs.send(new CompleteSnapshotCommand({ SnapshotId: snap, ChangedBlocksCount: blocks.size, Checksum: agg.digest('base64'), ChecksumAlgorithm: 'SHA256', ChecksumAggregationMethod: 'LINEAR' }));
    expect(done.Status).toBe('completed');

    const listed: { BlockIndex?: number; BlockToken?: string }[] = [];
    for await (const page of paginateListSnapshotBlocks({ client: ebs, pageSize: 100 }, { SnapshotId: snap })) {
      expect(page.BlockSize).toBe(BLOCK);
      expect(page.ExpiryTime).toBeInstanceOf(Date);
      listed.push(...(page.Blocks ?? []));
    }
    expect(listed.map((b) => b.BlockIndex)).toEqual([0, 7, 300]);
    for (const b of listed) {
      const got = await ebs.send(new GetSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: b.BlockIndex!, BlockToken: b.BlockToken! }));
      const bytes = Buffer.from(await got.BlockData!.transformToByteArray());
      expect(bytes.equals(blocks.get(b.BlockIndex!)!)).toBe(true);
      expect(got.Checksum).toBe(sha(bytes).toString('base64'));
      expect(got).toMatchObject({ ChecksumAlgorithm: 'SHA256', DataLength: BLOCK });
    }

    // A child rewriting block 7: ListChangedBlocks names exactly it, with both tokens.
    const child = (await ebs.send(new StartSnapshotCommand({ VolumeSize: 1, ParentSnapshotId: snap }))).SnapshotId!;
    const seven = randomBytes(BLOCK);
    await ebs.send(new PutSnapshotBlockCommand({ SnapshotId: child, BlockIndex: 7, BlockData: seven, DataLength: BLOCK, Checksum: sha(seven).toString('base64'), ChecksumAlgorithm: 'SHA256' }));
    await ebs.send(new CompleteSnapshotCommand({ SnapshotId: child, ChangedBlocksCount: 1 }));
    const changed = await ebs.send(new ListChangedBlocksCommand({ FirstSnapshotId: snap, SecondSnapshotId: child }));
    expect(changed.ChangedBlocks?.map((c) => c.BlockIndex)).toEqual([7]);
    expect(changed.ChangedBlocks?.[0]).toMatchObject({ FirstBlockToken: expect.any(String), SecondBlockToken: expect.any(String) });
    expect(changed.VolumeSize).toBe(1);
  }, 120_000);

  it('refusals arrive as the SDK\'s exception classes with their Reason', async () => {
    const missing = await rejection(ebs.send(new ListChangedBlocksCommand({ SecondSnapshotId: 'snap-0123456789abcdef0' })));
    expect(missing).toBeInstanceOf(ResourceNotFoundException);
    expect(missing.Reason).toBe('SNAPSHOT_NOT_FOUND');
    expect(missing.$metadata.httpStatusCode).toBe(404);

    const snap = (await ebs.send(new StartSnapshotCommand({ VolumeSize: 1 }))).SnapshotId!;
    const data = randomBytes(BLOCK);
    const bad = await rejection(ebs.send(new PutSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: 1, BlockData: data, DataLength: BLOCK, Checksum: sha(randomBytes(8)).toString('base64'), ChecksumAlgorithm: 'SHA256' })));
    expect(bad).toBeInstanceOf(ValidationException);
    expect(bad.Reason).toBe('INVALID_PARAMETER_VALUE');
    expect(bad.message).toMatch(/Checksum does not match/);

    // On a streaming operation too: the error body is parsed, not handed over as the block.
    const token = await rejection(ebs.send(new GetSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: 0, BlockToken: 'AAAA' })));
    expect(token).toBeInstanceOf(ValidationException);
    expect(token.Reason).toBe('INVALID_SNAPSHOT_ID'); // pending: only a completed snapshot is read

    const denied = await rejection(stranger.send(new StartSnapshotCommand({ VolumeSize: 1 })));
    expect(denied).toBeInstanceOf(AccessDeniedException);
    expect(denied.Reason).toBe('UNAUTHORIZED_ACCOUNT');

    await ebs.send(new StartSnapshotCommand({ VolumeSize: 1, ClientToken: 'same-token' }));
    const clash = await rejection(ebs.send(new StartSnapshotCommand({ VolumeSize: 2, ClientToken: 'same-token' })));
    expect(clash).toBeInstanceOf(ConflictException);
  }, 60_000);
});
