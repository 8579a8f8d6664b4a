/**
 * EBS direct CompleteSnapshot with signed manifests (--snapshot-manifest-key) whose KMS stops answering
 * at the moment the completed manifest must be signed (docs/architecture.md §13.5, "Writes the KMS does
 * not answer"; §15): the completion waits for the KMS, as a create's and a copy's do
 * (putCompletedWaitingForKms), instead of failing a snapshot whose blocks are all stored. Before, the
 * call failed (InternalServerException) after the KMS's timeouts and the upload was lost.
 *
 * The KMS is a real `ebsd daemon --kms-only` child process, stopped with SIGSTOP around the completion
 * and let go with SIGCONT; the manifest key is made as the fleet tests make it (createManifestKey). A
 * daemon serves the EBS direct APIs only with its embedded KMS (docs/architecture.md §15), whose
 * process cannot be stopped apart from the daemon, so the EBS direct API runs here in the test's
 * process as the daemon builds it (EbsDirect over a real directory store behind the signing store,
 * ManifestSigner), its KMS client the one a fleet host uses (AwsKeyService) on loopback. A KMS that
 * refuses (the key disabled) still fails the completion at once, the snapshot left pending. On a
 * shared (S3, s3rver) store each try first asks again for the blocks, inherited ones too once the parent
 * is gone (docs/architecture.md §13.1), so a block freed during the wait fails the completion by name.
 */
import { randomBytes, createHash } from 'node:crypto';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { tempDir, type TempDir } from '../helpers/temp-dir.js';
import { until } from './netns.js';
import { createManifestKey, createRemoteHostUser, hostBEnv, restoreAwsEnv, savedAwsEnv } from './remote-host.js';
import { AwsKeyService } from '../../src/volume/aws-key-service.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { ManifestSigner, signedManifests } from '../../src/snapshot/manifest-mac.js';
import { EbsDirect } from '../../src/snapshot/ebs-direct.js';
import { parseCompleteSnapshot, parsePutSnapshotBlock, parseStartSnapshot } from '../../src/snapshot/ebs-direct-input.js';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import { S3SnapshotStore } from '../../src/snapshot/s3-store.js';
import { S3RVER_CREDENTIALS, startS3Server, useTestDeleteWindows, type S3Server } from '../snapshot/s3-helpers.js';
import type { Caller } from '../../src/kms/types.js';
import type { SnapshotStore } from '../../src/snapshot/types.js';

const BLOCK = 512 * 1024;
const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

