/**
 * A same-key CopySnapshot of an encrypted snapshot needs the caller's use of
 * the snapshot's KMS key, as any copy of an encrypted snapshot does on EBS
 * (docs/architecture.md §14.2, §14.3): the copier asks the KMS, as the caller
 * via EC2, to ReEncrypt the snapshot's wrapped key from and to that key
 * (kms:ReEncryptFrom, kms:ReEncryptTo), which the KMS judges and audits. A
 * caller refused every kms: action gets an `error` copy naming no blocks,
 * StateMessage AccessDeniedException, as the other-key copy's Decrypt ends;
 * allowed ReEncrypt through EC2, the copy completes. In process: the embedded
 * KMS core with its authorizer and audit log, the directory store.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import { SnapshotCopier } from '../../src/snapshot/copy.js';
import { SnapshotGc } from '../../src/snapshot/gc.js';
import type { Caller } from '../../src/kms/types.js';
import { ACCOUNT, REGION, missingBlocks, openInProcessHost, type InProcessHost } from './in-process-host.js';

const VIA = `ec2.${REGION}.amazonaws.com`;
/** What the audit records as invokedBy: CloudTrail's service name, without the region (docs/kms-format.md, "Audit log"). */
const INVOKED_BY = 'ec2.amazonaws.com';

