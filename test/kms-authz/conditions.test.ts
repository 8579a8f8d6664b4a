import { describe, expect, it } from 'vitest';
import { compileConditions, parseOperator, type ContextValue } from '../../src/kms/authz/conditions.js';

function check(cond: Record<string, unknown>, ctx: Record<string, ContextValue>): boolean {
  const tests = compileConditions(cond, 'test');
  const lower = new Map(Object.entries(ctx).map(([k, v]) => [k.toLowerCase(), v]));
  return tests.every((t) => t.test({ get: (k) => lower.get(k) }));
}

describe('condition operators', () => {
  it('String operators: equals, ignore case, like, and their negations', () => {
    expect(check({ StringEquals: { 'aws:username': 'alice' } }, { 'aws:username': 'alice' })).toBe(true);
    expect(check({ StringEquals: { 'aws:username': 'alice' } }, { 'aws:username': 'Alice' })).toBe(false);
    expect(check({ StringEqualsIgnoreCase: { 'aws:username': 'ALICE' } }, { 'aws:username': 'alice' })).toBe(true);
    expect(check({ StringNotEqualsIgnoreCase: { 'aws:username': 'ALICE' } }, { 'aws:username': 'alice' })).toBe(false);
    expect(check({ StringNotEquals: { 'aws:username': ['bob', 'carol'] } }, { 'aws:username': 'alice' })).toBe(true);
    expect(check({ StringLike: { 'kms:ViaService': 'ec2.*.amazonaws.com' } }, { 'kms:viaservice': 'ec2.us-west-2.amazonaws.com' })).toBe(true);
    expect(check({ StringLike: { 'aws:username': 'al?ce' } }, { 'aws:username': 'alice' })).toBe(true);
    expect(check({ StringLike: { 'aws:username': 'al?ce' } }, { 'aws:username': 'allice' })).toBe(false);
    expect(check({ StringNotLike: { 'aws:username': 'a*' } }, { 'aws:username': 'bob' })).toBe(true);
  });

  it('condition keys are case-insensitive; values are not', () => {
    expect(check({ StringEquals: { 'KMS:CallerAccount': '111122223333' } }, { 'kms:calleraccount': '111122223333' })).toBe(true);
  });

  it('several values for one key are ORed; several keys and operators are ANDed', () => {
    const c = { StringEquals: { 'a:x': ['1', '2'], 'a:y': '3' }, Bool: { 'a:z': 'true' } };
    expect(check(c, { 'a:x': '2', 'a:y': '3', 'a:z': 'true' })).toBe(true);
    expect(check(c, { 'a:x': '2', 'a:y': '4', 'a:z': 'true' })).toBe(false);
    expect(check(c, { 'a:x': '2', 'a:y': '3', 'a:z': 'false' })).toBe(false);
  });

  it('Numeric and Date operators', () => {
    expect(check({ NumericLessThanEquals: { 'a:n': '10' } }, { 'a:n': '10' })).toBe(true);
    expect(check({ NumericGreaterThan: { 'a:n': 10 } }, { 'a:n': '10' })).toBe(false);
    expect(check({ NumericNotEquals: { 'a:n': '3' } }, { 'a:n': '4' })).toBe(true);
    expect(check({ NumericEquals: { 'a:n': '3' } }, { 'a:n': 'abc' })).toBe(false);
    expect(check({ DateLessThan: { 'aws:CurrentTime': '2030-01-01T00:00:00Z' } }, { 'aws:currenttime': '2025-06-01T00:00:00.000Z' })).toBe(true);
    expect(check({ DateGreaterThan: { 'aws:EpochTime': '2020-01-01T00:00:00Z' } }, { 'aws:epochtime': '1700000000' })).toBe(true);
    expect(check({ DateEquals: { 'a:d': '1700000000' } }, { 'a:d': '2023-11-14T22:13:20Z' })).toBe(true);
  });

  it('Bool, Null, BinaryEquals, IpAddress', () => {
    expect(check({ Bool: { 'kms:GrantIsForAWSResource': 'true' } }, { 'kms:grantisforawsresource': 'true' })).toBe(true);
    expect(check({ Bool: { 'kms:GrantIsForAWSResource': true } }, { 'kms:grantisforawsresource': 'false' })).toBe(false);
    expect(check({ Null: { 'kms:EncryptionContextKeys': 'false' } }, {})).toBe(false);
    expect(check({ Null: { 'kms:EncryptionContextKeys': 'false' } }, { 'kms:encryptioncontextkeys': ['a'] })).toBe(true);
    expect(check({ Null: { 'kms:EncryptionContextKeys': 'true' } }, {})).toBe(true);
    expect(check({ BinaryEquals: { 'a:b': 'QmluYXJ5' } }, { 'a:b': 'QmluYXJ5' })).toBe(true);
    expect(check({ IpAddress: { 'aws:SourceIp': ['10.0.0.0/8', '2001:db8::/32'] } }, { 'aws:sourceip': '10.1.2.3' })).toBe(true);
    expect(check({ IpAddress: { 'aws:SourceIp': ['10.0.0.0/8', '2001:db8::/32'] } }, { 'aws:sourceip': '2001:db8::1' })).toBe(true);
    expect(check({ NotIpAddress: { 'aws:SourceIp': '10.0.0.0/8' } }, { 'aws:sourceip': '192.168.0.1' })).toBe(true);
  });

  it('Arn operators match component by component with wildcards', () => {
    const c = { ArnLike: { 'aws:PrincipalArn': 'arn:aws:iam::111122223333:role/Ebs*' } };
    expect(check(c, { 'aws:principalarn': 'arn:aws:iam::111122223333:role/EbsHost' })).toBe(true);
    expect(check(c, { 'aws:principalarn': 'arn:aws:iam::444455556666:role/EbsHost' })).toBe(false);
    expect(check({ ArnEquals: { 'aws:PrincipalArn': 'arn:aws:iam::*:root' } }, { 'aws:principalarn': 'arn:aws:iam::111122223333:root' })).toBe(true);
    expect(check({ ArnNotLike: { 'aws:PrincipalArn': 'arn:aws:iam::*:root' } }, { 'aws:principalarn': 'arn:aws:iam::111122223333:root' })).toBe(false);
    expect(check({ ArnNotEquals: { 'aws:PrincipalArn': 'arn:aws:iam::*:root' } }, { 'aws:principalarn': 'not-an-arn' })).toBe(true);
  });

  it('missing keys: positive operators false, negated true, IfExists true', () => {
    expect(check({ StringEquals: { 'kms:ViaService': 'ec2.us-west-2.amazonaws.com' } }, {})).toBe(false);
    expect(check({ StringNotEquals: { 'kms:ViaService': 'ec2.us-west-2.amazonaws.com' } }, {})).toBe(true);
    expect(check({ StringEqualsIfExists: { 'kms:ViaService': 'ec2.us-west-2.amazonaws.com' } }, {})).toBe(true);
    expect(check({ StringEqualsIfExists: { 'kms:ViaService': 'ec2.us-west-2.amazonaws.com' } }, { 'kms:viaservice': 'rds.us-west-2.amazonaws.com' })).toBe(false);
    expect(check({ NumericLessThanIfExists: { 'a:n': '5' } }, {})).toBe(true);
    expect(check({ ArnLikeIfExists: { 'a:arn': 'arn:aws:*:*:*:*' } }, {})).toBe(true);
  });

  it('ForAllValues: true when the key is missing or empty, else every value must match', () => {
    const c = { 'ForAllValues:StringEquals': { 'kms:EncryptionContextKeys': ['Purpose', 'Department'] } };
    expect(check(c, {})).toBe(true); // the documented trap: no encryption context at all passes
    expect(check(c, { 'kms:encryptioncontextkeys': [] })).toBe(true);
    expect(check(c, { 'kms:encryptioncontextkeys': ['Purpose'] })).toBe(true);
    expect(check(c, { 'kms:encryptioncontextkeys': ['Purpose', 'Other'] })).toBe(false);
    // ... which is why AWS pairs it with Null false:
    const guarded = { ...c, Null: { 'kms:EncryptionContextKeys': 'false' } };
    expect(check(guarded, {})).toBe(false);
  });

  it('ForAnyValue: false when missing or empty, else some value must match', () => {
    const c = { 'ForAnyValue:StringEquals': { 'kms:EncryptionContextKeys': 'Purpose' } };
    expect(check(c, {})).toBe(false);
    expect(check(c, { 'kms:encryptioncontextkeys': [] })).toBe(false);
    expect(check(c, { 'kms:encryptioncontextkeys': ['x', 'Purpose'] })).toBe(true);
    expect(check({ 'ForAnyValue:StringNotEquals': { 'kms:GrantOperations': ['Decrypt'] } }, { 'kms:grantoperations': ['Decrypt', 'Encrypt'] })).toBe(true);
    expect(check({ 'ForAnyValue:StringNotEquals': { 'kms:GrantOperations': ['Decrypt'] } }, { 'kms:grantoperations': ['Decrypt'] })).toBe(false);
    expect(check({ 'ForAnyValue:StringLikeIfExists': { 'kms:ResourceAliases': 'alias/app*' } }, {})).toBe(true);
  });

  it('ForAllValues with a negated operator: no value may be in the set', () => {
    const c = { 'ForAllValues:StringNotEquals': { 'kms:GrantOperations': ['CreateGrant'] } };
    expect(check(c, { 'kms:grantoperations': ['Decrypt', 'Encrypt'] })).toBe(true);
    expect(check(c, { 'kms:grantoperations': ['Decrypt', 'CreateGrant'] })).toBe(false);
  });

  it('a multi-valued key without a set operator: positive = any matches, negated = none matches', () => {
    expect(check({ StringEquals: { 'kms:ResourceAliases': 'alias/app' } }, { 'kms:resourcealiases': ['alias/x', 'alias/app'] })).toBe(true);
    expect(check({ StringNotEquals: { 'kms:ResourceAliases': 'alias/app' } }, { 'kms:resourcealiases': ['alias/x', 'alias/app'] })).toBe(false);
    expect(check({ StringNotEquals: { 'kms:ResourceAliases': 'alias/app' } }, { 'kms:resourcealiases': ['alias/x'] })).toBe(true);
  });

  it('parses operator names with qualifiers and IfExists; rejects unknown ones', () => {
    expect(parseOperator('ForAllValues:StringLikeIfExists')).toMatchObject({ setOp: 'ForAllValues', base: 'StringLike', ifExists: true });
    expect(parseOperator('StringEqualz')).toBeUndefined();
    expect(parseOperator('NullIfExists')).toBeUndefined();
    expect(parseOperator('ForSomeValues:StringEquals')).toBeUndefined();
    expect(() => compileConditions({ StringEqualz: { 'a:b': 'c' } }, 'S')).toThrow(/unknown condition operator "StringEqualz"/);
    expect(() => compileConditions({ NumericEquals: { 'a:b': 'ten' } }, 'S')).toThrow(/not a valid numeric value/);
    expect(() => compileConditions({ DateLessThan: { 'a:b': 'tomorrow' } }, 'S')).toThrow(/not a valid date value/);
    expect(() => compileConditions({ Bool: { 'a:b': 'yes' } }, 'S')).toThrow(/must be true or false/);
    expect(() => compileConditions({ IpAddress: { 'aws:SourceIp': '10.0.0.0/33' } }, 'S')).toThrow(/CIDR/);
    expect(() => compileConditions({ StringEquals: { 'a:b': [] } }, 'S')).toThrow(/no values/);
    expect(() => compileConditions({ StringEquals: { 'a:b': { x: 1 } } }, 'S')).toThrow(/strings, numbers or booleans/);
  });
});

