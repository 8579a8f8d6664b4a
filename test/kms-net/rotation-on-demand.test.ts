import { afterEach, describe, expect, it } from 'vitest';
import type { KmsService } from '../../src/kms/kms-core.js';
import { FakeClock, admin, openKms, tempDir } from '../kms/helpers.js';

describe('RotateKeyOnDemand and the automatic schedule', () => {
  let kms: KmsService | undefined;
  const t = tempDir('ebsd-rotod-');
  afterEach(async () => { await kms?.close(); t.cleanup(); });

  it('an on-demand rotation leaves NextRotationDate where the automatic schedule put it', async () => {
    const clock = new FakeClock();
    kms = await openKms(t.dir, { clock: clock.now });
    const { KeyMetadata } = await kms.call('CreateKey', {}, admin) as any;
    await kms.call('EnableKeyRotation', { KeyId: KeyMetadata.KeyId, RotationPeriodInDays: 90 }, admin);
    const before = (await kms.call('GetKeyRotationStatus', { KeyId: KeyMetadata.KeyId }, admin) as any).NextRotationDate;
    expect(before).toBe(Math.floor((clock.t + 90 * 86_400_000) / 1000));
    clock.advanceDays(10);
    await kms.call('RotateKeyOnDemand', { KeyId: KeyMetadata.KeyId }, admin);
    const after = await kms.call('GetKeyRotationStatus', { KeyId: KeyMetadata.KeyId }, admin) as any;
    expect(after.NextRotationDate).toBe(before);
    const rotations = (await kms.call('ListKeyRotations', { KeyId: KeyMetadata.KeyId }, admin) as any).Rotations;
    expect(rotations.map((r: any) => r.RotationType)).toEqual(['ON_DEMAND']);
  });
});
