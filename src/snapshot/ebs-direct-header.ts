import { randomUUID } from 'node:crypto';
import { buildLuks2Json, LUKS2_DATA_OFFSET, LUKS2_HDR_SIZE } from '../volume/luks2-json.js';
import { encodeCopy } from '../volume/luks2-header.js';
import { encodePlainHeader, PLAIN_DATA_OFFSET } from '../volume/plain-image.js';

/**
 * The header area of a snapshot begun with StartSnapshot: what bytes
 * [0, dataOffset) of a volume image restored from it hold (docs/format.md).
 * An encrypted snapshot gets a LUKS2 header (both copies, keyslots area
 * zeros) whose token names the snapshot's wrapped data key and whose digest
 * lets attach verify that key, so a restored volume opens like any other;
 * an unencrypted one gets the plaintext-image marker.
 */
export function encryptedSnapshotHeader(o: {
  snapshotId: string;
  sizeBytes: number;
  /** The plaintext data key, for the LUKS2 digest only; the caller wipes it. */
  dataKey: Uint8Array;
  keyArn: string;
  ciphertextBlob: Uint8Array;
  encryptionContext: Record<string, string>;
}): { bytes: Buffer; dataOffset: number } {
  const json = buildLuks2Json({
    size: o.sizeBytes,
    volumeKey: o.dataKey,
    token: {
      key_arn: o.keyArn,
      ciphertext_blob: Buffer.from(o.ciphertextBlob).toString('base64'),
      encryption_context: o.encryptionContext,
      // The image a restore writes is the snapshot's until the restore re-labels it.
      volume_id: o.snapshotId,
    },
  });
  const fields = { seqid: 1, hdrSize: LUKS2_HDR_SIZE, label: o.snapshotId, uuid: randomUUID(), subsystem: 'ebsd' };
  const bytes = Buffer.alloc(LUKS2_DATA_OFFSET);
  encodeCopy('primary', fields, json).copy(bytes, 0);
  encodeCopy('secondary', fields, json).copy(bytes, LUKS2_HDR_SIZE);
  return { bytes, dataOffset: LUKS2_DATA_OFFSET };
}

export function plainSnapshotHeader(snapshotId: string, sizeBytes: number): { bytes: Buffer; dataOffset: number } {
  const bytes = Buffer.alloc(PLAIN_DATA_OFFSET);
  encodePlainHeader(snapshotId, sizeBytes).copy(bytes, 0);
  return { bytes, dataOffset: PLAIN_DATA_OFFSET };
}
