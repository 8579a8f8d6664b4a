import { closeSync, openSync, readFileSync, readSync, writeSync, fsyncSync } from 'node:fs';
import { seededBytes, printSeedOnFailure } from '../crypto/seeded.js';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';
/** Random payloads replay under EBSD_TEST_SEED (test/crypto/seeded.ts); a failure prints the seed. */
const randomBytes = seededBytes('e2e/access');
printSeedOnFailure();

const MiB = 1024 * 1024;
const NOBODY = 65534;

describe('access, concurrency and secrecy through the real daemon', () => {
  const env = new Env('access');

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
  });
  afterAll(() => env.cleanup());

  it('serves concurrent CLI calls and two attached volumes at once; detach is refused while open', async () => {
    const created = await Promise.all([
      env.ok(['volume', 'create', '--size', '16MiB', '--name', 'a']),
      env.ok(['volume', 'create', '--size', '16MiB', '--name', 'b']),
      env.ok(['kms', 'create-key', '--description', 'concurrent']),
      env.ok(['status']),
    ]);
    const [a, b] = [created[0].VolumeId as string, created[1].VolumeId as string];
    await Promise.all([env.ok(['attach', a]), env.ok(['attach', b])]);
    const da = randomBytes(MiB);
    const db = randomBytes(MiB);
    const fa = openSync(env.file(a), 'r+');
    const fb = openSync(env.file(b), 'r+');
    try {
      writeSync(fa, da, 0, da.length, 3 * MiB);
      writeSync(fb, db, 0, db.length, 3 * MiB);
      fsyncSync(fa);
      fsyncSync(fb);
      const r = await env.cli(['detach', a]);
      expect(r.code).toBe(6);
      expect(r.stderr).toMatch(/^ebsd: VolumeInUse: .*open/);
      const ba = Buffer.alloc(MiB);
      const bb = Buffer.alloc(MiB);
      readSync(fa, ba, 0, MiB, 3 * MiB);
      readSync(fb, bb, 0, MiB, 3 * MiB);
      expect(ba.equals(da)).toBe(true);
      expect(bb.equals(db)).toBe(true);
    } finally {
      closeSync(fa);
      closeSync(fb);
    }
    await env.untilClosed(a, b);
    await Promise.all([env.ok(['detach', a]), env.ok(['detach', b])]);
    const ls = await env.api('ebsd.DescribeVolumes');
    expect(ls.Volumes.filter((v: { State: string }) => v.State === 'available')).toHaveLength(2);
  });

  it('denies an unmapped uid everything and audits the denial; a mapped uid gets in', async () => {
    const st = await env.cli(['status'], { uid: NOBODY });
    expect(st.code).toBe(4);
    expect(st.stderr).toMatch(/^ebsd: AccessDeniedException: .*uid\/65534/);
    const k = await env.cli(['kms', 'list-keys'], { uid: NOBODY });
    expect(k.code).toBe(4);
    // An EC2 operation is refused as EC2 refuses one, as for a mapped user without a policy.
    const v = await env.cli(['volume', 'create', '--size', '4MiB'], { uid: NOBODY });
    expect(v.code).toBe(4);
    expect(v.stderr).toMatch(/^ebsd: UnauthorizedOperation: You are not authorized to perform this operation\. .*uid\/65534.*ec2:CreateVolume.*not mapped/);
    const events = readFileSync(join(env.state, 'kms', 'audit', 'events.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const mine = events.filter((e) => String(e.userIdentity?.arn).endsWith(':uid/65534'));
    expect(mine.filter((e) => e.errorCode === 'AccessDeniedException').map((e) => e.eventName)).toEqual(expect.arrayContaining(['Status', 'ListKeys']));
    expect(mine.filter((e) => e.errorCode === 'Client.UnauthorizedOperation').map((e) => e.eventName)).toContain('CreateVolume');

    await env.api('ebsd.IamCreateUser', { UserName: 'nobody-user' });
    await env.api('ebsd.IamMapUid', { Uid: NOBODY, Principal: 'user/nobody-user' });
    const ok = await env.cli(['status', '--output', 'json'], { uid: NOBODY });
    expect(ok.code).toBe(0);
    expect(ok.json().Caller.Arn).toMatch(/:user\/nobody-user$/);
    // A mapped user is still not the account root: IAM is refused.
    const iam = await env.cli(['iam', 'list-users'], { uid: NOBODY });
    expect(iam.code).toBe(4);
  });

  it('plaintext volumes are refused by a daemon started without --allow-unencrypted; the daemon-wide --cipher is gone', async () => {
    const r = await env.cli(['volume', 'create', '--size', '4MiB', '--cipher', 'none']);
    expect(r.code).toBe(7);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^ebsd: OperationNotPermitted: .*UNENCRYPTED.*--allow-unencrypted/);
    const d = await env.cli(['daemon', '--state-dir', join(env.dir, 'other'), '--mount', join(env.dir, 'mnt-other'), '--cipher', 'none']);
    expect(d.code).toBe(2);
    expect(d.stderr).toMatch(/no longer takes --cipher.*volume create --cipher none/);
  });

  it('every error is one line with the AWS exception name and the documented exit code', async () => {
    const key = await env.api('TrentService.CreateKey', { Description: 'errors' });
    const { writeFileSync } = await import('node:fs');
    const enc = await env.api('TrentService.Encrypt', { KeyId: key.KeyMetadata.KeyId, Plaintext: Buffer.from('not secret').toString('base64'), EncryptionContext: { purpose: 'a' } });
    writeFileSync(join(env.dir, 'ct-err.bin'), Buffer.from(enc.CiphertextBlob, 'base64'));
    const cases: [string[], number, RegExp][] = [
      [['volume', 'create', '--size', '3MiB+1'], 7, /^ebsd: InvalidParameterValue: Invalid value '3MiB\+1' for Size/],
      [['volume', 'create', '--size', '3000'], 7, /^ebsd: InvalidParameterValue: .*1 MiB/],
      [['volume', 'create', '--size', '16MiB', '--kms-key', 'alias/no-such-key'], 5, /^ebsd: NotFoundException: .*alias\/no-such-key/],
      [['detach', 'vol-0123456789abcdef0'], 5, /^ebsd: InvalidVolume\.NotFound: .*vol-0123456789abcdef0/],
      [['volume', 'delete', 'vol-nope'], 5, /^ebsd: InvalidVolumeID\.Malformed: /],
      [['kms', 'decrypt', '--ciphertext-blob', `fileb://${join(env.dir, 'ct-err.bin')}`, '--encryption-context', 'purpose=b'], 7, /^ebsd: InvalidCiphertextException: /],
      [['kms', 'describe-key', '--key-id', 'alias/missing'], 5, /^ebsd: NotFoundException: /],
      [['volume', 'create', '--size', '4MiB', '--cipher', 'none', '--kms-key', 'alias/x'], 2, /^ebsd: --kms-key cannot be combined with --cipher none/],
    ];
    for (const [args, code, re] of cases) {
      const r = await env.cli(args);
      expect(r.code, `ebsd ${args.join(' ')}: ${r.stderr}`).toBe(code);
      expect(r.stderr.trim().split('\n'), `ebsd ${args.join(' ')}`).toHaveLength(1);
      expect(r.stderr, `ebsd ${args.join(' ')}`).toMatch(re);
      expect(r.stdout).toBe('');
    }
  });

  it('a known key written through a full KMS + attach/IO/detach cycle appears in no log, audit line, CLI output or image', async () => {
    const known = randomBytes(64);
    const keyFile = join(env.dir, 'known.key');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(keyFile, known, { mode: 0o600 });
    const key = await env.api('TrentService.CreateKey', { Description: 'secrecy' });
    const enc = await env.ok(['kms', 'encrypt', '--key-id', key.KeyMetadata.KeyId, '--plaintext', `fileb://${keyFile}`, '--encryption-context', 'purpose=test']);
    writeFileSync(join(env.dir, 'ct.bin'), Buffer.from(enc.CiphertextBlob, 'base64'));
    const re = await env.ok(['kms', 're-encrypt', '--ciphertext-blob', `fileb://${join(env.dir, 'ct.bin')}`, '--source-encryption-context', 'purpose=test', '--destination-key-id', key.KeyMetadata.KeyId]);
    expect(re.CiphertextBlob).toBeTruthy();

    const vol = (await env.api('ebsd.CreateVolume', { Size: '8MiB', KmsKeyId: key.KeyMetadata.Arn })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, known, 0, known.length, 5 * 4096 + 100);
      fsyncSync(fd);
      const back = Buffer.alloc(64);
      readSync(fd, back, 0, 64, 5 * 4096 + 100);
      expect(back.equals(known)).toBe(true);
    } finally {
      closeSync(fd);
    }
    await env.untilClosed(vol);
    await env.api('ebsd.DetachVolume', { VolumeId: vol, Force: false });
    expect((await env.api('ebsd.AuditVerify')).ok).toBe(true);


    const forms = [known.toString('hex'), known.toString('base64'), known.subarray(0, 24).toString('base64').slice(0, 30), known.toString('base64url')];
    const haystacks: [string, string][] = [
      ['daemon log', env.daemonLog()],
      ['audit log', env.auditText()],
      ['CLI output', env.outputs.join('\n')],
    ];
    for (const [what, text] of haystacks) for (const f of forms) expect(text.includes(f), `${what} contains the key`).toBe(false);
    const image = readFileSync(join(env.state, 'volumes', `${vol}.img`));
    expect(image.includes(known), 'volume image holds the plaintext').toBe(false);
  });
});
