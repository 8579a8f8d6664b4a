import fc from 'fast-check';
import { encodeHeader, MAX_BLOB, parseBlob, TAG_LEN } from '../../../src/kms/blob.js';
import { InvalidCiphertextException } from '../../../src/kms/errors.js';
import type { FuzzTarget } from '../harness/target.js';

/**
 * The KMS ciphertext blob header (src/kms/blob.ts parseBlob, docs/kms-format.md):
 * well-formed blobs with hostile ARN bytes (invalid UTF-8, NUL, long), then
 * bytes flipped, cut, extended, the length field changed; and raw bytes.
 * Refusals must be InvalidCiphertextException; an accepted blob's ARN must
 * be exactly its bytes (no lossy UTF-8 decoding) and its parts must tile it.
 */
const ARN = 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const arnBytes = fc.oneof(
  { arbitrary: fc.constant(Buffer.from(ARN)), weight: 4 },
  { arbitrary: fc.constantFrom(Buffer.from('arn:\xff\xfe', 'latin1'), Buffer.from('arn:\xc3', 'latin1'), Buffer.from('arn:\xed\xa0\x80', 'latin1'), Buffer.from('arn:a\u0000b'), Buffer.from('arn:é')), weight: 2 },
  { arbitrary: fc.uint8Array({ minLength: 1, maxLength: 64 }).map((b) => Buffer.concat([Buffer.from('arn:'), b])), weight: 2 },
  { arbitrary: fc.integer({ min: 1, max: 7000 }).map((n) => Buffer.from('arn:' + 'a'.repeat(n))), weight: 1 },
);

const built = fc.record({
  arn: arnBytes,
  body: fc.uint8Array({ minLength: 0, maxLength: 96 }),
  lenDelta: fc.oneof({ arbitrary: fc.constant(0), weight: 5 }, fc.integer({ min: -5, max: 5 }), fc.constantFrom(0xffff, -0x10000)),
  flips: fc.array(fc.record({ at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }), { maxLength: 2 }),
  cut: fc.oneof({ arbitrary: fc.constant(undefined), weight: 5 }, { arbitrary: fc.nat(), weight: 1 }),
  extend: fc.oneof({ arbitrary: fc.constant(undefined), weight: 5 }, { arbitrary: fc.uint8Array({ minLength: 1, maxLength: 16 }), weight: 1 }),
}).map((x) => {
  const h = Buffer.from(encodeHeader('a', Buffer.alloc(32, 1), Buffer.alloc(32, 2), Buffer.alloc(12, 3)));
  const header = Buffer.concat([h.subarray(0, 1), Buffer.alloc(2), x.arn, h.subarray(4)]);
  header.writeUInt16BE((x.arn.length + x.lenDelta) & 0xffff, 1);
  let b = Buffer.concat([header, x.body, Buffer.alloc(TAG_LEN, 9)]);
  for (const f of x.flips) b[f.at % b.length]! ^= f.xor;
  if (x.cut !== undefined) b = b.subarray(0, x.cut % (b.length + 1));
  if (x.extend) b = Buffer.concat([b, x.extend]);
  return new Uint8Array(b);
});

const target: FuzzTarget<Uint8Array, null> = {
  name: 'kms-blob',
  about: 'parseBlob(bytes): built blobs with hostile ARNs, flipped/cut/extended; raw bytes',
  arbitrary: () => fc.oneof({ arbitrary: built, weight: 8 }, { arbitrary: fc.uint8Array({ maxLength: 300 }), weight: 2 }),
  open: async () => null,
  close: async () => {},
  run(blob) {
    const p = parseBlob(blob);
    const n = Buffer.from(blob).readUInt16BE(1);
    const raw = Buffer.from(blob).subarray(3, 3 + n);
    if (!Buffer.from(p.arn, 'utf8').equals(raw)) return { invalid: 'blob ARN bytes are valid UTF-8 (decoded exactly)', why: `ARN bytes ${raw.toString('hex').slice(0, 80)} decode to ${JSON.stringify(p.arn).slice(0, 80)}` };
    if (p.header.length + p.body.length !== blob.length || p.body.length < TAG_LEN || blob.length > MAX_BLOB) return { invalid: 'blob parts tile the blob', why: `header ${p.header.length} + body ${p.body.length} vs ${blob.length}` };
    return 'accepted';
  },
  isTyped: (e) => e instanceof InvalidCiphertextException,
};
export default target;
