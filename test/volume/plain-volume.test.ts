import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { seededBytes, printSeedOnFailure } from '../crypto/seeded.js';
import { VolumeManager, type VolumeManagerOptions, type VolumeAuditEvent } from '../../src/volume/volume-manager.js';
import { readLuks2 } from '../../src/volume/luks2-header.js';
import { PLAIN_DATA_OFFSET, PLAIN_MAGIC, readPlainImage } from '../../src/volume/plain-image.js';
import { tmpDir } from './helpers/image.js';
import { kmsHarness, type KmsHarness } from './helpers/kms.js';
import { openTestManager } from './helpers/manager.js';
/** Random payloads replay under EBSD_TEST_SEED (test/crypto/seeded.ts); a failure prints the seed. */
const randomBytes = seededBytes('volume/plain-volume');
printSeedOnFailure();

/** Measurement-only plaintext volumes (CreateVolume Cipher "none"; docs/format.md). */
const MiB = 1 << 20;
let t: ReturnType<typeof tmpDir>;
let kms: KmsHarness;
let mgr: VolumeManager;
let audits: VolumeAuditEvent[];
let logLines: string[];

function manager(extra: Partial<VolumeManagerOptions> = {}): Promise<VolumeManager> {
  return openTestManager(t.dir, kms, { onAudit: (e) => audits.push(e), ...extra }, logLines);
}

beforeEach(async () => {
  t = tmpDir();
  kms = await kmsHarness(join(t.dir, 'kms'));
  audits = [];
  logLines = [];
  mgr = await manager({ allowUnencrypted: true });
});
afterEach(async () => {
  await mgr.close();
  await kms.close();
  t.cleanup();
});

const img = (id: string) => join(t.dir, 'volumes', `${id}.img`);