describe('EBS direct CompleteSnapshot whose manifest MAC meets a KMS that does not answer', () => {
  const a = new Env('ecks-kms');
  const saved = savedAwsEnv();
  const lines: string[] = [];
  let t: TempDir | undefined;
  let keys: AwsKeyService | undefined;
  let direct: EbsDirect | undefined;
  let store: SnapshotStore;
  let host: Caller;
  let signer: ManifestSigner;
  let account = '';
  let log: ReturnType<typeof pino>;
  let s3: S3Server | undefined;
  let rawS3: S3SnapshotStore | undefined;
  let sharedDirect: EbsDirect | undefined;
  let macKey = '';
  let stopped = false;
  const waiting = 'the KMS did not answer for the completed manifest';
  const answersAgain = 'the KMS answers again: the completed manifest is signed and written';

  const kmsStop = (): void => { process.kill(a.pid!, 'SIGSTOP'); stopped = true; };
  const kmsGo = (): void => { if (stopped) process.kill(a.pid!, 'SIGCONT'); stopped = false; };
  /** A pending unencrypted snapshot with blocks 0 and 3 written; returns its id and the CompleteSnapshot that matches it. */
  const upload = async (on = direct!, o: { parent?: string; indexes?: number[] } = {}): Promise<{ snap: string; complete: ReturnType<typeof parseCompleteSnapshot>; data: Map<number, Buffer> }> => {
    const snap = (await on.startSnapshot(parseStartSnapshot({ VolumeSize: 1, ...(o.parent ? { ParentSnapshotId: o.parent } : { Encrypted: false }) }), host)).SnapshotId as string;
    const data = new Map<number, Buffer>((o.indexes ?? [0, 3]).map((i) => [i, randomBytes(BLOCK)]));
    for (const [i, d] of data) {
      await on.putSnapshotBlock(parsePutSnapshotBlock({ SnapshotId: snap, BlockIndex: i, BlockData: Buffer.from(d), DataLength: BLOCK, Checksum: sha(d).toString('base64'), ChecksumAlgorithm: 'SHA256' }), host);
    }
    const agg = createHash('sha256');
    for (const i of [...data.keys()].sort((x, y) => x - y)) agg.update(sha(data.get(i)!));
    const complete = parseCompleteSnapshot({ SnapshotId: snap, ChangedBlocksCount: data.size, Checksum: agg.digest('base64'), ChecksumAlgorithm: 'SHA256', ChecksumAggregationMethod: 'LINEAR' });
    return { snap, complete, data };
  };
  const logged = (text: string): number => lines.filter((l) => l.includes(text)).length;

  beforeAll(async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(a);
    const user = await createRemoteHostUser(a);
    macKey = await createManifestKey(a, user);
    hostBEnv(user, url);
    log = pino({ level: 'info' }, new Writable({ write(chunk, _enc, done) { lines.push(String(chunk)); done(); } }));
    // Short timeouts: a stopped KMS is seen as not answering within a second or two per call.
    keys = new AwsKeyService({ endpoint: url, region: 'us-east-1', requestTimeoutMs: 1_000, connectionTimeoutMs: 1_000, maxAttempts: 1, logger: log });
    host = await keys.hostPrincipal();
    account = user.account;
    signer = new ManifestSigner(macKey);
    await signer.open(keys, host);
    t = tempDir('ebsd-ecks-');
    store = signedManifests(await DirSnapshotStore.open(join(t.dir, 'snapshots')), signer);
    direct = new EbsDirect({
      store, pendingDir: join(t.dir, 'pending'), keys, xts: selectXtsEngine('auto'), accountId: user.account, region: 'us-east-1',
      allowUnencrypted: true, log,
    });
  }, 90_000);

  afterAll(async () => {
    try {
      kmsGo();
      await direct?.close();
      await sharedDirect?.close();
      rawS3?.close();
      await s3?.stop();
      keys?.close();
      await a.cleanup();
    } finally {
      restoreAwsEnv(saved);
      t?.cleanup();
    }
  }, 60_000);

  it('a KMS stopped around CompleteSnapshot: the completion waits, and completes once it answers again, signed and readable', async () => {
    const { snap, complete, data } = await upload();
    kmsStop();
    let completing: Promise<Record<string, unknown>>;
    try {
      completing = direct!.completeSnapshot(complete, host);
      let failed: Error | undefined;
      completing.catch((e: Error) => { failed = e; });
      // Its GenerateMac went unanswered: the completion now waits with back-off rather than failing.
      await until('the completion waiting for the KMS', async () => {
        if (failed) throw new Error(`CompleteSnapshot failed instead of waiting for the KMS: ${failed.message}`);
        return logged(waiting) > 0 ? true : undefined;
      }, 30_000);
      // A repeat of the call meanwhile (a client whose request timed out) waits for the same completion.
      const repeat = direct!.completeSnapshot(complete, host);
      repeat.catch(() => {});
      // Still pending, not failed, while it waits.
      expect(direct!.pendingManifest(snap)?.state).toBe('pending');
      kmsGo();
      expect(await completing).toEqual({ Status: 'completed' });
      expect(await repeat).toEqual({ Status: 'completed' });
    } finally {
      kmsGo();
    }
    expect(logged(answersAgain)).toBeGreaterThan(0);
    // Completed and signed: read back through the verifying store (VerifyMac at the KMS), naming the blocks written.
    const m = (await store.getManifest(snap))!;
    expect(m).toMatchObject({ state: 'completed', changedBlocks: 2 });
    expect(m.blocks.map(([i]) => i)).toEqual([0, 3]);
    expect(direct!.pendingManifest(snap)).toBeUndefined();
    const listed = (await direct!.listSnapshotBlocks({ SnapshotId: snap })).Blocks as { BlockIndex: number; BlockToken: string }[];
    for (const b of listed) {
      const got = await direct!.getSnapshotBlock({ SnapshotId: snap, BlockIndex: b.BlockIndex, BlockToken: b.BlockToken }, host);
      expect((got.BlockData as Buffer).equals(data.get(b.BlockIndex)!)).toBe(true);
    }
  }, 120_000);

  it('a KMS that refuses (the key disabled) fails the completion at once, the snapshot left pending; enabled again, it completes', async () => {
    const { snap, complete } = await upload();
    const before = logged(waiting);
    await a.api('TrentService.DisableKey', { KeyId: macKey });
    try {
      const e = await direct!.completeSnapshot(complete, host).then(() => undefined, (x: Error) => x);
      expect(e?.message).toMatch(/DisabledException|disabled/i);
      expect(logged(waiting)).toBe(before);
      expect(direct!.pendingManifest(snap)).toBeDefined();
    } finally {
      await a.api('TrentService.EnableKey', { KeyId: macKey });
    }
    expect(await direct!.completeSnapshot(complete, host)).toEqual({ Status: 'completed' });
    expect((await store.getManifest(snap))!.state).toBe('completed');
  }, 60_000);

  it('on a shared (S3) store each retry first asks again for the blocks: a child whose parent and inherited block are deleted while it waits fails naming that block and stays pending, then completes once it is written again', async () => {
    s3 = await startS3Server();
    await useTestDeleteWindows(s3, 'ecks');
    rawS3 = await S3SnapshotStore.open({ bucket: s3.bucket, prefix: 'ecks', endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS });
    const shared = signedManifests(rawS3, signer);
    sharedDirect = new EbsDirect({ store: shared, pendingDir: join(t!.dir, 'pending-s3'), keys: keys!, xts: selectXtsEngine('auto'), accountId: account, region: 'us-east-1', allowUnencrypted: true, log });
    const parent = await upload(sharedDirect, { indexes: [0, 1] });
    expect(await sharedDirect.completeSnapshot(parent.complete, host)).toEqual({ Status: 'completed' });
    const [, inherited] = (await shared.getManifest(parent.snap))!.blocks.find(([i]) => i === 0)!;
    const child = await upload(sharedDirect, { parent: parent.snap, indexes: [1] });
    const before = logged(waiting);
    kmsStop();
    let failed: Error | undefined;
    try {
      const completing = sharedDirect.completeSnapshot(child.complete, host);
      completing.catch((e: Error) => { failed = e; });
      await until('the child\'s completion waiting for the KMS', async () => {
        if (failed) throw new Error(`CompleteSnapshot failed instead of waiting for the KMS: ${failed.message}`);
        return logged(waiting) > before ? true : undefined;
      }, 30_000);
      // The parent is deleted meanwhile and its block 0, which the child took from it, freed (as another host's collector would).
      await rawS3.deleteManifest(parent.snap);
      await rawS3.deleteBlock(inherited);
      kmsGo();
      await completing.then(() => { throw new Error('completed naming a block that is gone'); }, () => {});
    } finally {
      kmsGo();
    }
    // The try after the wait asked again, for the inherited block too: nothing completed, the snapshot still pending.
    expect(failed?.message).toMatch(/cannot be completed: block\(s\) 0 is no longer in s3:.*the snapshot stays pending/);
    expect(sharedDirect.pendingManifest(child.snap)?.state).toBe('pending');
    // Block 0 written again (the parent's data): the child completes with both.
    const zero = parent.data.get(0)!;
    await sharedDirect.putSnapshotBlock(parsePutSnapshotBlock({ SnapshotId: child.snap, BlockIndex: 0, BlockData: Buffer.from(zero), DataLength: BLOCK, Checksum: sha(zero).toString('base64'), ChecksumAlgorithm: 'SHA256' }), host);
    expect(await sharedDirect.completeSnapshot(parseCompleteSnapshot({ SnapshotId: child.snap, ChangedBlocksCount: 2 }), host)).toEqual({ Status: 'completed' });
    const m = (await shared.getManifest(child.snap))!;
    expect(m).toMatchObject({ state: 'completed', parentSnapshotId: parent.snap, changedBlocks: 2 });
    // Unencrypted: a block is stored as written, named by its SHA-256.
    expect(m.blocks).toEqual([[0, inherited], [1, sha(child.data.get(1)!).toString('hex')]]);
    expect(await rawS3.hasBlock(inherited)).toBe(true);
  }, 120_000);
});
