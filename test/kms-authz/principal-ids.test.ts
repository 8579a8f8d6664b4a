/**
 * Key policies and role trust policies bind the users and roles they name to the principals'
 * unique ids (src/kms/authz/principal-bindings.ts, docs/architecture.md §5.4), through the real
 * KMS core (HSM inline, keystore, dispatcher), real identities, trust store and STS: a principal
 * deleted and created again under the same name gets nothing its predecessor was given, until
 * the policy is saved again; the bindings survive a reopen; policies stored before bindings
 * are bound when opened.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Kms } from '../../src/kms/open-kms.js';
import type { Caller } from '../../src/kms/types.js';
import { AccessKeyStore } from '../../src/kms/sts/access-keys.js';
import { TrustPolicies, TRUST_FILE } from '../../src/kms/sts/trust-policies.js';
import { StsService } from '../../src/kms/sts/sts-service.js';
import { ACCT, OTHER, REGION, awsName, doc, openTestKms, tempDir } from './helpers.js';
import { openKms } from '../../src/kms/open-kms.js';
import { createLogger } from '../../src/util/logger.js';
import type { TempDir } from '../helpers/temp-dir.js';

const ROOT = `arn:aws:iam::${ACCT}:root`;
const USE = ['kms:Encrypt', 'kms:DescribeKey'];
const rootAdmin = { Sid: 'admin', Effect: 'Allow', Principal: { AWS: ROOT }, Action: 'kms:*', Resource: '*' };
const allow = (arn: string, Sid = 'use'): Record<string, unknown> => ({ Sid, Effect: 'Allow', Principal: { AWS: arn }, Action: USE, Resource: '*' });

const opened: { kms?: Kms; t: TempDir }[] = [];
afterEach(async () => {
  for (const o of opened.splice(0)) {
    await o.kms?.close();
    o.t.cleanup();
  }
});

/** A fresh KMS (and its dir), closed and removed after the test. */
async function fresh(): Promise<{ kms: Kms; dir: string; slot: { kms?: Kms; t: TempDir } }> {
  const t = tempDir('ebsd-principal-ids-');
  const slot: { kms?: Kms; t: TempDir } = { t };
  opened.push(slot);
  slot.kms = await openTestKms(t.dir);
  return { kms: slot.kms, dir: t.dir, slot };
}

const root = (kms: Kms): Caller => kms.identities.callerForUid(0);
const userCaller = (kms: Kms, name: string): Caller => kms.identities.callerFor(kms.identities.userArn(name))!;
const useKey = (kms: Kms, keyId: string, caller: Caller): Promise<string> =>
  awsName(kms.core.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('x') }, caller));
const keyWith = async (kms: Kms, ...statements: unknown[]): Promise<string> =>
  ((await kms.core.call('CreateKey', { Policy: doc(...statements) }, root(kms))).KeyMetadata as { KeyId: string }).KeyId;
const shown = async (kms: Kms, keyId: string): Promise<string> => (await kms.core.call('GetKeyPolicy', { KeyId: keyId }, root(kms))).Policy as string;
const userId = (kms: Kms, name: string): string => kms.identities.listUsers().find((u) => u.UserName === name)!.UserId;
const roleId = (kms: Kms, name: string): string => kms.identities.listRoles().find((r) => r.RoleName === name)!.RoleId;

async function recreateUser(kms: Kms, name: string): Promise<Caller> {
  await kms.identities.deleteUser(name);
  return kms.identities.createUser(name);
}

/** Rewrite a stored key record as one written before bindings existed (no `policyPrincipals`). */
function stripBindings(dir: string, keyId: string): void {
  const f = join(dir, 'kms', 'keys', `${keyId}.json`);
  const r = JSON.parse(readFileSync(f, 'utf8')) as Record<string, unknown>;
  delete r.policyPrincipals;
  writeFileSync(f, JSON.stringify(r));
}
const storedBindings = (dir: string, keyId: string): unknown =>
  (JSON.parse(readFileSync(join(dir, 'kms', 'keys', `${keyId}.json`), 'utf8')) as { policyPrincipals?: unknown }).policyPrincipals;