describe('policy variables in condition values', () => {
  const vcheck = (cond: Record<string, unknown>, ctx: Record<string, ContextValue>, variables = true): boolean => {
    const tests = compileConditions(cond, 'test', { variables });
    const lower = new Map(Object.entries(ctx).map(([k, v]) => [k.toLowerCase(), v]));
    return tests.every((t) => t.test({ get: (k) => lower.get(k) }));
  };
  it('substitutes any context key; no value, a multi-valued key or a malformed variable match nothing', () => {
    expect(vcheck({ StringEquals: { 'aws:ResourceTag/team': '${aws:PrincipalTag/team}' } }, { 'aws:PrincipalTag/team': 'x', 'aws:ResourceTag/team': 'x' })).toBe(true);
    expect(vcheck({ StringEquals: { 'aws:ResourceTag/team': '${aws:PrincipalTag/team}' } }, { 'aws:ResourceTag/team': '${aws:PrincipalTag/team}' })).toBe(false);
    // No value: null, as IAM treats it (negated operators "match against a null value"): it matches nothing,
    // so a negated operator holds (a Deny so written still denies), and the other values still count.
    expect(vcheck({ StringNotEquals: { 'aws:ResourceTag/team': '${aws:PrincipalTag/team}' } }, { 'aws:ResourceTag/team': 'x' })).toBe(true);
    expect(vcheck({ StringNotEquals: { 'aws:ResourceTag/team': '${aws:PrincipalTag/team}' } }, { 'aws:PrincipalTag/team': 'x', 'aws:ResourceTag/team': 'x' })).toBe(false);
    expect(vcheck({ StringEquals: { 'a:owner': ['admin', '${aws:username}'] } }, { 'a:owner': 'admin' })).toBe(true);
    expect(vcheck({ StringEqualsIfExists: { 'a:owner': '${aws:username}' } }, {})).toBe(true);
    expect(vcheck({ 'ForAllValues:StringEquals': { 'a:keys': '${aws:username}' } }, {})).toBe(true);
    expect(vcheck({ StringEquals: { 'a:k': '${kms:EncryptionContextKeys}' } }, { 'kms:EncryptionContextKeys': ['x'], 'a:k': 'x' })).toBe(false);
    expect(vcheck({ StringEquals: { 'a:k': '${aws:username' } }, { 'aws:username': 'u', 'a:k': '${aws:username' })).toBe(false);
    expect(vcheck({ StringEquals: { 'a:k': "${a:none, 'it''s'}" } }, { 'a:k': "it's" })).toBe(true);
    expect(vcheck({ NumericLessThan: { 'a:n': '${a:max}' } }, { 'a:n': '3', 'a:max': '5' })).toBe(true);
    expect(vcheck({ NumericLessThan: { 'a:n': '${a:max}' } }, { 'a:n': '3', 'a:max': 'lots' })).toBe(false);
    expect(vcheck({ NumericNotEquals: { 'a:n': '${a:max}' } }, { 'a:n': '3', 'a:max': 'lots' })).toBe(true); // unreadable: null too
    expect(vcheck({ NumericLessThan: { 'a:n': ['10', '${a:max}'] } }, { 'a:n': '5', 'a:max': 'lots' })).toBe(true);
    expect(vcheck({ ArnLike: { 'aws:PrincipalArn': 'arn:aws:iam::${aws:PrincipalAccount}:role/*' } }, { 'aws:PrincipalAccount': '111122223333', 'aws:PrincipalArn': 'arn:aws:iam::111122223333:role/R' })).toBe(true);
    expect(vcheck({ ArnLike: { 'aws:PrincipalArn': 'arn:aws:iam::${aws:PrincipalAccount}:role/*' } }, { 'aws:PrincipalAccount': '*', 'aws:PrincipalArn': 'arn:aws:iam::111122223333:role/R' })).toBe(false);
    expect(vcheck({ StringEquals: { 'a:k': '${aws:username}' } }, { 'aws:username': 'u', 'a:k': '${aws:username}' }, false)).toBe(true);
  });
});

