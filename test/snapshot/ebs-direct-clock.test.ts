import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { KmsService } from '../../src/kms/kms-core.js';
import type { Caller } from '../../src/kms/types.js';
import { KmsCoreKeyService } from '../../src/volume/key-service.js';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import type { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import { EbsDirect } from '../../src/snapshot/ebs-direct.js';
import { BLOCK_TOKEN_TTL_MS, PAGE_TOKEN_TTL_MS } from '../../src/snapshot/ebs-direct-tokens.js';
import { parsePutSnapshotBlock, parseStartSnapshot } from '../../src/snapshot/ebs-direct-input.js';
import { ACCOUNT, BLOCK, REGION, T0, ebsDirectWorld, putReq, refused } from './ebs-direct-world.js';

/**
 * The EBS direct APIs with an injected clock (the tests take time as an
 * input): token expiry, StartSnapshot Timeout, restart recovery, client
 * tokens and limits. Real KMS core in-process, real directory store.
 */
const world = ebsDirectWorld('ebsd-ebs-direct-');
let dir = '';
let kms: KmsService;
let root: Caller;
let keyArn = '';
let store: DirSnapshotStore;
let now = T0;
const xts = selectXtsEngine('auto');

const direct = (o: { maxPending?: number; pin?: SnapshotGc['pin']; allowUnencrypted?: boolean } = {}): EbsDirect =>
  new EbsDirect({ store, pendingDir: join(dir, 'pending'), keys: new KmsCoreKeyService(kms), xts, accountId: ACCOUNT, region: REGION, now: () => now, ...o });

beforeAll(async () => {
  ({ dir, kms, root, store } = world);
  keyArn = ((await kms.call('CreateKey', {}, root)) as { KeyMetadata: { Arn: string } }).KeyMetadata.Arn;
});

describe('EbsDirect with an injected clock', () => {
  it('block tokens live seven days and page tokens 60 minutes, then are refused', async () => {
    now = T0;
    const d = direct();
    const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn }), root)).SnapshotId as string;
    const data = new Map<number, Buffer>();
    const shared = randomBytes(BLOCK);
    for (let i = 0; i < 101; i++) data.set(i, i === 7 ? randomBytes(BLOCK) : shared);
    for (const [i, b] of data) await d.putSnapshotBlock(putReq(snap, i, b), root);
    await d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 101 }, root);
    const listed = await d.listSnapshotBlocks({ SnapshotId: snap, MaxResults: 100 });
    expect(listed.ExpiryTime).toBe(new Date(T0 + BLOCK_TOKEN_TTL_MS).toISOString());
    const token = (listed.Blocks as { BlockIndex: number; BlockToken: string }[])[7]!.BlockToken;
    const get = () => d.getSnapshotBlock({ SnapshotId: snap, BlockIndex: 7, BlockToken: token }, root);

    // Paging: the rest after NextToken; a NextToken of another listing (ListChangedBlocks of this snapshot) is refused.
    expect((listed.Blocks as unknown[]).length).toBe(100);
    const changed = await d.listChangedBlocks({ SecondSnapshotId: snap, MaxResults: 100 });
    await refused(d.listSnapshotBlocks({ SnapshotId: snap, NextToken: changed.NextToken as string }), 'ValidationException', 'INVALID_PAGE_TOKEN');
    now = T0 + PAGE_TOKEN_TTL_MS - 1000;
    expect((await d.listSnapshotBlocks({ SnapshotId: snap, NextToken: listed.NextToken as string })).Blocks).toHaveLength(1);
    now = T0 + PAGE_TOKEN_TTL_MS;
    await refused(d.listSnapshotBlocks({ SnapshotId: snap, NextToken: listed.NextToken as string }), 'ValidationException', 'INVALID_PAGE_TOKEN');

    now = T0 + BLOCK_TOKEN_TTL_MS - 1000;
    expect(Buffer.from((await get()).BlockData as Buffer).equals(data.get(7)!)).toBe(true);
    now = T0 + BLOCK_TOKEN_TTL_MS;
    await refused(get(), 'ValidationException', 'INVALID_BLOCK_TOKEN');
    // Another daemon (another token key) does not take this daemon's tokens.
    now = T0;
    await refused(direct().getSnapshotBlock({ SnapshotId: snap, BlockIndex: 7, BlockToken: token }, root), 'ValidationException', 'INVALID_BLOCK_TOKEN');
    d.close();
  }, 30_000);

  it('a block token is good until the ExpiryTime its listing gave, to the millisecond, and a NextToken for its full 60 minutes, whatever the clock\'s milliseconds', async () => {
    // Listed at .750 of a second: a token kept only whole seconds would die 750 ms before the ExpiryTime it came with.
    const at = T0 + 750;
    now = at;
    const d = direct();
    const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn }), root)).SnapshotId as string;
    for (let i = 0; i < 101; i++) await d.putSnapshotBlock(putReq(snap, i, randomBytes(BLOCK)), root);
    await d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 101 }, root);
    const listed = await d.listSnapshotBlocks({ SnapshotId: snap, MaxResults: 100 });
    const expiry = Date.parse(listed.ExpiryTime as string);
    expect(expiry).toBe(at + BLOCK_TOKEN_TTL_MS);
    const token = (listed.Blocks as { BlockIndex: number; BlockToken: string }[])[3]!.BlockToken;
    const get = () => d.getSnapshotBlock({ SnapshotId: snap, BlockIndex: 3, BlockToken: token }, root);
    now = expiry - 1;
    expect((await get()).DataLength).toBe(BLOCK);
    now = expiry;
    await refused(get(), 'ValidationException', 'INVALID_BLOCK_TOKEN');

    const changed = await d.listChangedBlocks({ SecondSnapshotId: snap, MaxResults: 100 });
    const second = (changed.ChangedBlocks as { BlockIndex: number; SecondBlockToken: string }[])[3]!.SecondBlockToken;
    now = Date.parse(changed.ExpiryTime as string) - 1;
    expect((await d.getSnapshotBlock({ SnapshotId: snap, BlockIndex: 3, BlockToken: second }, root)).DataLength).toBe(BLOCK);

    now = at;
    const page = (await d.listSnapshotBlocks({ SnapshotId: snap, MaxResults: 100 })).NextToken as string;
    now = at + PAGE_TOKEN_TTL_MS - 1;
    expect((await d.listSnapshotBlocks({ SnapshotId: snap, NextToken: page })).Blocks).toHaveLength(1);
    now = at + PAGE_TOKEN_TTL_MS;
    await refused(d.listSnapshotBlocks({ SnapshotId: snap, NextToken: page }), 'ValidationException', 'INVALID_PAGE_TOKEN');
    await d.close();
  }, 30_000);

  it('a snapshot idle for its Timeout (counted from its start, then from its last block) becomes error; one pending at a restart becomes error too, never completed', async () => {
    now = T0;
    const d = direct();
    const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Timeout: 10 }), root)).SnapshotId as string;
    // No block within the Timeout of the start: error.
    const idle = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, Timeout: 10 }), root)).SnapshotId as string;
    await d.putSnapshotBlock(putReq(snap, 0, randomBytes(BLOCK)), root);
    now = T0 + 10 * 60_000 - 1;
    await d.putSnapshotBlock(putReq(snap, 1, randomBytes(BLOCK)), root);
    now = T0 + 10 * 60_000;
    await refused(d.putSnapshotBlock(putReq(idle, 0, randomBytes(BLOCK)), root), 'ValidationException', 'INVALID_SNAPSHOT_ID');
    // The refusal says why the snapshot takes no more blocks.
    await expect(d.putSnapshotBlock(putReq(idle, 0, randomBytes(BLOCK)), root)).rejects.toThrow(`${idle} is error: CompleteSnapshot did not come within the StartSnapshot Timeout;`);
    expect(await store.getManifest(idle)).toMatchObject({ state: 'error', stateMessage: expect.stringMatching(/Timeout/) });
    // An upload still writing is not cut off: 19 minutes after its start, 9 after its last block, it takes a block.
    now = T0 + 19 * 60_000;
    await d.putSnapshotBlock(putReq(snap, 2, randomBytes(BLOCK)), root);
    expect(await store.getManifest(snap)).toMatchObject({ state: 'pending' });
    // Then the Timeout passes after its last block without CompleteSnapshot: error.
    now = T0 + 29 * 60_000;
    await refused(d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 3 }, root), 'ValidationException', 'INVALID_SNAPSHOT_ID');
    expect(await store.getManifest(snap)).toMatchObject({ state: 'error', stateMessage: expect.stringMatching(/Timeout/) });

    const left = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), root)).SnapshotId as string;
    await d.putSnapshotBlock(putReq(left, 0, randomBytes(BLOCK)), root);
    d.close();
    const after = direct(); // the restarted daemon
    expect(await after.recover()).toEqual([left]);
    expect((await store.getManifest(left))?.state).toBe('error');
    await refused(after.completeSnapshot({ SnapshotId: left, ChangedBlocksCount: 1 }, root), 'ValidationException', 'INVALID_SNAPSHOT_ID');
    await expect(after.completeSnapshot({ SnapshotId: left, ChangedBlocksCount: 1 }, root)).rejects.toThrow(`${left} is error: the daemon restarted before CompleteSnapshot;`);
    after.close();
  });

  it('blocks written to a pending snapshot survive a sweep of the collector (pinned), and after completion (named by the manifest)', async () => {
    now = T0;
    // The collector's clock an hour ahead of the store's: every unreferenced block is old enough to go.
    const gc = new SnapshotGc(store, { graceMs: 0, now: () => Date.now() + 3_600_000 });
    // Unencrypted (--allow-unencrypted), so the stored block's hash is the plaintext's.
    const d = direct({ pin: (h) => gc.pin(h), allowUnencrypted: true });
    const snap = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), root)).SnapshotId as string;
    const a = randomBytes(BLOCK);
    await d.putSnapshotBlock(putReq(snap, 9, a), root);
    const hash = createHash('sha256').update(a).digest('hex');
    const swept = await gc.sweep();
    expect(swept.keptPinned).toBeGreaterThanOrEqual(1);
    expect(await store.hasBlock(hash)).toBe(true);
    await d.completeSnapshot({ SnapshotId: snap, ChangedBlocksCount: 1 }, root);
    await gc.sweep();
    expect(await store.hasBlock(hash)).toBe(true);
    const listed = await d.listSnapshotBlocks({ SnapshotId: snap });
    const got = await d.getSnapshotBlock({ SnapshotId: snap, BlockIndex: 9, BlockToken: (listed.Blocks as { BlockToken: string }[])[0]!.BlockToken }, root);
    expect(Buffer.from(got.BlockData as Buffer).equals(a)).toBe(true);
    d.close();
  });

  it('ClientToken makes StartSnapshot idempotent; the same token with another request is ConflictException', async () => {
    now = T0;
    const d = direct();
    const a = await d.startSnapshot(parseStartSnapshot({ VolumeSize: 2, ClientToken: 'tok-1', Description: 'x' }), root);
    const b = await d.startSnapshot(parseStartSnapshot({ VolumeSize: 2, ClientToken: 'tok-1', Description: 'x' }), root);
    expect(b.SnapshotId).toBe(a.SnapshotId);
    await refused(d.startSnapshot(parseStartSnapshot({ VolumeSize: 3, ClientToken: 'tok-1', Description: 'x' }), root), 'ConflictException');
    d.close();
  });

  it('limits: pending snapshots per daemon, one writer per block, Encrypted with ParentSnapshotId, sizes', async () => {
    now = T0;
    const d = direct({ maxPending: 2 });
    const s1 = (await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), root)).SnapshotId as string;
    await d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), root);
    await refused(d.startSnapshot(parseStartSnapshot({ VolumeSize: 1 }), root), 'ConcurrentLimitExceededException');
    // Two writers of one block at once: the second is refused, the first lands.
    const x = randomBytes(BLOCK);
    const [first, second] = await Promise.allSettled([d.putSnapshotBlock(putReq(s1, 3, x), root), d.putSnapshotBlock(putReq(s1, 3, randomBytes(BLOCK)), root)]);
    expect(first.status).toBe('fulfilled');
    expect(second.status === 'rejected' && (second.reason as { reason?: string }).reason).toBe('CONFLICTING_BLOCK_UPDATE');
    expect(() => parseStartSnapshot({ VolumeSize: 1, ParentSnapshotId: s1, Encrypted: true })).toThrow(/ParentSnapshotId and Encrypted/);
    expect(() => parseStartSnapshot({ VolumeSize: 65_537 })).toThrow(/VolumeSize must be an integer from 1 to 65536/);
    expect(() => parseStartSnapshot({ VolumeSize: 1, Timeout: 9 })).toThrow(/Timeout/);
    expect(() => parsePutSnapshotBlock({ SnapshotId: s1, BlockIndex: 0, BlockData: Buffer.alloc(4096), DataLength: 4096, Checksum: 'AA==', ChecksumAlgorithm: 'SHA256' })).toThrow(/DataLength must be an integer from 524288 to 524288/);
    d.close();
  });

  it('StartSnapshot encryption follows AWS\'s "Encryption outcomes for EBS direct APIs": enabled by default, disabled only with allowUnencrypted', async () => {
    now = T0;
    const byDefault = direct();
    const allowing = direct({ allowUnencrypted: true });
    const start = (d: EbsDirect, body: Record<string, unknown>) => d.startSnapshot(parseStartSnapshot({ VolumeSize: 1, ...body }), root);
    const done = async (r: Record<string, unknown>, d: EbsDirect): Promise<string> => {
      await d.completeSnapshot({ SnapshotId: r.SnapshotId as string, ChangedBlocksCount: 0 }, root);
      return r.SnapshotId as string;
    };
    // No parent, enabled: Encrypted omitted or true -> KmsKeyArn or the account's default key for EBS; Encrypted false -> ValidationException.
    const omitted = await start(byDefault, {});
    const ebsKey = ((await kms.call('DescribeKey', { KeyId: 'alias/aws/ebs' }, root)) as { KeyMetadata: { Arn: string } }).KeyMetadata.Arn;
    expect(omitted).toMatchObject({ KmsKeyArn: ebsKey, SseType: 'sse-ebs' });
    expect(await start(byDefault, { Encrypted: true })).toMatchObject({ KmsKeyArn: ebsKey, SseType: 'sse-ebs' });
    expect(await start(byDefault, { KmsKeyArn: keyArn })).toMatchObject({ KmsKeyArn: keyArn, SseType: 'sse-ebs' });
    expect(await start(byDefault, { Encrypted: true, KmsKeyArn: keyArn })).toMatchObject({ KmsKeyArn: keyArn });
    await refused(start(byDefault, { Encrypted: false }), 'ValidationException', 'INVALID_PARAMETER_VALUE');
    await expect(start(byDefault, { Encrypted: false })).rejects.toThrow(/Encrypted false .* started without --allow-unencrypted/);
    // Encrypted false with a KmsKeyArn: refused whatever the setting.
    expect(() => parseStartSnapshot({ VolumeSize: 1, Encrypted: false, KmsKeyArn: keyArn })).toThrow(/KmsKeyArn cannot be given with Encrypted false/);
    // Disabled (allowUnencrypted): unencrypted unless Encrypted is true; KmsKeyArn alone stays refused, as before.
    const plain = await start(allowing, {});
    expect(plain).toMatchObject({ SseType: 'none' });
    expect(plain.KmsKeyArn).toBeUndefined();
    expect(await start(allowing, { Encrypted: false })).toMatchObject({ SseType: 'none' });
    expect(await start(allowing, { Encrypted: true })).toMatchObject({ KmsKeyArn: ebsKey });
    await refused(start(allowing, { KmsKeyArn: keyArn }), 'ValidationException', 'INVALID_PARAMETER_VALUE');
    // Parents: an unencrypted one is refused when enabled (copy it encrypted first), taken as it is when disabled; an encrypted one gives its key.
    const plainParent = await done(plain, allowing);
    const encParent = await done(omitted, byDefault);
    await refused(start(byDefault, { ParentSnapshotId: plainParent }), 'ValidationException', 'INVALID_PARAMETER_VALUE');
    await expect(start(byDefault, { ParentSnapshotId: plainParent })).rejects.toThrow(new RegExp(`ParentSnapshotId ${plainParent} is an unencrypted snapshot.*--encrypted`));
    expect(await start(allowing, { ParentSnapshotId: plainParent })).toMatchObject({ ParentSnapshotId: plainParent, SseType: 'none' });
    expect(await start(byDefault, { ParentSnapshotId: encParent })).toMatchObject({ ParentSnapshotId: encParent, KmsKeyArn: ebsKey, SseType: 'sse-ebs' });
    expect(await start(allowing, { ParentSnapshotId: encParent })).toMatchObject({ ParentSnapshotId: encParent, KmsKeyArn: ebsKey, SseType: 'sse-ebs' });
    byDefault.close();
    allowing.close();
  });
});
