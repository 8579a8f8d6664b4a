import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { KmsService } from '../../src/kms/kms-core.js';
import { openKms } from '../../src/kms/open-kms.js';
import type { AuthzHandles } from '../../src/kms/authz/index.js';
import { decodeKmsRequest } from '../../src/daemon/aws-json.js';
import type { Caller } from '../../src/kms/types.js';
import { doc, tempDir } from './helpers.js';

/**
 * What fuzzing the KMS parsers found, through the real KMS core with the policy
 * engine: `__proto__` keys carried as data, duplicate policy members,
 * malformed CIDRs, deep nesting refused before any effect and audited.
 * Objects holding a `"__proto__"` member are made with JSON.parse, as a
 * request body makes them.
 */
const ACCOUNT = '111122223333';
const REGION = 'us-east-1';

let t: ReturnType<typeof tempDir>;
let kms: KmsService;
let authz: AuthzHandles;
let root: Caller;
let alice: Caller;
let host: Caller;
let keyId: string;

const json = (s: string): Record<string, string> => JSON.parse(s) as Record<string, string>;

async function awsName(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as { awsName?: string }).awsName ?? `untyped ${(e as Error).name}: ${(e as Error).message}`;
  }
  return 'accepted';
}

async function failure(p: Promise<unknown>): Promise<{ awsName?: string; message: string }> {
  try {
    await p;
  } catch (e) {
    return e as { awsName?: string; message: string };
  }
  return { message: 'accepted' };
}

