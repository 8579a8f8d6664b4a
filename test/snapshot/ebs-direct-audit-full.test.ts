import { createHash, randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { KmsCoreKeyService } from '../../src/volume/key-service.js';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import { EbsDirect } from '../../src/snapshot/ebs-direct.js';
import { EbsApi } from '../../src/daemon/ebs-api.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { PolicyEvaluator } from '../../src/kms/authz/index.js';
import { silentLogger } from '../../src/util/logger.js';
import { ACCOUNT, REGION, admin, openKms, tempDir } from '../kms/helpers.js';

/**
 * While the audit log can take no event (its disk full and its reserve used up: "failing",
 * README "Full disk"), a call that changes state is refused before it starts, as the EC2
 * operations are (docs/architecture.md §5.8): StartSnapshot, PutSnapshotBlock and
 * CompleteSnapshot must not begin a snapshot, store a block or complete a snapshot that the
 * audit log never records. Real KMS core with its audit log on a small tmpfs, a real
 * directory store on the ordinary disk (so only the audit log is full), the EBS direct API
 * as the daemon runs it.
 */
const BLOCK = 512 * 1024;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('base64');

describe('EBS direct APIs while the audit log cannot be written', () => {
  it('StartSnapshot, PutSnapshotBlock and CompleteSnapshot are refused before they start; the snapshot stays pending and completes once space returns', async () => {
    const t = tempDir('ebsd-ebs-audit-full-');
    const small = join(t.dir, 'small');
    mkdirSync(small);
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', small]);
    expect(m.status, String(m.stderr)).toBe(0);
    const clock = { t: Date.now() };
    let api: EbsApi | undefined;
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    try {
      kms = await openKms(small, { auditReserveBytes: 256 * 1024, auditDigestEvery: 1_000_000, clock: () => clock.t });
      const keyArn = ((await kms.call('CreateKey', {}, admin)).KeyMetadata as { Arn: string }).Arn;
      const store = await DirSnapshotStore.open(join(t.dir, 'snapshots'));
      const direct = new EbsDirect({ store, pendingDir: join(t.dir, 'pending'), keys: new KmsCoreKeyService(kms), xts: selectXtsEngine('auto'), accountId: ACCOUNT, region: REGION });
      api = new EbsApi({ direct, evaluator: new PolicyEvaluator(), accountId: ACCOUNT, region: REGION, audit: kms.audit, manifest: (id) => direct.snapshotSummary(id), log: silentLogger });
      const call = (op: string, body: Record<string, unknown>): Promise<Record<string, unknown>> => api!.call(op, body, admin, { requestId: randomBytes(8).toString('hex') }) as Promise<Record<string, unknown>>;
      const refusal = (p: Promise<unknown>): Promise<{ awsName?: string; message?: string } | undefined> => p.then(() => undefined, (e: { awsName?: string; message?: string }) => e);
      const put = (snap: string, index: number, d: Buffer): Promise<Record<string, unknown>> =>
        call('PutSnapshotBlock', { SnapshotId: snap, BlockIndex: index, BlockData: Buffer.from(d), DataLength: BLOCK, Checksum: sha(d), ChecksumAlgorithm: 'SHA256' });

      // Begun and one block written while the log takes events (the data key is then cached: no KMS call is needed to write).
      const snap = (await call('StartSnapshot', { VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn })).SnapshotId as string;
      const d1 = randomBytes(BLOCK);
      await put(snap, 1, d1);

      // Fill the disk to the last byte, then use the reserve up with audited KMS calls.
      const filler = openSync(join(small, 'filler'), 'w');
      try { for (;;) writeSync(filler, Buffer.alloc(64 * 1024)); } catch (e) { expect((e as NodeJS.ErrnoException).code).toBe('ENOSPC'); }
      closeSync(filler);
      for (let i = 0; i < 20_000 && kms.audit.health().State !== 'failing'; i++) await kms.call('DescribeKey', { KeyId: keyArn }, admin).catch(() => {});
      expect(kms.audit.health().State).toBe('failing');

      const d2 = randomBytes(BLOCK);
      const putRefused = await refusal(put(snap, 2, d2));
      expect(putRefused?.awsName).toBe('InternalServerException');
      expect(putRefused?.message).toMatch(/^PutSnapshotBlock was not started: the audit log kms\/audit\/events\.ndjson cannot be written/);
      const completeRefused = await refusal(call('CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 1 }));
      expect(completeRefused?.awsName).toBe('InternalServerException');
      expect(completeRefused?.message).toMatch(/^CompleteSnapshot was not started: the audit log/);
      const startRefused = await refusal(call('StartSnapshot', { VolumeSize: 1, Encrypted: true, KmsKeyArn: keyArn }));
      expect(startRefused?.message).toMatch(/^StartSnapshot was not started: the audit log/);
      // Nothing took effect: the snapshot is still pending, as written before.
      expect(direct.pendingManifest(snap)).toBeDefined();
      expect((await store.getManifest(snap))?.state).toBe('pending');

      // Space returns: the reserve is re-created (tried at most every 5 s of the clock) and the upload goes on.
      rmSync(join(small, 'filler'));
      clock.t += 6_000;
      await kms.call('DescribeKey', { KeyId: keyArn }, admin);
      expect(kms.audit.health().State).toBe('ok');
      // Block 2 was not taken: the snapshot completes with the one block written before.
      expect(await call('CompleteSnapshot', { SnapshotId: snap, ChangedBlocksCount: 1 })).toEqual({ Status: 'completed' });
      expect(((await call('ListSnapshotBlocks', { SnapshotId: snap })).Blocks as { BlockIndex: number }[]).map((b) => b.BlockIndex)).toEqual([1]);
      expect(kms.audit.health().State).toBe('ok');
    } finally {
      await api?.close();
      await kms?.close().catch(() => {});
      spawnSync('umount', ['-l', small]);
      t.cleanup();
    }
  }, 120_000);
});
