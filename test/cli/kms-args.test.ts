import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { afterAll, describe, expect, it } from 'vitest';
import { parseKmsArgs, UsageError } from '../../src/cli/kms-args.js';

/** `ebsd kms <op>` argument parsing: the refusals argv cannot reach end to end (a NUL byte), and map keys. */
describe('parseKmsArgs', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ebsd-kms-args-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('carries a context key named __proto__ as data, in shorthand and JSON', () => {
    const a = parseKmsArgs(['--key-id', 'k', '--encryption-context', '__proto__=x,b=y'], 'Encrypt');
    const ctx = a.EncryptionContext as Record<string, string>;
    expect(Object.getOwnPropertyDescriptor(ctx, '__proto__')?.value).toBe('x');
    expect(JSON.parse(JSON.stringify(a)).EncryptionContext).toEqual(JSON.parse('{"__proto__":"x","b":"y"}'));
    const j = parseKmsArgs(['--encryption-context', '{"__proto__":"z"}'], 'Decrypt');
    expect(JSON.stringify(j.EncryptionContext)).toBe('{"__proto__":"z"}');
  });

  it('refuses a flag the operation does not take, with the AWS CLI wording', () => {
    expect(() => parseKmsArgs(['--kye-id', 'x'], 'ListKeys')).toThrow(new UsageError('Unknown options: --kye-id, x'));
    expect(() => parseKmsArgs(['--__proto__', 'x'], 'Encrypt')).toThrow(/Unknown options: --__proto__, x/);
    expect(() => parseKmsArgs(['--keyId', 'x'], 'DescribeKey')).toThrow(/Unknown options: --keyId, x/);
    expect(parseKmsArgs(['--key-id', 'k', '--grant-tokens', 't1', 't2'], 'DescribeKey')).toEqual(Object.assign(Object.create(null), { KeyId: 'k', GrantTokens: ['t1', 't2'] }));
  });

  it('fileb:// of a directory, a missing file or a path with a NUL byte is a usage error naming the path', () => {
    expect(() => parseKmsArgs(['--plaintext', `fileb://${dir}`], 'Encrypt')).toThrow(new UsageError(`--plaintext fileb://${dir}: is a directory, not a file`));
    expect(() => parseKmsArgs(['--plaintext', `fileb://${dir}/nope`], 'Encrypt')).toThrow(/--plaintext fileb:\/\/.*\/nope: no such file/);
    expect(() => parseKmsArgs(['--plaintext', 'fileb:///tmp/a\0b'], 'Encrypt')).toThrow(new UsageError('--plaintext fileb://"/tmp/a\\u0000b": a path cannot contain a NUL byte'));
    expect(() => parseKmsArgs(['--policy', `file://${dir}`], 'PutKeyPolicy')).toThrow(UsageError);
    writeFileSync(join(dir, 'pt'), 'abc');
    expect(parseKmsArgs(['--plaintext', `fileb://${join(dir, 'pt')}`], 'Encrypt').Plaintext).toBe(Buffer.from('abc').toString('base64'));
  });
});