function auditEvents(): Record<string, unknown>[] {
  const text = readFileSync(join(t.dir, 'kms', 'audit', 'events.ndjson'), 'utf8');
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** `[[[…"x"…]]]`, `depth` arrays deep, built without recursion. */
function nested(depth: number): unknown {
  let v: unknown = 'x';
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

beforeAll(async () => {
  t = tempDir('ebsd-authz-parsers-');
  // Wired as the daemon wires it (src/kms/open-kms.ts).
  const opened = await openKms({ stateDir: t.dir, accountId: ACCOUNT, region: REGION, hsmMode: 'inline', passphrase: 'test-passphrase', scryptCost: { N: 2 ** 10, r: 8, p: 1 } });
  authz = opened;
  kms = opened.core;
  const ids = authz.identities;
  root = ids.callerForUid(0);
  await ids.createUser('alice');
  await ids.mapUid(1000, 'user/alice');
  await ids.createRole('EbsdHost');
  await ids.mapUid(999, 'role/EbsdHost', { session: 'host-1' });
  alice = ids.callerForUid(1000);
  host = ids.callerForUid(999);
  const { KeyMetadata } = await kms.call('CreateKey', { Description: 'parsers' }, root) as { KeyMetadata: { KeyId: string } };
  keyId = KeyMetadata.KeyId;
}, 60_000);

afterAll(async () => {
  await kms?.close();
  t?.cleanup();
});

describe('__proto__ as a map key is carried as data', () => {
  it('a blob encrypted with context {} does not decrypt under {"__proto__":"d"}', async () => {
    const { CiphertextBlob } = await kms.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('secret'), EncryptionContext: {} }, root);
    expect(await awsName(kms.call('Decrypt', { CiphertextBlob, EncryptionContext: json('{"__proto__":"d"}') }, root))).toBe('InvalidCiphertextException');
    await expect(kms.call('Decrypt', { CiphertextBlob, EncryptionContext: {} }, root)).resolves.toHaveProperty('Plaintext');
  });

  it('a blob bound to {"aws:ebs:id":"vol-1"} does not decrypt under the same plus "__proto__"; one bound with "__proto__" needs it', async () => {
    const ec = { 'aws:ebs:id': 'vol-1' };
    const { CiphertextBlob } = await kms.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('k'), EncryptionContext: ec }, root);
    expect(await awsName(kms.call('Decrypt', { CiphertextBlob, EncryptionContext: json('{"aws:ebs:id":"vol-1","__proto__":" "}') }, root)))
      .toBe('InvalidCiphertextException');
    const withProto = json('{"aws:ebs:id":"vol-1","__proto__":" "}');
    const b2 = (await kms.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('k'), EncryptionContext: withProto }, root)).CiphertextBlob;
    expect(await awsName(kms.call('Decrypt', { CiphertextBlob: b2, EncryptionContext: ec }, root))).toBe('InvalidCiphertextException');
    const out = await kms.call('Decrypt', { CiphertextBlob: b2, EncryptionContext: json('{"aws:ebs:id":"vol-1","__proto__":" "}') }, root);
    expect(Buffer.from(out.Plaintext as Uint8Array).toString()).toBe('k');
  });

  it('grant constraints holding a "__proto__" pair are kept: the grant does not match other contexts', async () => {
    const hostRole = `arn:aws:iam::${ACCOUNT}:role/EbsdHost`;
    const g = await kms.call('CreateGrant', {
      KeyId: keyId, GranteePrincipal: hostRole, Operations: ['Decrypt'], Constraints: { EncryptionContextEquals: json('{"__proto__":"vol-1"}') },
    }, root) as { GrantId: string };
    const listed = await kms.call('ListGrants', { KeyId: keyId, GrantId: g.GrantId }, root) as { Grants: { Constraints?: { EncryptionContextEquals?: object } }[] };
    expect(Object.keys(listed.Grants[0]!.Constraints!.EncryptionContextEquals!)).toEqual(['__proto__']);
    // Another volume's blob: the grant must not reach it.
    const other = (await kms.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('vol-2 key'), EncryptionContext: { 'aws:ebs:id': 'vol-2' } }, root)).CiphertextBlob;
    expect(await awsName(kms.call('Decrypt', { CiphertextBlob: other, EncryptionContext: { 'aws:ebs:id': 'vol-2' } }, host))).toBe('AccessDeniedException');
    const mine = (await kms.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('mine'), EncryptionContext: json('{"__proto__":"vol-1"}') }, root)).CiphertextBlob;
    await expect(kms.call('Decrypt', { CiphertextBlob: mine, EncryptionContext: json('{"__proto__":"vol-1"}') }, host)).resolves.toHaveProperty('Plaintext');
  });

  it('a user allowed only constrained grants cannot reach another volume through a "__proto__" subset constraint', async () => {
    await authz.identities.attachPolicy('user/alice', 'constrained-grants', doc({
      Effect: 'Allow', Action: 'kms:CreateGrant', Resource: '*',
      Condition: { StringEquals: { 'kms:GrantConstraintType': 'EncryptionContextSubset' } },
    }));
    const other = (await kms.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('vol-9 key'), EncryptionContext: { 'aws:ebs:id': 'vol-9' } }, root)).CiphertextBlob;
    const g = await kms.call('CreateGrant', {
      KeyId: keyId, GranteePrincipal: alice.arn, Operations: ['Decrypt'], Constraints: { EncryptionContextSubset: json('{"__proto__":"vol-1"}') },
    }, alice) as { GrantToken: string };
    expect(await awsName(kms.call('Decrypt', { CiphertextBlob: other, EncryptionContext: { 'aws:ebs:id': 'vol-9' }, GrantTokens: [g.GrantToken] }, alice)))
      .toBe('AccessDeniedException');
  });

  it('a "__proto__" request member never becomes the request prototype', async () => {
    // What the control socket hands the core for this body: the member named __proto__ would
    // otherwise lend its KeyId to a request that has none.
    const body = JSON.parse(`{"__proto__":{"KeyId":"${keyId}"},"Plaintext":"eA=="}`) as Record<string, unknown>;
    const req = decodeKmsRequest(body);
    const e = await failure(kms.call('Encrypt', req, root));
    expect(e.awsName).toBe('ValidationException');
    expect(e.message).toMatch(/keyId/);
  });

  it('"__proto__" as a condition operator is MalformedPolicyDocumentException, as are "constructor" and "toString"', async () => {
    for (const op of ['__proto__', 'constructor', 'toString']) {
      const policy = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::${ACCOUNT}:root"},"Action":"kms:*","Resource":"*",`
        + `"Condition":{"${op}":{"aws:username":"x"}}}]}`;
      const e = await failure(kms.call('PutKeyPolicy', { KeyId: keyId, Policy: policy }, root));
      expect(e.awsName, op).toBe('MalformedPolicyDocumentException');
      expect(e.message).toMatch(/unknown condition operator/);
    }
  });

  it('a key tag named "__proto__" is a tag: aws:ResourceTag/__proto__ conditions see it', async () => {
    const { KeyMetadata } = await kms.call('CreateKey', { Tags: [{ TagKey: '__proto__', TagValue: 'team-a' }] }, root) as { KeyMetadata: { KeyId: string } };
    await authz.identities.attachPolicy('user/alice', 'by-tag', doc({
      Effect: 'Allow', Action: 'kms:GetKeyRotationStatus', Resource: '*', Condition: { StringEquals: { 'aws:ResourceTag/__proto__': 'team-a' } },
    }));
    await expect(kms.call('GetKeyRotationStatus', { KeyId: KeyMetadata.KeyId }, alice)).resolves.toHaveProperty('KeyRotationEnabled');
    expect(await awsName(kms.call('GetKeyRotationStatus', { KeyId: keyId }, alice))).toBe('AccessDeniedException');
  });

  it('an IAM user named __proto__ is a user like any other', async () => {
    await authz.identities.createUser('__proto__');
    expect(authz.identities.listUsers().map((u) => u.UserName)).toContain('__proto__');
    await authz.identities.attachPolicy('user/__proto__', 'p', doc({ Effect: 'Allow', Action: 'kms:DescribeKey', Resource: '*' }));
    expect(authz.identities.listPolicies(`arn:aws:iam::${ACCOUNT}:user/__proto__`)).toEqual(['p']);
  });
});

