import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Kms } from '../../src/kms/open-kms.js';
import type { Caller } from '../../src/kms/types.js';
import { ACCT, REGION, awsName, doc, openTestKms, tempDir } from './helpers.js';

/**
 * Who may create, repoint, delete and list aliases (docs/architecture.md §5.4):
 * CreateAlias, UpdateAlias and DeleteAlias need the permission on the alias
 * (identity policy, resource the alias ARN) and on the key(s) (key policy);
 * ListAliases needs kms:ListAliases from an identity policy only, on `*`, even
 * with a KeyId. Through the real core, wired as the daemon wires it.
 */
let t: ReturnType<typeof tempDir>;
let kms: Kms;
let root: Caller;
const users: Record<string, Caller> = {};
let k1 = '';
let k2 = '';
let k1Arn = '';

const KEY_ARNS = `arn:aws:kms:${REGION}:${ACCT}:key/*`;
const TEAM_ALIASES = `arn:aws:kms:${REGION}:${ACCT}:alias/team-*`;
const ALIAS_ACTIONS = ['kms:CreateAlias', 'kms:UpdateAlias', 'kms:DeleteAlias'];

const call = (op: string, req: Record<string, unknown>, caller: Caller = root): Promise<Record<string, any>> => kms.core.call(op, req, caller);
const failure = (p: Promise<unknown>): Promise<{ awsName?: string; message: string } | undefined> => p.then(() => undefined, (e: { awsName?: string; message: string }) => e);

async function user(name: string, policy?: string): Promise<Caller> {
  await kms.identities.createUser(name);
  if (policy) await kms.identities.attachPolicy(`user/${name}`, 'p', policy);
  const uid = 2000 + Object.keys(users).length;
  await kms.identities.mapUid(uid, `user/${name}`);
  return (users[name] = kms.identities.callerForUid(uid));
}

beforeAll(async () => {
  t = tempDir('ebsd-alias-authz-');
  kms = await openTestKms(t.dir);
  root = kms.identities.callerForUid(0);
  ({ KeyId: k1, Arn: k1Arn } = (await call('CreateKey', {})).KeyMetadata);
  k2 = (await call('CreateKey', {})).KeyMetadata.KeyId;
  // Allowed on the keys only (as was enough before), on the keys and the team-* aliases, on the aliases only.
  await user('keyonly', doc({ Effect: 'Allow', Action: ALIAS_ACTIONS, Resource: KEY_ARNS }));
  await user('both', doc({ Effect: 'Allow', Action: ALIAS_ACTIONS, Resource: [KEY_ARNS, TEAM_ALIASES] }));
  await user('aliasonly', doc({ Effect: 'Allow', Action: ALIAS_ACTIONS, Resource: TEAM_ALIASES }));
  await user('lister', doc({ Effect: 'Allow', Action: 'kms:ListAliases', Resource: '*' }));
  await user('keylister', doc({ Effect: 'Allow', Action: 'kms:ListAliases', Resource: KEY_ARNS }));
}, 60_000);

afterAll(async () => {
  await kms?.close();
  t?.cleanup();
});

