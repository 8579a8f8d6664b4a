import { describe, it, expect } from 'vitest';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { devLoaderUrl } from '../../src/kms/hsm/hsm-client.js';
import { generateKeyPairSync } from 'node:crypto';
import { chooseScryptCost, openDomain, SCRYPT_COST } from '../../src/kms/hsm/domain.js';
import { openKms, admin, tempDir, awsError, TEST_SCRYPT } from './helpers.js';

describe('HSM domain sealing', () => {
  it('KEK file is 0600; passphrase domain: wrong passphrase and tampered file are clear errors and change nothing', async () => {
    const t = tempDir();
    const a = join(t.dir, 'a');
    const k1 = await openKms(a);
    await k1.close();
    expect(statSync(join(a, 'hsm', 'kek')).mode & 0o777).toBe(0o600);
    await expect(openKms(a, { passphrase: 'x' })).rejects.toMatchObject({ code: 'HSM_KEK_SOURCE_MISMATCH' });

    const b = join(t.dir, 'b');
    const kms = await openKms(b, { passphrase: 'correct horse' });
    const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
    const e = await kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: Buffer.from('p') }, admin);
    await kms.close();
    const domainPath = join(b, 'hsm', 'domain.json');
    const before = readFileSync(domainPath);
    await expect(openKms(b, { passphrase: 'wrong' })).rejects.toMatchObject({ code: 'HSM_DOMAIN_UNSEAL_FAILED' });
    await expect(openKms(b)).rejects.toMatchObject({ code: 'HSM_KEK_SOURCE_MISMATCH' });
    expect(readFileSync(domainPath).equals(before)).toBe(true);
    const d = JSON.parse(before.toString());
    const s = Buffer.from(d.sealed, 'base64'); s[3]! ^= 1;
    writeFileSync(domainPath, JSON.stringify({ ...d, sealed: s.toString('base64') }));
    await expect(openKms(b, { passphrase: 'correct horse' })).rejects.toMatchObject({ code: 'HSM_DOMAIN_UNSEAL_FAILED' });
    writeFileSync(domainPath, '{trunc');
    await expect(openKms(b, { passphrase: 'correct horse' })).rejects.toMatchObject({ code: 'HSM_DOMAIN_CORRUPT' });
    writeFileSync(domainPath, before);
    const again = await openKms(b, { passphrase: 'correct horse' });
    expect(Buffer.from((await again.call('Decrypt', { CiphertextBlob: e.CiphertextBlob }, admin)).Plaintext as Uint8Array).toString()).toBe('p');
    await again.close();
    t.cleanup();
  }, 60_000);
});

describe('HSM domain audit public key', () => {
  // Review finding 2: domain.json's auditPublicKey is outside the GCM seal; the key must come from the sealed private key.
  it('a substituted auditPublicKey is refused (HSM_DOMAIN_CORRUPT naming file and field); the genuine one opens', () => {
    const t = tempDir();
    try {
      const first = openDomain(t.dir);
      const domainPath = join(t.dir, 'hsm', 'domain.json');
      const before = readFileSync(domainPath);
      const d = JSON.parse(before.toString());
      const forged = generateKeyPairSync('ed25519').publicKey.export({ format: 'pem', type: 'spki' }).toString();
      for (const bad of [forged, 'not a key', undefined]) {
        writeFileSync(domainPath, JSON.stringify({ ...d, auditPublicKey: bad }));
        let err: unknown;
        try {
          openDomain(t.dir);
        } catch (e) {
          err = e;
        }
        expect(err).toMatchObject({ code: 'HSM_DOMAIN_CORRUPT' });
        expect((err as Error).message).toContain(domainPath);
        expect((err as Error).message).toContain('auditPublicKey');
      }
      writeFileSync(domainPath, before);
      const again = openDomain(t.dir);
      expect(again.auditPublicKeyPem).toBe(first.auditPublicKeyPem);
      expect(again.auditPublicKeyPem).toBe(d.auditPublicKey);
    } finally {
      t.cleanup();
    }
  });
});

