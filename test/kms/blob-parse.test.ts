import { describe, expect, it } from 'vitest';
import { encodeHeader, parseBlob, TAG_LEN } from '../../src/kms/blob.js';
import { InvalidCiphertextException } from '../../src/kms/errors.js';

/**
 * The key ARN in a ciphertext blob is UTF-8 (docs/kms-format.md). Bytes that
 * are not UTF-8 are refused, not decoded to U+FFFD: a lossy decode lets two
 * different headers name the same ARN.
 */
describe('ciphertext blob ARN', () => {
  const arn = 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';
  const blob = (a: Uint8Array): Uint8Array => {
    const h = Buffer.from(encodeHeader(arn, new Uint8Array(32), new Uint8Array(32), new Uint8Array(12)));
    Buffer.from(a).copy(h, 3);
    return Buffer.concat([h, Buffer.alloc(1 + TAG_LEN)]);
  };

  it('a well-formed ARN parses', () => {
    expect(parseBlob(blob(Buffer.from(arn))).arn).toBe(arn);
  });

  it.each([
    ['a stray continuation byte', 0x80],
    ['0xff', 0xff],
    ['a lead byte without its continuation', 0xc3],
  ])('an ARN holding %s is InvalidCiphertextException', (_what, byte) => {
    const bad = Buffer.from(arn);
    bad[bad.length - 1] = byte;
    expect(() => parseBlob(blob(bad))).toThrow(InvalidCiphertextException);
  });
});
