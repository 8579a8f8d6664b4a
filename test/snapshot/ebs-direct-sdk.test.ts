import { createHash, randomBytes } from 'node:crypto';
import { connect, createConnection, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AccessDeniedException, CompleteSnapshotCommand, EBSClient, GetSnapshotBlockCommand, ListChangedBlocksCommand, PutSnapshotBlockCommand,
  ListSnapshotBlocksCommand, RequestThrottledException, ResourceNotFoundException, StartSnapshotCommand, ValidationException, ConflictException,
  paginateListSnapshotBlocks,
} from '@aws-sdk/client-ebs';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { kmsUrl } from '../kms-net/helpers.js';
import { callDaemon, socketPathFor } from '../../src/cli/client.js';
import { api } from './helpers.js';
import { rejection } from '../helpers/rejection.js';

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
async function sdkClient(endpoint: string, region: string, key: { AccessKeyId: string; SecretAccessKey: string }, maxAttempts = 3): Promise<EBSClient> {
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

/**
 * A TCP proxy on loopback in front of the daemon's listener that loses the answer of the next
 * CompleteSnapshot (`POST /snapshots/completion/…`) once told to: the request reaches the daemon, which
 * completes the snapshot and answers, and the client's connection is closed before the answer reaches
 * it, as a network that drops a connection does (the SDK sees the socket hang up and retries).
 */
class CompletionAnswerLoser {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private toLose = 0;
  /** Answers lost so far. */
  lost = 0;

  constructor(private readonly upstream: { host: string; port: number }) {}

  async start(): Promise<string> {
    this.server = createServer((client) => this.connection(client));
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', () => r()));
    return `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
  }

  loseNextCompletion(): void {
    this.toLose++;
  }

  async close(): Promise<void> {
    for (const x of this.sockets) x.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }

  private connection(client: Socket): void {
    const up = createConnection(this.upstream);
    this.sockets.add(client).add(up);
    let losing = false;
    const end = (): void => { client.destroy(); up.destroy(); this.sockets.delete(client); this.sockets.delete(up); };
    client.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
    client.on('data', (chunk: Buffer) => {
      if (this.toLose > 0 && chunk.toString('latin1', 0, 32).startsWith('POST /snapshots/completion/')) {
        this.toLose--;
        losing = true;
      }
      up.write(chunk);
    });
    up.on('data', (chunk: Buffer) => {
      if (!losing) {
        client.write(chunk);
        return;
      }
      // The daemon answered: it completed the snapshot. The answer goes nowhere.
      this.lost++;
      end();
    });
  }
}

describe('EBS direct APIs through @aws-sdk/client-ebs (real daemon, --kms-listen)', () => {
  const env = new Env('ebs-sdk');
  let ebs: EBSClient;
  let stranger: EBSClient;
  let keyArn = '';

  let base = '';
  let region = '';
  let policy = '';
  /** Set-up straight to the control socket (root): a CLI process per call costs a Node start-up each. */
  const sock = (target: string, body: Record<string, unknown> = {}): Promise<any> => callDaemon(socketPathFor(env.state), target, body);
  const clients: EBSClient[] = [];
  const keys = new Map<string, { AccessKeyId: string; SecretAccessKey: string }>();
  /** Another client of `user`, e.g. with other retry settings. */
  const clientOf = async (user: string, maxAttempts: number): Promise<EBSClient> => {
    const c = await sdkClient(base, region, keys.get(user)!, maxAttempts);
    clients.push(c);
    return c;
  };
  /** Decrypt events of the KMS audit made for `user`, and those KMS refused. */
  const decrypts = (user: string): { all: number; refused: string[] } => {
    const ev = env.auditText().split('\n').filter(Boolean).map((l) => JSON.parse(l))
      .filter((e) => e.eventName === 'Decrypt' && String(e.userIdentity?.arn ?? '').endsWith(`:user/${user}`));
    return { all: ev.length, refused: ev.filter((e) => e.errorCode).map((e) => String(e.errorCode)) };
  };
  /** One block put and the snapshot completed by bob; returns its id, the block and its token. */
  const oneBlock = async (o: { KmsKeyArn?: string } = {}): Promise<{ snap: string; data: Buffer; token: string }> => {
    const snap = (await ebs.send(new StartSnapshotCommand({ VolumeSize: 1, ...(o.KmsKeyArn ? { Encrypted: true, KmsKeyArn: o.KmsKeyArn } : {}) }))).SnapshotId!;
    const data = randomBytes(BLOCK);
    await ebs.send(new PutSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: 2, BlockData: data, DataLength: BLOCK, Checksum: sha(data).toString('base64'), ChecksumAlgorithm: 'SHA256' }));
    await ebs.send(new CompleteSnapshotCommand({ SnapshotId: snap, ChangedBlocksCount: 1 }));
    const token = (await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: snap }))).Blocks![0]!.BlockToken!;
    return { snap, data, token };
  };

  beforeAll(async () => {
    ensureBuilt();
    // Hidden knobs (src/daemon/ebs-api.ts): 4 block requests per second per snapshot, data keys kept 8 s, so the tests need not wait on AWS's figures.
    // 8 s, not less: "one Decrypt per caller and snapshot" counts one Decrypt for four calls at once, which on a loaded CI machine
    // (the whole suite on two cores) once took longer than a 3-second key lifetime, and a second Decrypt was counted.
    process.env.EBSD_EBS_SNAPSHOT_RPS = '4';
    process.env.EBSD_EBS_KEY_TTL_MS = '8000';
    try {
      await env.start(['--kms-listen', '127.0.0.1:0']);
    } finally {
      delete process.env.EBSD_EBS_SNAPSHOT_RPS;
      delete process.env.EBSD_EBS_KEY_TTL_MS;
    }
    base = await kmsUrl(env);
    region = (await sock('ebsd.Status')).Daemon.Region as string;
    keyArn = (await sock('TrentService.CreateKey', { Description: 'ebs sdk' })).KeyMetadata.Arn;
    policy = JSON.stringify({ Version: '2012-10-17', Statement: [
      { Effect: 'Allow', Action: 'ebs:*', Resource: `arn:aws:ec2:${region}::snapshot/*` },
      // Tags given to StartSnapshot: AWS authorizes them as ec2:CreateTags (ec2:CreateAction StartSnapshot).
      { Effect: 'Allow', Action: 'ec2:CreateTags', Resource: `arn:aws:ec2:${region}::snapshot/*`, Condition: { StringEquals: { 'ec2:CreateAction': 'StartSnapshot' } } },
      { Effect: 'Allow', Action: ['kms:Decrypt', 'kms:GenerateDataKeyWithoutPlaintext', 'kms:DescribeKey', 'kms:CreateGrant'], Resource: '*' },
    ] });
    for (const u of ['bob', 'carol', 'eve']) {
      await sock('ebsd.IamCreateUser', { UserName: u });
      if (u !== 'eve') await sock('ebsd.IamPutPolicy', { Principal: `user/${u}`, PolicyName: 'ebs', PolicyDocument: policy });
      keys.set(u, (await sock('ebsd.IamCreateAccessKey', { UserName: u })).AccessKey);
    }
    ebs = await clientOf('bob', 3);
    stranger = await clientOf('eve', 3);
  }, 120_000);
  afterAll(async () => {
    for (const c of clients) c.destroy();
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

  it('a CompleteSnapshot whose answer is lost is retried by the SDK and answered completed (202): one completed snapshot, readable; a repeat asking for something else is refused naming what differs', async () => {
    const proxy = new CompletionAnswerLoser({ host: new URL(base).hostname, port: Number(new URL(base).port) });
    try {
      const lossy = await sdkClient(await proxy.start(), region, keys.get('bob')!, 3);
      clients.push(lossy);
      const snap = (await lossy.send(new StartSnapshotCommand({ VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn }))).SnapshotId!;
      const blocks = new Map<number, Buffer>([[1, randomBytes(BLOCK)], [5, randomBytes(BLOCK)]]);
      for (const [i, data] of blocks) {
        await lossy.send(new PutSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: i, BlockData: data, DataLength: BLOCK, Checksum: sha(data).toString('base64'), ChecksumAlgorithm: 'SHA256' }));
      }
      const agg = createHash('sha256');
      for (const i of [...blocks.keys()].sort((a, b) => a - b)) agg.update(sha(blocks.get(i)!));
      const checksum = agg.digest('base64');
      const asked = { SnapshotId: snap, ChangedBlocksCount: 2, Checksum: checksum, ChecksumAlgorithm: 'SHA256', ChecksumAggregationMethod: 'LINEAR' } as const;

      // The first attempt completes the snapshot and its answer is lost; the SDK's retry gets the same answer.
      proxy.loseNextCompletion();
      const done = await lossy.send(new CompleteSnapshotCommand(asked));
      expect(proxy.lost).toBe(1);
      expect(done.Status).toBe('completed');
      expect(done.$metadata.httpStatusCode).toBe(202);
      expect(done.$metadata.attempts).toBe(2);

      // One snapshot, completed, whose blocks read back as written.
      const described = (await env.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots;
      expect(described).toHaveLength(1);
      expect(described[0]).toMatchObject({ SnapshotId: snap, State: 'completed' });
      const listed = (await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: snap }))).Blocks!;
      expect(listed.map((b) => b.BlockIndex)).toEqual([1, 5]);
      for (const b of listed) {
        const got = await ebs.send(new GetSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: b.BlockIndex!, BlockToken: b.BlockToken! }));
        expect(Buffer.from(await got.BlockData!.transformToByteArray()).equals(blocks.get(b.BlockIndex!)!)).toBe(true);
      }

      // The same again, with and without the checksum: the same answer, nothing changed.
      const manifestBefore = (await env.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots[0];
      expect((await ebs.send(new CompleteSnapshotCommand(asked))).Status).toBe('completed');
      expect((await ebs.send(new CompleteSnapshotCommand({ SnapshotId: snap, ChangedBlocksCount: 2 }))).Status).toBe('completed');
      expect((await env.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots[0]).toEqual(manifestBefore);
      // Audited: the completion as it was, then each repeat (the SDK's retry, the two above) marked `repeat: true`,
      // so the log tells the one call that sealed the snapshot from those that found it sealed.
      const completions = env.auditText().split('\n').filter(Boolean).map((l) => JSON.parse(l))
        .filter((e) => e.eventName === 'CompleteSnapshot' && e.requestParameters?.snapshotId === snap && !e.errorCode);
      expect(completions.map((e) => [e.responseElements, e.additionalEventData])).toEqual([
        [{ status: 'completed' }, undefined],
        [{ status: 'completed' }, { repeat: true }],
        [{ status: 'completed' }, { repeat: true }],
        [{ status: 'completed' }, { repeat: true }],
      ]);

      // Asking for something else: refused, naming what differs.
      const count = await rejection(ebs.send(new CompleteSnapshotCommand({ SnapshotId: snap, ChangedBlocksCount: 3 })));
      expect(count).toBeInstanceOf(ValidationException);
      expect(count.$metadata.httpStatusCode).toBe(400);
      expect(count.message).toMatch(/already completed.*ChangedBlocksCount is 3, not 2/);
      const other = createHash('sha256').update(sha(blocks.get(5)!)).update(sha(blocks.get(1)!)).digest('base64');
      const sum = await rejection(ebs.send(new CompleteSnapshotCommand({ ...asked, Checksum: other })));
      expect(sum).toBeInstanceOf(ValidationException);
      expect(sum.message).toMatch(/already completed.*Checksum is not the LINEAR checksum of the 2 block\(s\) it sealed/);
      expect((await env.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots[0]).toEqual(manifestBefore);

      // Another identity allowed ebs:* (carol): her Checksum is not compared, so the right one and a wrong one get the
      // same refusal (else each answer would tell whether a guess at the blocks' content is right); without one, completed.
      const carol = await clientOf('carol', 1);
      const guesses = [await rejection(carol.send(new CompleteSnapshotCommand(asked))), await rejection(carol.send(new CompleteSnapshotCommand({ ...asked, Checksum: other })))];
      for (const g of guesses) {
        expect(g).toBeInstanceOf(ValidationException);
        expect(g.message).toMatch(/was begun by another identity.*was not read/);
      }
      expect(guesses[0].message).toBe(guesses[1].message);
      expect((await carol.send(new CompleteSnapshotCommand({ SnapshotId: snap, ChangedBlocksCount: 2 }))).Status).toBe('completed');
      expect((await env.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots[0]).toEqual(manifestBefore);
    } finally {
      await proxy.close();
    }
  }, 60_000);

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
  it('a SnapshotId or BlockIndex the model refuses (pattern, range) is ValidationException with its Reason, as the socket answers it, never an unknown operation', async () => {
    // Thunks: each call is made in turn, so a failed expectation leaves none in flight.
    const cases: [string, () => Promise<unknown>, string][] = [
      ['upper-case hex', () => ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: 'snap-ABC' })), 'INVALID_SNAPSHOT_ID'],
      ['a volume id', () => ebs.send(new ListChangedBlocksCommand({ SecondSnapshotId: 'vol-0123456789abcdef0' })), 'INVALID_SNAPSHOT_ID'],
      ['first id', () => ebs.send(new ListChangedBlocksCommand({ FirstSnapshotId: 'vol-0123456789abcdef0', SecondSnapshotId: 'snap-0123456789abcdef0' })), 'INVALID_SNAPSHOT_ID'],
      ['past 64 characters', () => ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: `snap-${'a'.repeat(60)}` })), 'INVALID_SNAPSHOT_ID'],
      ['completion of no snapshot id', () => ebs.send(new CompleteSnapshotCommand({ SnapshotId: 'ami-0123', ChangedBlocksCount: 0 })), 'INVALID_SNAPSHOT_ID'],
      ['a negative BlockIndex', () => ebs.send(new GetSnapshotBlockCommand({ SnapshotId: 'snap-0123456789abcdef0', BlockIndex: -1, BlockToken: 'AAAA' })), 'INVALID_BLOCK'],
    ];
    for (const [what, p, reason] of cases) {
      const e = await rejection(p());
      expect(e, `${what}: ${e}`).toBeInstanceOf(ValidationException);
      expect(e.Reason, what).toBe(reason);
      expect(e.$metadata.httpStatusCode, what).toBe(400);
    }
    const data = randomBytes(BLOCK);
    const put = await rejection(ebs.send(new PutSnapshotBlockCommand({ SnapshotId: 'snap-XYZ', BlockIndex: 0, BlockData: data, DataLength: BLOCK, Checksum: sha(data).toString('base64'), ChecksumAlgorithm: 'SHA256' })));
    expect(put).toBeInstanceOf(ValidationException);
    expect(put.Reason).toBe('INVALID_SNAPSHOT_ID');
  }, 60_000);

  it('StartSnapshot Tags as EBS and EC2 take them: any characters and a Key without Value pass, the snapshot completes and stays readable; an empty Key, an aws: Key or a Key given twice is ValidationException INVALID_TAG and starts nothing', async () => {
    // EBS's Tag: Key `^[\S\s]+$` (at most 127), Value `^[\S\s]*$` (at most 255), both optional in the model.
    const tags = [{ Key: 'Name', Value: 'backup #3 (daily), 50% off!' }, { Key: 'owner' }, { Key: 'équipe', Value: '東京' }];
    const start = await ebs.send(new StartSnapshotCommand({ VolumeSize: 1, Tags: tags }));
    const want = [{ Key: 'Name', Value: 'backup #3 (daily), 50% off!' }, { Key: 'owner', Value: '' }, { Key: 'équipe', Value: '東京' }];
    expect(start.Tags).toEqual(want);
    const snap = start.SnapshotId!;
    expect((await ebs.send(new CompleteSnapshotCommand({ SnapshotId: snap, ChangedBlocksCount: 0 }))).Status).toBe('completed');
    expect((await ebs.send(new ListSnapshotBlocksCommand({ SnapshotId: snap }))).Blocks).toEqual([]);
    expect((await env.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots[0].Tags).toEqual(want);

    // Each of these was taken before; the empty Key made a manifest the store's check refuses, so the completed
    // snapshot answered InternalServerException to every read and vanished from DescribeSnapshots.
    const count = async (): Promise<number> => (await env.api('ebsd.DescribeSnapshots', {})).Snapshots.length;
    const before = await count();
    const cases: [string, { Key?: string; Value?: string }[], RegExp][] = [
      ['an empty Key', [{ Key: '', Value: 'x' }], /Tags\[0\] Key must be a string of 1 to 127 characters/],
      ['no Key', [{ Value: 'x' }], /Tags\[0\] Key must be a string of 1 to 127 characters/],
      ['an aws: Key', [{ Key: 'k', Value: 'v' }, { Key: 'AWS:backup', Value: 'x' }], /Tags\[1\] Key "AWS:backup" begins with 'aws:'/],
      ['a Key given twice', [{ Key: 'k', Value: '1' }, { Key: 'k', Value: '2' }], /Tags\[1\] Key "k" is given twice/],
    ];
    for (const [what, t, message] of cases) {
      const e = await rejection(ebs.send(new StartSnapshotCommand({ VolumeSize: 1, Tags: t })));
      expect(e, `${what}: ${e}`).toBeInstanceOf(ValidationException);
      expect(e.Reason, what).toBe('INVALID_TAG');
      expect(e.$metadata.httpStatusCode, what).toBe(400);
      expect(e.message, what).toMatch(message);
    }
    expect(await count()).toBe(before);
  }, 60_000);

  it('a body the listener refuses unread is answered as EBS answers (REST-JSON), never STS\'s XML: over the size limit ValidationException the SDK parses, the snapshot left pending; past the requests one connection may queue RequestThrottledException', async () => {
    const snap = (await ebs.send(new StartSnapshotCommand({ VolumeSize: 1 }))).SnapshotId!;
    // Over the listener's 1 MiB body limit (connection-guard.ts): the SDK used to get a 413 with an XML body and threw a SyntaxError.
    const big = randomBytes(4 * BLOCK); // 2 MiB
    const e = await rejection(ebs.send(new PutSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: 0, BlockData: big, DataLength: big.length, Checksum: sha(big).toString('base64'), ChecksumAlgorithm: 'SHA256' })));
    expect(e, String(e)).toBeInstanceOf(ValidationException);
    expect(e.Reason).toBe('INVALID_PARAMETER_VALUE');
    expect(e.$metadata.httpStatusCode).toBe(400);
    expect(e.message).toMatch(/request body over 1048576 bytes: a PutSnapshotBlock body is one block of 524288 bytes/);
    const data = randomBytes(BLOCK);
    await ebs.send(new PutSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: 0, BlockData: data, DataLength: BLOCK, Checksum: sha(data).toString('base64'), ChecksumAlgorithm: 'SHA256' }));
    expect((await ebs.send(new CompleteSnapshotCommand({ SnapshotId: snap, ChangedBlocksCount: 1 }))).Status).toBe('completed');

    // 64 requests pipelined on one connection, past the 32 it may have waiting (kms-transport.ts): the rest are refused unread.
    const { hostname, port } = new URL(base);
    const one = `GET /snapshots/${snap}/blocks HTTP/1.1\r\nHost: ${hostname}:${port}\r\n\r\n`;
    const text = await new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = [];
      const sock = connect(Number(port), hostname, () => sock.write(one.repeat(64)));
      const done = (): void => { clearTimeout(t); sock.destroy(); resolve(Buffer.concat(chunks).toString('latin1')); };
      const t = setTimeout(done, 10_000);
      sock.on('data', (c: Buffer) => {
        chunks.push(c);
        if ((Buffer.concat(chunks).toString('latin1').match(/HTTP\/1\.1 \d{3} /g) ?? []).length >= 64) done();
      });
      sock.on('end', done);
      sock.on('error', reject);
    });
    // A body is not followed by a line end: each answer begins where the next status line does.
    const answers = text.split(/(?=HTTP\/1\.1 \d{3} )/).filter(Boolean);
    expect(answers.length).toBe(64);
    expect(text).not.toContain('<ErrorResponse');
    const throttledAnswers = answers.filter((a) => /^x-amzn-ErrorType: RequestThrottledException\r$/im.test(a));
    expect(throttledAnswers.length).toBeGreaterThan(0);
    for (const a of throttledAnswers) {
      expect(a).toMatch(/^HTTP\/1\.1 400 /);
      expect(a).toContain('"Reason":"ACCOUNT_THROTTLED"');
    }
    // The others were read and refused for their missing signature, as EBS answers it.
    for (const a of answers.filter((x) => !throttledAnswers.includes(x))) expect(a).toMatch(/^x-amzn-ErrorType: \w+\r$/im);
  }, 60_000);

  it('a StartSnapshot snapshot describes as VolumeId vol-ffffffff (EC2\'s id for a snapshot of no volume); KmsKeyArn with ParentSnapshotId is ValidationException', async () => {
    const other = (await env.api('TrentService.CreateKey', { Description: 'another' })).KeyMetadata.Arn as string;
    const { snap } = await oneBlock({ KmsKeyArn: keyArn });
    const d = (await env.api('ebsd.DescribeSnapshots', { SnapshotIds: [snap] })).Snapshots[0];
    expect(d).toMatchObject({ SnapshotId: snap, VolumeId: 'vol-ffffffff', State: 'completed', Encrypted: true, KmsKeyId: keyArn });
    const byVolume = await api(env)('DescribeSnapshots', { Filters: [{ Name: 'volume-id', Values: ['vol-ffffffff'] }] });
    expect(byVolume.Snapshots.map((x: { SnapshotId: string }) => x.SnapshotId)).toContain(snap);
    // Encryption outcomes for EBS direct APIs: an encrypted parent with KmsKeyArn specified fails with ValidationException, the same key or another.
    for (const k of [other, keyArn]) {
      const e = await rejection(ebs.send(new StartSnapshotCommand({ VolumeSize: 1, ParentSnapshotId: snap, KmsKeyArn: k })));
      expect(e).toBeInstanceOf(ValidationException);
      expect(e.Reason).toBe('INVALID_PARAMETER_VALUE');
      expect(e.message).toMatch(/ParentSnapshotId and KmsKeyArn/);
    }
  }, 60_000);

  it('GetSnapshotBlock / PutSnapshotBlock past the per-snapshot rate are RequestThrottledException RESOURCE_LEVEL_THROTTLE (400); the SDK\'s retry then gets or puts every block', async () => {
    const { snap, data, token } = await oneBlock();
    const get = (c: EBSClient) => c.send(new GetSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: 2, BlockToken: token }))
      .then(async (r) => ({ ok: Buffer.from(await r.BlockData!.transformToByteArray()), attempts: r.$metadata.attempts ?? 1 }), (e: unknown) => ({ err: e as any }));
    // 16 at once against 4 per second, no retry: some are refused, as EBS refuses them.
    const once = await clientOf('bob', 1);
    const burst = await Promise.all(Array.from({ length: 16 }, () => get(once)));
    const refused = burst.filter((r) => 'err' in r).map((r) => (r as { err: any }).err);
    expect(refused.length).toBeGreaterThan(0);
    expect(burst.length - refused.length).toBeGreaterThan(0);
    for (const e of refused) {
      expect(e).toBeInstanceOf(RequestThrottledException);
      expect(e.Reason).toBe('RESOURCE_LEVEL_THROTTLE');
      expect(e.$metadata.httpStatusCode).toBe(400);
    }
    // The same burst with the SDK's standard retry: every call ends with the block, some after a throttled attempt.
    const retrying = await clientOf('bob', 10);
    const again = await Promise.all(Array.from({ length: 12 }, () => get(retrying)));
    for (const r of again) {
      expect('ok' in r, 'err' in r ? String((r as { err: any }).err) : '').toBe(true);
      expect((r as { ok: Buffer }).ok.equals(data)).toBe(true);
    }
    expect(again.some((r) => (r as { attempts: number }).attempts > 1)).toBe(true);

    // PutSnapshotBlock has its own bucket: 12 puts at once, retried where throttled; a refused put wrote nothing, so the count is 12.
    const target = (await retrying.send(new StartSnapshotCommand({ VolumeSize: 1 }))).SnapshotId!;
    const blocks = Array.from({ length: 12 }, () => randomBytes(BLOCK));
    const puts = await Promise.all(blocks.map((b, i) => retrying.send(new PutSnapshotBlockCommand({
      SnapshotId: target, BlockIndex: i, BlockData: b, DataLength: BLOCK, Checksum: sha(b).toString('base64'), ChecksumAlgorithm: 'SHA256',
    }))));
    expect(puts.some((r) => (r.$metadata.attempts ?? 1) > 1)).toBe(true);
    expect((await retrying.send(new CompleteSnapshotCommand({ SnapshotId: target, ChangedBlocksCount: 12 }))).Status).toBe('completed');
  }, 120_000);

  it('one Decrypt per caller and snapshot, not per block; once the key is disabled, the next call past the key TTL fails as KMS says', async () => {
    const own = (await env.api('TrentService.CreateKey', { Description: 'disabled later' })).KeyMetadata as { KeyId: string; Arn: string };
    const { snap, data, token } = await oneBlock({ KmsKeyArn: own.Arn });
    const carol = await clientOf('carol', 3);
    const get = async (): Promise<Buffer> => {
      const r = await carol.send(new GetSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: 2, BlockToken: token }));
      return Buffer.from(await r.BlockData!.transformToByteArray());
    };
    expect(decrypts('carol').all).toBe(0);
    // Four at once (within the rate): one Decrypt for all of them.
    for (const b of await Promise.all([get(), get(), get(), get()])) expect(b.equals(data)).toBe(true);
    expect(decrypts('carol').all).toBe(1);
    // The cached key is no pass: ebs:* is judged on every call, so losing it is immediate.
    await sock('ebsd.IamDeletePolicy', { Principal: 'user/carol', PolicyName: 'ebs' });
    const denied = await get().then(() => undefined, (e: unknown) => e as any);
    expect(denied).toBeInstanceOf(AccessDeniedException);
    expect(denied.Reason).toBe('UNAUTHORIZED_ACCOUNT');
    await sock('ebsd.IamPutPolicy', { Principal: 'user/carol', PolicyName: 'ebs', PolicyDocument: policy });
    expect((await get()).equals(data)).toBe(true);

    await env.api('TrentService.DisableKey', { KeyId: own.KeyId });

    // Polled, bounded: calls within the TTL may still be served from the cached key; the first past it asks KMS and is refused.
    let refusal: any;
    for (let i = 0; i < 200 && !refusal; i++) {
      refusal = await get().then(() => undefined, (e: unknown) => e);
      if (!refusal) await new Promise((r) => setTimeout(r, 250));
    }
    expect(refusal).toBeInstanceOf(ValidationException);
    expect(refusal.Reason).toBe('INVALID_CUSTOMER_KEY');
    expect(refusal.message).toMatch(/Decrypt of the data key of snap-.*disabled/i);
    expect(decrypts('carol').refused).toContain('DisabledException');
  }, 120_000);
});
