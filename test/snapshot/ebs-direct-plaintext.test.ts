import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { KmsService } from '../../src/kms/kms-core.js';
import type { Caller } from '../../src/kms/types.js';
import { KmsCoreKeyService } from '../../src/volume/key-service.js';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import { EbsDirect } from '../../src/snapshot/ebs-direct.js';
import { EbsApi } from '../../src/daemon/ebs-api.js';
import { encodeResponse } from '../../src/daemon/aws-json.js';
import { ebsRestRequest } from '../../src/daemon/ebs-rest.js';
import { silentLogger } from '../../src/util/logger.js';
import { ACCOUNT, BLOCK, REGION, T0, ebsDirectWorld } from './ebs-direct-world.js';
import { countInOwnMemory, invert } from '../helpers/own-memory.js';

/**
 * A block of an encrypted snapshot is in the clear only at the edge that takes or gives it
 * (docs/architecture.md §6.5): PutSnapshotBlock's block is encrypted in a copy and the
 * block as received is zeroed once the call has answered; GetSnapshotBlock's plaintext is
 * zeroed once encoded for the control socket (the base64 text lives until sent and
 * collected). On the network the block is the raw body and stays bytes: the REST binding
 * hands the body itself over, never a base64 string of it (a string cannot be wiped), and
 * the listener zeroes the body once answered. Real KMS core, real directory store, the
 * EBS direct API as the daemon runs it.
 */
const world = ebsDirectWorld('ebsd-ebs-plain-');
let kms: KmsService;
let root: Caller;
let keyArn = '';
const xts = selectXtsEngine('auto');
const isZero = (b: Uint8Array): boolean => b.every((x) => x === 0);
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('base64');

beforeAll(async () => {
  ({ kms, root } = world);
  keyArn = ((await kms.call('CreateKey', {}, root)) as { KeyMetadata: { Arn: string } }).KeyMetadata.Arn;
});

describe('EBS direct: a plaintext block does not outlive its call', () => {
  it('PutSnapshotBlock zeroes the block it was given once answered; GetSnapshotBlock\'s block is zero once encoded', async () => {
    const d = new EbsDirect({ store: world.store, pendingDir: join(world.dir, 'pending'), keys: new KmsCoreKeyService(kms), xts, accountId: ACCOUNT, region: REGION, now: () => T0 });
    const api = new EbsApi({ direct: d, evaluator: world.authz.authorizer.evaluator, accountId: ACCOUNT, region: REGION, audit: kms.audit, manifest: (id) => d.snapshotSummary(id), log: silentLogger });
    try {
      const snap = ((await api.call('StartSnapshot', { VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn }, root, { requestId: 'r1' })) as { SnapshotId: string }).SnapshotId;
      const plain = randomBytes(BLOCK);
      // As the REST binding hands it over: the request body's own bytes.
      const given = Buffer.from(plain);
      await api.call('PutSnapshotBlock', { SnapshotId: snap, BlockIndex: 3, BlockData: given, DataLength: BLOCK, Checksum: sha(plain), ChecksumAlgorithm: 'SHA256' }, root, { requestId: 'r2' });
      expect(isZero(given)).toBe(true);
      // As the control socket hands it over: base64 in the JSON body.
      await api.call('PutSnapshotBlock', { SnapshotId: snap, BlockIndex: 4, BlockData: plain.toString('base64'), DataLength: BLOCK, Checksum: sha(plain), ChecksumAlgorithm: 'SHA256' }, root, { requestId: 'r3' });
      await api.call('CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 2 }, root, { requestId: 'r4' });

      const listed = (await api.call('ListSnapshotBlocks', { SnapshotId: snap }, root, { requestId: 'r5' })) as { Blocks: { BlockIndex: number; BlockToken: string }[] };
      expect(listed.Blocks.map((b) => b.BlockIndex)).toEqual([3, 4]);
      for (const b of listed.Blocks) {
        const out = (await api.call('GetSnapshotBlock', { SnapshotId: snap, BlockIndex: b.BlockIndex, BlockToken: b.BlockToken }, root, { requestId: `g${b.BlockIndex}` })) as { BlockData: Buffer };
        const block = out.BlockData;
        expect(block.equals(plain)).toBe(true);
        const wire = encodeResponse(out) as { BlockData: string; Checksum: string };
        expect(Buffer.from(wire.BlockData, 'base64').equals(plain)).toBe(true);
        expect(wire.Checksum).toBe(sha(plain));
        expect(isZero(block)).toBe(true);
      }
    } finally {
      await api.close();
    }
  }, 60_000);

  it('a PutSnapshotBlock whose key is refused leaves its copy of the block nowhere (it was never encrypted)', async () => {
    const k = ((await kms.call('CreateKey', {}, root)) as { KeyMetadata: { Arn: string } }).KeyMetadata.Arn;
    const d = new EbsDirect({ store: world.store, pendingDir: join(world.dir, 'pending'), keys: new KmsCoreKeyService(kms), xts, accountId: ACCOUNT, region: REGION, now: () => T0 });
    const api = new EbsApi({ direct: d, evaluator: world.authz.authorizer.evaluator, accountId: ACCOUNT, region: REGION, audit: kms.audit, manifest: (id) => d.snapshotSummary(id), log: silentLogger });
    try {
      const snap = ((await api.call('StartSnapshot', { VolumeSize: 1, Encrypted: true, KmsKeyArn: k }, root, { requestId: 'd1' })) as { SnapshotId: string }).SnapshotId;
      await kms.call('DisableKey', { KeyId: k }, root);
      // The test holds the block only inverted (and in the buffer it gives, which the call zeroes).
      const given = randomBytes(BLOCK);
      const checksum = sha(given);
      const inverse = invert(given);
      const refused = await api.call('PutSnapshotBlock', { SnapshotId: snap, BlockIndex: 1, BlockData: given, DataLength: BLOCK, Checksum: checksum, ChecksumAlgorithm: 'SHA256' }, root, { requestId: 'd2' }).then(() => undefined, (e: unknown) => e);
      expect(refused).toBeDefined();
      expect(isZero(given)).toBe(true);
      expect(countInOwnMemory(inverse)).toBe(0);
    } finally {
      await api.close();
    }
  }, 60_000);

  it('the REST binding hands PutSnapshotBlock\'s body over as bytes, not as a base64 string', () => {
    const body = randomBytes(BLOCK);
    const r = ebsRestRequest({ method: 'PUT', url: '/snapshots/snap-0123456789abcdef0/blocks/5', headers: { 'x-amz-data-length': String(BLOCK), 'x-amz-checksum': sha(body), 'x-amz-checksum-algorithm': 'SHA256' } }, body);
    expect(r?.op).toBe('PutSnapshotBlock');
    const data = r!.members.BlockData;
    expect(typeof data).not.toBe('string');
    expect(data).toBeInstanceOf(Uint8Array);
    // The body's own memory: the listener's zeroing of the body reaches it.
    body.fill(0);
    expect(isZero(data as Uint8Array)).toBe(true);
  });
});
