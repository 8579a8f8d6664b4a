import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { statSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { SnapshotManifest } from '../../src/snapshot/types.js';
import { LUKS2_DATA_OFFSET } from '../../src/volume/luks2-json.js';
import { openSnapshotHarness, readerBefore, type SnapshotHarness } from './in-process.js';

/**
 * A volume whose size is not a multiple of 512 KiB (CreateVolume takes any
 * multiple of 4 KiB from 1 MiB): its last snapshot block is partial, stored
 * zero-padded to 512 KiB whether the volume is attached (read through the
 * snapshot's own handle on the image, every block, the last one too, overwritten after the
 * point in time and before its copy, so through the copy-on-write capture) or detached (read from the
 * image), and restored byte for byte, the image keeping its exact size
 * (docs/format.md, "Snapshot blocks"). Encrypted (same key, another key, and a
 * copy under another key) and plaintext (to plaintext, and encrypted under a
 * new key). A last block whose padding is not zeros is refused.
 */

const B = 512 * 1024;
const SIZE = 1024 * 1024 + 4096;
const TAIL = Math.floor(SIZE / B);
const TAIL_INSIDE = SIZE - TAIL * B;

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const imageBytes = (h: SnapshotHarness, volumeId: string): number => statSync(join(h.t.dir, 'volumes', `${volumeId}.img`)).size;

describe.each([['encrypted', false], ['plaintext', true]] as const)('a %s volume of 1 MiB + 4 KiB', (_name, plain) => {
  let h: SnapshotHarness;
  let vol = '';
  /** What the volume held at each snapshot. */
  const atAttached = randomBytes(SIZE);
  const atDetached = randomBytes(SIZE);
  let attachedSnap: SnapshotManifest;
  let detachedSnap: SnapshotManifest;

  beforeAll(async () => {
    // The copier's block reads (into its 512 KiB buffers) are held while `holding`, so the write below lands
    // before any block is copied and every sector it overwrites, the last block's too, goes through the
    // copy-on-write capture; the captures themselves are not held.
    let holding = false;
    let held = 0;
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    h = await openSnapshotHarness({
      // The copy reads through its own handle on the image (docs/architecture.md §12.1): its 512 KiB reads are held.
      openReader: readerBefore(async (pos, len, into) => {
        if (holding && into.length === B) {
          held++;
          await released;
        }
      }),
    });
    vol = (await h.mgr.createVolume({ Size: SIZE, ...(plain ? { Cipher: 'none' as const } : {}) }, h.caller)).VolumeId;
    await h.mgr.attachVolume({ VolumeId: vol }, h.caller);
    const dev = h.mgr.getBlockDevice(vol)!;
    expect(dev.size).toBe(SIZE);
    await dev.write(0, atAttached);
    holding = true;
    const accepted = await h.snaps.createSnapshot({ VolumeId: vol }, h.caller);
    for (let i = 0; held < 3; i++) {
      if (i > 2000) throw new Error(`the copier read ${held} of 3 blocks`);
      await new Promise((r) => setTimeout(r, 5));
    }
    holding = false;
    // Every block rewritten (the tail too) after the point in time, before any was copied. The detached
    // snapshot then reads the last block from the image.
    await dev.write(0, atDetached);
    release();
    attachedSnap = await h.settled(accepted.SnapshotId);
    await h.mgr.detachVolume({ VolumeId: vol }, h.caller);
    detachedSnap = await h.snapshot(vol);
  }, 120_000);

  afterAll(async () => {
    await h?.close();
  });

  test('attached and detached snapshots complete, the last block stored zero-padded to 512 KiB', async () => {
    for (const s of [attachedSnap, detachedSnap]) {
      expect(s.stateMessage).toBeUndefined();
      expect(s.state).toBe('completed');
      expect(s.blocks.map(([i]) => i)).toEqual([0, 1, TAIL]);
      const tail = await h.store.getBlock(s.blocks[2]![1]);
      expect(tail.length).toBe(B);
      expect(tail.subarray(TAIL_INSIDE).equals(Buffer.alloc(B - TAIL_INSIDE)), 'padding past the volume is zeros').toBe(true);
      expect(tail.subarray(0, TAIL_INSIDE).equals(Buffer.alloc(TAIL_INSIDE)), 'the 4 KiB inside were written').toBe(false);
    }
    expect(detachedSnap.parentSnapshotId).toBe(attachedSnap.snapshotId);
  });

  test.each([['the attached', () => [attachedSnap, atAttached]], ['the detached', () => [detachedSnap, atDetached]]] as const)(
    '%s snapshot restores byte-equal, under its own key and another, the image exactly 16 MiB + size',
    async (_which, pick) => {
      const [s, want] = pick() as [SnapshotManifest, Buffer];
      const asStored = await h.restoreVolume({ SnapshotId: s.snapshotId, ...(plain ? { Cipher: 'none' as const } : {}) });
      expect(asStored).toEqual({ volumeId: asStored.volumeId, state: 'available' });
      expect(imageBytes(h, asStored.volumeId)).toBe(LUKS2_DATA_OFFSET + SIZE);
      expect((await h.readVolume(asStored.volumeId)).equals(want)).toBe(true);
      // Re-encrypted block by block: under another KMS key, or a plaintext snapshot under the default key.
      const other = plain ? undefined : await h.kms.createKey();
      const reenc = await h.restoreVolume({ SnapshotId: s.snapshotId, ...(other ? { KmsKeyId: other } : {}) });
      expect(reenc).toEqual({ volumeId: reenc.volumeId, state: 'available' });
      expect(imageBytes(h, reenc.volumeId)).toBe(LUKS2_DATA_OFFSET + SIZE);
      expect((await h.readVolume(reenc.volumeId)).equals(want)).toBe(true);
    },
  );

  test('a copy under another key keeps the padding zeros (never encrypted) and restores byte-equal', async () => {
    const key = await h.kms.createKey();
    const c = await h.copy({ SourceSnapshotId: detachedSnap.snapshotId, KmsKeyId: key, Encrypted: true });
    expect(c.stateMessage).toBeUndefined();
    expect(c.state).toBe('completed');
    const tail = await h.store.getBlock(c.blocks.find(([i]) => i === TAIL)![1]);
    expect(tail.length).toBe(B);
    expect(tail.subarray(TAIL_INSIDE).equals(Buffer.alloc(B - TAIL_INSIDE))).toBe(true);
    const r = await h.restoreVolume({ SnapshotId: c.snapshotId });
    expect(r).toEqual({ volumeId: r.volumeId, state: 'available' });
    expect((await h.readVolume(r.volumeId)).equals(atDetached)).toBe(true);
  });

  test('a last block whose bytes past the snapshot\'s end are not zeros is refused: the restored volume ends error', async () => {
    const tail = Buffer.from(await h.store.getBlock(detachedSnap.blocks[2]![1]));
    tail[TAIL_INSIDE + 100] = 1;
    const hash = sha256(tail);
    await h.store.putBlock(hash, tail);
    const forged: SnapshotManifest = { ...detachedSnap, snapshotId: `snap-${randomBytes(9).toString('hex').slice(0, 17)}`, blocks: [detachedSnap.blocks[0]!, detachedSnap.blocks[1]!, [TAIL, hash]] };
    delete forged.parentSnapshotId;
    await h.store.putManifest(forged);
    const r = await h.restoreVolume({ SnapshotId: forged.snapshotId, ...(plain ? { Cipher: 'none' as const } : {}) });
    expect(r.state).toBe('error');
    expect(r.message).toMatch(new RegExp(`block ${TAIL} \\(${B} bytes\\) holds bytes other than zeros past the snapshot's end \\(${SIZE} bytes`));
  });
});