describe('key policies bind users and roles to their unique ids', () => {
  it('a user deleted and created again under its name is refused; the same statement for an existing user still allows; GetKeyPolicy shows the old AIDA id; PutKeyPolicy binds the new user', async () => {
    const { kms } = await fresh();
    const ids = kms.identities;
    await ids.createUser('alice');
    await ids.createUser('bob');
    const policy = doc(rootAdmin, allow(ids.userArn('alice'), 'alice'), allow(ids.userArn('bob'), 'bob'));
    const keyId = ((await kms.core.call('CreateKey', { Policy: policy }, root(kms))).KeyMetadata as { KeyId: string }).KeyId;
    expect(await useKey(kms, keyId, userCaller(kms, 'alice'))).toBe('no error');
    expect(await shown(kms, keyId)).toBe(policy); // every bound principal exists: exactly as saved

    const oldId = userId(kms, 'alice');
    const alice2 = await recreateUser(kms, 'alice');
    expect(alice2.principalId).not.toBe(oldId);
    expect(await useKey(kms, keyId, alice2)).toBe('AccessDeniedException');
    expect(await useKey(kms, keyId, userCaller(kms, 'bob'))).toBe('no error');

    // As AWS shows a deleted principal: its ARN replaced by the unique id it was bound to, nothing else changed.
    const after = JSON.parse(await shown(kms, keyId));
    expect(after.Statement.map((s: { Principal: { AWS: string } }) => s.Principal.AWS)).toEqual([ROOT, oldId, ids.userArn('bob')]);
    expect(after).toEqual({ ...JSON.parse(policy), Statement: JSON.parse(policy).Statement.map((s: { Sid: string }) => (s.Sid === 'alice' ? { ...s, Principal: { AWS: oldId } } : s)) });

    // The id as shown is not accepted back: it names nobody.
    await expect(kms.core.call('PutKeyPolicy', { KeyId: keyId, Policy: JSON.stringify(after) }, root(kms)))
      .rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException', message: expect.stringContaining(oldId) });
    // Saving the policy with the ARN again binds it to the new alice.
    await kms.core.call('PutKeyPolicy', { KeyId: keyId, Policy: policy }, root(kms));
    expect(await useKey(kms, keyId, alice2)).toBe('no error');
    expect(await shown(kms, keyId)).toBe(policy);
  });

  it('fails closed where matching by id alone would give a re-created principal more: a Deny still reaches it, an Allow\'s NotPrincipal still excludes it; a Deny\'s NotPrincipal exempts only the bound one', async () => {
    const { kms } = await fresh();
    const ids = kms.identities;
    for (const u of ['alice', 'carol', 'dave']) await ids.createUser(u);
    const anyone = { Sid: 'anyone', Effect: 'Allow', Principal: { AWS: '*' }, Action: USE, Resource: '*' };
    const denyAlice = await keyWith(kms, rootAdmin, anyone, { Effect: 'Deny', Principal: { AWS: ids.userArn('alice') }, Action: USE, Resource: '*' });
    const allButCarol = await keyWith(kms, rootAdmin, { Effect: 'Allow', NotPrincipal: { AWS: ids.userArn('carol') }, Action: USE, Resource: '*' });
    const onlyDave = await keyWith(kms, rootAdmin, anyone, { Effect: 'Deny', NotPrincipal: { AWS: [ROOT, ids.userArn('dave')] }, Action: USE, Resource: '*' });
    expect(await useKey(kms, denyAlice, userCaller(kms, 'alice'))).toBe('AccessDeniedException');
    expect(await useKey(kms, allButCarol, userCaller(kms, 'carol'))).toBe('AccessDeniedException');
    expect(await useKey(kms, allButCarol, userCaller(kms, 'alice'))).toBe('no error');
    expect(await useKey(kms, onlyDave, userCaller(kms, 'dave'))).toBe('no error');
    expect(await useKey(kms, onlyDave, userCaller(kms, 'alice'))).toBe('AccessDeniedException');

    const alice2 = await recreateUser(kms, 'alice');
    const carol2 = await recreateUser(kms, 'carol');
    const dave2 = await recreateUser(kms, 'dave');
    expect(await useKey(kms, denyAlice, alice2)).toBe('AccessDeniedException');
    expect(await useKey(kms, allButCarol, carol2)).toBe('AccessDeniedException');
    expect(await useKey(kms, onlyDave, dave2)).toBe('AccessDeniedException');
  });

  it('a key policy naming a role covers the sessions of the role it was bound to, not those of a role created again under the name, until it is saved again', async () => {
    const { kms } = await fresh();
    const ids = kms.identities;
    await ids.createRole('app', { path: '/svc/' });
    await ids.createRole('ops');
    const policy = doc(rootAdmin, allow(ids.roleArn('app'), 'app'), allow(ids.roleArn('ops'), 'ops'));
    const keyId = await keyWith(kms, ...JSON.parse(policy).Statement);
    expect(await useKey(kms, keyId, ids.assumeRole('app', 'job-1'))).toBe('no error');

    const oldId = roleId(kms, 'app');
    await ids.deleteRole('app');
    await ids.createRole('app', { path: '/svc/' });
    expect(await useKey(kms, keyId, ids.assumeRole('app', 'job-1'))).toBe('AccessDeniedException');
    expect(await useKey(kms, keyId, ids.assumeRole('ops', 'job-1'))).toBe('no error');
    expect(JSON.parse(await shown(kms, keyId)).Statement[1].Principal.AWS).toBe(oldId);

    await kms.core.call('PutKeyPolicy', { KeyId: keyId, Policy: policy }, root(kms));
    expect(await useKey(kms, keyId, ids.assumeRole('app', 'job-1'))).toBe('no error');
  });

  it('a key policy may name a session of a role with a path (the session ARN carries no path): accepted, and it covers that session only', async () => {
    const { kms } = await fresh();
    const ids = kms.identities;
    await ids.createRole('app', { path: '/svc/' });
    const job1 = ids.assumeRole('app', 'job-1');
    expect(job1.arn).toBe(`arn:aws:sts::${ACCT}:assumed-role/app/job-1`);
    const keyId = await keyWith(kms, rootAdmin, allow(job1.arn, 'job1'));
    expect(await useKey(kms, keyId, job1)).toBe('no error');
    expect(await useKey(kms, keyId, ids.assumeRole('app', 'job-2'))).toBe('AccessDeniedException');
    // A session of a role that does not exist is still refused.
    await expect(keyWith(kms, rootAdmin, allow(`arn:aws:sts::${ACCT}:assumed-role/nope/job-1`, 'nope'))).rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException' });
  });

  it('bindings persist: a principal re-created while the KMS is closed, or after a reopen, is still refused', async () => {
    const { kms, dir, slot } = await fresh();
    await kms.identities.createUser('alice');
    await kms.identities.createUser('erin');
    const keyId = await keyWith(kms, rootAdmin, allow(kms.identities.userArn('alice')), allow(kms.identities.userArn('erin'), 'erin'));
    const aliceId = userId(kms, 'alice');
    expect(storedBindings(dir, keyId)).toEqual({ [kms.identities.userArn('alice')]: aliceId, [kms.identities.userArn('erin')]: userId(kms, 'erin') });
    await recreateUser(kms, 'alice');
    await kms.close();

    // Reopened from its state dir: the stored binding is read back, not made again against the new alice.
    const k2 = slot.kms = await openTestKms(dir);
    expect(await useKey(k2, keyId, userCaller(k2, 'alice'))).toBe('AccessDeniedException');
    expect(JSON.parse(await shown(k2, keyId)).Statement[1].Principal.AWS).toBe(aliceId);
    expect(await useKey(k2, keyId, userCaller(k2, 'erin'))).toBe('no error');
    await recreateUser(k2, 'erin');
    expect(await useKey(k2, keyId, userCaller(k2, 'erin'))).toBe('AccessDeniedException');
  });

  it('a key policy stored without bindings is bound when the KMS opens, to the principals existing then, and written back', async () => {
    const { kms, dir, slot } = await fresh();
    const ids = kms.identities;
    for (const u of ['alice', 'ghost']) await ids.createUser(u);
    await ids.createRole('app');
    const policy = doc(rootAdmin, allow(ids.userArn('alice')), allow(ids.roleArn('app'), 'app'), allow(ids.userArn('ghost'), 'ghost'));
    const keyId = await keyWith(kms, ...JSON.parse(policy).Statement);
    const plain = await keyWith(kms, rootAdmin); // names no user or role: nothing to bind
    await ids.deleteUser('ghost'); // gone before the upgrade: its name binds to nobody
    await kms.close();
    stripBindings(dir, keyId);
    expect(storedBindings(dir, keyId)).toBeUndefined();

    const k2 = slot.kms = await openTestKms(dir);
    // Same access as before for the principals that exist.
    expect(await useKey(k2, keyId, userCaller(k2, 'alice'))).toBe('no error');
    expect(await useKey(k2, keyId, k2.identities.assumeRole('app', 's1'))).toBe('no error');
    expect(storedBindings(dir, keyId)).toEqual({
      [k2.identities.userArn('alice')]: userId(k2, 'alice'), [k2.identities.roleArn('app')]: roleId(k2, 'app'), [k2.identities.userArn('ghost')]: '',
    });
    expect(storedBindings(dir, plain)).toBeUndefined();
    // Bound now: a principal created under a bound name afterwards gets nothing, nor one under the name that bound to nobody.
    expect(await useKey(k2, keyId, await recreateUser(k2, 'alice'))).toBe('AccessDeniedException');
    expect(await useKey(k2, keyId, await k2.identities.createUser('ghost'))).toBe('AccessDeniedException');
    // A name bound to nobody has no id to show: it stays as written.
    expect(JSON.parse(await shown(k2, keyId)).Statement[3].Principal.AWS).toBe(k2.identities.userArn('ghost'));
    expect(readdirSync(join(dir, 'kms', 'keys')).filter((f) => !f.endsWith('.json'))).toEqual([]); // no temp file left
  });
});

