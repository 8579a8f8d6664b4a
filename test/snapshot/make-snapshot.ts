import { createHash, randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SNAPSHOT_BLOCK_BYTES, type SnapshotManifest } from '../../src/snapshot/types.js';
import { readLuks2 } from '../../src/volume/luks2-header.js';

/**
 * A snapshot of a DETACHED volume written straight into the daemon's
 * directory store (`<state>/snapshots`), as CreateSnapshot stores one
 * (src/snapshot/types.ts): the image's header area, its non-zero 512 KiB
 * blocks of on-disk bytes (ciphertext) content-addressed by SHA-256, and a
 * `completed` manifest carrying the LUKS2 token's wrapped key. For restore
 * and copy tests that must not depend on CreateSnapshot.
 */
export async function makeSnapshot(stateDir: string, volumeId: string, o: { state?: SnapshotManifest['state'] } = {}): Promise<SnapshotManifest> {
  const store = await DirSnapshotStore.open(join(stateDir, 'snapshots'));
  const path = join(stateDir, 'volumes', `${volumeId}.img`);
  const h = (await readLuks2(path, { repair: false })).volume;
  const fh = await fsp.open(path, 'r');
  const blocks: [number, string][] = [];
  let headerHash: string;
  try {
    const header = Buffer.alloc(h.dataOffset);
    await fh.read(header, 0, header.length, 0);
    headerHash = sha256(header);
    await store.putBlock(headerHash, header);
    const buf = Buffer.alloc(SNAPSHOT_BLOCK_BYTES);
    for (let i = 0; i * SNAPSHOT_BLOCK_BYTES < h.size; i++) {
      const len = Math.min(SNAPSHOT_BLOCK_BYTES, h.size - i * SNAPSHOT_BLOCK_BYTES);
      const b = buf.subarray(0, len);
      const { bytesRead } = await fh.read(b, 0, len, h.dataOffset + i * SNAPSHOT_BLOCK_BYTES);
      b.fill(0, bytesRead);
      if (b.every((x) => x === 0)) continue;
      const hash = sha256(b);
      await store.putBlock(hash, Buffer.from(b));
      blocks.push([i, hash]);
    }
  } finally {
    await fh.close();
  }
  const digest = h.json.digests[h.digestId]!;
  const now = new Date().toISOString();
  const m: SnapshotManifest = {
    formatVersion: 1,
    snapshotId: `snap-${randomBytes(9).toString('hex').slice(0, 17)}`,
    volumeId,
    volumeSize: Math.ceil(h.size / 1024 ** 3),
    state: o.state ?? 'completed',
    progress: o.state === 'pending' ? 0 : 100,
    startTime: now,
    ...(o.state === 'pending' ? {} : { completionTime: now }),
    description: 'test snapshot (make-snapshot.ts)',
    tags: [],
    ownerId: '111122223333',
    encrypted: true,
    kmsKeyId: h.token.key_arn,
    dataEncryptionKeyId: `dek-${sha256(Buffer.from(digest.digest, 'base64')).slice(0, 17)}`,
    wrappedKey: { ciphertextBlob: h.token.ciphertext_blob, keyArn: h.token.key_arn, encryptionContext: h.token.encryption_context },
    header: headerHash,
    dataOffset: h.dataOffset,
    blocks,
    changedBlocks: blocks.length,
  };
  await store.putManifest(m);
  return m;
}

export function sha256(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}
