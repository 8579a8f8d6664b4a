import { afterEach, describe, expect, it } from 'vitest';
import { statSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Identities, IamError } from '../../src/kms/authz/identities.js';
import { doc, tempDir } from './helpers.js';

let t: ReturnType<typeof tempDir>;
afterEach(() => t?.cleanup());

describe('identities', () => {
  it('init: 12-digit account, uid 0 -> root, file 0600', async () => {
    t = tempDir();
    const ids = await Identities.open(t.dir, { region: 'eu-west-1' });
    expect(ids.accountId).toMatch(/^\d{12}$/);
    expect(ids.region).toBe('eu-west-1');
    expect(ids.ec2ViaService).toBe('ec2.eu-west-1.amazonaws.com');
    const f = join(t.dir, 'identities.json');
    expect(statSync(f).mode & 0o777).toBe(0o600);
    expect(ids.callerForUid(0)).toMatchObject({ arn: `arn:aws:iam::${ids.accountId}:root`, type: 'Root', uid: 0 });
  });

  it('users, roles, uid mappings and policies survive a reopen', async () => {
    t = tempDir();
    const a = await Identities.open(t.dir, { accountId: '111122223333' });
    await a.createUser('alice');
    await a.createRole('EbsdHost', { path: '/service/' });
    await a.mapUid(1000, 'user/alice');
    await a.mapUid(1001, 'role/EbsdHost', { session: 'host-1' });
    await a.attachPolicy('user/alice', 'kms-use', doc({ Effect: 'Allow', Action: 'kms:Decrypt', Resource: '*' }));
    const b = await Identities.open(t.dir, { accountId: '999999999999' }); // existing file wins
    expect(b.accountId).toBe('111122223333');
    const alice = b.callerForUid(1000, { viaService: 'ec2.us-east-1.amazonaws.com' });
    expect(alice).toMatchObject({ type: 'IAMUser', userName: 'alice', arn: 'arn:aws:iam::111122223333:user/alice', viaService: 'ec2.us-east-1.amazonaws.com' });
    expect(alice.principalId).toMatch(/^AIDA[A-Z2-7]{17}$/);
    expect(b.identityPolicies(alice)).toHaveLength(1);
    const host = b.callerForUid(1001);
    expect(host).toMatchObject({ type: 'AssumedRole', arn: 'arn:aws:sts::111122223333:assumed-role/EbsdHost/host-1' });
    expect(b.principalExists('arn:aws:iam::111122223333:role/service/EbsdHost')).toBe(true);
    expect(b.principalExists('arn:aws:iam::111122223333:role/EbsdHost')).toBe(false); // wrong path
    expect(b.principalExists('arn:aws:iam::111122223333:user/bob')).toBe(false);
    await b.detachPolicy('user/alice', 'kms-use');
    expect(b.identityPolicies(alice)).toHaveLength(0);
    const raw = JSON.parse(readFileSync(join(t.dir, 'identities.json'), 'utf8'));
    expect(raw.uids['1000']).toEqual({ principal: 'arn:aws:iam::111122223333:user/alice' });
  });

  it('an unmapped uid is an Unknown caller no policy can name', async () => {
    t = tempDir();
    const ids = await Identities.open(t.dir, { accountId: '111122223333' });
    expect(ids.callerForUid(4242)).toEqual({ arn: 'arn:aws:iam::111122223333:uid/4242', accountId: '111122223333', type: 'Unknown', uid: 4242 });
    await ids.createUser('gone');
    await ids.mapUid(7, 'user/gone');
    await ids.deleteUser('gone');
    expect(ids.callerForUid(7).type).toBe('Unknown');
  });

  it('DeleteUser and DeleteRole are refused (DeleteConflictException) while inline policies are left, with nothing changed on disk', async () => {
    t = tempDir();
    const ids = await Identities.open(t.dir, { accountId: '111122223333' });
    await ids.createUser('alice');
    await ids.createRole('app');
    await ids.mapUid(1000, 'user/alice');
    await ids.mapUid(1001, 'role/app');
    await ids.attachPolicy('user/alice', 'p', doc({ Effect: 'Allow', Action: 'kms:Decrypt', Resource: '*' }));
    await ids.attachPolicy('role/app', 'p', doc({ Effect: 'Allow', Action: 'kms:Decrypt', Resource: '*' }));
    const file = join(t.dir, 'identities.json');
    const before = readFileSync(file, 'utf8');
    const generation = ids.generation;
    for (const refused of [ids.deleteUser('alice'), ids.deleteRole('app')]) {
      await expect(refused).rejects.toMatchObject({ code: 'IAM_DELETE_CONFLICT', awsName: 'DeleteConflictException', message: 'Cannot delete entity, must delete policies first.' });
    }
    expect(readFileSync(file, 'utf8')).toBe(before);
    expect(ids.generation).toBe(generation);
    expect(ids.callerForUid(1000)).toMatchObject({ type: 'IAMUser', userName: 'alice' });
    expect(ids.callerForUid(1001)).toMatchObject({ type: 'AssumedRole' });
    // Once the policies are deleted, each goes, its uid mapping with it.
    await ids.detachPolicy('user/alice', 'p');
    await ids.detachPolicy('role/app', 'p');
    await ids.deleteUser('alice');
    await ids.deleteRole('app');
    expect(ids.callerForUid(1000).type).toBe('Unknown');
    expect(ids.callerForUid(1001).type).toBe('Unknown');
    expect(ids.listUidMappings().map((m) => m.uid)).toEqual([0]);
  });

  it('IAM errors: duplicates, missing entities, malformed identity policies', async () => {
    t = tempDir();
    const ids = await Identities.open(t.dir, { accountId: '111122223333' });
    await ids.createUser('alice');
    await expect(ids.createUser('alice')).rejects.toMatchObject({ awsName: 'EntityAlreadyExistsException' });
    await expect(ids.mapUid(5, 'user/nobody')).rejects.toBeInstanceOf(IamError);
    await expect(ids.attachPolicy('user/alice', 'p', '{"Statement": []}')).rejects.toMatchObject({ awsName: 'MalformedPolicyDocumentException' });
    await expect(ids.attachPolicy('user/alice', 'p', doc({ Effect: 'Allow', Principal: '*', Action: 'kms:*', Resource: '*' }))).rejects.toThrow(/must not contain Principal/);
    await expect(ids.createUser('bad name')).rejects.toMatchObject({ awsName: 'InvalidInputException' });
    expect(() => ids.assumeRole('nope', 's1')).toThrow(/cannot be found/);
  });
});