describe('key policy bindings out of step with the text', () => {
  it('a user of the account named in the text but missing from the stored bindings gets nothing, never whoever holds the name', async () => {
    const { kms, dir, slot } = await fresh();
    const ids = kms.identities;
    for (const u of ['alice', 'bob']) await ids.createUser(u);
    const keyId = await keyWith(kms, rootAdmin, allow(ids.userArn('alice')));
    await kms.close();
    // An older binary's PutKeyPolicy replaced the text and kept the record's bindings (alice only).
    const f = join(dir, 'kms', 'keys', `${keyId}.json`);
    const r = JSON.parse(readFileSync(f, 'utf8')) as Record<string, unknown>;
    r.policy = doc(rootAdmin, allow(`arn:aws:iam::${ACCT}:user/alice`), allow(`arn:aws:iam::${ACCT}:user/bob`, 'bob'), allow('arn:aws:iam::111122223333:root', 'other'));
    writeFileSync(f, JSON.stringify(r));

    const k2 = slot.kms = await openTestKms(dir);
    expect(await useKey(k2, keyId, userCaller(k2, 'alice'))).toBe('no error');
    expect(await useKey(k2, keyId, userCaller(k2, 'bob'))).toBe('AccessDeniedException');
    // Put again, the policy binds bob.
    await k2.core.call('PutKeyPolicy', { KeyId: keyId, PolicyName: 'default', Policy: r.policy }, root(k2));
    expect(await useKey(k2, keyId, userCaller(k2, 'bob'))).toBe('no error');
  });
});

