import { describe, expect, it } from 'vitest';
import { parsePolicy, PolicyCache, MAX_KEY_POLICY_BYTES } from '../../src/kms/authz/policy-document.js';
import { MalformedPolicyDocumentException } from '../../src/kms/errors.js';
import { ACCT, doc } from './helpers.js';

const ok = { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' };
const key = (t: string, principalExists?: (a: string) => boolean) =>
  parsePolicy(t, { kind: 'key', accountId: ACCT, ...(principalExists ? { principalExists } : {}) });

function malformed(t: string, re: RegExp, principalExists?: (a: string) => boolean): void {
  let err: unknown;
  try { key(t, principalExists); } catch (e) { err = e; }
  expect(err).toBeInstanceOf(MalformedPolicyDocumentException);
  expect((err as MalformedPolicyDocumentException).awsName).toBe('MalformedPolicyDocumentException');
  expect((err as Error).message).toMatch(re);
}

describe('policy documents: parse and validate', () => {
  it('accepts the default key policy, a single statement object, and keeps the text verbatim', () => {
    const t = doc(ok);
    const p = key(t);
    expect(p.statements).toHaveLength(1);
    expect(p.text).toBe(t);
    const single = JSON.stringify({ Version: '2012-10-17', Id: 'x', Statement: ok });
    expect(key(single).statements).toHaveLength(1);
  });

  it('names the problem: invalid JSON, unknown element, bad Effect, unknown operator, size', () => {
    malformed('{"Version": ', /not valid JSON/);
    malformed(JSON.stringify({ Version: '2012-10-17', Statement: [ok], Extra: 1 }), /Unknown element "Extra"/);
    malformed(doc({ ...ok, Actions: 'kms:*' }), /unknown element "Actions"/);
    malformed(doc({ ...ok, Effect: 'allow' }), /Effect must be "Allow" or "Deny"/);
    malformed(doc({ ...ok, Condition: { StringEqualsX: { 'kms:CallerAccount': ACCT } } }), /unknown condition operator "StringEqualsX"/);
    // Over the 32 KiB quota a key policy is LimitExceededException, as KMS answers (docs/kms-format.md, "Quotas").
    const big = doc({ ...ok, Sid: 'x'.repeat(MAX_KEY_POLICY_BYTES) });
    expect(() => key(big)).toThrow(expect.objectContaining({ awsName: 'LimitExceededException', message: expect.stringMatching(/at most 32768 bytes/) }));
    malformed(JSON.stringify({ Version: '2012-10-17' }), /no Statement/);
    malformed(JSON.stringify({ Version: '2013-01-01', Statement: [ok] }), /Version must be/);
    malformed(doc({ Effect: 'Allow', Action: 'kms:*', Resource: '*' }), /needs exactly one of Principal or NotPrincipal/);
    malformed(doc({ ...ok, Action: undefined }), /needs exactly one of Action or NotAction/);
    malformed(doc({ ...ok, Action: 'Decrypt' }), /not a valid action/);
    malformed(doc({ ...ok, Resource: 'key/abc' }), /must be "\*" or an ARN/);
    malformed(doc({ ...ok, Sid: 'é\u20ac' }), /character outside the allowed range/);
  });

  it('unknown principals: bad ARN forms, bad service names, unknown local identities', () => {
    malformed(doc({ ...ok, Principal: { AWS: 'alice' } }), /invalid principals: "alice"/);
    malformed(doc({ ...ok, Principal: { AWS: 'arn:aws:iam::12345:root' } }), /invalid principals/);
    malformed(doc({ ...ok, Principal: { Service: 'not a service' } }), /invalid principals: "not a service" is not a service principal/);
    malformed(doc({ ...ok, Principal: { Group: 'x' } }), /unknown principal type "Group"/);
    malformed(doc({ ...ok, Principal: 'alice' }), /invalid principals/);
    // As Identities.principalExists: users and roles by ARN, sessions by their role's name.
    const exists = (a: string) => a.endsWith(':user/alice') || a.endsWith(':role/Host') || /:assumed-role\/Host\/[^/]+$/.test(a);
    malformed(doc({ ...ok, Principal: { AWS: `arn:aws:iam::${ACCT}:user/bob` } }), /"arn:aws:iam::111122223333:user\/bob" does not exist/, exists);
    malformed(doc({ ...ok, Principal: { AWS: `arn:aws:sts::${ACCT}:assumed-role/Nope/s1` } }), /does not exist/, exists);
    // valid forms
    expect(() => key(doc({ ...ok, Principal: { AWS: [ACCT, '*', `arn:aws:iam::${ACCT}:user/alice`, `arn:aws:sts::${ACCT}:assumed-role/Host/s1`, 'arn:aws:iam::444455556666:user/x'] } }), exists)).not.toThrow();
    expect(() => key(doc({ ...ok, Principal: { Service: ['ec2.amazonaws.com', 'logs.us-west-2.amazonaws.com'] } }))).not.toThrow();
    expect(() => key(doc({ ...ok, Principal: '*' }))).not.toThrow();
  });

  it('identity policies must not name a principal', () => {
    expect(() => parsePolicy(doc(ok), { kind: 'identity' })).toThrow(/identity-based policy must not contain Principal/);
    expect(parsePolicy(doc({ Effect: 'Allow', Action: 'kms:Decrypt', Resource: '*' }), { kind: 'identity' }).statements).toHaveLength(1);
  });

  it('actions match case-insensitively with wildcards; NotAction and NotResource invert', () => {
    const p = key(doc(
      { ...ok, Action: ['kms:ReEncrypt*', 'kms:GenerateDataKey*', 'KMS:describekey'] },
      { ...ok, Action: undefined, NotAction: 'kms:Decrypt', Resource: undefined, NotResource: 'arn:aws:kms:*:*:key/secret-*' },
    ));
    const [a, b] = p.statements;
    expect(a!.matchesAction('kms:ReEncryptFrom')).toBe(true);
    expect(a!.matchesAction('kms:GenerateDataKeyWithoutPlaintext')).toBe(true);
    expect(a!.matchesAction('kms:DescribeKey')).toBe(true);
    expect(a!.matchesAction('kms:Decrypt')).toBe(false);
    expect(b!.matchesAction('kms:Decrypt')).toBe(false);
    expect(b!.matchesAction('kms:Encrypt')).toBe(true);
    expect(b!.matchesResource('arn:aws:kms:us-west-2:111122223333:key/secret-1')).toBe(false);
    expect(b!.matchesResource('arn:aws:kms:us-west-2:111122223333:key/abc')).toBe(true);
  });

  it('the cache returns the same compiled object for the same text', () => {
    const c = new PolicyCache(2);
    const t = doc(ok);
    expect(c.get(t, 'key')).toBe(c.get(t, 'key'));
    c.get(doc({ ...ok, Sid: 'a' }), 'key');
    c.get(doc({ ...ok, Sid: 'b' }), 'key');
    expect(c.size).toBe(2);
  });
});