describe('measurement-only plaintext volumes', () => {
  test('refused (OperationNotPermitted) unless the manager allows them; nothing is left behind', async () => {
    await mgr.close();
    mgr = await manager();
    for (const req of [{ Size: MiB, Cipher: 'none' as const }, { Size: MiB, Encrypted: false }]) {
      const err = await mgr.createVolume(req, kms.user).catch((e) => e);
      expect(err).toMatchObject({ code: 'UNENCRYPTED_REFUSED', awsName: 'OperationNotPermitted' });
      expect(err.message).toMatch(/--allow-unencrypted/);
    }
    expect(mgr.describeVolumes().Volumes).toEqual([]);
  });

  test('contradictions and a KMS key are InvalidParameterValue', async () => {
    for (const req of [
      { Size: MiB, Cipher: 'none' as const, Encrypted: true },
      { Size: MiB, Cipher: 'aes-xts-plain64' as const, Encrypted: false },
      { Size: MiB, Cipher: 'none' as const, KmsKeyId: 'alias/aws/ebs' },
      { Size: MiB, Cipher: 'rot13' as never },
    ]) {
      await expect(mgr.createVolume(req, kms.user)).rejects.toMatchObject({ awsName: 'InvalidParameterValue' });
    }
  });

  test('no KMS involved: create, attach, I/O, grow, detach, delete work with KMS unreachable; marked unencrypted; plaintext on disk', async () => {
    kms.setUnreachable(true);
    const v = await mgr.createVolume({ Size: 2 * MiB, Cipher: 'none', Name: 'bench' }, kms.user);
    expect(v).toMatchObject({ Encrypted: false, SizeBytes: 2 * MiB });
    expect(v).not.toHaveProperty('KmsKeyId');
    // Not LUKS2: nobody can mistake the image for an encrypted one.
    await expect(readLuks2(img(v.VolumeId), { repair: false })).rejects.toMatchObject({ code: 'LUKS2_BAD_MAGIC' });
    expect(readFileSync(img(v.VolumeId)).subarray(0, PLAIN_MAGIC.length).toString()).toBe(PLAIN_MAGIC);
    expect(await readPlainImage(img(v.VolumeId))).toEqual({ volumeId: v.VolumeId, size: 2 * MiB, dataOffset: PLAIN_DATA_OFFSET });

    await mgr.attachVolume({ VolumeId: v.VolumeId }, kms.user);
    const dev = mgr.getBlockDevice(v.VolumeId)!;
    expect(dev.unencrypted).toBe(true);
    expect(mgr.describeKeyCaches()).toEqual([{ VolumeId: v.VolumeId, Encrypted: false, State: 'unencrypted' }]);
    const data = randomBytes(10_000);
    await dev.write(12_345, data);
    await dev.flush();
    const back = Buffer.alloc(data.length);
    await dev.read(12_345, data.length, back);
    expect(back.equals(data)).toBe(true);
    const onDisk = readFileSync(img(v.VolumeId)).subarray(PLAIN_DATA_OFFSET + 12_345, PLAIN_DATA_OFFSET + 12_345 + data.length);
    expect(onDisk.equals(data)).toBe(true);

    await mgr.modifyVolume({ VolumeId: v.VolumeId, Size: 4 * MiB }, kms.user);
    expect(dev.size).toBe(4 * MiB);
    expect((await readPlainImage(img(v.VolumeId))).size).toBe(4 * MiB);

    const d = await mgr.detachVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(d.State).toBe('detached');
    await mgr.deleteVolume({ VolumeId: v.VolumeId }, kms.user);
    expect(mgr.describeVolumes().Volumes).toEqual([]);
    kms.setUnreachable(false);
    const names = (await kms.auditEvents()).map((e) => e.eventName);
    expect(names).not.toContain('GenerateDataKeyWithoutPlaintext');
    expect(names).not.toContain('CreateGrant');

    expect(logLines.filter((l) => /"level":40/.test(l) && /UNENCRYPTED volume (created|attached)/.test(l))).toHaveLength(2);
    const mine = audits.filter((a) => a.volumeId === v.VolumeId);
    expect(mine.find((a) => a.eventName === 'CreateVolume')!.details).toMatchObject({ encrypted: false, cipher: 'none' });
    expect(mine.find((a) => a.eventName === 'AttachVolume')!.details).toMatchObject({ encrypted: false });
  });

  test('encrypted and plaintext volumes side by side in one manager; a restart without permission does not serve the plaintext one', async () => {
    const enc = await mgr.createVolume({ Size: MiB }, kms.user);
    const pl = await mgr.createVolume({ Size: MiB, Encrypted: false }, kms.user);
    await mgr.attachVolume({ VolumeId: enc.VolumeId }, kms.user);
    await mgr.attachVolume({ VolumeId: pl.VolumeId }, kms.user);
    expect(mgr.getBlockDevice(enc.VolumeId)!.unencrypted).toBe(false);
    expect(mgr.getBlockDevice(pl.VolumeId)!.unencrypted).toBe(true);
    expect(Object.fromEntries(mgr.describeVolumes().Volumes.map((x) => [x.VolumeId, x.Encrypted]))).toEqual({ [enc.VolumeId]: true, [pl.VolumeId]: false });
    await mgr.close();

    mgr = await manager();
    const r = await mgr.resumeAttachments();
    expect(r.resumed).toEqual([enc.VolumeId]);
    expect(r.failed.map((f) => [f.volumeId, (f.error as { awsName?: string }).awsName])).toEqual([[pl.VolumeId, 'OperationNotPermitted']]);
    await mgr.close();

    mgr = await manager({ allowUnencrypted: true });
    expect((await mgr.resumeAttachments()).resumed.sort()).toEqual([enc.VolumeId, pl.VolumeId].sort());
    await mgr.detachVolume({ VolumeId: pl.VolumeId }, kms.user);
    await mgr.detachVolume({ VolumeId: enc.VolumeId }, kms.user);
  });
});
