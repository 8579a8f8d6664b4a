/**
 * Access keys with a real HSM (inline engine, sealed domain in a temp dir) and real identities:
 * a key belongs to the user it was made for, by the user's unique id, so a key left behind when
 * its user was deleted (a crash between DeleteUser's writes, or a file from before DeleteUser
 * refused users with keys) never signs for a later user of the same name.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SignatureV4 } from '@smithy/signature-v4';
import { startHsm, type Hsm } from '../../src/kms/hsm/hsm-client.js';
import { Identities } from '../../src/kms/authz/identities.js';
import { ACCESS_KEYS_FILE, AccessKeyStore } from '../../src/kms/sts/access-keys.js';
import { TrustPolicies } from '../../src/kms/sts/trust-policies.js';
import { StsService } from '../../src/kms/sts/sts-service.js';
import { SigV4Verifier } from '../../src/kms/sigv4/verifier.js';
import type { Caller } from '../../src/kms/types.js';
import { tempDir, TEST_SCRYPT } from '../kms/helpers.js';
import { Sha256 } from './smithy-sha256.js';
import { printSeedOnFailure, seeded } from '../crypto/seeded.js';

describe('access keys', () => {
  printSeedOnFailure();
  const t = tempDir('ebsd-access-keys-');
  let hsm: Hsm;
  const t0 = Date.UTC(2026, 10, 30, 6, 0, 0);
  /** A fresh state dir per test, sharing the one HSM (its secrets are sealed under the same domain key). */
  let n = 0;
  const stateDir = (): string => {
    const d = join(t.dir, `s${n++}`);
    mkdirSync(d);
    return d;
  };

  const request = async (c: { accessKeyId: string; secretAccessKey: string }) => {
    const signed = await new SignatureV4({ credentials: c, region: 'us-east-1', service: 'kms', sha256: Sha256 }).sign({
      method: 'POST', protocol: 'https:', hostname: 'kms.local', path: '/', query: {},
      headers: { host: 'kms.local', 'x-amz-target': 'TrentService.ListKeys' }, body: '{}',
    }, { signingDate: new Date(t0) });
    return { method: 'POST', target: '/', headers: Object.entries(signed.headers as Record<string, string>), body: Buffer.from('{}') };
  };
  const verify = async (ids: Identities, keys: AccessKeyStore, dir: string, c: { AccessKeyId: string; SecretAccessKey: string }) => {
    const sts = new StsService(ids, keys, await TrustPolicies.open(dir, ids), hsm);
    const v = new SigV4Verifier<Caller>({ region: 'us-east-1', services: ['kms'], credentials: sts.credentials, now: () => t0 });
    return v.verify(await request({ accessKeyId: c.AccessKeyId, secretAccessKey: c.SecretAccessKey }));
  };

  beforeAll(async () => {
    hsm = await startHsm({ stateDir: t.dir, passphrase: 'test', scryptCost: TEST_SCRYPT }, 'inline');
  });
  afterAll(async () => {
    await hsm?.close();
    t.cleanup();
  });

  it('a user with an access key cannot be deleted: DeleteConflictException, as IAM answers', async () => {
    const dir = stateDir();
    const ids = await Identities.open(dir, { region: 'us-east-1' });
    const keys = await AccessKeyStore.open(dir, hsm, ids);
    await ids.createUser('bob');
    const k = await keys.create('bob');
    expect(() => keys.assertNoKeys('bob')).toThrow(expect.objectContaining({ awsName: 'DeleteConflictException', message: 'Cannot delete entity, must delete access keys first.' }));
    await keys.update(k.AccessKeyId, 'Inactive'); // an inactive key is still the user's
    expect(() => keys.assertNoKeys('bob')).toThrow(expect.objectContaining({ awsName: 'DeleteConflictException' }));
    await keys.delete(k.AccessKeyId);
    expect(() => keys.assertNoKeys('bob')).not.toThrow();
    expect(() => keys.assertNoKeys('nobody')).not.toThrow(); // DeleteUser then answers NoSuchEntity
  });

  it('a key whose user was deleted does not sign for a user created later under the same name, nor count as one of its keys', async () => {
    const dir = stateDir();
    const ids = await Identities.open(dir, { region: 'us-east-1' });
    const keys = await AccessKeyStore.open(dir, hsm, ids);
    const old = await ids.createUser('bob');
    const k = await keys.create('bob');
    expect((await verify(ids, keys, dir, k)).principal.principalId).toBe(old.principalId);
    // DeleteUser's identities.json write done, the keys left (a crash, or a state dir from before the rule).
    await ids.deleteUser('bob');
    const fresh = await ids.createUser('bob');
    expect(fresh.principalId).not.toBe(old.principalId);
    for (const store of [keys, await AccessKeyStore.open(dir, hsm, ids)]) { // as it runs, and after a restart
      await expect(verify(ids, store, dir, k)).rejects.toMatchObject({ awsName: 'UnrecognizedClientException' });
      expect(store.list('bob')).toEqual([]);
      expect(store.list()).toEqual([]);
      expect(store.get(k.AccessKeyId)).toBeUndefined();
      await expect(store.update(k.AccessKeyId, 'Active', 'bob')).rejects.toMatchObject({ awsName: 'NoSuchEntityException' });
      expect(() => store.assertNoKeys('bob')).not.toThrow();
    }
    // The new bob has his full quota, and his own keys sign as him.
    const reopened = await AccessKeyStore.open(dir, hsm, ids);
    const mine = [await reopened.create('bob'), await reopened.create('bob')];
    expect((await verify(ids, reopened, dir, mine[0]!)).principal.principalId).toBe(fresh.principalId);
    // The dead key was dropped from the file when the store was opened.
    expect(readFileSync(join(dir, ACCESS_KEYS_FILE), 'utf8')).not.toContain(k.AccessKeyId);
  });

  it('a key file written before user ids binds each key, when opened, to the user then of its name; a key of no user is dropped', async () => {
    const dir = stateDir();
    const ids = await Identities.open(dir, { region: 'us-east-1' });
    const carol = await ids.createUser('carol');
    const keys = await AccessKeyStore.open(dir, hsm, ids);
    const kept = await keys.create('carol');
    await ids.createUser('dave');
    const gone = await keys.create('dave');
    await ids.deleteUser('dave');
    // The file as the store wrote it before UserId.
    const file = join(dir, ACCESS_KEYS_FILE);
    const doc = JSON.parse(readFileSync(file, 'utf8')) as { AccessKeys: Record<string, unknown>[] };
    for (const r of doc.AccessKeys) delete r.UserId;
    writeFileSync(file, JSON.stringify(doc));
    const migrated = await AccessKeyStore.open(dir, hsm, ids);
    expect(migrated.list().map((x) => x.AccessKeyId)).toEqual([kept.AccessKeyId]);
    expect((await verify(ids, migrated, dir, kept)).principal.principalId).toBe(carol.principalId);
    const onDisk = JSON.parse(readFileSync(file, 'utf8')) as { AccessKeys: Record<string, unknown>[] };
    expect(onDisk.AccessKeys).toEqual([expect.objectContaining({ AccessKeyId: kept.AccessKeyId, UserName: 'carol', UserId: carol.principalId })]);
    expect(JSON.stringify(onDisk)).not.toContain(gone.AccessKeyId);
  });

  it('concurrent UpdateAccessKey and DeleteAccessKey calls: the file reopened holds the final state, no deleted key back, no status undone', async () => {
    const rnd = seeded('access-key writes');
    const dir = stateDir();
    const ids = await Identities.open(dir, { region: 'us-east-1' });
    const keys = await AccessKeyStore.open(dir, hsm, ids);
    for (let round = 0; round < 8; round++) {
      const made: string[] = [];
      for (let u = 0; u < 4; u++) {
        await ids.createUser(`r${round}u${u}`);
        for (let i = 0; i < 2; i++) made.push((await keys.create(`r${round}u${u}`)).AccessKeyId);
      }
      // Every key changed at once: deleted, deactivated, or deactivated and then activated again.
      await Promise.all(made.map((id) => {
        const r = rnd.int(10);
        if (r < 4) return keys.delete(id);
        if (r < 7) return keys.update(id, 'Inactive');
        return Promise.all([keys.update(id, 'Inactive'), keys.update(id, 'Active')]);
      }));
      const reopened = await AccessKeyStore.open(dir, hsm, ids);
      const byId = (a: { AccessKeyId: string }, b: { AccessKeyId: string }): number => a.AccessKeyId.localeCompare(b.AccessKeyId);
      expect(reopened.list().sort(byId), `round ${round}`).toEqual(keys.list().sort(byId));
    }
  });

  it('concurrent CreateAccessKey calls for one user: exactly two succeed, the others LimitExceededException; DeleteUser is refused while one is under way', async () => {
    const dir = stateDir();
    const ids = await Identities.open(dir, { region: 'us-east-1' });
    const keys = await AccessKeyStore.open(dir, hsm, ids);
    await ids.createUser('erin');
    const creates = [keys.create('erin'), keys.create('erin'), keys.create('erin'), keys.create('erin')];
    // The HSM is drawing the secrets: no key is stored yet, but the user is not deletable.
    expect(keys.list('erin')).toEqual([]);
    expect(() => keys.assertNoKeys('erin')).toThrow(expect.objectContaining({ awsName: 'DeleteConflictException' }));
    const r = await Promise.allSettled(creates);
    expect(r.filter((x) => x.status === 'fulfilled')).toHaveLength(2);
    for (const x of r.filter((y): y is PromiseRejectedResult => y.status === 'rejected')) {
      expect(x.reason).toMatchObject({ awsName: 'LimitExceededException', message: 'Cannot exceed quota for AccessKeysPerUser: 2' });
    }
    expect(keys.list('erin')).toHaveLength(2);
    expect((await AccessKeyStore.open(dir, hsm, ids)).list('erin')).toHaveLength(2);
    // The reservations are released: with a key deleted, a slot is free again.
    await keys.delete(keys.list('erin')[0]!.AccessKeyId);
    await expect(keys.create('erin')).resolves.toMatchObject({ UserName: 'erin' });
  });

  it('CreateAccessKey for a user that does not exist: NoSuchEntityException', async () => {
    const dir = stateDir();
    const ids = await Identities.open(dir, { region: 'us-east-1' });
    const keys = await AccessKeyStore.open(dir, hsm, ids);
    await expect(keys.create('ghost')).rejects.toMatchObject({ awsName: 'NoSuchEntityException' });
  });
});