describe('every call is audited or has no effect', () => {
  it('CreateGrant with a member nested 5,000 deep: refused, no grant, refusal audited', async () => {
    const before = (await kms.call('ListGrants', { KeyId: keyId }, root) as { Grants: unknown[] }).Grants.length;
    const e = await failure(kms.call('CreateGrant', {
      KeyId: keyId, GranteePrincipal: alice.arn, Operations: ['Decrypt'], DryRun: nested(5000),
    }, root));
    expect(e.awsName).toBe('ValidationException');
    expect(e.message).toMatch(/dryRun/);
    expect((await kms.call('ListGrants', { KeyId: keyId }, root) as { Grants: unknown[] }).Grants.length).toBe(before);
    const last = auditEvents().filter((ev) => ev.eventName === 'CreateGrant').at(-1)!;
    expect(last.errorCode).toBe('ValidationException');
  });

  it('ScheduleKeyDeletion with a member nested 5,000 deep: refused, the key stays Enabled, refusal audited', async () => {
    const { KeyMetadata } = await kms.call('CreateKey', {}, root) as { KeyMetadata: { KeyId: string } };
    const e = await failure(kms.call('ScheduleKeyDeletion', { KeyId: KeyMetadata.KeyId, PendingWindowInDays: 7, Description: nested(5000) }, root));
    expect(e.awsName).toBe('ValidationException');
    const d = await kms.call('DescribeKey', { KeyId: KeyMetadata.KeyId }, root) as { KeyMetadata: { KeyState: string } };
    expect(d.KeyMetadata.KeyState).toBe('Enabled');
    const last = auditEvents().filter((ev) => ev.eventName === 'ScheduleKeyDeletion').at(-1)!;
    expect(last.errorCode).toBe('ValidationException');
  });

  it('a member of the wrong type that the operation ignores (DryRun: {}) refuses the call before it takes effect', async () => {
    const { KeyMetadata } = await kms.call('CreateKey', {}, root) as { KeyMetadata: { KeyId: string } };
    const e = await failure(kms.call('ScheduleKeyDeletion', { KeyId: KeyMetadata.KeyId, PendingWindowInDays: 7, DryRun: { deep: true } }, root));
    expect(e.awsName).toBe('ValidationException');
    expect(e.message).toMatch(/dryRun.*boolean/);
    const d = await kms.call('DescribeKey', { KeyId: KeyMetadata.KeyId }, root) as { KeyMetadata: { KeyState: string } };
    expect(d.KeyMetadata.KeyState).toBe('Enabled');
  });

  it('a request that cannot be serialized for the audit log is refused before CreateGrant takes effect, and the refusal is audited', async () => {
    const before = (await kms.call('ListGrants', { KeyId: keyId }, root) as { Grants: unknown[] }).Grants.length;
    // In-process callers only (JSON cannot carry it): a member whose serialization throws.
    const unrecordable = Object.create({ toJSON(): never { throw new Error('cannot serialize'); } }) as object;
    const e = await failure(kms.call('CreateGrant', { KeyId: keyId, GranteePrincipal: alice.arn, Operations: ['Decrypt'], Extra: unrecordable }, root));
    expect(e.awsName).toBe('ValidationException');
    expect(e.message).toMatch(/cannot be recorded/);
    expect((await kms.call('ListGrants', { KeyId: keyId }, root) as { Grants: unknown[] }).Grants.length).toBe(before);
    const last = auditEvents().filter((ev) => ev.eventName === 'CreateGrant').at(-1)!;
    expect(last.errorCode).toBe('ValidationException');
    expect(last.requestParameters).toBeNull();
  });

  it('a denied call with a deep member is audited as refused', async () => {
    const e = await failure(kms.call('CreateGrant', { KeyId: keyId, GranteePrincipal: alice.arn, Operations: ['Decrypt'], Name: nested(5000) }, alice));
    expect(e.awsName).toBe('ValidationException');
    const last = auditEvents().filter((ev) => ev.eventName === 'CreateGrant').at(-1)!;
    expect((last.userIdentity as { arn: string }).arn).toBe(alice.arn);
    expect(last.errorCode).toBe('ValidationException');
  });

  it('a policy nested 5,000 deep is MalformedPolicyDocumentException, not a stack overflow', async () => {
    const deep = '['.repeat(5000) + '"x"' + ']'.repeat(5000);
    const policy = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::${ACCOUNT}:root"},"Action":"kms:*","Resource":"*",`
      + `"Condition":{"StringEquals":{"aws:username":${deep}}}}]}`;
    const e = await failure(kms.call('PutKeyPolicy', { KeyId: keyId, Policy: policy }, root));
    expect(e.awsName).toBe('MalformedPolicyDocumentException');
    expect(e.message).toMatch(/nested deeper/);
  });
});

