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
