import { createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { chmodSync, closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, writeFileSync, writeSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { callDaemon, socketPathFor } from '../../src/cli/client.js';
import { settled } from './helpers.js';

/**
 * Issue 17 point 6: the EBS direct APIs against the real daemon (child
 * process), its embedded KMS core and its snapshot directory. Data is
 * random per run; every check compares bytes, checksums and block indexes.
 */
const BLOCK = 512 * 1024;
const ALICE = 1000;

type R = Record<string, any>;
const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();
/** CompleteSnapshot's LINEAR checksum: SHA-256 over the blocks' SHA-256 digests in index order. */
const linear = (blocks: Map<number, Buffer>): string => {
  const h = createHash('sha256');
  for (const i of [...blocks.keys()].sort((a, b) => a - b)) h.update(sha(blocks.get(i)!));
  return h.digest('base64');
};

describe('EBS direct APIs (real daemon, real KMS core, directory store)', () => {
  const env = new Env('ebs-direct');
  let keyArn = '';
  let account = '';
  let region = '';
  const ebs = (op: string, body: R): Promise<R> => callDaemon(socketPathFor(env.state), `ebs.${op}`, body);
  /** The raw wire answer, to see the error body's members (Reason). */
  const raw = (op: string, body: R): Promise<{ status: number; body: R }> => new Promise((ok, fail) => {
    const text = JSON.stringify(body);
    const req = request({ socketPath: socketPathFor(env.state), method: 'POST', path: '/', headers: { 'X-Amz-Target': `ebs.${op}`, 'Content-Length': Buffer.byteLength(text) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => ok({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) }));
    });
    req.on('error', fail);
    req.end(text);
  });
  const put = (snap: string, index: number, data: Buffer, checksum = sha(data).toString('base64')): Promise<R> =>
    ebs('PutSnapshotBlock', { SnapshotId: snap, BlockIndex: index, BlockData: data.toString('base64'), DataLength: data.length, Checksum: checksum, ChecksumAlgorithm: 'SHA256' });
  const start = (body: R): Promise<R> => ebs('StartSnapshot', body);
  const complete = (snap: string, blocks: Map<number, Buffer>): Promise<R> =>
    ebs('CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: blocks.size, Checksum: linear(blocks), ChecksumAlgorithm: 'SHA256', ChecksumAggregationMethod: 'LINEAR' });
  const manifest = (snap: string): R => JSON.parse(readFileSync(join(env.state, 'snapshots', 'manifests', `${snap}.json`), 'utf8'));
  const storedBlock = (hash: string): Buffer => readFileSync(join(env.state, 'snapshots', 'blocks', hash.slice(0, 2), hash));
  const listAll = async (snap: string): Promise<{ BlockIndex: number; BlockToken: string }[]> => (await ebs('ListSnapshotBlocks', { SnapshotId: snap })).Blocks;
  const getBlock = async (snap: string, index: number, token: string): Promise<Buffer> => {
    const r = await ebs('GetSnapshotBlock', { SnapshotId: snap, BlockIndex: index, BlockToken: token });
    const data = Buffer.from(r.BlockData, 'base64');
    expect(r.Checksum).toBe(sha(data).toString('base64'));
    expect(r.ChecksumAlgorithm).toBe('SHA256');
    expect(r.DataLength).toBe(BLOCK);
    return data;
  };
  const refusedWith = async (p: Promise<unknown>, awsName: string, message?: RegExp): Promise<void> => {
    const e = (await p.then(() => undefined, (x: unknown) => x)) as { awsName?: string; message?: string } | undefined;
    expect(e, `expected ${awsName}`).toBeDefined();
    expect(e!.awsName, e!.message).toBe(awsName);
    if (message) expect(e!.message).toMatch(message);
  };

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    const st = await env.api('ebsd.Status');
    account = st.Daemon.AccountId;
    region = st.Daemon.Region;
    keyArn = (await env.api('TrentService.CreateKey', { Description: 'ebs-direct test' })).KeyMetadata.Arn;
  }, 120_000);
  afterAll(() => env.cleanup());

  it('start/put/complete through the CLI, then list and get return the same plaintext; stored blocks are XTS ciphertext under a LUKS2 header cryptsetup accepts', async () => {
    const st = await env.ok(['ebs', 'start-snapshot', '--volume-size', '1', '--encrypted', '--kms-key-arn', keyArn, '--description', 'known data', '--tags', 'Key=team,Value=a']);
    expect(st).toMatchObject({ Status: 'pending', VolumeSize: 1, BlockSize: BLOCK, KmsKeyArn: keyArn, OwnerId: account, Description: 'known data', Tags: [{ Key: 'team', Value: 'a' }] });
    const snap: string = st.SnapshotId;
    expect(snap).toMatch(/^snap-[0-9a-f]{17}$/);
    const blocks = new Map([[0, randomBytes(BLOCK)], [5, randomBytes(BLOCK)], [2047, randomBytes(BLOCK)]]);
    // Zeros in a block are data too: half of block 5 is zero sectors.
    blocks.get(5)!.fill(0, 0, BLOCK / 2);
    const f5 = join(env.dir, 'b5');
    writeFileSync(f5, blocks.get(5)!);
    const putCli = await env.ok(['ebs', 'put-snapshot-block', '--snapshot-id', snap, '--block-index', '5', '--block-data', f5, '--data-length', String(BLOCK),
      '--checksum', sha(blocks.get(5)!).toString('base64'), '--checksum-algorithm', 'SHA256', '--progress', '30']);
    expect(putCli).toEqual({ Checksum: sha(blocks.get(5)!).toString('base64'), ChecksumAlgorithm: 'SHA256' });
    await put(snap, 0, blocks.get(0)!);
    await put(snap, 2047, blocks.get(2047)!);
    // Pending: not readable yet.
    await refusedWith(ebs('ListSnapshotBlocks', { SnapshotId: snap }), 'ValidationException', /pending/);
    expect(await env.ok(['ebs', 'complete-snapshot', '--snapshot-id', snap, '--changed-blocks-count', '3', '--checksum', linear(blocks),
      '--checksum-algorithm', 'SHA256', '--checksum-aggregation-method', 'LINEAR'])).toEqual({ Status: 'completed' });

    const list = await env.ok(['ebs', 'list-snapshot-blocks', '--snapshot-id', snap]);
    expect(list.Blocks.map((b: R) => b.BlockIndex)).toEqual([0, 5, 2047]);
    expect(list).toMatchObject({ VolumeSize: 1, BlockSize: BLOCK });
    expect(Date.parse(list.ExpiryTime)).toBeGreaterThan(Date.now());
    // One block through the CLI (OUTFILE and the printed checksum), the others over the socket.
    const out = join(env.dir, 'got-5');
    const got = await env.ok(['ebs', 'get-snapshot-block', '--snapshot-id', snap, '--block-index', '5', '--block-token', list.Blocks[1].BlockToken, out]);
    expect(got).toEqual({ DataLength: BLOCK, Checksum: sha(blocks.get(5)!).toString('base64'), ChecksumAlgorithm: 'SHA256' });
    expect(readFileSync(out).equals(blocks.get(5)!)).toBe(true);
    for (const b of list.Blocks) expect((await getBlock(snap, b.BlockIndex, b.BlockToken)).equals(blocks.get(b.BlockIndex)!), `block ${b.BlockIndex}`).toBe(true);

    // The record: completed, encrypted under the key with the snapshot's context, 3 changed blocks.
    const m = manifest(snap);
    expect(m).toMatchObject({ state: 'completed', progress: 100, encrypted: true, kmsKeyId: keyArn, volumeSize: 1, changedBlocks: 3, dataOffset: 16 * 1024 * 1024 });
    expect(m.wrappedKey.encryptionContext).toEqual({ 'aws:ebs:id': snap });
    expect(m.blocks.map((b: [number, string]) => b[0])).toEqual([0, 5, 2047]);
    // Independent check of the layout with OpenSSL's AES-256-XTS: the data key unwrapped by the
    // KMS (as root), sector s of block i decrypts with tweak = 512-byte unit number (i·128 + s)·8.
    const blobFile = join(env.dir, 'blob');
    writeFileSync(blobFile, Buffer.from(m.wrappedKey.ciphertextBlob, 'base64'));
    const dec = await env.api('TrentService.Decrypt', { CiphertextBlob: readFileSync(blobFile).toString('base64'), EncryptionContext: { 'aws:ebs:id': snap } });
    const key = Buffer.from(dec.Plaintext, 'base64');
    expect(key.length).toBe(64);
    for (const [i, hash] of m.blocks as [number, string][]) {
      const ct = storedBlock(hash);
      expect(sha(ct).toString('hex')).toBe(hash);
      expect(ct.equals(blocks.get(i)!)).toBe(false);
      const pt = Buffer.alloc(BLOCK);
      for (let s = 0; s < BLOCK / 4096; s++) {
        const iv = Buffer.alloc(16);
        iv.writeBigUInt64LE(BigInt((i * 128 + s) * 8));
        const d = createDecipheriv('aes-256-xts', key, iv);
        Buffer.concat([d.update(ct.subarray(s * 4096, (s + 1) * 4096)), d.final()]).copy(pt, s * 4096);
      }
      expect(pt.equals(blocks.get(i)!), `block ${i} decrypts with OpenSSL`).toBe(true);
    }
    // The header object is a LUKS2 header whose digest accepts that key (cryptsetup, not ebsd, judges).
    const img = join(env.dir, 'header.img');
    writeFileSync(img, storedBlock(m.header));
    const kf = join(env.dir, 'vk');
    writeFileSync(kf, key, { mode: 0o600 });
    const ok = spawnSync('cryptsetup', ['open', '--test-passphrase', '--volume-key-file', kf, '--key-size', '512', img], { encoding: 'utf8' });
    expect(ok.status, ok.stderr).toBe(0);
    const dump = JSON.parse(spawnSync('cryptsetup', ['luksDump', '--dump-json-metadata', img], { encoding: 'utf8' }).stdout);
    expect(dump.segments['0']).toMatchObject({ encryption: 'aes-xts-plain64', sector_size: 4096, size: String(1024 ** 3) });
    key.fill(0);

    // A volume restored from it (CreateVolume --snapshot-id, same key) reads back what was put.
    const restored = (await env.ok(['volume', 'create', '--snapshot-id', snap, '--wait'])).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: restored });
    const fd = openSync(env.file(restored), 'r');
    try {
      for (const [i, want] of blocks) {
        const buf = Buffer.alloc(BLOCK);
        expect(readSync(fd, buf, 0, BLOCK, i * BLOCK)).toBe(BLOCK);
        expect(buf.equals(want), `restored block ${i}`).toBe(true);
      }
    } finally {
      closeSync(fd);
    }
    await env.untilClosed(restored); // FUSE RELEASE reaches the daemon after close() returns
    await env.api('ebsd.DetachVolume', { VolumeId: restored, Force: false });

    // Audited as EBS calls; no block data and no data key in the audit log.
    const audit = env.auditText();
    for (const op of ['StartSnapshot', 'PutSnapshotBlock', 'CompleteSnapshot', 'ListSnapshotBlocks', 'GetSnapshotBlock']) {
      expect(audit).toMatch(new RegExp(`"eventSource":"ebs.amazonaws.com","eventName":"${op}"`));
    }
    expect(audit).not.toContain(blocks.get(0)!.subarray(0, 48).toString('base64'));
    expect(audit).not.toContain(dec.Plaintext);
  }, 120_000);

  it('a wrong checksum, ChangedBlocksCount or aggregated checksum is refused and leaves the snapshot pending, as it was', async () => {
    const snap = (await start({ VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn })).SnapshotId;
    const a = randomBytes(BLOCK);
    const b = randomBytes(BLOCK);
    // Checksum of other data: refused, nothing written.
    const bad = await raw('PutSnapshotBlock', { SnapshotId: snap, BlockIndex: 1, BlockData: a.toString('base64'), DataLength: BLOCK, Checksum: sha(b).toString('base64'), ChecksumAlgorithm: 'SHA256' });
    expect(bad.status).toBe(400);
    expect(bad.body).toMatchObject({ __type: 'ValidationException', Reason: 'INVALID_PARAMETER_VALUE' });
    expect(bad.body.message).toMatch(/Checksum does not match/);
    await refusedWith(put(snap, 2048, a), 'ValidationException', /past the end/);
    await put(snap, 0, a);
    await put(snap, 3, b);
    const written = new Map([[0, a], [3, b]]);
    const before = readFileSync(join(env.state, 'snapshots', 'manifests', `${snap}.json`), 'utf8');
    // The refused put of block 1 is not counted: 3 is wrong, so is 1.
    await refusedWith(ebs('CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 3 }), 'ValidationException', /ChangedBlocksCount is 3, but 2/);
    await refusedWith(ebs('CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 1 }), 'ValidationException', /ChangedBlocksCount/);
    // Aggregated in the wrong order (3 before 0): refused.
    const wrongOrder = createHash('sha256').update(sha(b)).update(sha(a)).digest('base64');
    await refusedWith(ebs('CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 2, Checksum: wrongOrder, ChecksumAlgorithm: 'SHA256', ChecksumAggregationMethod: 'LINEAR' }), 'ValidationException', /LINEAR/);
    expect(readFileSync(join(env.state, 'snapshots', 'manifests', `${snap}.json`), 'utf8')).toBe(before);
    expect(manifest(snap).state).toBe('pending');
    // Still writable, then completes right.
    const c = randomBytes(BLOCK);
    await put(snap, 3, c); // overwrites block 3
    written.set(3, c);
    expect(await complete(snap, written)).toEqual({ Status: 'completed' });
    const blocks = await listAll(snap);
    expect(blocks.map((x) => x.BlockIndex)).toEqual([0, 3]);
    expect((await getBlock(snap, 3, blocks[1]!.BlockToken)).equals(c)).toBe(true);
    // Completed: no more writes, no second completion.
    await refusedWith(put(snap, 4, a), 'ValidationException', /is completed; .*takes blocks \(PutSnapshotBlock\)/);
    // A repeat of the completion (an answer lost, the SDK retrying) gets its answer again; one asking for something else is refused naming it.
    expect(await complete(snap, written)).toEqual({ Status: 'completed' });
    await refusedWith(ebs('CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 3 }), 'ValidationException', /already completed.*ChangedBlocksCount is 3, not 2/);
    await refusedWith(ebs('ListSnapshotBlocks', { SnapshotId: 'snap-0123456789abcdef0' }), 'ResourceNotFoundException');
  }, 120_000);

  it('ListChangedBlocks names exactly the blocks changed in a child (ParentSnapshotId) and refuses snapshots of another lineage', async () => {
    const parent = (await start({ VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn })).SnapshotId;
    const p = new Map([[0, randomBytes(BLOCK)], [1, randomBytes(BLOCK)], [2, randomBytes(BLOCK)]]);
    for (const [i, d] of p) await put(parent, i, d);
    await complete(parent, p);
    const childSt = await start({ VolumeSize: 1, ParentSnapshotId: parent });
    expect(childSt).toMatchObject({ ParentSnapshotId: parent, KmsKeyArn: keyArn });
    const child = childSt.SnapshotId;
    const c = new Map([[1, randomBytes(BLOCK)], [7, randomBytes(BLOCK)]]);
    for (const [i, d] of c) await put(child, i, d);
    // Block 2 rewritten with the same data: the same ciphertext (same key and tweak), so not a change.
    await put(child, 2, p.get(2)!);
    c.set(2, p.get(2)!);
    await complete(child, c);
    expect(manifest(child).dataEncryptionKeyId).toBe(manifest(parent).dataEncryptionKeyId);

    const changed = await env.ok(['ebs', 'list-changed-blocks', '--first-snapshot-id', parent, '--second-snapshot-id', child]);
    expect(changed.ChangedBlocks.map((x: R) => x.BlockIndex)).toEqual([1, 7]);
    const [b1, b7] = changed.ChangedBlocks as R[];
    expect(typeof b1!.FirstBlockToken).toBe('string');
    expect(typeof b1!.SecondBlockToken).toBe('string');
    expect(b7!.FirstBlockToken).toBeUndefined();
    expect((await getBlock(parent, 1, b1!.FirstBlockToken)).equals(p.get(1)!)).toBe(true);
    expect((await getBlock(child, 1, b1!.SecondBlockToken)).equals(c.get(1)!)).toBe(true);
    expect((await getBlock(child, 7, b7!.SecondBlockToken)).equals(c.get(7)!)).toBe(true);
    // The child holds the parent's unchanged blocks.
    const all = await listAll(child);
    expect(all.map((x) => x.BlockIndex)).toEqual([0, 1, 2, 7]);
    expect((await getBlock(child, 0, all[0]!.BlockToken)).equals(p.get(0)!)).toBe(true);

    // Another data key (a new StartSnapshot) under the same key or under aws/ebs (no Encrypted, encryption by default): other lineages.
    const other = (await start({ VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn })).SnapshotId;
    await put(other, 1, p.get(1)!);
    await complete(other, new Map([[1, p.get(1)!]]));
    const byDefault = (await start({ VolumeSize: 1 })).SnapshotId;
    await put(byDefault, 1, p.get(1)!);
    await complete(byDefault, new Map([[1, p.get(1)!]]));
    for (const second of [other, byDefault]) {
      const r = await raw('ListChangedBlocks', { FirstSnapshotId: parent, SecondSnapshotId: second });
      expect(r.status).toBe(400);
      expect(r.body).toMatchObject({ __type: 'ValidationException', Reason: 'UNRELATED_SNAPSHOTS' });
    }
    const cli = await env.cli(['ebs', 'list-changed-blocks', '--first-snapshot-id', parent, '--second-snapshot-id', other]);
    expect(cli.code).toBe(7);
    expect(cli.stderr).toMatch(/ValidationException: .*not of one lineage/);
  }, 120_000);

  it('without --allow-unencrypted (EBS encryption by default): no Encrypted is encrypted under aws/ebs, stored as ciphertext and read back as plaintext; KmsKeyArn alone picks the key; Encrypted false is ValidationException', async () => {
    const ebsKey = (await env.ok(['kms', 'describe-key', '--key-id', 'alias/aws/ebs'])).KeyMetadata.Arn;
    const st = await start({ VolumeSize: 1 });
    expect(st).toMatchObject({ KmsKeyArn: ebsKey, SseType: 'sse-ebs' });
    const snap = st.SnapshotId;
    const blocks = new Map([[0, randomBytes(BLOCK)], [9, randomBytes(BLOCK)]]);
    for (const [i, d] of blocks) await put(snap, i, d);
    await complete(snap, blocks);
    const m = manifest(snap);
    expect(m).toMatchObject({ encrypted: true, kmsKeyId: ebsKey });
    for (const [i, hash] of m.blocks as [number, string][]) expect(storedBlock(hash).equals(blocks.get(i)!), `block ${i} stored as ciphertext`).toBe(false);
    for (const b of await listAll(snap)) expect((await getBlock(snap, b.BlockIndex, b.BlockToken)).equals(blocks.get(b.BlockIndex)!), `block ${b.BlockIndex}`).toBe(true);
    expect((await env.ok(['snapshot', 'describe', snap])).Snapshots[0]).toMatchObject({ Encrypted: true, KmsKeyId: ebsKey });

    // KmsKeyArn with Encrypted omitted: that key ("encrypted using the KMS key specified for KmsKeyArn").
    expect(await start({ VolumeSize: 1, KmsKeyArn: keyArn })).toMatchObject({ KmsKeyArn: keyArn, SseType: 'sse-ebs' });
    // Encrypted false: no unencrypted snapshot on this daemon; nothing is left pending.
    const before = readdirSync(join(env.state, 'snapshots', 'manifests')).length;
    const r = await raw('StartSnapshot', { VolumeSize: 1, Encrypted: false });
    expect(r.status).toBe(400);
    expect(r.body).toMatchObject({ __type: 'ValidationException', Reason: 'INVALID_PARAMETER_VALUE' });
    expect(r.body.message).toMatch(/Encrypted false .*--allow-unencrypted/);
    expect(readdirSync(join(env.state, 'snapshots', 'manifests')).length).toBe(before);
  }, 120_000);

  it('block tokens are bound to snapshot, index and content: forged, extended or moved ones are refused', async () => {
    const snap = (await start({ VolumeSize: 1 })).SnapshotId;
    // Blocks 0 and 2 hold one content: the index alone makes a token of one wrong for the other.
    const same = randomBytes(BLOCK);
    const data = new Map([[0, same], [1, randomBytes(BLOCK)], [2, same]]);
    for (const [i, d] of data) await put(snap, i, d);
    await complete(snap, data);
    const blocks = await listAll(snap);
    // Under 100 is taken as 100 (EBS direct APIs FAQ: "the API will return at least 100 results"); past 10000 is refused.
    expect((await ebs('ListSnapshotBlocks', { SnapshotId: snap, MaxResults: 99 })).Blocks).toHaveLength(3);
    await refusedWith(ebs('ListSnapshotBlocks', { SnapshotId: snap, MaxResults: 10_001 }), 'ValidationException', /MaxResults/);
    const t0 = blocks[0]!.BlockToken;
    expect((await getBlock(snap, 0, t0)).equals(same)).toBe(true);
    const flipped = Buffer.from(t0, 'base64');
    flipped[flipped.length - 1]! ^= 1;
    const later = Buffer.from(t0, 'base64');
    later.writeBigUInt64BE(later.readBigUInt64BE(1) + 3_600_000n, 1); // an expiry pushed out an hour (milliseconds), MAC unchanged
    for (const [what, index, token] of [['forged MAC', 0, flipped.toString('base64')], ['extended expiry', 0, later.toString('base64')], ['another index, same content', 2, t0], ['another index', 1, t0], ['garbage', 0, 'AAAA']] as const) {
      const r = await raw('GetSnapshotBlock', { SnapshotId: snap, BlockIndex: index, BlockToken: token });
      expect(r.status, what).toBe(400);
      expect(r.body, what).toMatchObject({ __type: 'ValidationException', Reason: 'INVALID_BLOCK_TOKEN' });
    }
    // The same block in a child snapshot (same content, same index) needs the child's token.
    const child = (await start({ VolumeSize: 1, ParentSnapshotId: snap })).SnapshotId;
    await complete(child, new Map());
    expect((await raw('GetSnapshotBlock', { SnapshotId: child, BlockIndex: 0, BlockToken: t0 })).body.Reason).toBe('INVALID_BLOCK_TOKEN');
    expect((await getBlock(child, 0, (await listAll(child))[0]!.BlockToken)).equals(same)).toBe(true);
  }, 120_000);

  it('two CreateSnapshot snapshots of a volume with 1 MiB rewritten between them: ListChangedBlocks names exactly those 2 blocks, GetSnapshotBlock returns what was written', async () => {
    const MiB = 1024 * 1024;
    const vol = (await env.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: keyArn })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    const snapshotOf = async (volumeId: string): Promise<string> => {
      const s = await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: volumeId })).SnapshotId);
      expect(s.State).toBe('completed');
      return s.SnapshotId;
    };
    const before = randomBytes(16 * MiB);
    const rewrite = randomBytes(MiB);
    const writeAt = (buf: Buffer, off: number): void => {
      const fd = openSync(env.file(vol), 'r+');
      try {
        writeSync(fd, buf, 0, buf.length, off);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    };
    writeAt(before, 0);
    const s1 = await snapshotOf(vol);
    writeAt(rewrite, 3 * MiB); // blocks 6 and 7
    const s2 = await snapshotOf(vol);
    await env.untilClosed(vol); // writeAt's close: FUSE RELEASE comes after close() returns
    await env.api('ebsd.DetachVolume', { VolumeId: vol, Force: false });

    const changed = await ebs('ListChangedBlocks', { FirstSnapshotId: s1, SecondSnapshotId: s2 });
    expect(changed.ChangedBlocks.map((b: R) => b.BlockIndex)).toEqual([6, 7]);
    expect(changed).toMatchObject({ VolumeSize: 1, BlockSize: BLOCK });
    const [c6, c7] = changed.ChangedBlocks as R[];
    expect((await getBlock(s1, 6, c6!.FirstBlockToken)).equals(before.subarray(6 * BLOCK, 7 * BLOCK))).toBe(true);
    expect((await getBlock(s2, 6, c6!.SecondBlockToken)).equals(rewrite.subarray(0, BLOCK))).toBe(true);
    expect((await getBlock(s2, 7, c7!.SecondBlockToken)).equals(rewrite.subarray(BLOCK))).toBe(true);
    // The second snapshot reads as the whole volume after the rewrite.
    const after = Buffer.from(before);
    rewrite.copy(after, 3 * MiB);
    const all = await listAll(s2);
    expect(all.map((b) => b.BlockIndex)).toEqual([...Array(32).keys()]);
    for (const b of [all[0]!, all[5]!, all[8]!, all[31]!]) {
      expect((await getBlock(s2, b.BlockIndex, b.BlockToken)).equals(after.subarray(b.BlockIndex * BLOCK, (b.BlockIndex + 1) * BLOCK)), `block ${b.BlockIndex}`).toBe(true);
    }
    // A snapshot of that volume and one begun with StartSnapshot under the same key are not one lineage (different data keys).
    const other = (await start({ VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn })).SnapshotId;
    await complete(other, new Map());
    expect((await raw('ListChangedBlocks', { FirstSnapshotId: s1, SecondSnapshotId: other })).body.Reason).toBe('UNRELATED_SNAPSHOTS');
  }, 120_000);

  it('a caller allowed ebs:* but not kms:Decrypt may list but is refused GetSnapshotBlock; without ebs:* nothing; refusals audited', async () => {
    const snap = (await start({ VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn })).SnapshotId;
    const d = randomBytes(BLOCK);
    await put(snap, 4, d);
    await complete(snap, new Map([[4, d]]));
    await env.api('ebsd.IamCreateUser', { UserName: 'alice' });
    await env.api('ebsd.IamMapUid', { Uid: ALICE, Principal: 'user/alice' });
    const alice = (args: string[]) => env.cli(['ebs', ...args, '--output', 'json'], { uid: ALICE });

    const denied = await alice(['list-snapshot-blocks', '--snapshot-id', snap]);
    expect(denied.code).toBe(4);
    expect(denied.stderr).toContain(`AccessDeniedException: User: arn:aws:iam::${account}:user/alice is not authorized to perform: ebs:ListSnapshotBlocks on resource: arn:aws:ec2:${region}::snapshot/${snap}`);

    const policy = join(env.dir, 'ebs-only.json');
    writeFileSync(policy, JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'ebs:*', Resource: `arn:aws:ec2:${region}::snapshot/*` }] }));
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/alice', PolicyName: 'ebs', PolicyDocument: readFileSync(policy, 'utf8') });
    const list = await alice(['list-snapshot-blocks', '--snapshot-id', snap]);
    expect(list.code, list.stderr).toBe(0);
    const token = list.json().Blocks[0].BlockToken;
    const aliceDir = join(env.dir, 'alice');
    mkdirSync(aliceDir, { mode: 0o777 });
    chmodSync(aliceDir, 0o777);
    const out = join(aliceDir, 'block');
    const get = await alice(['get-snapshot-block', '--snapshot-id', snap, '--block-index', '4', '--block-token', token, out]);
    expect(get.code).toBe(4);
    expect(get.stderr).toMatch(/AccessDeniedException: GetSnapshotBlock: Decrypt of the data key of snap-[0-9a-f]{17} failed: .*kms:Decrypt/);
    expect(existsSync(out)).toBe(false);
    // Writing an encrypted snapshot needs the key too: StartSnapshot under the key is refused, nothing left pending.
    const before = readdirSync(join(env.state, 'snapshots', 'manifests')).length;
    const st = await alice(['start-snapshot', '--volume-size', '1', '--encrypted', '--kms-key-arn', keyArn]);
    expect(st.code).toBe(4);
    expect(readdirSync(join(env.state, 'snapshots', 'manifests')).length).toBe(before);

    // Given kms:Decrypt on the key, alice reads the plaintext.
    writeFileSync(policy, JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:Decrypt', Resource: keyArn }] }));
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/alice', PolicyName: 'decrypt', PolicyDocument: readFileSync(policy, 'utf8') });
    const get2 = await alice(['get-snapshot-block', '--snapshot-id', snap, '--block-index', '4', '--block-token', token, out]);
    expect(get2.code, get2.stderr).toBe(0);
    expect(readFileSync(out).equals(d)).toBe(true);

    const events = env.auditText().trim().split('\n').map((l) => JSON.parse(l) as R).filter((e) => String(e.userIdentity?.arn).endsWith(':user/alice'));
    expect(events.some((e) => e.eventSource === 'ebs.amazonaws.com' && e.eventName === 'ListSnapshotBlocks' && e.errorCode === 'AccessDeniedException')).toBe(true);
    expect(events.some((e) => e.eventSource === 'ebs.amazonaws.com' && e.eventName === 'GetSnapshotBlock' && e.errorCode === 'AccessDeniedException')).toBe(true);
    expect(events.some((e) => e.eventSource === 'kms.amazonaws.com' && e.eventName === 'Decrypt' && e.errorCode === 'AccessDeniedException')).toBe(true);
    expect(events.some((e) => e.eventSource === 'ebs.amazonaws.com' && e.eventName === 'GetSnapshotBlock' && !e.errorCode)).toBe(true);
  }, 120_000);

  it('StartSnapshot with Tags also needs ec2:CreateTags (ec2:CreateAction StartSnapshot), as AWS authorizes it; refused, nothing is left pending', async () => {
    await env.api('ebsd.IamCreateUser', { UserName: 'tagger' });
    await env.api('ebsd.IamMapUid', { Uid: ALICE + 1, Principal: 'user/tagger' });
    const tagger = (args: string[]) => env.cli(['ebs', ...args, '--output', 'json'], { uid: ALICE + 1 });
    const policy = join(env.dir, 'tagger.json');
    writeFileSync(policy, JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'ebs:*', Resource: `arn:aws:ec2:${region}::snapshot/*` }] }));
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/tagger', PolicyName: 'ebs', PolicyDocument: readFileSync(policy, 'utf8') });
    const manifests = (): number => readdirSync(join(env.state, 'snapshots', 'manifests')).length;

    const before = manifests();
    const refused = await tagger(['start-snapshot', '--volume-size', '1', '--tags', 'Key=owner,Value=tagger']);
    expect(refused.code).toBe(4);
    expect(refused.stderr).toContain(`AccessDeniedException: User: arn:aws:iam::${account}:user/tagger is not authorized to perform: ec2:CreateTags on resource: arn:aws:ec2:${region}::snapshot/*`);
    expect(manifests()).toBe(before);
    // Untagged, ebs:* is enough.
    const plain = await tagger(['start-snapshot', '--volume-size', '1']);
    expect(plain.code, plain.stderr).toBe(0);

    // ec2:CreateTags limited to StartSnapshot's tagging: tagged starts pass.
    writeFileSync(policy, JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'ec2:CreateTags', Resource: `arn:aws:ec2:${region}::snapshot/*`, Condition: { StringEquals: { 'ec2:CreateAction': 'StartSnapshot' } } }] }));
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/tagger', PolicyName: 'tag-at-start', PolicyDocument: readFileSync(policy, 'utf8') });

    const tagged = await tagger(['start-snapshot', '--volume-size', '1', '--tags', 'Key=owner,Value=tagger']);
    expect(tagged.code, tagged.stderr).toBe(0);
    expect(manifest(tagged.json().SnapshotId).tags).toEqual([{ Key: 'owner', Value: 'tagger' }]);
  }, 120_000);

  // Last: it restarts the daemon (same state) with --allow-unencrypted, then without it again.
  it('with --allow-unencrypted (encryption by default disabled) the same requests make unencrypted snapshots, as before; without it, such a snapshot as ParentSnapshotId is ValidationException until copied encrypted; CopySnapshot follows the setting (KmsKeyId alone, ec2:Encrypted of the copy)', async () => {
    await env.stop();
    await env.start(['--allow-unencrypted']);
    const st = await start({ VolumeSize: 1 });
    expect(st).toMatchObject({ SseType: 'none' });
    expect(st.KmsKeyArn).toBeUndefined();
    const plain = st.SnapshotId;
    const d = randomBytes(BLOCK);
    await put(plain, 3, d);
    await complete(plain, new Map([[3, d]]));
    expect(manifest(plain)).toMatchObject({ encrypted: false, kmsKeyId: '' });
    // The plaintext snapshot's block is stored as written.
    expect(storedBlock(manifest(plain).blocks[0][1]).equals(d)).toBe(true);
    expect((await getBlock(plain, 3, (await listAll(plain))[0]!.BlockToken)).equals(d)).toBe(true);
    expect(await start({ VolumeSize: 1, Encrypted: false })).toMatchObject({ SseType: 'none' });
    const child = await start({ VolumeSize: 1, ParentSnapshotId: plain });
    expect(child).toMatchObject({ ParentSnapshotId: plain, SseType: 'none' });
    await complete(child.SnapshotId, new Map());
    // KmsKeyArn alone is still refused here (encryption by default disabled, as before).
    await refusedWith(start({ VolumeSize: 1, KmsKeyArn: keyArn }), 'ValidationException', /KmsKeyArn needs Encrypted/);
    // CopySnapshot likewise: KmsKeyId without Encrypted is refused here (EC2: "the encrypted state must be true").
    const kmsAlone = await env.cli(['snapshot', 'copy', plain, '--kms-key-id', keyArn]);
    expect(kmsAlone.code).toBe(7);
    expect(kmsAlone.stderr).toMatch(/InvalidParameterDependency.*KmsKeyId needs Encrypted true/);

    // ec2:Encrypted of CopySnapshot on snapshot/* is the copy's, as the copier decides it. Two users
    // may copy `plain` only to an encrypted copy (enc-only) or only to an unencrypted one (plain-only).
    const copyUser = async (name: string, uid: number, encrypted: 'true' | 'false') => {
      await env.ok(['iam', 'create-user', name]);
      await env.ok(['iam', 'map-uid', String(uid), `user/${name}`]);
      const doc = join(env.dir, `${name}.json`);
      writeFileSync(doc, JSON.stringify({ Version: '2012-10-17', Statement: [
        { Effect: 'Allow', Action: 'ec2:CopySnapshot', Resource: `arn:aws:ec2:${region}::snapshot/${plain}` },
        { Effect: 'Allow', Action: 'ec2:CopySnapshot', Resource: `arn:aws:ec2:${region}::snapshot/*`, Condition: { StringEquals: { 'ec2:Encrypted': encrypted } } },
        { Effect: 'Allow', Action: 'ec2:DescribeSnapshots', Resource: '*' },
        { Effect: 'Allow', Action: 'kms:*', Resource: '*', Condition: { StringEquals: { 'kms:ViaService': `ec2.${region}.amazonaws.com` } } },
      ] }));
      await env.ok(['iam', 'put-policy', `user/${name}`, '--policy-name', 'copy', '--policy-document', `file://${doc}`]);
      return (args: string[]) => env.cli(['snapshot', 'copy', plain, ...args, '--output', 'json'], { uid });
    };
    const encOnly = await copyUser('enc-only', ALICE + 2, 'true');
    const plainOnly = await copyUser('plain-only', ALICE + 3, 'false');
    const refusedOnTarget = new RegExp(`UnauthorizedOperation.*ec2:CopySnapshot on resource: arn:aws:ec2:${region}::snapshot/\\*`);
    // Encryption by default disabled: without --encrypted the copy is unencrypted.
    const encRefused = await encOnly([]);
    expect(encRefused.code).toBe(4);
    expect(encRefused.stderr).toMatch(refusedOnTarget);
    const plainCopied = await plainOnly(['--wait']);
    expect(plainCopied.code, plainCopied.stderr).toBe(0);
    expect(manifest(plainCopied.json().SnapshotId)).toMatchObject({ state: 'completed', encrypted: false });

    await env.stop();
    await env.start();
    const before = readdirSync(join(env.state, 'snapshots', 'manifests')).length;
    const r = await raw('StartSnapshot', { VolumeSize: 1, ParentSnapshotId: plain });
    expect(r.status).toBe(400);
    expect(r.body).toMatchObject({ __type: 'ValidationException', Reason: 'INVALID_PARAMETER_VALUE' });
    expect(r.body.message).toContain(`ParentSnapshotId ${plain} is an unencrypted snapshot`);
    expect(r.body.message).toContain(`ebsd snapshot copy ${plain} --encrypted`);
    expect(readdirSync(join(env.state, 'snapshots', 'manifests')).length).toBe(before);
    // As the refusal says: an encrypted copy is a parent.
    const copy = (await env.ok(['snapshot', 'copy', plain, '--encrypted', '--wait'])).SnapshotId;
    const next = await start({ VolumeSize: 1, ParentSnapshotId: copy });
    expect(next).toMatchObject({ ParentSnapshotId: copy, SseType: 'sse-ebs' });
    await complete(next.SnapshotId, new Map());
    expect((await getBlock(next.SnapshotId, 3, (await listAll(next.SnapshotId))[0]!.BlockToken)).equals(d)).toBe(true);
    // CopySnapshot with encryption by default: the copy of an unencrypted snapshot is encrypted without --encrypted (aws/ebs).
    const byDefault = (await env.ok(['snapshot', 'copy', plain, '--wait'])).SnapshotId;
    expect(manifest(byDefault)).toMatchObject({ encrypted: true, kmsKeyId: manifest(copy).kmsKeyId });
    expect(manifest(copy).kmsKeyId).toMatch(/^arn:aws:kms:/);
    // Stored as ciphertext: another content hash than the plaintext block's.
    expect(manifest(byDefault).blocks[0][1]).not.toBe(manifest(plain).blocks[0][1]);
    // Authorized as what it is: an encrypted copy (ec2:Encrypted true), though the request has no Encrypted.
    const encCopied = await encOnly(['--wait']);
    expect(encCopied.code, encCopied.stderr).toBe(0);
    expect(manifest(encCopied.json().SnapshotId)).toMatchObject({ state: 'completed', encrypted: true });
    const plainRefused = await plainOnly([]);
    expect(plainRefused.code).toBe(4);
    expect(plainRefused.stderr).toMatch(refusedOnTarget);
    // KmsKeyId alone is accepted with encryption by default (EC2: omit Encrypted then): the copy is under that key.
    const underKey = (await env.ok(['snapshot', 'copy', plain, '--kms-key-id', keyArn, '--wait'])).SnapshotId;
    expect(manifest(underKey)).toMatchObject({ state: 'completed', encrypted: true, kmsKeyId: keyArn });
    expect(manifest(underKey).wrappedKey.keyArn).toBe(keyArn);
  }, 120_000);

  it('after a restart a repeated CompleteSnapshot is judged by the manifest: the same ChangedBlocksCount answers completed, another count is refused naming it, a Checksum is refused as no longer checkable; a snapshot left pending by the restart, or a copy, is refused as not begun here and pending', async () => {
    const snap = (await start({ VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn })).SnapshotId as string;
    const blocks = new Map([[2, randomBytes(BLOCK)], [9, randomBytes(BLOCK)]]);
    for (const [i, d] of blocks) await put(snap, i, d);
    expect(await complete(snap, blocks)).toEqual({ Status: 'completed' });
    const open = (await start({ VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn })).SnapshotId as string;
    await put(open, 0, randomBytes(BLOCK));
    const copy = (await env.ok(['snapshot', 'copy', snap, '--wait'])).SnapshotId as string;
    expect(manifest(copy)).toMatchObject({ state: 'completed', transferType: 'standard' });

    await env.stop();
    await env.start();
    const completed = readFileSync(join(env.state, 'snapshots', 'manifests', `${snap}.json`), 'utf8');
    // The SDK's retry of a completion whose answer was lost across the restart: the same count, answered as the first.
    expect(await ebs('CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 2 })).toEqual({ Status: 'completed' });
    await refusedWith(ebs('CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 3 }), 'ValidationException', /already completed, with 2 block\(s\) written.*ChangedBlocksCount is 3, not 2/);
    await refusedWith(complete(snap, blocks), 'ValidationException', /holds no record of its completion's checksum .* cannot be checked: repeat without Checksum/);
    expect(readFileSync(join(env.state, 'snapshots', 'manifests', `${snap}.json`), 'utf8')).toBe(completed);
    // Not completions to repeat: the snapshot the restart ended (error), and a copy.
    const ended = await raw('CompleteSnapshot', { SnapshotId: open, ChangedBlocksCount: 1 });
    expect(ended.status).toBe(400);
    expect(ended.body).toMatchObject({ __type: 'ValidationException', Reason: 'INVALID_SNAPSHOT_ID' });
    expect(ended.body.message).toMatch(/is error: the daemon restarted before CompleteSnapshot/);
    const copied = await raw('CompleteSnapshot', { SnapshotId: copy, ChangedBlocksCount: 2 });
    expect(copied.body).toMatchObject({ __type: 'ValidationException', Reason: 'INVALID_SNAPSHOT_ID' });
    expect(copied.body.message).toMatch(/is completed; only a snapshot begun with StartSnapshot and still pending/);
  }, 120_000);
});