describe('CreateAlias, UpdateAlias, DeleteAlias: the permission on the alias (IAM) and on the key(s) (key policy)', () => {
  it('CreateAlias: allowed on the key alone is not enough; the denial names the alias ARN', async () => {
    const e = await failure(call('CreateAlias', { AliasName: 'alias/team-a', TargetKeyId: k1 }, users.keyonly));
    expect(e).toMatchObject({
      awsName: 'AccessDeniedException',
      message: `User: ${users.keyonly!.arn} is not authorized to perform: kms:CreateAlias on resource: arn:aws:kms:${REGION}:${ACCT}:alias/team-a because no identity-based policy allows the kms:CreateAlias action`,
    });
    expect(await awsName(call('CreateAlias', { AliasName: 'alias/team-a', TargetKeyId: k1 }, users.aliasonly))).toBe('AccessDeniedException');
    expect(await awsName(call('CreateAlias', { AliasName: 'alias/other-a', TargetKeyId: k1 }, users.both))).toBe('AccessDeniedException');
    await call('CreateAlias', { AliasName: 'alias/team-a', TargetKeyId: k1 }, users.both);
    await call('CreateAlias', { AliasName: 'alias/root-made', TargetKeyId: k1 }); // the account root needs no identity policy
  });

  it('a key policy naming the user is the key half only: without an identity policy on the alias, CreateAlias is denied', async () => {
    const direct = await user('direct');
    const k = (await call('CreateKey', {
      Policy: doc(
        { Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${ACCT}:root` }, Action: 'kms:*', Resource: '*' },
        { Effect: 'Allow', Principal: { AWS: direct.arn }, Action: 'kms:CreateAlias', Resource: '*' },
      ),
    })).KeyMetadata.KeyId as string;
    expect(await awsName(call('CreateAlias', { AliasName: 'alias/direct-a', TargetKeyId: k }, direct))).toBe('AccessDeniedException');
    await kms.identities.attachPolicy(`user/${direct.userName}`, 'alias', doc({ Effect: 'Allow', Action: 'kms:CreateAlias', Resource: `arn:aws:kms:${REGION}:${ACCT}:alias/direct-*` }));
    await call('CreateAlias', { AliasName: 'alias/direct-a', TargetKeyId: k }, direct);
  });

  it('UpdateAlias and DeleteAlias: the same two halves', async () => {
    expect(await awsName(call('UpdateAlias', { AliasName: 'alias/team-a', TargetKeyId: k2 }, users.keyonly))).toBe('AccessDeniedException');
    expect(await awsName(call('UpdateAlias', { AliasName: 'alias/team-a', TargetKeyId: k2 }, users.aliasonly))).toBe('AccessDeniedException');
    await call('UpdateAlias', { AliasName: 'alias/team-a', TargetKeyId: k2 }, users.both);
    expect(await awsName(call('DeleteAlias', { AliasName: 'alias/team-a' }, users.keyonly))).toBe('AccessDeniedException');
    expect(await awsName(call('DeleteAlias', { AliasName: 'alias/team-a' }, users.aliasonly))).toBe('AccessDeniedException');
    await call('DeleteAlias', { AliasName: 'alias/team-a' }, users.both);
    expect((await call('ListAliases', {})).Aliases.map((a: { AliasName: string }) => a.AliasName)).not.toContain('alias/team-a');
  });
});

describe('ListAliases: kms:ListAliases from an identity policy, on *, then filtered by KeyId', () => {
  const names = (r: Record<string, any>): string[] => r.Aliases.map((a: { AliasName: string }) => a.AliasName);

  it('a key whose policy does not name the caller: its aliases are listed all the same', async () => {
    const bob = await user('bob');
    const k = (await call('CreateKey', {
      Policy: doc({ Effect: 'Allow', Principal: { AWS: bob.arn }, Action: 'kms:*', Resource: '*' }), BypassPolicyLockoutSafetyCheck: true,
    })).KeyMetadata.KeyId as string;
    expect(await awsName(call('CreateAlias', { AliasName: 'alias/bobs', TargetKeyId: k }, bob))).toBe('AccessDeniedException');
    await kms.identities.attachPolicy(`user/${bob.userName}`, 'alias', doc({ Effect: 'Allow', Action: 'kms:CreateAlias', Resource: '*' }));
    await call('CreateAlias', { AliasName: 'alias/bobs', TargetKeyId: k }, bob);
    expect(names(await call('ListAliases', { KeyId: k }, users.lister))).toEqual(['alias/bobs']);
    expect(names(await call('ListAliases', { KeyId: k1 }, users.lister))).toEqual(['alias/root-made']);
  });

  it('an identity policy allowing it only on key ARNs does not allow it, KeyId or not', async () => {
    expect(await awsName(call('ListAliases', { KeyId: k1Arn }, users.keylister))).toBe('AccessDeniedException');
    expect(await awsName(call('ListAliases', {}, users.keylister))).toBe('AccessDeniedException');
  });
});