describe('same-key CopySnapshot: the caller must be allowed to use the snapshot key', () => {
  let h: InProcessHost;
  let copier: SnapshotCopier;
  let carol: Caller;
  const auditEvents = (): Record<string, any>[] => readFileSync(join(h.dir, 'kms', 'audit', 'events.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  const policy = (statements: object[]): Promise<void> => h.authz.identities.attachPolicy('user/carol', 'p', JSON.stringify({ Version: '2012-10-17', Statement: statements }));

  beforeAll(async () => {
    h = await openInProcessHost('ebsd-copy-key-use-');
    const gc = new SnapshotGc(h.store, { graceMs: 0 });
    copier = await SnapshotCopier.open({
      store: h.store, keyService: h.keyService, xtsEngine: selectXtsEngine('auto'), region: REGION, accountId: ACCOUNT,
      localDir: join(h.dir, 'copies'), pin: (x) => gc.pin(x),
    });
    await h.authz.identities.createUser('carol');
    await h.authz.identities.mapUid(4242, 'user/carol');
    carol = h.authz.identities.callerForUid(4242);
  }, 60_000);

  afterAll(async () => {
    try {
      await copier?.close();
    } finally {
      await h?.close();
    }
  });

  it('refused every kms: action: the copy ends error (AccessDeniedException on kms:ReEncryptFrom), names no blocks, and the refusal is the KMS\'s', async () => {
    const src = await h.newSnapshot();
    const { SnapshotId } = await copier.copySnapshot({ SourceSnapshotId: src.snapshotId, SourceRegion: REGION }, carol);
    await copier.settled();
    const m = (await h.store.getManifest(SnapshotId))!;
    expect(m).toMatchObject({ state: 'error', blocks: [] });
    expect(m.header).toBeUndefined();
    expect(m.stateMessage).toMatch(new RegExp(`^AccessDeniedException: ReEncrypt: User: ${carol.arn} is not authorized to perform: kms:ReEncryptFrom on resource: ${h.key}`));
    const refused = auditEvents().filter((e) => e.eventName === 'ReEncrypt' && e.userIdentity?.arn === carol.arn);
    expect(refused).toHaveLength(1);
    expect(refused[0]).toMatchObject({ errorCode: 'AccessDeniedException', userIdentity: { invokedBy: INVOKED_BY }, requestParameters: { sourceKeyId: h.key, destinationKeyId: h.key } });
    // The other-key copy ends the same way when the caller may not use the snapshot's key (its Decrypt).
    const other = (await h.kms.call('CreateKey', { Description: 'other' }, h.root)).KeyMetadata.Arn as string;
    await policy([{ Effect: 'Allow', Action: ['kms:DescribeKey', 'kms:GenerateDataKeyWithoutPlaintext'], Resource: other }]);
    const viaOther = await copier.copySnapshot({ SourceSnapshotId: src.snapshotId, SourceRegion: REGION, KmsKeyId: other }, carol);
    await copier.settled();
    expect((await h.store.getManifest(viaOther.SnapshotId))!.stateMessage).toMatch(/^AccessDeniedException: Decrypt: /);
  });

  it('allowed kms:ReEncryptFrom and kms:ReEncryptTo on the key through EC2: the copy completes, and the KMS audit has the caller\'s ReEncrypt invoked by EC2', async () => {
    const src = await h.newSnapshot();
    // Through EC2 only: the same actions asked directly are not allowed.
    await policy([{ Effect: 'Allow', Action: ['kms:ReEncryptFrom', 'kms:ReEncryptTo'], Resource: h.key, Condition: { StringEquals: { 'kms:ViaService': VIA } } }]);
    await expect(h.kms.call('ReEncrypt', { CiphertextBlob: Buffer.from(src.wrappedKey!.ciphertextBlob, 'base64'), SourceEncryptionContext: src.wrappedKey!.encryptionContext, DestinationKeyId: h.key, DestinationEncryptionContext: src.wrappedKey!.encryptionContext }, carol)).rejects.toMatchObject({ awsName: 'AccessDeniedException' });
    const { SnapshotId } = await copier.copySnapshot({ SourceSnapshotId: src.snapshotId, SourceRegion: REGION }, carol);
    await copier.settled();
    const m = (await h.store.getManifest(SnapshotId))!;
    expect(m.state, m.stateMessage).toBe('completed');
    expect(m.blocks).toEqual(src.blocks);
    expect(m.wrappedKey).toEqual(src.wrappedKey);
    expect(await missingBlocks(h.store, m)).toEqual([]);
    const re = auditEvents().filter((e) => e.eventName === 'ReEncrypt' && e.userIdentity?.arn === carol.arn && !e.errorCode);
    expect(re).toHaveLength(1);
    expect(re[0]!.userIdentity.invokedBy).toBe(INVOKED_BY);
  });

  it('the new data key of an other-key copy: K1 = K2 is checked in place, never copied into Node\'s Buffer pool', async () => {
    // Review finding 3: Buffer.from(key.subarray(0, 32)) copied K1 into the shared 8 KiB pool, never wiped.
    const src = await h.newSnapshot();
    const other = (await h.kms.call('CreateKey', { Description: 'copy key compare' }, h.root)).KeyMetadata.Arn as string;
    const keys: Uint8Array[] = [];
    const decrypt = h.keyService.decrypt.bind(h.keyService);
    const dec = vi.spyOn(h.keyService, 'decrypt').mockImplementation(async (...args: Parameters<typeof decrypt>) => {
      const r = await decrypt(...args);
      keys.push(r.Plaintext);
      return r;
    });
    const copies: string[] = [];
    const realFrom = Buffer.from;
    const from = vi.spyOn(Buffer, 'from').mockImplementation(function (this: unknown, ...args: unknown[]) {
      const a = args[0];
      if (a instanceof Uint8Array && keys.some((k) => k.buffer === a.buffer && a.byteLength > 0)) copies.push(`${a.byteLength} bytes at ${a.byteOffset - keys.find((k) => k.buffer === a.buffer)!.byteOffset}`);
      return (realFrom as (...x: unknown[]) => Buffer).apply(Buffer, args);
    } as typeof Buffer.from);
    try {
      const { SnapshotId } = await copier.copySnapshot({ SourceSnapshotId: src.snapshotId, SourceRegion: REGION, KmsKeyId: other }, h.root);
      await copier.settled();
      const m = (await h.store.getManifest(SnapshotId))!;
      expect(m.state, m.stateMessage).toBe('completed');
      expect(m.kmsKeyId).toBe(other);
    } finally {
      from.mockRestore();
      dec.mockRestore();
    }
    expect(keys.length).toBeGreaterThan(0);
    expect(copies).toEqual([]);
  });
});
