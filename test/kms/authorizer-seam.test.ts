import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KmsService } from '../../src/kms/kms-core.js';
import type { AuthorizationDecision, AuthorizationRequest, Authorizer } from '../../src/kms/authorizer.js';
import { ACCOUNT, admin, openKms, tempDir } from './helpers.js';

/**
 * The Authorizer seam as the core sees it, without the policy engine: the
 * dispatcher uses a decision's `message` verbatim, builds one from `reason`
 * otherwise, and CreateKey without a key-policy validator only checks that a
 * policy is a JSON document.
 */
class Scripted implements Authorizer {
  next: AuthorizationDecision = { allowed: true };
  seen: AuthorizationRequest[] = [];
  authorize(req: AuthorizationRequest): AuthorizationDecision {
    this.seen.push(req);
    return this.next;
  }
}

let t: ReturnType<typeof tempDir>;
let kms: KmsService;
const authz = new Scripted();

beforeAll(async () => {
  t = tempDir();
  kms = await openKms(t.dir, { hsmMode: 'inline', authorizer: authz });
});
afterAll(async () => {
  await kms?.close();
  t?.cleanup();
});

describe('Authorizer seam', () => {
  it('a decision\'s message is the AccessDeniedException message, verbatim', async () => {
    authz.next = { allowed: false, reason: 'ignored', message: 'User: x is not authorized to perform: kms:ListKeys with an explicit deny in a resource-based policy' };
    await expect(kms.call('ListKeys', {}, admin)).rejects.toMatchObject({
      awsName: 'AccessDeniedException', message: 'User: x is not authorized to perform: kms:ListKeys with an explicit deny in a resource-based policy',
    });
  });

  it('without a message, the core words it from the reason', async () => {
    authz.next = { allowed: false, reason: 'the moon is full' };
    await expect(kms.call('ListKeys', {}, admin)).rejects.toMatchObject({
      message: `User: ${admin.arn} is not authorized to perform: kms:ListKeys on resource: * because the moon is full`,
    });
  });

  it('CreateKey without a policy engine: any JSON policy with a Statement is stored, no lockout check', async () => {
    authz.next = { allowed: true };
    const lockout = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCOUNT}:user/someone-else` }, Action: 'kms:*', Resource: '*' }] });
    const k = await kms.call('CreateKey', { Policy: lockout }, admin) as { KeyMetadata: { KeyId: string } };
    expect(k.KeyMetadata.KeyId).toMatch(/^[0-9a-f-]{36}$/);
    await expect(kms.call('CreateKey', { Policy: '{"Version":"2012-10-17"}' }, admin)).rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException' });
  });

  it('ReEncrypt asks for kms:ReEncryptFrom on the source key, then kms:ReEncryptTo on the destination key', async () => {
    authz.next = { allowed: true };
    const a = (await kms.call('CreateKey', {}, admin) as { KeyMetadata: { Arn: string } }).KeyMetadata.Arn;
    const b = (await kms.call('CreateKey', {}, admin) as { KeyMetadata: { Arn: string } }).KeyMetadata.Arn;
    const blob = (await kms.call('Encrypt', { KeyId: a, Plaintext: Buffer.from('p') }, admin)).CiphertextBlob;
    authz.seen = [];
    await kms.call('ReEncrypt', { CiphertextBlob: blob, DestinationKeyId: b }, admin);
    expect(authz.seen.map((r) => [r.action, r.operation, r.resource])).toEqual([['kms:ReEncryptFrom', 'ReEncrypt', a], ['kms:ReEncryptTo', 'ReEncrypt', b]]);
    // A denied ReEncryptTo stops the call before the HSM runs.
    let n = 0;
    const orig = authz.authorize.bind(authz);
    authz.authorize = (req) => (++n === 2 ? { allowed: false, reason: 'no' } : orig(req));
    await expect(kms.call('ReEncrypt', { CiphertextBlob: blob, DestinationKeyId: b }, admin)).rejects.toMatchObject({ message: expect.stringContaining(`kms:ReEncryptTo on resource: ${b}`) });
  });
});