describe('scrypt cost of a passphrase domain', () => {
  it('production cost by default; a cheaper one only under a test runner; the domain records the cost it was sealed with', async () => {
    expect(SCRYPT_COST).toEqual({ N: 2 ** 15, r: 8, p: 1 });
    expect(chooseScryptCost(undefined, {})).toEqual({ N: 2 ** 15, r: 8, p: 1 });
    expect(() => chooseScryptCost(TEST_SCRYPT, {})).toThrow(RangeError);
    expect(() => chooseScryptCost({ N: 2 ** 15, r: 8, p: 0 }, {})).toThrow(RangeError);
    expect(() => chooseScryptCost({ N: 1000, r: 8, p: 1 }, { NODE_ENV: 'test' })).toThrow(/power of two/);
    expect(chooseScryptCost(TEST_SCRYPT, { NODE_ENV: 'test' })).toEqual(TEST_SCRYPT);
    expect(chooseScryptCost(TEST_SCRYPT, { VITEST: 'true' })).toEqual(TEST_SCRYPT);
    expect(chooseScryptCost({ N: 2 ** 16, r: 8, p: 1 }, {})).toEqual({ N: 2 ** 16, r: 8, p: 1 }); // stronger is always fine
    const t = tempDir();
    try {
      const kms = await openKms(t.dir, { passphrase: 'p', hsmMode: 'inline' });
      await kms.close();
      expect(JSON.parse(readFileSync(join(t.dir, 'hsm', 'domain.json'), 'utf8')).kdf).toMatchObject({ alg: 'scrypt', ...TEST_SCRYPT });
    } finally {
      t.cleanup();
    }
  });
});

