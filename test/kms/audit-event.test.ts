import { describe, expect, it } from 'vitest';
import { buildEvent, buildEventJson, type AuditInput } from '../../src/kms/audit/event.js';
import type { Caller } from '../../src/kms/types.js';

/** The direct serializer the dispatcher uses must write exactly what JSON.stringify(buildEvent(...)) writes. */
const ACCOUNT = '111122223333';
const base: AuditInput = {
  eventName: 'Decrypt', accountId: ACCOUNT, region: 'us-east-1', requestId: 'r-1', eventId: 'e-1', resources: [], readOnly: false, time: Date.UTC(2025, 0, 2, 3, 4, 5, 678),
};
const host: Caller = { arn: `arn:aws:sts::${ACCOUNT}:assumed-role/EbsdHost/host-1`, accountId: ACCOUNT, type: 'AssumedRole', principalId: 'AROAX:host-1' };
const alice: Caller = { arn: `arn:aws:iam::${ACCOUNT}:user/alice`, accountId: ACCOUNT, type: 'IAMUser', userName: 'alice', viaService: 'ec2.us-east-1.amazonaws.com', sourceIp: '10.0.0.1', userAgent: 'cli "quoted"' };

const cases: [string, AuditInput][] = [
  ['service event', { ...base, eventName: 'RotateKey', eventType: 'AwsServiceEvent', resources: [`arn:aws:kms:us-east-1:${ACCOUNT}:key/k`], additionalEventData: { keyMaterialId: 'ab' } }],
  ['allowed Decrypt through a grant', {
    ...base, caller: host, request: { CiphertextBlob: new Uint8Array(8), EncryptionContext: { 'aws:ebs:id': 'vol-1', 'ü"\\': 'x\n' }, GrantTokens: ['secret-token'] },
    response: { KeyId: 'arn:k', Plaintext: new Uint8Array(64), EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' }, resources: ['arn:aws:kms:us-east-1:444455556666:key/k'], additionalEventData: { grantId: 'g' },
  }],
  ['denied, two resources, read-only', { ...base, caller: alice, request: { KeyId: 'alias/x' }, errorCode: 'AccessDeniedException', errorMessage: 'User: … "because"', readOnly: true, resources: ['arn:a:b:c:1:key/a', 'arn:a:b:c:2:key/b'] }],
  ['error without message', { ...base, caller: alice, errorCode: 'KMSInternalException' }],
  ['Decrypt without an algorithm, via EC2', { ...base, caller: alice, request: { CiphertextBlob: new Uint8Array(8) }, resources: ['arn:aws:kms:us-east-1:111122223333:key/k'] }],
  ['CreateGrant', { ...base, eventName: 'CreateGrant', caller: host, request: { KeyId: 'k', GranteePrincipal: 'p', Operations: ['Decrypt'] }, response: { GrantId: 'g', GrantToken: 'secret-grant-token' }, resources: ['arn:aws:kms:us-east-1:111122223333:key/k'] }],
];

describe('audit event serialization', () => {
  for (const [name, input] of cases) {
    it(`buildEventJson = JSON.stringify(buildEvent) without the brace: ${name}`, () => {
      const want = JSON.stringify(buildEvent(input));
      expect(buildEventJson(input) + '}').toBe(want);
      expect(buildEventJson(input) + '}').toBe(want); // second time through the caches
    });
  }
  it('a caller changed in place is not logged with its old identity', () => {
    const c: Caller = { ...host };
    expect(buildEventJson({ ...base, caller: c })).toContain('host-1');
    c.arn = `arn:aws:sts::${ACCOUNT}:assumed-role/EbsdHost/host-2`;
    expect(buildEventJson({ ...base, caller: c }) + '}').toBe(JSON.stringify(buildEvent({ ...base, caller: c })));
  });
  it('secrets in the request never reach the text', () => {
    const s = buildEventJson(cases[1]![1]);
    expect(s).not.toContain('secret-token');
    expect(s).not.toMatch(/ciphertextBlob|plaintext/i);
  });
});

/**
 * Record shapes as the AWS KMS Developer Guide's CloudTrail examples ("Examples of AWS KMS log
 * entries") and the CloudTrail userIdentity element show them.
 */
describe('audit records as CloudTrail writes them', () => {
  const key = `arn:aws:kms:us-east-1:${ACCOUNT}:key/k`;
  it('a service event (RotateKey, DeleteKey) is invokedBy, from and by "AWS Internal" (ct-rotatekey, ct-delete-key)', () => {
    const ev = buildEvent({ ...base, eventName: 'DeleteKey', eventType: 'AwsServiceEvent', resources: [key] });
    expect(ev.userIdentity).toEqual({ accountId: ACCOUNT, invokedBy: 'AWS Internal' });
    expect(ev).toMatchObject({ sourceIPAddress: 'AWS Internal', userAgent: 'AWS Internal', requestParameters: null, responseElements: null });
  });
  it("a call EC2 makes for a caller: invokedBy, sourceIPAddress and userAgent are EC2's service name, without the region", () => {
    // EBS's GenerateDataKeyWithoutPlaintext for a caller: userIdentity the caller's with invokedBy the
    // service, sourceIPAddress and userAgent the same name (KMS Developer Guide, "Amazon EC2 example two").
    const ev = buildEvent({ ...base, eventName: 'GenerateDataKeyWithoutPlaintext', caller: alice, resources: [key] });
    expect(ev.userIdentity).toMatchObject({ arn: alice.arn, invokedBy: 'ec2.amazonaws.com' });
    expect(ev).toMatchObject({ sourceIPAddress: 'ec2.amazonaws.com', userAgent: 'ec2.amazonaws.com' });
  });
  it('Decrypt always records encryptionAlgorithm in requestParameters, SYMMETRIC_DEFAULT when the request named none (ct-decrypt)', () => {
    const ev = buildEvent({ ...base, caller: host, request: { CiphertextBlob: new Uint8Array(8), EncryptionContext: { a: 'b' } }, resources: [key] });
    expect(ev.requestParameters).toEqual({ encryptionContext: { a: 'b' }, encryptionAlgorithm: 'SYMMETRIC_DEFAULT' });
    const rsa = buildEvent({ ...base, caller: host, request: { CiphertextBlob: new Uint8Array(8), KeyId: key, EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' }, resources: [key] });
    expect(rsa.requestParameters).toEqual({ keyId: key, encryptionAlgorithm: 'RSAES_OAEP_SHA_256' });
  });
  it('CreateGrant records the key ARN in responseElements.keyId, and never the grant token (ct-creategrant)', () => {
    const input: AuditInput = { ...base, eventName: 'CreateGrant', caller: host, request: { KeyId: 'alias/x', GranteePrincipal: 'p', Operations: ['Decrypt'] }, response: { GrantId: 'g', GrantToken: 'secret-grant-token' }, resources: [key] };
    expect(buildEvent(input).responseElements).toEqual({ grantId: 'g', keyId: key });
    expect(buildEventJson(input)).not.toContain('secret-grant-token');
  });
});