describe('role trust policies bind users and roles to their unique ids', () => {
  async function stsOver(kms: Kms, dir: string): Promise<{ trust: TrustPolicies; sts: StsService }> {
    const trust = await TrustPolicies.open(dir, kms.identities);
    return { trust, sts: new StsService(kms.identities, await AccessKeyStore.open(dir, kms.core.hsm, kms.identities), trust, kms.core.hsm) };
  }
  const assume = (kms: Kms, sts: StsService, caller: Caller, role: string): Promise<string> =>
    awsName(sts.assumeRole(caller, { RoleArn: kms.identities.roleArn(role), RoleSessionName: 'job-1' }));
  const trustDoc = (...arns: string[]): string => JSON.stringify({ Version: '2012-10-17', Statement: arns.map((a) => ({ Effect: 'Allow', Principal: { AWS: a }, Action: 'sts:AssumeRole' })) });

  it('a re-created user or caller role is refused AssumeRole; the stored policy shows the old id; putting it again binds the new one; ids and unknown principals are refused when put', async () => {
    const { kms, dir } = await fresh();
    const ids = kms.identities;
    await ids.createUser('alice');
    await ids.createUser('bob');
    await ids.createRole('target');
    await ids.createRole('caller');
    const { trust, sts } = await stsOver(kms, dir);
    const policy = trustDoc(ids.userArn('alice'), ids.userArn('bob'), ids.roleArn('caller'));
    await trust.put('target', policy);
    expect(await assume(kms, sts, userCaller(kms, 'alice'), 'target')).toBe('no error');
    expect(await assume(kms, sts, ids.assumeRole('caller', 'hop'), 'target')).toBe('no error');
    expect(trust.get('target')).toBe(policy);

    const aliceId = userId(kms, 'alice');
    const callerId = roleId(kms, 'caller');
    const alice2 = await recreateUser(kms, 'alice');
    await ids.deleteRole('caller');
    await ids.createRole('caller');
    expect(await assume(kms, sts, alice2, 'target')).toBe('AccessDenied');
    expect(await assume(kms, sts, ids.assumeRole('caller', 'hop'), 'target')).toBe('AccessDenied');
    expect(await assume(kms, sts, userCaller(kms, 'bob'), 'target')).toBe('no error');
    expect(JSON.parse(trust.get('target')!).Statement.map((s: { Principal: { AWS: string } }) => s.Principal.AWS)).toEqual([aliceId, ids.userArn('bob'), callerId]);

    await expect(trust.put('target', trust.get('target')!)).rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException', message: expect.stringContaining(aliceId) });
    await expect(trust.put('target', trustDoc(ids.userArn('nobody')))).rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException', message: expect.stringContaining('user/nobody') });
    await trust.put('target', policy);
    expect(await assume(kms, sts, alice2, 'target')).toBe('no error');
    expect(await assume(kms, sts, ids.assumeRole('caller', 'hop'), 'target')).toBe('no error');
  });

  it('trust bindings persist across a reopen, and a trust file written before bindings is bound when opened', async () => {
    const { kms, dir } = await fresh();
    const ids = kms.identities;
    for (const u of ['alice', 'bob']) await ids.createUser(u);
    for (const r of ['kept', 'legacy']) await ids.createRole(r);
    const first = await stsOver(kms, dir);
    await first.trust.put('kept', trustDoc(ids.userArn('alice')));
    // `legacy` as a file written before bindings holds it: the document only.
    const file = join(dir, TRUST_FILE);
    const data = JSON.parse(readFileSync(file, 'utf8')) as { Roles: Record<string, string>; Principals: Record<string, unknown> };
    data.Roles.legacy = trustDoc(ids.userArn('bob'));
    writeFileSync(file, JSON.stringify(data));
    expect(data.Principals).toEqual({ kept: { [ids.userArn('alice')]: userId(kms, 'alice') } });

    const bobId = userId(kms, 'bob');
    const alice2 = await recreateUser(kms, 'alice');
    const { sts } = await stsOver(kms, dir); // reopened from the file
    expect(await assume(kms, sts, alice2, 'kept')).toBe('AccessDenied');
    expect(await assume(kms, sts, userCaller(kms, 'bob'), 'legacy')).toBe('no error'); // bound to the bob existing now
    expect((JSON.parse(readFileSync(file, 'utf8')) as { Principals: Record<string, unknown> }).Principals.legacy).toEqual({ [ids.userArn('bob')]: bobId });
    const bob2 = await recreateUser(kms, 'bob');
    expect(await assume(kms, (await stsOver(kms, dir)).sts, bob2, 'legacy')).toBe('AccessDenied');
  });

  it('a trust policy belongs to the role it was put on: a role created again under the name starts with none, though DeleteRole\'s trust write was lost', async () => {
    const { kms, dir } = await fresh();
    const ids = kms.identities;
    await ids.createUser('alice');
    await ids.createRole('app');
    const { trust, sts } = await stsOver(kms, dir);
    const policy = trustDoc(ids.userArn('alice'));
    await trust.put('app', policy);
    expect(await assume(kms, sts, userCaller(kms, 'alice'), 'app')).toBe('no error');
    const oldId = roleId(kms, 'app');
    // DeleteRole: identities.json written, role-trust.json not (a crash, ENOSPC); then a new role of the name.
    await ids.deleteRole('app');
    await ids.createRole('app');
    expect(roleId(kms, 'app')).not.toBe(oldId);
    const file = join(dir, TRUST_FILE);
    expect((JSON.parse(readFileSync(file, 'utf8')) as { RoleIds: Record<string, string> }).RoleIds).toEqual({ app: oldId });
    for (const t of [trust, (await stsOver(kms, dir)).trust]) { // as it runs, and reopened
      expect(t.get('app')).toBeUndefined();
      expect(t.allows('app', userCaller(kms, 'alice'))).toBe(false);
    }
    expect(await assume(kms, sts, userCaller(kms, 'alice'), 'app')).toBe('AccessDenied');
    expect(JSON.parse(readFileSync(file, 'utf8'))).toEqual({ Roles: {}, RoleIds: {} }); // dropped when reopened
    // Its own trust policy, put on the new role, is the one that counts.
    const { trust: t2, sts: s2 } = await stsOver(kms, dir);
    await t2.put('app', policy);
    expect(await assume(kms, s2, userCaller(kms, 'alice'), 'app')).toBe('no error');
    await expect(t2.put('nosuch', policy)).rejects.toMatchObject({ awsName: 'NoSuchEntityException' });
  });

  it('concurrent trust-policy puts and deletes: the file reopened holds the final state, no deleted or replaced document back', async () => {
    const { kms, dir } = await fresh();
    const ids = kms.identities;
    await ids.createUser('alice');
    await ids.createUser('bob');
    const roles = Array.from({ length: 12 }, (_, i) => `r${i}`);
    for (const r of roles) await ids.createRole(r);
    const { trust } = await stsOver(kms, dir);
    for (let round = 0; round < 6; round++) {
      await Promise.all(roles.map((r) => trust.put(r, trustDoc(ids.userArn('alice')))));
      // At once: every other role's document deleted, the rest replaced twice (the second one last).
      await Promise.all(roles.map((r, i) => (i % 2 === 0 ? trust.delete(r)
        : Promise.all([trust.put(r, trustDoc(ids.userArn('alice'), ids.userArn('bob'))), trust.put(r, trustDoc(ids.userArn('bob')))]))));
      const reopened = (await stsOver(kms, dir)).trust;
      expect(roles.map((r) => reopened.get(r)), `round ${round}`).toEqual(roles.map((r) => trust.get(r)));
      expect(roles.map((r) => trust.get(r))).toEqual(roles.map((_, i) => (i % 2 === 0 ? undefined : trustDoc(ids.userArn('bob')))));
    }
  });

  it('a trust file written before role ids binds each document, when opened, to the role then of its name; a document of no role is dropped', async () => {
    const { kms, dir } = await fresh();
    const ids = kms.identities;
    await ids.createUser('alice');
    await ids.createRole('app');
    const file = join(dir, TRUST_FILE);
    writeFileSync(file, JSON.stringify({ Roles: { app: trustDoc(ids.userArn('alice')), gone: trustDoc(ids.userArn('alice')) } }));
    const { sts } = await stsOver(kms, dir);
    expect(await assume(kms, sts, userCaller(kms, 'alice'), 'app')).toBe('no error');
    const data = JSON.parse(readFileSync(file, 'utf8')) as { Roles: Record<string, string>; RoleIds: Record<string, string> };
    expect(Object.keys(data.Roles)).toEqual(['app']);
    expect(data.RoleIds).toEqual({ app: roleId(kms, 'app') });
  });
});

