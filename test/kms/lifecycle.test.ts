import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { openKms, admin, tempDir, awsError, FakeClock } from './helpers.js';

describe('rotation and deletion over simulated time', () => {
  it('automatic rotation happens when due; old material still decrypts; RotateKeyOnDemand; ListKeyRotations', async () => {
    const t = tempDir();
    const clock = new FakeClock();
    const kms = await openKms(t.dir, { clock: clock.now });
    try {
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string; Arn: string };
      const old = await kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: Buffer.from('old') }, admin);
      expect(await awsError(kms.call('EnableKeyRotation', { KeyId: k.KeyId, RotationPeriodInDays: 89 }, admin))).toBe('ValidationException');
      await kms.call('EnableKeyRotation', { KeyId: k.KeyId, RotationPeriodInDays: 90 }, admin);
      const st = await kms.call('GetKeyRotationStatus', { KeyId: k.KeyId }, admin);
      expect(st).toMatchObject({ KeyRotationEnabled: true, RotationPeriodInDays: 90, NextRotationDate: (clock.t + 90 * 86_400_000) / 1000 });
      clock.advanceDays(89);
      await kms.tick();
      expect((await kms.call('ListKeyRotations', { KeyId: k.KeyId }, admin)).Rotations).toEqual([]);
      clock.advanceDays(1);
      // the next call notices the rotation is due
      await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
      const rots = (await kms.call('ListKeyRotations', { KeyId: k.KeyId }, admin)).Rotations as { RotationType: string }[];
      expect(rots.map((r) => r.RotationType)).toEqual(['AUTOMATIC']);
      const fresh = await kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: Buffer.from('new') }, admin);
      expect(Buffer.compare(Buffer.from(old.CiphertextBlob as Uint8Array).subarray(0, 200), Buffer.from(fresh.CiphertextBlob as Uint8Array).subarray(0, 200))).not.toBe(0);
      expect(Buffer.from((await kms.call('Decrypt', { CiphertextBlob: old.CiphertextBlob }, admin)).Plaintext as Uint8Array).toString()).toBe('old');
      await kms.call('RotateKeyOnDemand', { KeyId: k.KeyId }, admin);
      expect(((await kms.call('ListKeyRotations', { KeyId: k.KeyId }, admin)).Rotations as unknown[]).length).toBe(2);
      expect(Buffer.from((await kms.call('Decrypt', { CiphertextBlob: fresh.CiphertextBlob }, admin)).Plaintext as Uint8Array).toString()).toBe('new');
      await kms.call('DisableKeyRotation', { KeyId: k.KeyId }, admin);
      expect((await kms.call('GetKeyRotationStatus', { KeyId: k.KeyId }, admin)).KeyRotationEnabled).toBe(false);
      // 25 on-demand rotations per key (docs/kms-format.md, "Quotas"); the 26th is refused.
      for (let i = 1; i < 25; i++) await kms.call('RotateKeyOnDemand', { KeyId: k.KeyId }, admin);
      expect(await awsError(kms.call('RotateKeyOnDemand', { KeyId: k.KeyId }, admin))).toBe('LimitExceededException');
      const ec = (await kms.call('CreateKey', { KeySpec: 'ECC_NIST_P256', KeyUsage: 'SIGN_VERIFY' }, admin)).KeyMetadata as { KeyId: string };
      expect(await awsError(kms.call('EnableKeyRotation', { KeyId: ec.KeyId }, admin))).toBe('UnsupportedOperationException');
      await kms.call('DisableKey', { KeyId: k.KeyId }, admin);
      expect(await awsError(kms.call('EnableKeyRotation', { KeyId: k.KeyId }, admin))).toBe('DisabledException');
    } finally {
      await kms.close();
      t.cleanup();
    }
  }, 30_000);

  it('GetKeyRotationStatus: false while pending deletion, restored by CancelKeyDeletion; unchanged while disabled', async () => {
    const t = tempDir();
    const clock = new FakeClock();
    const kms = await openKms(t.dir, { clock: clock.now });
    try {
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      await kms.call('EnableKeyRotation', { KeyId: k.KeyId, RotationPeriodInDays: 90 }, admin);
      const on = { KeyRotationEnabled: true, RotationPeriodInDays: 90, NextRotationDate: (clock.t + 90 * 86_400_000) / 1000 };
      await kms.call('DisableKey', { KeyId: k.KeyId }, admin);
      expect(await kms.call('GetKeyRotationStatus', { KeyId: k.KeyId }, admin)).toMatchObject(on);
      await kms.call('ScheduleKeyDeletion', { KeyId: k.KeyId, PendingWindowInDays: 7 }, admin);
      const pending = await kms.call('GetKeyRotationStatus', { KeyId: k.KeyId }, admin);
      expect(pending.KeyRotationEnabled).toBe(false);
      expect(pending).not.toHaveProperty('RotationPeriodInDays');
      expect(pending).not.toHaveProperty('NextRotationDate');
      await kms.call('CancelKeyDeletion', { KeyId: k.KeyId }, admin);
      expect(await kms.call('GetKeyRotationStatus', { KeyId: k.KeyId }, admin)).toMatchObject(on);
    } finally {
      await kms.close();
      t.cleanup();
    }
  }, 30_000);

  it('a key scheduled for deletion is really deleted when due, with its aliases, and survives a restart until then', async () => {
    const t = tempDir();
    const clock = new FakeClock();
    let kms = await openKms(t.dir, { clock: clock.now });
    try {
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string; Arn: string };
      await kms.call('CreateAlias', { AliasName: 'alias/doomed', TargetKeyId: k.KeyId }, admin);
      const e = await kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: Buffer.from('x') }, admin);
      const s = await kms.call('ScheduleKeyDeletion', { KeyId: k.KeyId, PendingWindowInDays: 7 }, admin);
      expect(s.DeletionDate).toBe((clock.t + 7 * 86_400_000) / 1000);
      await kms.close();
      clock.advanceDays(6);
      kms = await openKms(t.dir, { clock: clock.now });
      expect((await kms.call('DescribeKey', { KeyId: k.KeyId }, admin)).KeyMetadata).toMatchObject({ KeyState: 'PendingDeletion' });
      clock.advanceDays(1);
      await kms.tick();
      expect(await awsError(kms.call('DescribeKey', { KeyId: k.KeyId }, admin))).toBe('NotFoundException');
      expect(await awsError(kms.call('Decrypt', { CiphertextBlob: e.CiphertextBlob }, admin))).toBe('NotFoundException');
      expect(await awsError(kms.call('DescribeKey', { KeyId: 'alias/doomed' }, admin))).toBe('NotFoundException');
      await kms.sealAudit();
      const events = readFileSync(join(t.dir, 'audit', 'events.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      expect(events.some((ev) => ev.eventName === 'DeleteKey' && ev.eventType === 'AwsServiceEvent' && ev.resources[0].ARN === k.Arn)).toBe(true);
    } finally {
      await kms.close();
      t.cleanup();
    }
  }, 30_000);
});
