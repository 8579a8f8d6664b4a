import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { afterAll, describe, expect, it } from 'vitest';
import { parseKmsArgs, UsageError, wholeNumber } from '../../src/cli/kms-args.js';

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

  it('a boolean flag stands alone, or takes true/false in any case; any other value is a usage error naming the flag', () => {
    expect(parseKmsArgs(['--key-id', 'k', '--dry-run'], 'Encrypt').DryRun).toBe(true);
    expect(parseKmsArgs(['--key-id', 'k', '--no-dry-run'], 'Encrypt').DryRun).toBe(false);
    expect(parseKmsArgs(['--key-id', 'k', '--dry-run', 'TRUE'], 'Encrypt').DryRun).toBe(true);
    expect(parseKmsArgs(['--key-id', 'k', '--dry-run=False'], 'Encrypt').DryRun).toBe(false);
    for (const v of ['yes', '1', 'on', '']) {
      expect(() => parseKmsArgs(['--key-id', 'k', '--dry-run', v], 'Encrypt'), v).toThrow(new UsageError(`--dry-run takes no value (or true or false), got "${v}"`));
    }
    expect(() => parseKmsArgs(['--policy', '{}', '--bypass-policy-lockout-safety-check', 'yes'], 'PutKeyPolicy')).toThrow(/--bypass-policy-lockout-safety-check takes no value/);
    expect(() => parseKmsArgs(['--no-dry-run', 'true'], 'Encrypt')).toThrow(new UsageError('--no-dry-run takes no value, got "true"'));
  });

  it('a whole-number option takes decimal digits only, quoting what it got', () => {
    const n = wholeNumber('--max-results');
    expect(n('100')).toBe(100);
    expect(n(['3', '5'])).toBe(5);
    expect(n(20)).toBe(20);
    for (const v of ['abc', '0x10', '1e3', '-1', '1.5', '', ' 7', '99999999999999999999']) expect(() => n(v), v).toThrow(new UsageError(`--max-results must be a whole number (decimal digits), got "${v}"`));
  });
});