describe('grants bind their grantee and retiring principals to their principal ids', () => {
  interface Made { GrantId: string; GrantToken: string }
  interface Listed { GrantId: string; GranteePrincipal: string; RetiringPrincipal?: string }
  /** A key only the account may use (default policy, no identity policies): a grant is the callers' only way in. */
  async function keyAndBlob(kms: Kms): Promise<{ keyArn: string; blob: Uint8Array }> {
    const keyArn = ((await kms.core.call('CreateKey', {}, root(kms))).KeyMetadata as { Arn: string }).Arn;
    const blob = (await kms.core.call('Encrypt', { KeyId: keyArn, Plaintext: Buffer.from('secret') }, root(kms))).CiphertextBlob as Uint8Array;
    return { keyArn, blob };
  }
  const grant = async (kms: Kms, keyArn: string, grantee: string, retiring?: string, extra: Record<string, unknown> = {}): Promise<Made> =>
    (await kms.core.call('CreateGrant', { KeyId: keyArn, GranteePrincipal: grantee, ...(retiring ? { RetiringPrincipal: retiring } : {}), Operations: ['Decrypt'], ...extra }, root(kms))) as unknown as Made;
  const decrypt = (kms: Kms, blob: Uint8Array, caller: Caller): Promise<string> => awsName(kms.core.call('Decrypt', { CiphertextBlob: blob }, caller));
  const retire = (kms: Kms, keyArn: string, g: Made, caller: Caller, byToken = false): Promise<string> =>
    awsName(kms.core.call('RetireGrant', byToken ? { GrantToken: g.GrantToken } : { KeyId: keyArn, GrantId: g.GrantId }, caller));
  const listed = async (kms: Kms, keyArn: string, extra: Record<string, unknown> = {}): Promise<Listed[]> =>
    (await kms.core.call('ListGrants', { KeyId: keyArn, ...extra }, root(kms))).Grants as Listed[];
  /** GrantIds sorted: two grants made in the same second are listed in GrantId order, which is random. */
  const retirable = async (kms: Kms, principal: string): Promise<string[]> =>
    ((await kms.core.call('ListRetirableGrants', { RetiringPrincipal: principal }, root(kms))).Grants as Listed[]).map((g) => g.GrantId).sort();
  const grantIds = (...gs: Made[]): string[] => gs.map((g) => g.GrantId).sort();
  const grantsFile = (dir: string): { grants: Record<string, unknown>[] } => JSON.parse(readFileSync(join(dir, 'kms', 'grants.json'), 'utf8'));

  it('a user deleted and created again under its name: Decrypt through the grant and RetireGrant as its retiring principal are refused; ListGrants / ListRetirableGrants show the old AIDA id', async () => {
    const { kms } = await fresh();
    const ids = kms.identities;
    for (const u of ['alice', 'bob']) await ids.createUser(u);
    const { keyArn, blob } = await keyAndBlob(kms);
    const alice = ids.userArn('alice');
    const bob = ids.userArn('bob');
    const own = await grant(kms, keyArn, alice, alice, { Name: 'alice-decrypt' }); // alice: grantee and retiring principal
    const bobs = await grant(kms, keyArn, bob, alice); // alice retires bob's grant
    expect(await decrypt(kms, blob, userCaller(kms, 'alice'))).toBe('no error');
    expect(await retirable(kms, alice)).toEqual(grantIds(own, bobs));

    const oldId = userId(kms, 'alice');
    const alice2 = await recreateUser(kms, 'alice');
    expect(await decrypt(kms, blob, alice2)).toBe('AccessDeniedException');
    expect(await decrypt(kms, blob, userCaller(kms, 'bob'))).toBe('no error'); // bob's own grant is untouched
    for (const g of [own, bobs]) {
      expect(await retire(kms, keyArn, g, alice2)).toBe('AccessDeniedException');
      expect(await retire(kms, keyArn, g, alice2, true)).toBe('AccessDeniedException');
    }
    // Listed as AWS lists a grant whose principal was deleted: the id it was bound to in place of the ARN.
    const l = await listed(kms, keyArn);
    expect(l).toHaveLength(2);
    expect(l.find((g) => g.GrantId === own.GrantId)).toMatchObject({ GranteePrincipal: oldId, RetiringPrincipal: oldId });
    expect(l.find((g) => g.GrantId === bobs.GrantId)).toMatchObject({ GranteePrincipal: bob, RetiringPrincipal: oldId });
    expect((await listed(kms, keyArn, { GranteePrincipal: alice }))).toEqual([]);
    expect((await listed(kms, keyArn, { GranteePrincipal: oldId })).map((g) => g.GrantId)).toEqual([own.GrantId]);
    expect(await retirable(kms, alice)).toEqual([]);
    expect(await retirable(kms, oldId)).toEqual(grantIds(own, bobs));

    // The same Name and properties for the new alice is another grantee: a new grant, not the old one again.
    const fresh2 = await grant(kms, keyArn, alice, alice, { Name: 'alice-decrypt' });
    expect(fresh2.GrantId).not.toBe(own.GrantId);
    expect(await decrypt(kms, blob, alice2)).toBe('no error');
    expect(await retirable(kms, alice)).toEqual([fresh2.GrantId]);
    expect(await retire(kms, keyArn, fresh2, alice2)).toBe('no error');
    // The account that made them still retires the orphaned ones.
    expect(await retire(kms, keyArn, own, root(kms))).toBe('no error');
    expect(await retire(kms, keyArn, bobs, root(kms), true)).toBe('no error');
    expect(await listed(kms, keyArn)).toEqual([]);
  });

  it('a role deleted and created again: its new sessions get nothing from a grant to the role\'s ARN or to a session ARN, and may not retire it; the grant is listed with the old AROA id', async () => {
    const { kms } = await fresh();
    const ids = kms.identities;
    await ids.createRole('app', { path: '/svc/' });
    await ids.createRole('ops');
    const { keyArn, blob } = await keyAndBlob(kms);
    const app = ids.roleArn('app');
    const toRole = await grant(kms, keyArn, app, app, { Operations: ['Decrypt', 'RetireGrant'] });
    const toSession = await grant(kms, keyArn, ids.sessionArn('app', 'job-1'));
    const opsGrant = await grant(kms, keyArn, ids.roleArn('ops'), app);
    expect(await decrypt(kms, blob, ids.assumeRole('app', 'job-2'))).toBe('no error');

    const oldId = roleId(kms, 'app');
    await ids.deleteRole('app');
    await ids.createRole('app', { path: '/svc/' });
    for (const s of ['job-1', 'job-2']) expect(await decrypt(kms, blob, ids.assumeRole('app', s))).toBe('AccessDeniedException');
    expect(await decrypt(kms, blob, ids.assumeRole('ops', 'x1'))).toBe('no error');
    for (const g of [toRole, opsGrant]) expect(await retire(kms, keyArn, g, ids.assumeRole('app', 'job-1'))).toBe('AccessDeniedException');
    expect(await retire(kms, keyArn, toSession, ids.assumeRole('app', 'job-1'))).toBe('AccessDeniedException');
    const l = await listed(kms, keyArn);
    expect(l.find((g) => g.GrantId === toRole.GrantId)).toMatchObject({ GranteePrincipal: oldId, RetiringPrincipal: oldId });
    expect(l.find((g) => g.GrantId === opsGrant.GrantId)).toMatchObject({ GranteePrincipal: ids.roleArn('ops'), RetiringPrincipal: oldId });
    expect(l.find((g) => g.GrantId === toSession.GrantId)).toMatchObject({ GranteePrincipal: ids.sessionArn('app', 'job-1') }); // a session ARN is listed as written
    expect(await retirable(kms, app)).toEqual([]);

    // A grant made to the new role is bound to it and covers its sessions.
    const again = await grant(kms, keyArn, app, app);
    expect(await decrypt(kms, blob, ids.assumeRole('app', 'job-1'))).toBe('no error');
    expect(await retire(kms, keyArn, again, ids.assumeRole('app', 'job-3'))).toBe('no error');
    expect(await decrypt(kms, blob, ids.assumeRole('app', 'job-1'))).toBe('AccessDeniedException');
  });

  it('bindings persist across a restart; grants stored before bindings are bound when the KMS opens, to the principals existing then, and written back', async () => {
    const { kms, dir, slot } = await fresh();
    const ids = kms.identities;
    for (const u of ['alice', 'erin', 'ghost']) await ids.createUser(u);
    await ids.createRole('app');
    const { keyArn, blob } = await keyAndBlob(kms);
    const kept = await grant(kms, keyArn, ids.userArn('alice'), ids.userArn('alice'));
    const aliceId = userId(kms, 'alice');
    expect(grantsFile(dir).grants[0]).toMatchObject({ granteeId: aliceId, retiringId: aliceId });
    await kms.close();

    // Restarted: the binding is read back, not made again against an alice created since.
    let k2 = slot.kms = await openTestKms(dir);
    const alice2 = await recreateUser(k2, 'alice');
    expect(await decrypt(k2, blob, alice2)).toBe('AccessDeniedException');
    expect(await retire(k2, keyArn, kept, alice2)).toBe('AccessDeniedException');
    expect((await listed(k2, keyArn))[0]).toMatchObject({ GranteePrincipal: aliceId, RetiringPrincipal: aliceId });

    // Grants as a binary before bindings wrote them: no ids.
    const erin = await grant(k2, keyArn, k2.identities.userArn('erin'), k2.identities.roleArn('app'));
    const ghost = await grant(k2, keyArn, k2.identities.userArn('ghost'));
    const toRoot = await grant(k2, keyArn, `arn:aws:iam::${ACCT}:root`);
    await k2.identities.deleteUser('ghost'); // gone before the upgrade: its ARN binds to nobody
    await k2.close();
    const f = grantsFile(dir);
    for (const g of f.grants) { delete g.granteeId; delete g.retiringId; }
    writeFileSync(join(dir, 'kms', 'grants.json'), JSON.stringify({ ...f }));

    k2 = slot.kms = await openTestKms(dir);
    const byId = new Map(grantsFile(dir).grants.map((g) => [g.GrantId as string, g]));
    // Bound to whoever holds each ARN at the upgrade: the re-created alice, erin, the role, nobody for ghost; the root is not bound.
    expect(byId.get(kept.GrantId)).toMatchObject({ granteeId: userId(k2, 'alice'), retiringId: userId(k2, 'alice') });
    expect(byId.get(erin.GrantId)).toMatchObject({ granteeId: userId(k2, 'erin'), retiringId: roleId(k2, 'app') });
    expect(byId.get(ghost.GrantId)).toMatchObject({ granteeId: '' });
    expect(byId.get(toRoot.GrantId)).not.toHaveProperty('granteeId');
    // Same access as before the upgrade for the principals that exist.
    expect(await decrypt(k2, blob, userCaller(k2, 'erin'))).toBe('no error');
    expect(await decrypt(k2, blob, userCaller(k2, 'alice'))).toBe('no error');
    // Bound now: a principal created afterwards under a bound name gets nothing, nor one under the name that bound to nobody.
    expect(await decrypt(k2, blob, await recreateUser(k2, 'erin'))).toBe('AccessDeniedException');
    expect(await decrypt(k2, blob, await k2.identities.createUser('ghost'))).toBe('AccessDeniedException');
    expect((await listed(k2, keyArn)).find((g) => g.GrantId === ghost.GrantId)).toMatchObject({ GranteePrincipal: k2.identities.userArn('ghost') });
    await k2.identities.deleteRole('app');
    await k2.identities.createRole('app');
    expect(await retire(k2, keyArn, erin, k2.identities.assumeRole('app', 's1'))).toBe('AccessDeniedException');
    expect(readdirSync(join(dir, 'kms')).filter((n) => n.includes('.tmp'))).toEqual([]);
  });

  it('a grant to a session ARN serves that session: job-1 decrypts through it, job-2 of the same role is refused; job-1 retires it as its retiring principal', async () => {
    const { kms } = await fresh();
    const ids = kms.identities;
    await ids.createRole('app');
    const { keyArn, blob } = await keyAndBlob(kms); // default policy: the session grant is the sessions' only way in
    const job1 = ids.sessionArn('app', 'job-1');
    const g = await grant(kms, keyArn, job1, job1);
    expect(await decrypt(kms, blob, ids.assumeRole('app', 'job-1'))).toBe('no error');
    expect(await decrypt(kms, blob, ids.assumeRole('app', 'job-2'))).toBe('AccessDeniedException');
    expect(await retirable(kms, job1)).toEqual([g.GrantId]);
    expect(await retire(kms, keyArn, g, ids.assumeRole('app', 'job-2'))).toBe('AccessDeniedException');
    expect(await retire(kms, keyArn, g, ids.assumeRole('app', 'job-1'))).toBe('no error');
    expect(await decrypt(kms, blob, ids.assumeRole('app', 'job-1'))).toBe('AccessDeniedException');
  });

  it('a user, role or session ARN of the account in another partition is refused as a principal that does not exist is; a key policy Deny on kms:GranteePrincipal is not got around through one', async () => {
    const { kms } = await fresh();
    const ids = kms.identities;
    await ids.createRole('app');
    for (const u of ['alice', 'delegate']) await ids.createUser(u);
    const cn = (arn: string): string => arn.replace(/^arn:aws:/, 'arn:aws-cn:');
    const target = ids.sessionArn('app', 'admin');
    const policy = doc(rootAdmin,
      { Sid: 'delegate', Effect: 'Allow', Principal: { AWS: ids.userArn('delegate') }, Action: 'kms:CreateGrant', Resource: '*' },
      { Sid: 'never-admin', Effect: 'Deny', Principal: { AWS: '*' }, Action: 'kms:CreateGrant', Resource: '*', Condition: { StringEquals: { 'kms:GranteePrincipal': target } } });
    const keyArn = ((await kms.core.call('CreateKey', { Policy: policy }, root(kms))).KeyMetadata as { Arn: string }).Arn;
    const blob = (await kms.core.call('Encrypt', { KeyId: keyArn, Plaintext: Buffer.from('s') }, root(kms))).CiphertextBlob as Uint8Array;
    const refusal = async (member: 'GranteePrincipal' | 'RetiringPrincipal', arn: string, caller = root(kms)): Promise<unknown> => {
      const req = { KeyId: keyArn, GranteePrincipal: ids.userArn('alice'), [member]: arn, Operations: ['Decrypt'] };
      return kms.core.call('CreateGrant', req, caller).then(() => 'no error', (e: unknown) => e);
    };
    // The answer for a principal of the account that does not exist, which the other partition's are to it.
    const nobody = ids.userArn('nobody');
    const none = await refusal('GranteePrincipal', nobody) as { awsName: string; message: string };
    expect(none).toMatchObject({ awsName: 'ValidationException', message: expect.stringContaining(nobody) });
    for (const arn of [cn(target), cn(ids.roleArn('app')), cn(ids.userArn('alice'))]) {
      for (const member of ['GranteePrincipal', 'RetiringPrincipal'] as const) {
        expect(await refusal(member, arn), `${member} ${arn}`).toMatchObject({ awsName: 'ValidationException', message: none.message.replace(nobody, arn).replace('GranteePrincipal', member) });
      }
    }
    // Through the delegate: the real ARN is denied by the key policy, the other partition's spelling refused.
    const delegate = userCaller(kms, 'delegate');
    expect(await awsName(kms.core.call('CreateGrant', { KeyId: keyArn, GranteePrincipal: target, Operations: ['Decrypt'] }, delegate))).toBe('AccessDeniedException');
    expect(await refusal('GranteePrincipal', cn(target), delegate)).toMatchObject({ awsName: 'ValidationException' });
    expect(await decrypt(kms, blob, ids.assumeRole('app', 'admin'))).toBe('AccessDeniedException');
    expect(await listed(kms, keyArn)).toEqual([]);
    // A key policy naming one is refused as one naming a principal that does not exist.
    for (const p of [nobody, cn(ids.userArn('alice'))]) {
      await expect(kms.core.call('PutKeyPolicy', { KeyId: keyArn, Policy: doc(rootAdmin, allow(p)) }, root(kms)))
        .rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException', message: expect.stringContaining(p) });
    }
  });

  it('a root ARN of another partition is refused as GranteePrincipal or RetiringPrincipal, naming the member; another account\'s root of this partition is a grantee', async () => {
    const { kms } = await fresh();
    const { keyArn } = await keyAndBlob(kms);
    const ownRoot = `arn:aws:iam::${ACCT}:root`;
    for (const arn of [`arn:aws-cn:iam::${ACCT}:root`, `arn:aws-us-gov:iam::${OTHER}:root`]) {
      for (const member of ['GranteePrincipal', 'RetiringPrincipal'] as const) {
        const err = await kms.core.call('CreateGrant', { KeyId: keyArn, GranteePrincipal: ownRoot, [member]: arn, Operations: ['Decrypt'] }, root(kms)).catch((e: unknown) => e);
        expect(err, `${member} ${arn}`).toMatchObject({ awsName: 'ValidationException', message: expect.stringContaining(`${member} "${arn}"`) });
      }
    }
    expect(await listed(kms, keyArn)).toEqual([]);
    const other = `arn:aws:iam::${OTHER}:root`;
    await kms.core.call('CreateGrant', { KeyId: keyArn, GranteePrincipal: other, RetiringPrincipal: ownRoot, Operations: ['Decrypt'] }, root(kms));
    expect((await listed(kms, keyArn)).length).toBe(1);
  });

  it('stored grants naming another partition\'s ARNs bind to nobody when the KMS opens (also a session one the first version of bindings bound to the local session); the count is logged', async () => {
    const { kms, dir, slot } = await fresh();
    const ids = kms.identities;
    await ids.createRole('app');
    for (const u of ['alice', 'ghost']) await ids.createUser(u);
    const { keyArn, blob } = await keyAndBlob(kms);
    const admin = ids.sessionArn('app', 'admin');
    const crossBound = await grant(kms, keyArn, admin, admin); // to be spelt aws-cn with its ids kept, as the first version of bindings stored it
    const toRole = await grant(kms, keyArn, ids.roleArn('app'));
    const toUser = await grant(kms, keyArn, ids.userArn('alice'));
    const kept = await grant(kms, keyArn, ids.userArn('alice'), ids.userArn('ghost'));
    await ids.deleteUser('ghost'); // gone before the upgrade: kept's retiring principal binds to nobody
    await kms.close();
    const f = grantsFile(dir);
    const cn = (arn: string): string => arn.replace(/^arn:aws:/, 'arn:aws-cn:');
    for (const g of f.grants) {
      if (g.GrantId === crossBound.GrantId) {
        expect(g).toMatchObject({ granteeId: `${roleId(kms, 'app')}:admin`, retiringId: `${roleId(kms, 'app')}:admin` });
        g.GranteePrincipal = cn(admin);
        g.RetiringPrincipal = cn(admin);
      } else {
        delete g.granteeId; delete g.retiringId; // as a binary before bindings wrote them
        if (g.GrantId !== kept.GrantId) g.GranteePrincipal = cn(g.GranteePrincipal as string);
      }
    }
    writeFileSync(join(dir, 'kms', 'grants.json'), JSON.stringify(f));

    const logged: Record<string, unknown>[] = [];
    const logger = createLogger({ level: 'info', destination: { write: (l: string) => { logged.push(JSON.parse(l) as Record<string, unknown>); } } });
    const k2 = slot.kms = await openKms({ stateDir: dir, accountId: ACCT, region: REGION, hsmMode: 'inline', passphrase: 'test-passphrase', scryptCost: { N: 2 ** 10, r: 8, p: 1 }, logger });
    const byId = new Map(grantsFile(dir).grants.map((g) => [g.GrantId as string, g]));
    expect(byId.get(crossBound.GrantId)).toMatchObject({ granteeId: '', retiringId: '' });
    expect(byId.get(toRole.GrantId)).toMatchObject({ granteeId: '' });
    expect(byId.get(toUser.GrantId)).toMatchObject({ granteeId: '' });
    expect(byId.get(kept.GrantId)).toMatchObject({ granteeId: userId(k2, 'alice'), retiringId: '' });
    expect(k2.grants.migration).toEqual({ bound: 4, nobody: 4 });
    expect(logged.filter((l) => l.level === 40)).toEqual([expect.objectContaining({ grants: 4, msg: expect.stringContaining('bound to nobody') })]);
    expect(logged.filter((l) => l.level === 30 && l.grants === 4)).toHaveLength(1);

    // Only kept serves anyone: alice. The admin session gets nothing from the aws-cn grants, nor may retire one.
    expect(await decrypt(k2, blob, userCaller(k2, 'alice'))).toBe('no error');
    for (const s of ['admin', 'job-9']) expect(await decrypt(k2, blob, k2.identities.assumeRole('app', s))).toBe('AccessDeniedException');
    expect(await retire(k2, keyArn, crossBound, k2.identities.assumeRole('app', 'admin'))).toBe('AccessDeniedException');
    expect(await retirable(k2, cn(admin))).toEqual([]);
    // A retiring principal bound to nobody is not listed for its ARN, whose holder now may not retire it.
    const ghost2 = await k2.identities.createUser('ghost');
    expect(await retirable(k2, k2.identities.userArn('ghost'))).toEqual([]);
    expect(await retire(k2, keyArn, kept, ghost2)).toBe('AccessDeniedException');
    await k2.close();
    // Bound once: nothing to bind at the next open.
    const k3 = slot.kms = await openTestKms(dir);
    expect(k3.grants.migration).toEqual({ bound: 0, nobody: 0 });
  });

  it('ListRetirableGrants for a session ARN lists only grants its session now may retire: one bound to a session of a role since created again is listed under its AROA…:session id', async () => {
    const { kms } = await fresh();
    const ids = kms.identities;
    await ids.createRole('app');
    await ids.createUser('alice');
    const { keyArn } = await keyAndBlob(kms);
    const job1 = ids.sessionArn('app', 'job-1');
    const g = await grant(kms, keyArn, ids.userArn('alice'), job1);
    expect(await retirable(kms, job1)).toEqual([g.GrantId]);
    const oldId = roleId(kms, 'app');
    await ids.deleteRole('app');
    expect(await retirable(kms, job1)).toEqual([]);
    await ids.createRole('app');
    expect(await retirable(kms, job1)).toEqual([]);
    expect(await retire(kms, keyArn, g, ids.assumeRole('app', 'job-1'))).toBe('AccessDeniedException');
    expect(await retirable(kms, `${oldId}:job-1`)).toEqual([g.GrantId]);
    // A grant made now for job-1 binds to the new role's session, and is listed for the ARN.
    const g2 = await grant(kms, keyArn, ids.userArn('alice'), job1);
    expect(await retirable(kms, job1)).toEqual([g2.GrantId]);
    expect(await retire(kms, keyArn, g2, ids.assumeRole('app', 'job-1'))).toBe('no error');
    expect(await retirable(kms, `${oldId}:job-1`)).toEqual([g.GrantId]);
  });
});