describe('keystore', () => {
  it('a tampered key token or key file makes only that key unusable', async () => {
    const t = tempDir();
    let kms = await openKms(t.dir);
    const good = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
    const bad = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
    const worse = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
    await kms.close();
    const f = join(t.dir, 'keys', `${bad.KeyId}.json`);
    const r = JSON.parse(readFileSync(f, 'utf8'));
    const ekt = Buffer.from(r.materials[0].ekt, 'base64'); ekt[20]! ^= 0x40;
    r.materials[0].ekt = ekt.toString('base64');
    writeFileSync(f, JSON.stringify(r));
    writeFileSync(join(t.dir, 'keys', `${worse.KeyId}.json`), '{"half":');
    kms = await openKms(t.dir);
    const err = await kms.call('Encrypt', { KeyId: bad.KeyId, Plaintext: Buffer.from('x') }, admin).catch((e) => e);
    expect(err).toMatchObject({ awsName: 'KMSInternalException', code: 'KMS_KEY_MATERIAL_CORRUPT' });
    expect(err.message).toContain(bad.KeyId);
    expect(await kms.call('DescribeKey', { KeyId: worse.KeyId }, admin).catch((e) => e.code)).toBe('KMS_KEY_RECORD_CORRUPT');
    expect(await awsError(kms.call('Encrypt', { KeyId: good.KeyId, Plaintext: Buffer.from('x') }, admin))).toBe('no error');
    await kms.close();
    t.cleanup();
  }, 30_000);

  it('a key whose stored spec or usage is edited in its file is refused, naming the key; the token binds them', async () => {
    const t = tempDir();
    try {
      let kms = await openKms(t.dir, { hsmMode: 'inline' });
      const sym = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      const rsa = (await kms.call('CreateKey', { KeySpec: 'RSA_2048', KeyUsage: 'ENCRYPT_DECRYPT' }, admin)).KeyMetadata as { KeyId: string };
      const good = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      await kms.close();
      const edit = (id: string, fields: Record<string, string>): string => {
        const f = join(t.dir, 'keys', `${id}.json`);
        const r = JSON.parse(readFileSync(f, 'utf8'));
        writeFileSync(f, JSON.stringify({ ...r, ...fields }));
        return r.materials[0].ekt as string;
      };
      // Relabelled as HMAC_256, the symmetric key's GenerateMac would compute its ciphertexts' one-time keys (hsm/kdf.ts).
      const symEkt = edit(sym.KeyId, { keySpec: 'HMAC_256', keyUsage: 'GENERATE_VERIFY_MAC' });
      edit(rsa.KeyId, { keyUsage: 'SIGN_VERIFY' }); // usage only: same material, other protocol
      kms = await openKms(t.dir, { hsmMode: 'inline' });
      const mac = await kms.call('GenerateMac', { KeyId: sym.KeyId, MacAlgorithm: 'HMAC_SHA_256', Message: Buffer.from('m') }, admin).catch((e) => e);
      expect(mac).toMatchObject({ awsName: 'KMSInternalException', code: 'KMS_KEY_MATERIAL_CORRUPT' });
      expect(mac.message).toContain(sym.KeyId);
      expect(mac.message).toContain('HMAC_256');
      expect(mac.message).not.toContain(symEkt);
      const sig = await kms.call('Sign', { KeyId: rsa.KeyId, SigningAlgorithm: 'RSASSA_PSS_SHA_256', Message: Buffer.from('m') }, admin).catch((e) => e);
      expect(sig).toMatchObject({ awsName: 'KMSInternalException', code: 'KMS_KEY_MATERIAL_CORRUPT' });
      expect(sig.message).toContain(rsa.KeyId);
      expect(await awsError(kms.call('Encrypt', { KeyId: good.KeyId, Plaintext: Buffer.from('x') }, admin))).toBe('no error');
      await kms.close();
    } finally {
      t.cleanup();
    }
  }, 30_000);

  it('SIGKILL during updates leaves old or new state, never a corrupt one', async () => {
    const t = tempDir();
    let kms: Awaited<ReturnType<typeof openKms>> | undefined;
    let p: ReturnType<typeof spawn> | undefined;
    try {
      kms = await openKms(t.dir, { hsmMode: 'inline' });
      const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
      const e = await kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: Buffer.from('durable') }, admin);
      await kms.close();
      kms = undefined;
      const child = fileURLToPath(new URL('./crash-child.ts', import.meta.url));
      for (let round = 0; round < 3; round++) {
        const c = spawn(process.execPath, ['--import', devLoaderUrl(), child, t.dir, k.KeyId], { stdio: ['ignore', 'pipe', 'inherit'] });
        p = c;
        // The last update of each kind the child saw return: durable, so the state
        // after the kill must hold it, or the one after it that was in flight.
        const done = { desc: -1, tag: -1, alias: -1 };
        const exited = new Promise<void>((res) => c.once('exit', () => res()));
        const target = round + 1; // kill at a different point each round
        await new Promise<void>((res, rej) => {
          let buf = '';
          c.stdout!.on('data', (d: Buffer) => {
            buf += d.toString();
            for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
              const [kind, n] = buf.slice(0, nl).split(' ');
              buf = buf.slice(nl + 1);
              if (kind === 'desc' || kind === 'tag' || kind === 'alias') done[kind] = Number(n);
            }
            if (done.alias >= target) res();
          });
          c.once('exit', (code, sig) => rej(new Error(`crash child exited early (${code ?? sig})`)));
        });
        expect(c.exitCode).toBe(null); // still looping through updates: the kill lands mid-sequence
        c.kill('SIGKILL');
        await exited;
        expect(c.signalCode).toBe('SIGKILL');
        const seen = { ...done }; // nothing the child reported after the kill counts

        kms = await openKms(t.dir, { hsmMode: 'inline' });
        // No key file was left unreadable: every listed key (unreadable ones are listed too) describes.
        const listed = (await kms.call('ListKeys', { Limit: 1000 }, admin)).Keys as { KeyId: string }[];
        for (const x of listed) expect((await kms.call('DescribeKey', { KeyId: x.KeyId }, admin)).KeyMetadata).toBeDefined();
        const md = (await kms.call('DescribeKey', { KeyId: k.KeyId }, admin)).KeyMetadata as { Description: string };
        expect([`d${seen.desc}`, `d${seen.desc + 1}`]).toContain(md.Description);
        const tags = (await kms.call('ListResourceTags', { KeyId: k.KeyId }, admin)).Tags as { TagKey: string; TagValue: string }[];
        expect([String(seen.tag), String(seen.tag + 1)]).toContain(tags.find((x) => x.TagKey === 't')?.TagValue);
        const aliases = (await kms.call('ListAliases', { Limit: 100 }, admin)).Aliases as { AliasName: string; TargetKeyId?: string }[];
        const mine = aliases.filter((x) => x.AliasName.startsWith(`alias/a${c.pid}-`));
        const reported = Array.from({ length: seen.alias + 1 }, (_, i) => `alias/a${c.pid}-${i}`);
        expect(mine.map((x) => x.AliasName)).toEqual(expect.arrayContaining(reported));
        expect(mine.length - reported.length).toBeGreaterThanOrEqual(0);
        expect(mine.length - reported.length).toBeLessThanOrEqual(1); // at most the one in flight
        expect(mine.every((x) => x.TargetKeyId === k.KeyId)).toBe(true);
        expect(Buffer.from((await kms.call('Decrypt', { CiphertextBlob: e.CiphertextBlob }, admin)).Plaintext as Uint8Array).toString()).toBe('durable');
        const again = await kms.call('Encrypt', { KeyId: k.KeyId, Plaintext: Buffer.from('x') }, admin);
        expect(Buffer.from((await kms.call('Decrypt', { CiphertextBlob: again.CiphertextBlob }, admin)).Plaintext as Uint8Array).toString()).toBe('x');
        await kms.close();
        kms = undefined;
      }
    } finally {
      if (p && p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
      await kms?.close();
      t.cleanup();
    }
  }, 120_000);
});
