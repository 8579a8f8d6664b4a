import { createHash } from 'node:crypto';
import { seededBytes } from '../../crypto/seeded.js';
import { closeSync, openSync, writeSync } from 'node:fs';
import { LUKS2_HDR_SIZE, LUKS2_JSON_SIZE } from '../../../src/volume/luks2-json.js';
/** Random payloads replay under EBSD_TEST_SEED (test/crypto/seeded.ts). */
const randomBytes = seededBytes('volume/helpers/raw-header');

/**
 * A LUKS2 header writer for tests, independent of src/volume/luks2-header.ts
 * (LUKS2 on-disk format specification §2): it writes any JSON text, even one
 * ebsd would never write (duplicate members, deep nesting), under a valid
 * checksum, so a test can show which refusals come from the JSON alone.
 */
export function encodeRawCopy(which: 'primary' | 'secondary', jsonText: string, seqid: bigint, label = 'vol-test'): Buffer {
  const out = Buffer.alloc(LUKS2_HDR_SIZE);
  Buffer.from(which === 'primary' ? 'LUKS\xba\xbe' : 'SKUL\xba\xbe', 'latin1').copy(out, 0);
  out.writeUInt16BE(2, 6);
  out.writeBigUInt64BE(BigInt(LUKS2_HDR_SIZE), 8);
  out.writeBigUInt64BE(seqid, 16);
  out.write(label, 24, 'latin1');
  out.write('sha256', 72, 'latin1');
  randomBytes(64).copy(out, 104);
  out.write('0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0', 168, 'latin1');
  out.write('ebsd', 208, 'latin1');
  out.writeBigUInt64BE(which === 'primary' ? 0n : BigInt(LUKS2_HDR_SIZE), 256);
  const text = Buffer.from(jsonText, 'utf8');
  if (text.length >= LUKS2_JSON_SIZE) throw new Error(`test JSON of ${text.length} bytes does not fit the ${LUKS2_JSON_SIZE}-byte area`);
  text.copy(out, 4096);
  createHash('sha256').update(out).digest().copy(out, 448); // csum field still zero here
  return out;
}

/** Overwrite both header copies of the image at `path` with `jsonText`, valid checksums, equal seqids. */
export function writeHeaders(path: string, jsonText: string, seqid = 7n): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, encodeRawCopy('primary', jsonText, seqid), 0, LUKS2_HDR_SIZE, 0);
    writeSync(fd, encodeRawCopy('secondary', jsonText, seqid), 0, LUKS2_HDR_SIZE, LUKS2_HDR_SIZE);
  } finally {
    closeSync(fd);
  }
}