describe('policy documents', () => {
  it('a duplicate Effect ("Deny" then "Allow") is refused, naming the member', async () => {
    const policy = `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::${ACCOUNT}:root"},"Action":"kms:*","Resource":"*"}]}`;
    const e = await failure(kms.call('PutKeyPolicy', { KeyId: keyId, Policy: policy }, root));
    expect(e.awsName).toBe('MalformedPolicyDocumentException');
    expect(e.message).toMatch(/duplicate member name "Effect"/);
    const e2 = await failure(kms.call('CreateKey', { Policy: policy }, root));
    expect(e2.awsName).toBe('MalformedPolicyDocumentException');
  });

  it('IpAddress "10.0.0.1/" is refused when the policy is put (not read as /0)', async () => {
    for (const cidr of ['10.0.0.1/', '10.0.0.1/ 8', '10.0.0.1/+8', '10.0.0.1/0x8', '10.0.0.1/08']) {
      const policy = doc(
        { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCOUNT}:root` }, Action: 'kms:*', Resource: '*' },
        { Effect: 'Deny', Principal: { AWS: '*' }, Action: 'kms:Decrypt', Resource: '*', Condition: { IpAddress: { 'aws:SourceIp': cidr } } },
      );
      const e = await failure(kms.call('PutKeyPolicy', { KeyId: keyId, Policy: policy }, root));
      expect(e.awsName, cidr).toBe('MalformedPolicyDocumentException');
      expect(e.message).toContain(cidr);
    }
  });

  it('a Resource pattern of many "*?" and one of 10,000 characters are accepted and evaluated', async () => {
    const stars = `arn:aws:kms:us${'*?'.repeat(40)}-east-1:${ACCOUNT}:key/*`;
    const long = `arn:aws:kms:${'*'.repeat(10_000)}`;
    const policy = doc(
      { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCOUNT}:root` }, Action: 'kms:*', Resource: '*' },
      { Effect: 'Allow', Principal: { AWS: alice.arn }, Action: 'kms:DescribeKey', Resource: [stars, long] },
    );
    const { KeyMetadata } = await kms.call('CreateKey', { Policy: policy }, root) as { KeyMetadata: { KeyId: string } };
    await expect(kms.call('DescribeKey', { KeyId: KeyMetadata.KeyId }, alice)).resolves.toHaveProperty('KeyMetadata');
    expect(await awsName(kms.call('Encrypt', { KeyId: KeyMetadata.KeyId, Plaintext: Buffer.from('x') }, alice))).toBe('AccessDeniedException');
  });
});

describe('encryption contexts and blobs', () => {
  it('a context string with a lone surrogate is refused, naming the key; distinct ones no longer collide', async () => {
    const e = await failure(kms.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('x'), EncryptionContext: { vol: '\ud800' } }, root));
    expect(e.awsName).toBe('ValidationException');
    expect(e.message).toContain('"vol"');
    const e2 = await failure(kms.call('GenerateDataKey', { KeyId: keyId, KeySpec: 'AES_256', EncryptionContext: { ['k\udfff']: 'v' } }, root));
    expect(e2.awsName).toBe('ValidationException');
    const g = await failure(kms.call('CreateGrant', {
      KeyId: keyId, GranteePrincipal: alice.arn, Operations: ['Decrypt'], Constraints: { EncryptionContextSubset: { vol: '\udc00' } },
    }, root));
    expect(g.awsName).toBe('ValidationException');
  });
});
