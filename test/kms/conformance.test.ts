/**
 * Limits and answers an AWS KMS user relies on, checked against the KMS API reference and the
 * KMS Developer Guide ("Resource quotas"), through the core as the daemon opens it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KmsService } from '../../src/kms/kms-core.js';
import { admin, awsError, openKms, tempDir } from './helpers.js';

describe('KMS conformance', () => {
  const t = tempDir('ebsd-kms-conf-');
  let kms: KmsService;
  const call = (op: string, req: Record<string, unknown>) => kms.call(op, req, admin) as Promise<any>;
  const newKey = async () => (await call('CreateKey', {})).KeyMetadata.KeyId as string;
  beforeAll(async () => { kms = await openKms(t.dir); });
  afterAll(async () => { await kms.close(); t.cleanup(); });

  it('a KMS key has at most 50 aliases: the 51st, by CreateAlias or UpdateAlias, is LimitExceededException and changes nothing', async () => {
    const k = await newKey();
    const other = await newKey();
    for (let i = 0; i < 50; i++) await call('CreateAlias', { AliasName: `alias/q${String(i).padStart(2, '0')}`, TargetKeyId: k });
    const e = await kms.call('CreateAlias', { AliasName: 'alias/q50', TargetKeyId: k }, admin).catch((x: unknown) => x as Error & { awsName: string });
    expect((e as { awsName: string }).awsName).toBe('LimitExceededException');
    expect((e as Error).message).toContain('at most 50 aliases');
    expect(await awsError(call('DescribeKey', { KeyId: 'alias/q50' }))).toBe('NotFoundException');

    await call('CreateAlias', { AliasName: 'alias/elsewhere', TargetKeyId: other });
    expect(await awsError(call('UpdateAlias', { AliasName: 'alias/elsewhere', TargetKeyId: k }))).toBe('LimitExceededException');
    expect((await call('DescribeKey', { KeyId: 'alias/elsewhere' })).KeyMetadata.KeyId).toBe(other);
    const listed = await call('ListAliases', { KeyId: k, Limit: 100 });
    expect(listed.Aliases).toHaveLength(50);

    // Moving an alias within the quota still works, and a freed slot can be used again.
    await call('UpdateAlias', { AliasName: 'alias/q00', TargetKeyId: k }); // onto its own key: not a 51st
    await call('DeleteAlias', { AliasName: 'alias/q49' });
    await call('UpdateAlias', { AliasName: 'alias/elsewhere', TargetKeyId: k });
    expect((await call('DescribeKey', { KeyId: 'alias/elsewhere' })).KeyMetadata.KeyId).toBe(k);
  });
});
