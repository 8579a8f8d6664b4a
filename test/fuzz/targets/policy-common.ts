import fc from 'fast-check';
import { isIP } from 'node:net';
import { MalformedPolicyDocumentException } from '../../../src/kms/errors.js';
import { raw, str, hostileValue, type JNode } from '../harness/json-mutate.js';

/** Key policies to start from: the shapes users write, with every condition family. */
const ACCT = '111122223333';
export const POLICY_BASES: readonly unknown[] = [
  {
    Version: '2012-10-17', Id: 'key-default-1',
    Statement: [{ Sid: 'Enable IAM User Permissions', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' }],
  },
  {
    Version: '2012-10-17',
    Statement: [
      { Effect: 'Deny', Principal: '*', Action: ['kms:Decrypt', 'kms:ReEncrypt*'], Resource: '*', Condition: { StringNotEquals: { 'kms:ViaService': `ec2.us-east-1.amazonaws.com` } } },
      { Effect: 'Allow', Principal: { AWS: [ACCT, `arn:aws:iam::${ACCT}:user/alice`] }, Action: 'kms:CreateGrant', Resource: '*',
        Condition: { Bool: { 'kms:GrantIsForAWSResource': 'true' }, 'ForAllValues:StringEquals': { 'kms:GrantOperations': ['Decrypt'] }, StringLike: { 'kms:EncryptionContext:aws:ebs:id': 'vol-*' } } },
    ],
  },
  {
    Version: '2012-10-17',
    Statement: [{ Effect: 'Allow', Principal: { AWS: '*' }, Action: 'kms:Encrypt', NotResource: 'arn:aws:kms:us-east-1:111122223333:key/*',
      Condition: { IpAddress: { 'aws:SourceIp': ['10.0.0.0/8', '192.168.1.1'] }, NumericLessThan: { 'kms:RecipientAttestation:X': '5' }, DateGreaterThan: { 'aws:CurrentTime': '2020-01-01T00:00:00Z' },
        ArnLike: { 'aws:PrincipalArn': 'arn:aws:iam::*:role/Ebs*' }, Null: { 'kms:EncryptionContextKeys': 'false' }, 'ForAnyValue:StringLike': { 'kms:EncryptionContextKeys': ['aws:*'] } } }],
  },
];

export const POLICY_PATHS: string[][] = [
  ['Version'], ['Id'], ['Statement'], ['Statement', '0', 'Effect'], ['Statement', '0', 'Principal'], ['Statement', '0', 'Principal', 'AWS'],
  ['Statement', '0', 'Action'], ['Statement', '0', 'Resource'], ['Statement', '0', 'NotResource'], ['Statement', '0', 'Condition'],
  ['Statement', '0', 'Condition', '__proto__'], ['Statement', '0', 'Condition', 'constructor'], ['Statement', '0', 'Condition', 'IpAddress', 'aws:SourceIp'],
  ['Statement', '0', 'Condition', 'StringLike', 'kms:EncryptionContext:aws:ebs:id'], ['Statement', '0', 'Condition', 'StringLike', '__proto__'],
  ['Statement', '1', 'Effect'], ['Statement', '1', 'Condition', 'StringLike', 'kms:EncryptionContext:aws:ebs:id'], ['Statement', '0', 'Sid'],
];

export const starQ = fc.tuple(fc.integer({ min: 1, max: 40 }), fc.constantFrom('*?', '*a', '*')).map(([k, u]) => `arn:aws:kms:us${u.repeat(k)}-east-1:111122223333:key/x`);

export const POLICY_VALUES: fc.Arbitrary<JNode> = fc.oneof(
  { arbitrary: fc.constantFrom('Allow', 'Deny', 'allow', '2012-10-17', '2008-10-17', '*', 'kms:*', 'kms:Decrypt', 'arn:aws:kms:*', '10.0.0.1/', '10.0.0.1/33', '10.0.0.1/8/1', '::1/129', '300.1.1.1', '10.0.0.1/ 8', '10.0.0.1/08', '10.0.0.1').map(str), weight: 4 },
  { arbitrary: starQ.map(str), weight: 2 },
  { arbitrary: fc.constantFrom('{"Deny":1}', '{"AWS":"*"}', '{"__proto__":{"a":"b"}}', '{"StringEquals":{"__proto__":"x"}}', '{"__proto__":{"kms:CallerAccount":"1"}}', '["*"]', '[]').map(raw), weight: 2 },
  { arbitrary: fc.integer({ min: 1000, max: 12_000 }).map((n) => str('a*'.repeat(n))), weight: 1 },
  { arbitrary: hostileValue, weight: 3 },
);

export const isMalformed = (e: unknown): boolean => e instanceof MalformedPolicyDocumentException;

/** A strict IPv4/IPv6 address or CIDR block, as IAM's IpAddress takes it. */
export function strictCidr(v: string): boolean {
  const m = /^([^/]+)(?:\/(0|[1-9][0-9]{0,2}))?$/.exec(v);
  if (!m) return false;
  const fam = isIP(m[1]!);
  if (!fam) return false;
  return m[2] === undefined || Number(m[2]) <= (fam === 4 ? 32 : 128);
}

/** Every value of every IpAddress / NotIpAddress condition in a parsed policy document. */
export function ipValues(doc: unknown): string[] {
  const out: string[] = [];
  const sts = (doc as { Statement?: unknown }).Statement;
  for (const st of Array.isArray(sts) ? sts : [sts]) {
    const cond = (st as { Condition?: unknown })?.Condition;
    if (!cond || typeof cond !== 'object') continue;
    for (const [op, body] of Object.entries(cond)) {
      if (!/^(ForAnyValue:|ForAllValues:)?(Not)?IpAddress(IfExists)?$/i.test(op) || !body || typeof body !== 'object') continue;
      for (const v of Object.values(body)) for (const x of Array.isArray(v) ? v : [v]) out.push(String(x));
    }
  }
  return out;
}
