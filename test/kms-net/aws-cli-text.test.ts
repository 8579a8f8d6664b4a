/**
 * `ebsd kms … --output text` byte for byte as the AWS CLI prints the same command against the same
 * keys: the Debian `aws` (2.9.19) talks to the daemon's --kms-listen, `ebsd kms` to its control socket
 * (src/cli/text-format.ts, src/cli/kms-pages.ts). Covers lists of objects (KEYS, ALIASES, GRANTS with
 * their OPERATIONS and constraints), a named object with its lists (KEYMETADATA), tags with a tab in a
 * value, a --query of scalars, of lists, of nothing, a listing of more than one page followed to the
 * end, and one page asked for with --limit (Truncated and NextMarker printed).
 *
 * The CLI is set to `cli_timestamp_format = wire` (AWS CLI v1's default): ebsd prints a KMS timestamp
 * as the API answers it, epoch seconds, where v2 by default rewrites it as ISO 8601 (README.md,
 * "Common flags"). Members newer than that CLI's model (DescribeKey's CurrentKeyMaterialId,
 * GetKeyPolicy's PolicyName, GetKeyRotationStatus's rotation dates, ListKeyRotations) are dropped by
 * it, so those answers are compared through --query or not at all.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AWS_CLI, KMS_ADMIN_POLICY, awsCliEnv, makeAccessKey, startKmsDaemon } from './helpers.js';
import { Env, ensureBuilt, pooled, run, zip } from '../e2e/helpers.js';

describe('ebsd kms --output text is the AWS CLI\'s text output', () => {
  const env = new Env('kmstext');
  let url = '';
  let awsEnv: Record<string, string> = {};
  let sym = '';
  let ecc = '';
  let me = '';

  const aws = (args: string[]) => run(AWS_CLI, ['kms', ...args, '--endpoint-url', url, '--output', 'text'], { env: awsEnv, timeoutMs: 60_000 });
  const ebsd = (args: string[]) => env.cli(['kms', ...args, '--output', 'text']);

  beforeAll(async () => {
    ensureBuilt();
    url = (await startKmsDaemon(env)).url;
    const made = await makeAccessKey(env, 'admin', KMS_ADMIN_POLICY);
    me = made.arn;
    writeFileSync(join(env.dir, 'aws-config'), '[default]\ncli_timestamp_format = wire\n');
    awsEnv = awsCliEnv(env.dir, made.key, { extra: { AWS_CONFIG_FILE: join(env.dir, 'aws-config') } });
    sym = (await env.api('TrentService.CreateKey', { Description: 'text output' })).KeyMetadata.KeyId;
    ecc = (await env.api('TrentService.CreateKey', { KeySpec: 'ECC_NIST_P256', KeyUsage: 'SIGN_VERIFY' })).KeyMetadata.KeyId;
    await env.api('TrentService.CreateGrant', {
      KeyId: sym, GranteePrincipal: me, RetiringPrincipal: me, Operations: ['Decrypt', 'Encrypt'], Name: 'g1',
      Constraints: { EncryptionContextSubset: { app: 'one', team: 'two' } },
    });
    await env.api('TrentService.CreateGrant', { KeyId: sym, GranteePrincipal: me, Operations: ['GenerateDataKey'] });
    await env.api('TrentService.TagResource', { KeyId: sym, Tags: [{ TagKey: 'b', TagValue: 'x\ty' }, { TagKey: 'a', TagValue: '1' }] });
    await env.api('TrentService.EnableKeyRotation', { KeyId: sym });
    // More aliases than one ListAliases page holds (100): both CLIs follow NextMarker to the end.
    // Over three keys, as a KMS key has at most 50 aliases (docs/kms-format.md, "Quotas").
    const third = (await env.api('TrentService.CreateKey', { Description: 'more aliases' })).KeyMetadata.KeyId;
    for (let i = 0; i < 105; i++) await env.api('TrentService.CreateAlias', { AliasName: `alias/text-${String(i).padStart(3, '0')}`, TargetKeyId: [sym, ecc, third][i % 3] });
  }, 120_000);
  afterAll(() => env.cleanup());

  it('the same bytes for the same commands', async () => {
    const commands: string[][] = [
      ['list-keys'],
      ['describe-key', '--key-id', ecc],
      ['list-aliases'],
      ['list-aliases', '--key-id', sym],
      ['list-aliases', '--limit', '3'],
      ['list-grants', '--key-id', sym],
      ['list-retirable-grants', '--retiring-principal', me],
      ['get-key-policy', '--key-id', sym, '--policy-name', 'default', '--query', 'Policy'],
      ['list-key-policies', '--key-id', sym],
      ['list-resource-tags', '--key-id', sym],
      ['get-key-rotation-status', '--key-id', sym, '--query', 'KeyRotationEnabled'],
      ['get-public-key', '--key-id', ecc],
      ['list-keys', '--query', 'Keys[].KeyId'],
      ['list-keys', '--query', 'Truncated'],
      ['list-grants', '--key-id', sym, '--query', 'Grants[].Operations'],
      ['list-grants', '--key-id', ecc],
      ['describe-custom-key-stores'],
      ['describe-custom-key-stores', '--limit', '5'],
    ];
    // Read-only commands, independent of each other: three pairs at a time.
    const answers = await pooled(commands, (args) => Promise.all([aws(args), ebsd(args)]), 3);
    for (const [args, [a, e]] of zip(commands, answers)) {
      expect([args, a.code, a.stderr]).toEqual([args, 0, '']);
      expect([args, e.code, e.stderr]).toEqual([args, 0, '']);
      expect([args, e.stdout]).toEqual([args, a.stdout]);
    }
  }, 180_000);

  it('what the comparison rests on: several lines per listing, and a listing longer than a page', async () => {
    const keys = (await ebsd(['list-keys'])).stdout;
    expect(keys.split('\n').filter((l) => l.startsWith('KEYS\t'))).toHaveLength(3);
    const aliases = (await ebsd(['list-aliases'])).stdout.split('\n').filter((l) => l.startsWith('ALIASES\talias') || l.includes('alias/text-'));
    expect(aliases.filter((l) => l.includes('alias/text-'))).toHaveLength(105);
    const grants = (await ebsd(['list-grants', '--key-id', sym])).stdout;
    expect(grants).toMatch(/^GRANTS\t/m);
    expect(grants).toMatch(/^ENCRYPTIONCONTEXTSUBSET\tone\ttwo$/m);
    expect(grants).toMatch(/^OPERATIONS\tDecrypt$/m);
    const page = (await ebsd(['list-aliases', '--limit', '3'])).stdout;
    expect(page.split('\n')[0]).toMatch(/\tTrue$/); // NextMarker, Truncated: one page, as asked
  }, 60_000);
});
