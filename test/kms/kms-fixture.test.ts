/**
 * The frozen kms-v1 fixture (test/fixtures/kms-v1, written once by
 * scripts/make-kms-fixture.mjs): every later version of ebsd must open this
 * state dir with its passphrase, decrypt every blob to the recorded plaintext,
 * list the same aliases and grant, verify the recorded signature, and find the
 * audit log intact. A change to the KDF, the blob layout, the HSM domain
 * sealing, a key file or the audit chain fails here first.
 *
 * The test works on a copy: opening a KMS appends audit events.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { openKms, type Kms } from '../../src/kms/open-kms.js';
import type { KmsService } from '../../src/kms/kms-core.js';
import { verifyAuditLog } from '../../src/kms/audit/verify.js';
import { createLogger } from '../../src/util/logger.js';
import { admin, tempDir } from './helpers.js';

const FIX = fileURLToPath(new URL('../fixtures/kms-v1/', import.meta.url));
const PASSPHRASE = readFileSync(join(FIX, 'TEST-ONLY-PASSPHRASE.txt'), 'utf8').replace(/\n$/, '');
interface Blob { name: string; keyId: string; plaintext: string; encryptionContext?: Record<string, string>; encryptionAlgorithm?: string; ciphertextBlob: string }
const EXPECTED = JSON.parse(readFileSync(join(FIX, 'expected.json'), 'utf8')) as {
  accountId: string; region: string;
  keys: Record<'main' | 'second' | 'rsa' | 'ecc', string>;
  aliases: Record<string, string>;
  grant: { keyId: string; grantId: string; name: string; operations: string[] };
  blobs: Blob[];
  signature: { keyId: string; signingAlgorithm: string; message: string; signature: string; publicKey: string };
};
const b64 = (s: string): Buffer => Buffer.from(s, 'base64');

describe('kms-v1 fixture', () => {
  let t: ReturnType<typeof tempDir>;
  let state: string;
  let kms: KmsService | undefined;
  let opened: Kms | undefined;

  beforeAll(async () => {
    t = tempDir('ebsd-kms-v1-');
    state = join(t.dir, 'state');
    cpSync(join(FIX, 'state'), state, { recursive: true });
    // Wired as the daemon wires it (src/kms/open-kms.ts): identities at the root, the KMS under kms/.
    opened = await openKms({ stateDir: state, passphrase: PASSPHRASE, hsmMode: 'inline' });
    expect(opened.accountId).toBe(EXPECTED.accountId);
    kms = opened.core;
  });
  afterAll(async () => {
    await opened?.close();
    t?.cleanup();
  });

  it('the audit log as frozen verifies: hash chain and signed digest', () => {
    const r = verifyAuditLog(join(FIX, 'state', 'kms', 'audit'));
    expect(r.problem).toBeUndefined();
    expect(r.ok).toBe(true);
    expect(r.digests).toBeGreaterThanOrEqual(1);
    expect(r.sealedThrough).toBe(r.events - 1); // closed cleanly: every event is under a signature
  });

  it('has every key, with the main key rotated once', async () => {
    for (const [role, id] of Object.entries(EXPECTED.keys)) {
      const md = (await kms!.call('DescribeKey', { KeyId: id }, admin)).KeyMetadata as { KeyId: string; KeyState: string; Description: string };
      expect(md.KeyState, role).toBe('Enabled');
      expect(md.Description).toMatch(/^kms-v1 /);
    }
    const rot = await kms!.call('ListKeyRotations', { KeyId: EXPECTED.keys.main }, admin);
    expect((rot.Rotations as unknown[]).length).toBe(1);
  });

  it('decrypts every blob to its recorded plaintext (contexts and algorithms as recorded)', async () => {
    expect(EXPECTED.blobs.length).toBeGreaterThanOrEqual(7);
    for (const b of EXPECTED.blobs) {
      const r = await kms!.call('Decrypt', {
        CiphertextBlob: b64(b.ciphertextBlob),
        ...(b.encryptionContext ? { EncryptionContext: b.encryptionContext } : {}),
        ...(b.encryptionAlgorithm ? { KeyId: b.keyId, EncryptionAlgorithm: b.encryptionAlgorithm } : {}),
      }, admin);
      expect(Buffer.from(r.Plaintext as Uint8Array).toString('base64'), b.name).toBe(b.plaintext);
      expect(r.KeyId, b.name).toBe(b.keyId);
    }
  });

  it('refuses a recorded blob under another encryption context', async () => {
    const b = EXPECTED.blobs.find((x) => x.encryptionContext)!;
    const err = await kms!.call('Decrypt', { CiphertextBlob: b64(b.ciphertextBlob), EncryptionContext: { other: 'x' } }, admin).catch((e) => e);
    expect(err).toMatchObject({ awsName: 'InvalidCiphertextException' });
  });

  it('lists the aliases and the grant', async () => {
    const aliases = (await kms!.call('ListAliases', { Limit: 100 }, admin)).Aliases as { AliasName: string; TargetKeyId?: string }[];
    for (const [name, keyArn] of Object.entries(EXPECTED.aliases)) {
      expect(aliases.find((a) => a.AliasName === name)?.TargetKeyId, name).toBe(keyArn.split('/').pop());
    }
    const grants = (await kms!.call('ListGrants', { KeyId: EXPECTED.grant.keyId }, admin)).Grants as { GrantId: string; Name: string; Operations: string[] }[];
    expect(grants).toHaveLength(1);
    expect(grants[0]).toMatchObject({ GrantId: EXPECTED.grant.grantId, Name: EXPECTED.grant.name, Operations: EXPECTED.grant.operations });
  });

  it('verifies the recorded ECDSA signature and serves the same public key', async () => {
    const s = EXPECTED.signature;
    const v = await kms!.call('Verify', { KeyId: s.keyId, Message: b64(s.message), Signature: b64(s.signature), SigningAlgorithm: s.signingAlgorithm }, admin);
    expect(v.SignatureValid).toBe(true);
    const pk = await kms!.call('GetPublicKey', { KeyId: s.keyId }, admin);
    expect(Buffer.from(pk.PublicKey as Uint8Array).toString('base64')).toBe(s.publicKey);
  });

  it('keeps working: a new blob under the rotated key round-trips and the audit log of the copy still verifies', async () => {
    const e = await kms!.call('Encrypt', { KeyId: 'alias/kms-v1-main', Plaintext: Buffer.from('v-next') }, admin);
    expect(Buffer.from((await kms!.call('Decrypt', { CiphertextBlob: e.CiphertextBlob }, admin)).Plaintext as Uint8Array).toString()).toBe('v-next');
    await kms!.close();
    kms = undefined;
    const r = verifyAuditLog(join(state, 'kms', 'audit'));
    expect(r.problem).toBeUndefined();
    expect(r.ok).toBe(true);
  });
});

/**
 * kms-v1's tokens are of EKT format 1, which did not authenticate the key spec and usage:
 * opening re-seals them in format 2 (kms-core.ts, `resealKeyTokens`), after checking that the
 * material fits the spec and usage stored beside it (docs/kms-format.md §Exported key token).
 */
