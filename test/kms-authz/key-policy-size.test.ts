import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Kms } from '../../src/kms/open-kms.js';
import type { KmsService } from '../../src/kms/kms-core.js';
import type { Caller } from '../../src/kms/types.js';
import { openKms as openCoreOnly, admin } from '../kms/helpers.js';
import { ACCT, doc, openTestKms, tempDir } from './helpers.js';

/**
 * A key policy over the 32 KiB quota is LimitExceededException from CreateKey
 * and PutKeyPolicy alike, as AWS answers (docs/kms-format.md, "Quotas"); past
 * the member's length constraint (131,072 characters) it is a ValidationException.
 */
let t: ReturnType<typeof tempDir>;
let kms: Kms;
let root: Caller;

/** A valid policy (the account root may do everything) of at least `bytes` bytes. */
const policyOf = (bytes: number): string => doc({ Sid: 'x'.repeat(bytes), Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' });
const failure = (p: Promise<unknown>): Promise<{ awsName?: string; message: string } | undefined> => p.then(() => undefined, (e: { awsName?: string; message: string }) => e);

beforeAll(async () => {
  t = tempDir('ebsd-policy-size-');
  kms = await openTestKms(t.dir);
  root = kms.identities.callerForUid(0);
}, 60_000);

afterAll(async () => {
  await kms?.close();
  t?.cleanup();
});

describe('an oversized key policy', () => {
  it('CreateKey and PutKeyPolicy: LimitExceededException naming the size; nothing created or changed', async () => {
    const before = (await kms.core.call('ListKeys', {}, root) as { Keys: unknown[] }).Keys.length;
    const big = policyOf(40 * 1024);
    expect(await failure(kms.core.call('CreateKey', { Policy: big }, root))).toMatchObject({ awsName: 'LimitExceededException', message: expect.stringMatching(/at most 32768 bytes/) });
    expect((await kms.core.call('ListKeys', {}, root) as { Keys: unknown[] }).Keys.length).toBe(before);
    const { KeyMetadata } = await kms.core.call('CreateKey', { Policy: policyOf(1000) }, root) as { KeyMetadata: { KeyId: string } };
    expect(await failure(kms.core.call('PutKeyPolicy', { KeyId: KeyMetadata.KeyId, Policy: big }, root))).toMatchObject({ awsName: 'LimitExceededException' });
    expect((await kms.core.call('GetKeyPolicy', { KeyId: KeyMetadata.KeyId }, root)).Policy).toBe(policyOf(1000));
    // 32 KiB is counted in UTF-8 bytes: 17,000 'é' are 34,000 bytes.
    expect(await failure(kms.core.call('CreateKey', { Policy: doc({ Sid: 'é'.repeat(17_000), Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' }) }, root)))
      .toMatchObject({ awsName: 'LimitExceededException' });
  });

  it('past the member length constraint (131,072 characters): ValidationException', async () => {
    expect(await failure(kms.core.call('CreateKey', { Policy: policyOf(140_000) }, root))).toMatchObject({ awsName: 'ValidationException' });
  });

  it('the core without the policy engine answers the same', async () => {
    const d = tempDir('ebsd-policy-size-core-');
    let core: KmsService | undefined;
    try {
      core = await openCoreOnly(d.dir, { hsmMode: 'inline' });
      expect(await failure(core.call('CreateKey', { Policy: policyOf(40 * 1024) }, admin))).toMatchObject({ awsName: 'LimitExceededException' });
    } finally {
      await core?.close();
      d.cleanup();
    }
  });
});