describe('numbers and dates in conditions', () => {
  // Stored key and identity policies are compiled when first used: a value an upgrade stopped reading
  // would make the policy refuse every call on its key, PutKeyPolicy included. So numbers and dates are
  // read as they always were (Number, Date.parse; epoch seconds), and only text neither reads is refused.
  it('Numeric: what Number reads (1e3, " 5", .5 too); an empty or unreadable value is refused in a policy and matches nothing in a request', () => {
    expect(check({ NumericLessThan: { 'a:n': '1e3' } }, { 'a:n': '999' })).toBe(true);
    expect(check({ NumericLessThan: { 'a:n': ' 5' } }, { 'a:n': '.5' })).toBe(true);
    expect(check({ NumericLessThan: { 'a:n': '-2.5' } }, { 'a:n': '-3' })).toBe(true);
    expect(check({ NumericEquals: { 'a:n': 5 } }, { 'a:n': '+5' })).toBe(true);
    for (const bad of ['', 'lots']) {
      expect(() => compileConditions({ NumericLessThan: { 'a:n': bad } }, 'N')).toThrow(/not a valid numeric value/);
      expect(check({ NumericLessThan: { 'a:n': '100' } }, { 'a:n': bad })).toBe(false);
    }
  });
  it('Date: ISO 8601 (no zone: UTC), epoch seconds, and what Date.parse reads; unreadable text refused', () => {
    expect(check({ DateEquals: { 'a:d': '2030-01-01' } }, { 'a:d': '2030-01-01T00:00:00Z' })).toBe(true);
    expect(check({ DateEquals: { 'a:d': '2030-01-01T00:00:00' } }, { 'a:d': '2030-01-01T01:00:00+01:00' })).toBe(true);
    expect(check({ DateEquals: { 'a:d': '2030-01-01T00:00:00.5Z' } }, { 'a:d': '2030-01-01T00:00:00.500Z' })).toBe(true);
    expect(check({ DateEquals: { 'a:d': '1893456000' } }, { 'a:d': '2030-01-01T00:00Z' })).toBe(true);
    expect(check({ DateEquals: { 'a:d': 'Tue, 01 Jan 2030 00:00:00 GMT' } }, { 'a:d': '2030-01-01t00:00:00z' })).toBe(true);
    expect(() => compileConditions({ DateLessThan: { 'a:d': 'soon' } }, 'D')).toThrow(/not a valid date value/);
    expect(check({ DateGreaterThan: { 'a:d': '2020-01-01T00:00:00Z' } }, { 'a:d': 'soon' })).toBe(false);
  });
});
