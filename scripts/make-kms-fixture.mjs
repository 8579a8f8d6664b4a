#!/usr/bin/env node
// Writes the frozen kms-v1 fixture (test/fixtures/kms-v1/): a KMS state dir
// written by the code of the day, with the blobs it produced and what they
// must decrypt to. Run once, by hand, after `npx tsc -p .`:
//
//   node scripts/make-kms-fixture.mjs test/fixtures/kms-v1
//
// Tests never regenerate it: a later version must open this very state dir.
// The passphrase is TEST-ONLY (it is committed beside the state dir).
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { openKms } from '../dist/kms/open-kms.js';

const out = resolve(process.argv[2] ?? 'test/fixtures/kms-v1');
if (existsSync(join(out, 'state'))) throw new Error(`${out}/state exists: the fixture is frozen; delete it by hand to make a new version`);
const PASSPHRASE = 'kms-v1 fixture TEST-ONLY passphrase, never use for real keys';
const ACCOUNT = '111122223333', REGION = 'us-east-1';
const admin = { arn: `arn:aws:iam::${ACCOUNT}:root`, accountId: ACCOUNT, type: 'Root', principalId: ACCOUNT };
const tmp = mkdtempSync(join(tmpdir(), 'kms-v1-'));
// A daemon state dir: identities.json at the root, the KMS (keys, HSM domain,
// grants, audit) under kms/, wired by the daemon's factory (src/kms/open-kms.ts).
const state = join(tmp, 'state');
mkdirSync(join(state, 'kms'), { recursive: true, mode: 0o700 });
const opened = await openKms({ stateDir: state, accountId: ACCOUNT, region: REGION, passphrase: PASSPHRASE, hsmMode: 'inline' });
const authz = opened;
await authz.identities.createRole('kms-v1-host');
const kms = opened.core;
const b64 = (b) => Buffer.from(b).toString('base64');
const call = (op, req) => kms.call(op, req, admin);

const main = (await call('CreateKey', { Description: 'kms-v1 main (rotated once)' })).KeyMetadata;
const other = (await call('CreateKey', { Description: 'kms-v1 second' })).KeyMetadata;
const rsa = (await call('CreateKey', { KeySpec: 'RSA_2048', KeyUsage: 'ENCRYPT_DECRYPT', Description: 'kms-v1 RSA' })).KeyMetadata;
const ecc = (await call('CreateKey', { KeySpec: 'ECC_NIST_P256', KeyUsage: 'SIGN_VERIFY', Description: 'kms-v1 ECC' })).KeyMetadata;
await call('CreateAlias', { AliasName: 'alias/kms-v1-main', TargetKeyId: main.KeyId });
await call('CreateAlias', { AliasName: 'alias/kms-v1-second', TargetKeyId: other.KeyId });
const grant = await call('CreateGrant', {
  KeyId: main.KeyId, GranteePrincipal: `arn:aws:iam::${ACCOUNT}:role/kms-v1-host`, Operations: ['Decrypt', 'GenerateDataKey'], Name: 'kms-v1-grant',
});

const blobs = [];
const encrypt = async (name, keyId, plaintext, context) => {
  const r = await call('Encrypt', { KeyId: keyId, Plaintext: plaintext, ...(context ? { EncryptionContext: context } : {}) });
  blobs.push({ name, keyId: r.KeyId, plaintext: b64(plaintext), ...(context ? { encryptionContext: context } : {}), ciphertextBlob: b64(r.CiphertextBlob) });
};
await encrypt('main, before rotation', main.KeyId, Buffer.from('sealed before the rotation'));
await encrypt('main, before rotation, with context', main.KeyId, Buffer.from('context-bound'), { volume: 'vol-0123456789abcdef0', purpose: 'kms-v1' });
await call('RotateKeyOnDemand', { KeyId: main.KeyId });
await encrypt('main, after rotation', main.KeyId, Buffer.from('sealed after the rotation'));
await encrypt('second, by alias, empty-ish 1 byte', 'alias/kms-v1-second', Buffer.from([0]));
await encrypt('second, 4096 bytes', other.KeyId, Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 31) & 0xff)));
const dk = await call('GenerateDataKey', { KeyId: main.KeyId, KeySpec: 'AES_256', EncryptionContext: { volume: 'vol-0fedcba9876543210' } });
blobs.push({ name: 'data key (GenerateDataKey AES_256)', keyId: dk.KeyId, plaintext: b64(dk.Plaintext), encryptionContext: { volume: 'vol-0fedcba9876543210' }, ciphertextBlob: b64(dk.CiphertextBlob) });
const rsaPlain = Buffer.from('rsa oaep sha-256');
const rsaCt = await call('Encrypt', { KeyId: rsa.KeyId, Plaintext: rsaPlain, EncryptionAlgorithm: 'RSAES_OAEP_SHA_256' });
blobs.push({ name: 'RSA_2048 OAEP SHA-256', keyId: rsaCt.KeyId, encryptionAlgorithm: 'RSAES_OAEP_SHA_256', plaintext: b64(rsaPlain), ciphertextBlob: b64(rsaCt.CiphertextBlob) });
const message = Buffer.from('kms-v1 signed message');
const sig = await call('Sign', { KeyId: ecc.KeyId, Message: message, SigningAlgorithm: 'ECDSA_SHA_256' });
const pub = await call('GetPublicKey', { KeyId: ecc.KeyId });
await opened.close(); // seals a signed audit digest

cpSync(state, join(out, 'state'), { recursive: true });
rmSync(tmp, { recursive: true, force: true });
writeFileSync(join(out, 'TEST-ONLY-PASSPHRASE.txt'), PASSPHRASE + '\n');
writeFileSync(join(out, 'expected.json'), JSON.stringify({
  formatVersion: 'kms-v1',
  accountId: ACCOUNT,
  region: REGION,
  keys: { main: main.KeyId, second: other.KeyId, rsa: rsa.KeyId, ecc: ecc.KeyId },
  aliases: { 'alias/kms-v1-main': main.KeyId, 'alias/kms-v1-second': other.KeyId },
  grant: { keyId: main.KeyId, grantId: grant.GrantId, name: 'kms-v1-grant', operations: ['Decrypt', 'GenerateDataKey'] },
  blobs,
  signature: { keyId: ecc.KeyId, signingAlgorithm: 'ECDSA_SHA_256', message: b64(message), signature: b64(sig.Signature), publicKey: b64(pub.PublicKey) },
}, null, 2) + '\n');
console.log(`kms-v1 fixture written to ${out}`);