describe('kms-v1 fixture: key material tokens re-sealed on open', () => {
  const tokenVersions = (state: string, keyId: string): number[] =>
    (JSON.parse(readFileSync(join(state, 'kms', 'keys', `${keyId}.json`), 'utf8')) as { materials: { ekt: string }[] }).materials.map((m) => b64(m.ekt)[0]!);
  const editKey = (state: string, keyId: string, fields: Record<string, string>): void => {
    const f = join(state, 'kms', 'keys', `${keyId}.json`);
    writeFileSync(f, JSON.stringify({ ...JSON.parse(readFileSync(f, 'utf8')), ...fields }));
  };

  it('format 1 tokens become format 2 and keep working; one whose material does not fit its edited spec is refused, and stays as it was', async () => {
    const t = tempDir('ebsd-kms-v1-reseal-');
    let opened: Kms | undefined;
    try {
      const state = join(t.dir, 'state');
      cpSync(join(FIX, 'state'), state, { recursive: true });
      for (const id of Object.values(EXPECTED.keys)) expect(tokenVersions(state, id).every((v) => v === 1)).toBe(true);
      editKey(state, EXPECTED.keys.ecc, { keySpec: 'ECC_NIST_P384' }); // a P-256 key relabelled
      opened = await openKms({ stateDir: state, passphrase: PASSPHRASE }); // the worker HSM, as the daemon runs it: the re-seal crosses postMessage
      for (const role of ['main', 'second', 'rsa'] as const) expect(tokenVersions(state, EXPECTED.keys[role]), role).toEqual(role === 'main' ? [2, 2] : [2]);
      expect(tokenVersions(state, EXPECTED.keys.ecc)).toEqual([1]);
      const sig = await opened.core.call('Sign', { KeyId: EXPECTED.keys.ecc, SigningAlgorithm: 'ECDSA_SHA_384', Message: Buffer.from('m') }, admin).catch((e) => e);
      expect(sig).toMatchObject({ awsName: 'KMSInternalException', code: 'KMS_KEY_MATERIAL_CORRUPT' });
      expect(sig.message).toContain(EXPECTED.keys.ecc);
      await opened.close();

      // Reopened: the re-sealed tokens decrypt every recorded blob; a spec edited now is refused by the token itself.
      editKey(state, EXPECTED.keys.second, { keySpec: 'HMAC_256', keyUsage: 'GENERATE_VERIFY_MAC' });
      opened = await openKms({ stateDir: state, passphrase: PASSPHRASE, hsmMode: 'inline' });
      for (const b of EXPECTED.blobs.filter((x) => x.keyId.endsWith(EXPECTED.keys.main) || x.keyId.endsWith(EXPECTED.keys.rsa))) {
        const r = await opened.core.call('Decrypt', {
          CiphertextBlob: b64(b.ciphertextBlob),
          ...(b.encryptionContext ? { EncryptionContext: b.encryptionContext } : {}),
          ...(b.encryptionAlgorithm ? { KeyId: b.keyId, EncryptionAlgorithm: b.encryptionAlgorithm } : {}),
        }, admin);
        expect(Buffer.from(r.Plaintext as Uint8Array).toString('base64'), b.name).toBe(b.plaintext);
      }
      const mac = await opened.core.call('GenerateMac', { KeyId: EXPECTED.keys.second, MacAlgorithm: 'HMAC_SHA_256', Message: Buffer.from('m') }, admin).catch((e) => e);
      expect(mac).toMatchObject({ awsName: 'KMSInternalException', code: 'KMS_KEY_MATERIAL_CORRUPT' });
      expect(mac.message).toContain(EXPECTED.keys.second);
    } finally {
      await opened?.close();
      t.cleanup();
    }
  }, 60_000);

  it('each re-sealed material is logged at warn level and recorded as a ReSealKeyMaterial service event, without token bytes; a rolled-back key file is re-sealed, and recorded, again', async () => {
    const t = tempDir('ebsd-kms-v1-reseal-audit-');
    const out: string[] = [];
    const log = createLogger({ destination: new Writable({ write(c, _e, cb) { out.push(String(c)); cb(); } }), level: 'info' });
    let opened: Kms | undefined;
    try {
      const state = join(t.dir, 'state');
      cpSync(join(FIX, 'state'), state, { recursive: true });
      const keyFile = (id: string): string => join(state, 'kms', 'keys', `${id}.json`);
      const materials = Object.values(EXPECTED.keys).flatMap((keyId) =>
        (JSON.parse(readFileSync(keyFile(keyId), 'utf8')) as { arn: string; keySpec: string; keyUsage: string; materials: { id: string }[] }).materials
          .map((m) => ({ keyId, arn: `arn:aws:kms:${EXPECTED.region}:${EXPECTED.accountId}:key/${keyId}`, materialId: m.id })));
      expect(materials.length).toBe(5); // main (rotated once), second, rsa, ecc
      const v1Rsa = readFileSync(keyFile(EXPECTED.keys.rsa), 'utf8');
      const tokens = (): string[] => Object.values(EXPECTED.keys).flatMap((id) => (JSON.parse(readFileSync(keyFile(id), 'utf8')) as { materials: { ekt: string }[] }).materials.map((m) => m.ekt));
      const v1Tokens = tokens();
      const events = (): Record<string, unknown>[] => readFileSync(join(state, 'kms', 'audit', 'events.ndjson'), 'utf8')
        .split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).filter((e) => e.eventName === 'ReSealKeyMaterial');

      opened = await openKms({ stateDir: state, passphrase: PASSPHRASE, hsmMode: 'inline', logger: log });
      await opened.close();
      opened = undefined;
      const evs = events();
      expect(evs).toHaveLength(materials.length);
      for (const m of materials) {
        const e = evs.find((x) => (x.additionalEventData as { keyMaterialId: string }).keyMaterialId === m.materialId);
        expect(e, m.materialId).toMatchObject({ eventType: 'AwsServiceEvent', eventSource: 'kms.amazonaws.com', readOnly: false, resources: [{ ARN: m.arn, type: 'AWS::KMS::Key' }] });
        expect(e!.additionalEventData).toMatchObject({ keyMaterialTokenVersion: 2 });
      }
      const warns = out.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.level === 40 || l.level === 'warn');
      for (const m of materials) expect(warns.some((w) => w.keyArn === m.arn && w.materialId === m.materialId && typeof w.keySpec === 'string' && typeof w.keyUsage === 'string'), m.materialId).toBe(true);
      // Neither the old nor the new tokens (nor any slice of them) reach the audit log or the logs.
      const audit = readFileSync(join(state, 'kms', 'audit', 'events.ndjson'), 'utf8');
      for (const tok of [...v1Tokens, ...tokens()]) {
        const hex = Buffer.from(tok, 'base64').toString('hex');
        for (const text of [audit, out.join('')]) {
          expect(text).not.toContain(tok.slice(0, 24));
          expect(text).not.toContain(hex.slice(26, 58)); // ciphertext bytes after version and iv
        }
      }
      expect(verifyAuditLog(join(state, 'kms', 'audit')).ok).toBe(true);

      // A second start re-seals nothing; a key file rolled back to its version 1 copy is re-sealed and recorded again.
      opened = await openKms({ stateDir: state, passphrase: PASSPHRASE, hsmMode: 'inline' });
      await opened.close();
      opened = undefined;
      expect(events()).toHaveLength(materials.length);
      writeFileSync(keyFile(EXPECTED.keys.rsa), v1Rsa);
      opened = await openKms({ stateDir: state, passphrase: PASSPHRASE, hsmMode: 'inline' });
      await opened.close();
      opened = undefined;
      const rsaMaterial = materials.find((m) => m.keyId === EXPECTED.keys.rsa)!.materialId;
      expect(events().filter((e) => (e.additionalEventData as { keyMaterialId: string }).keyMaterialId === rsaMaterial)).toHaveLength(2);
      expect(events()).toHaveLength(materials.length + 1);
    } finally {
      await opened?.close();
      t.cleanup();
    }
  }, 60_000);
});
