/**
 * The signing store (src/snapshot/manifest-mac.ts), one suite run as a single host (the
 * embedded core over a directory store) and as a fleet host (AwsKeyService against a real
 * `ebsd daemon --kms-only --kms-listen` on loopback, signed as a host user whose policy allows
 * only what the README says a fleet host needs, over an S3 store on s3rver). What
 * it pins: swapped block lists and a manifest signed with another key are SNAPSHOT_CORRUPT naming
 * the manifest MAC (thrown, or reported and left out of a listing); the MAC does not depend on
 * how the JSON is laid out; a listing calls VerifyMac once per manifest change, not per listing;
 * the key checks at open name what is wrong.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { join } from 'node:path';
import type { Caller } from '../../src/kms/types.js';
import { AwsKeyService } from '../../src/volume/aws-key-service.js';
import { KmsCoreKeyService, type KeyService } from '../../src/volume/key-service.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { S3SnapshotStore } from '../../src/snapshot/s3-store.js';
import { S3RVER_CREDENTIALS, startS3Server, type S3Server } from './s3-helpers.js';
import { canonicalDigest, ManifestKeyUnavailable, ManifestSigner, manifestMacMessage, signedManifests } from '../../src/snapshot/manifest-mac.js';
import { ManifestKeyOpener } from '../../src/snapshot/manifest-key-opener.js';
import { planDigest, signManifest, surveyManifestMacs } from '../../src/snapshot/sign-manifests.js';
import type { CollectableStore } from '../../src/snapshot/gc.js';
import type { SnapshotError } from '../../src/snapshot/errors.js';
import type { SnapshotManifest } from '../../src/snapshot/types.js';
import { pino } from 'pino';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { tempDir } from '../helpers/temp-dir.js';
import { makeAccessKey, startKmsDaemon } from '../kms-net/helpers.js';
import { kmsHarness, type KmsHarness } from '../volume/helpers/kms.js';

interface Impl {
  ks: KeyService;
  caller: Caller;
  macKey: string;
  otherMacKey: string;
  symmetricKey: string;
  /** A caller the key's policy does not allow GenerateMac, and the KeyService it calls through. */
  denied: { ks: KeyService; caller: Caller };
  /** A fresh, empty store, the file an object of `key` (`manifests/<id>.json`) is kept in, and its clean-up. */
  openStore(): Promise<{ store: CollectableStore; file: (key: string) => string; close: () => void }>;
}

const H = (c: string): string => c.repeat(64);
function manifest(snapshotId: string, blocks: [number, string][]): SnapshotManifest {
  return {
    formatVersion: 1, snapshotId, volumeId: 'vol-0123456789abcdef0', volumeSize: 1, state: 'completed', progress: 100,
    startTime: '2026-01-02T03:04:05.000Z', description: 'd', tags: [{ Key: 'k', Value: 'v' }], ownerId: '123456789012',
    encrypted: false, kmsKeyId: '', dataOffset: 0, blocks,
  };
}
const S1 = 'snap-0000000000000000a';
const S2 = 'snap-0000000000000000b';

/** Counts VerifyMac calls on a real KeyService (the calls go through as they are). */
function counting(ks: KeyService): { ks: KeyService; verifies: () => number } {
  let n = 0;
  const wrapped = new Proxy(ks, {
    get(t, p) {
      const v = Reflect.get(t, p, t) as unknown;
      if (p === 'verifyMac' && typeof v === 'function') return (...a: unknown[]) => (n++, (v as (...x: unknown[]) => unknown).apply(t, a));
      return typeof v === 'function' ? (v as (...x: unknown[]) => unknown).bind(t) : v;
    },
  });
  return { ks: wrapped, verifies: () => n };
}

function runSuite(name: string, impl: () => Impl): void {
  describe(`signed manifests: ${name}`, () => {
    let store: CollectableStore;
    let raw: CollectableStore;
    let verifies: () => number;
    let objectFile: (key: string) => string;
    let close = (): void => {};
    const file = (id: string): string => objectFile(`manifests/${id}.json`);
    beforeAll(async () => {
      const { ks, caller, macKey } = impl();
      ({ store: raw, file: objectFile, close } = await impl().openStore());
      const c = counting(ks);
      verifies = c.verifies;
      const signer = new ManifestSigner(macKey);
      await signer.open(c.ks, caller);
      store = signedManifests(raw, signer);
    });
    afterAll(() => close());

    it('signs on write; swapped block lists are refused naming the manifest MAC, thrown or left out of a listing', async () => {
      await store.putManifest(manifest(S1, [[0, H('1')]]));
      await store.putManifest(manifest(S2, [[0, H('2')]]));
      expect((await store.getManifest(S1))?.blocks).toEqual([[0, H('1')]]);
      const one = JSON.parse(readFileSync(file(S1), 'utf8'));
      const two = JSON.parse(readFileSync(file(S2), 'utf8'));
      expect(one.manifestMac.keyArn).toBe(impl().macKey);
      // A MAC made by this very key, under another snapshot id: moved, it does not verify.
      writeFileSync(file(S2), JSON.stringify({ ...two, blocks: one.blocks }));
      await expect(store.getManifest(S2)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', message: expect.stringContaining(`snapshot manifest ${S2}: its manifest MAC does not verify`) });
      writeFileSync(file(S2), JSON.stringify({ ...one, snapshotId: S2 }));
      await expect(store.getManifest(S2)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', message: expect.stringContaining('manifest MAC does not verify') });
      // The collector's strict listing throws; DescribeSnapshots' reports it and lists the rest.
      await expect(store.listManifests()).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
      const bad: [string, SnapshotError][] = [];
      expect((await store.listManifestSummaries({ onCorrupt: (id, e) => bad.push([id, e]) })).map((m) => m.snapshotId)).toEqual([S1]);
      expect(bad.map(([id]) => id)).toEqual([S2]);
      writeFileSync(file(S2), JSON.stringify(two));
      expect((await store.getManifest(S2))?.blocks).toEqual([[0, H('2')]]);
    });

    it('verifies whatever the JSON layout, and calls VerifyMac once per change, not per listing', async () => {
      const text = JSON.parse(readFileSync(file(S1), 'utf8'));
      // Members in reverse order, indented: the same manifest.
      writeFileSync(file(S1), JSON.stringify(Object.fromEntries(Object.entries(text).reverse()), null, 2));
      await store.listManifests();
      const before = verifies();
      await store.listManifests();
      await store.listManifestSummaries();
      expect(verifies()).toBe(before);
      // A changed description is a changed manifest: checked again, and refused.
      writeFileSync(file(S1), JSON.stringify({ ...text, description: 'edited' }));
      await expect(store.getManifest(S1)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
      expect(verifies()).toBe(before + 1);
      // A refusal is remembered too: listing the same bad manifest again costs no VerifyMac (nor a KMS audit event).
      const bad: string[] = [];
      for (let i = 0; i < 3; i++) await store.listManifestSummaries({ onCorrupt: (id) => bad.push(id) });
      await expect(store.getManifest(S1)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', message: expect.stringContaining('manifest MAC does not verify') });
      expect(bad).toEqual([S1, S1, S1]);
      expect(verifies()).toBe(before + 1);
      // Other content (another digest) is checked again.
      writeFileSync(file(S1), JSON.stringify({ ...text, description: 'edited again' }));
      await expect(store.getManifest(S1)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT' });
      expect(verifies()).toBe(before + 2);
      writeFileSync(file(S1), JSON.stringify(text));
    });

    it('trusts a manifest only when VerifyMac answers MacValid true, not merely when it does not throw', async () => {
      const { ks, caller, macKey } = impl();
      // The real KMS's answers, MacValid turned false on the way back (a KMS or client that reports failure in the answer).
      const saysInvalid = new Proxy(ks, {
        get(t, p) {
          const v = Reflect.get(t, p, t) as unknown;
          if (p === 'verifyMac' && typeof v === 'function') return async (...a: unknown[]) => ({ ...(await (v as (...x: unknown[]) => Promise<object>).apply(t, a)), MacValid: false });
          return typeof v === 'function' ? (v as (...x: unknown[]) => unknown).bind(t) : v;
        },
      });
      const signer = new ManifestSigner(macKey);
      await signer.open(saysInvalid, caller);
      const S5 = 'snap-0000000000000000e';
      await store.putManifest(manifest(S5, [[0, H('5')]]));
      // A fresh signer has verified nothing yet: its VerifyMac's answer decides. Not trusted, and not refused either (a
      // refused manifest is shown in state error and may be deleted): a KMS answer that is neither true nor
      // KMSInvalidMacException fails as a KMS that cannot be asked (SNAPSHOT_STORE).
      await expect(signedManifests(raw, signer).getManifest(S5)).rejects.toMatchObject({ code: 'SNAPSHOT_STORE', message: expect.stringContaining('VerifyMac answered MacValid false') });
      expect((await store.getManifest(S5))?.blocks).toEqual([[0, H('5')]]);
      await raw.deleteManifest(S5);
    });

    it('refuses a manifest signed with another HMAC key, one without a MAC, and one whose MAC member is of another shape', async () => {
      const { ks, caller, otherMacKey } = impl();
      const other = new ManifestSigner(otherMacKey);
      await other.open(ks, caller);
      await signedManifests(raw, other).putManifest(manifest(S1, [[0, H('1')]]));
      await expect(store.getManifest(S1)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', message: expect.stringContaining(`it names key ${otherMacKey}`) });
      await raw.putManifest(manifest(S1, [[0, H('1')]]));
      await expect(store.getManifest(S1)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', message: expect.stringContaining('has no manifest MAC') });
      // A MAC member of another shape (an empty MAC, a MAC of another length) is corrupt too, never sent to the KMS as is.
      for (const mac of ['', 'AA==', Buffer.alloc(64).toString('base64')]) {
        await raw.putManifest({ ...manifest(S1, [[0, H('1')]]), manifestMac: { keyArn: impl().macKey, mac } } as SnapshotManifest);
        await expect(store.getManifest(S1)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', message: expect.stringContaining('its manifest MAC is not {keyArn, mac') });
      }
    });

    it('sign-manifests signs only what the survey read: a manifest changed after it is left unsigned, named as changed', async () => {
      const S3 = 'snap-0000000000000000c';
      const S4 = 'snap-0000000000000000d';
      await raw.putManifest(manifest(S3, [[0, H('3')]]));
      await raw.putManifest(manifest(S4, [[0, H('4')]]));
      const signer = new ManifestSigner(impl().macKey);
      await signer.open(impl().ks, impl().caller);
      const plan = await surveyManifestMacs(raw, signer);
      const mine = plan.unsigned.filter((u) => u.snapshotId === S3 || u.snapshotId === S4);
      expect(mine.map((u) => [u.snapshotId, u.digest])).toEqual([[S3, canonicalDigest(manifest(S3, [[0, H('3')]]))], [S4, canonicalDigest(manifest(S4, [[0, H('4')]]))]]);
      expect(plan.planDigest).toBe(planDigest(plan.unsigned));
      // Between the survey and the signing a store writer points S4 at other blocks.
      const edited = { ...manifest(S4, [[0, H('5')]]) };
      writeFileSync(file(S4), JSON.stringify(edited));
      expect(await signManifest(raw, signer, mine[0]!)).toBe('signed');
      expect(await signManifest(raw, signer, mine[1]!)).toBe('changed');
      expect((await store.getManifest(S3))?.blocks).toEqual([[0, H('3')]]);
      await expect(store.getManifest(S4)).rejects.toMatchObject({ code: 'SNAPSHOT_CORRUPT', message: expect.stringContaining('has no manifest MAC') });
      expect(JSON.parse(readFileSync(file(S4), 'utf8'))).toEqual(edited);
      await raw.deleteManifest(S3);
      await raw.deleteManifest(S4);
    });

    it('refuses at open a key that is not HMAC_256, one that does not exist, and a caller that may not GenerateMac', async () => {
      const { ks, caller, symmetricKey, macKey, denied } = impl();
      await expect(new ManifestSigner(symmetricKey).open(ks, caller)).rejects.toThrow(/--snapshot-manifest-key .*KeySpec SYMMETRIC_DEFAULT/);
      await expect(new ManifestSigner('alias/none-such').open(ks, caller)).rejects.toThrow(/--snapshot-manifest-key "alias\/none-such": cannot describe the key.*NotFoundException/);
      await expect(new ManifestSigner(macKey).open(denied.ks, denied.caller)).rejects.toThrow(/--snapshot-manifest-key .*GenerateMac with key .* failed: AccessDeniedException: .*kms:GenerateMac/);
    });
  });
}

// ---- the format, pinned by answers from outside ------------------------------
describe('canonical digest and MAC message', () => {
  const vectors = JSON.parse(readFileSync(resolve(import.meta.dirname, '..', 'vectors', 'snapshot-manifest-mac.json'), 'utf8')) as {
    cases: { name: string; manifest: SnapshotManifest; digest: string; message: string }[];
  };
  it.each(vectors.cases.map((c) => [c.name, c] as const))('%s: as Python json + hashlib computes it (test/vectors/make-manifest-mac.py)', (_name, c) => {
    expect(canonicalDigest(c.manifest)).toBe(c.digest);
    // Members in any order make the same digest.
    expect(canonicalDigest(Object.fromEntries(Object.entries(c.manifest).reverse()) as unknown as SnapshotManifest)).toBe(c.digest);
    expect(manifestMacMessage(c.manifest.snapshotId, c.digest).toString('utf8')).toBe(c.message);
  });
});

// ---- the embedded core -------------------------------------------------------
let core: KmsHarness;
let coreImpl: Impl;
const coreDir = tempDir('ebsd-manifest-mac-core-');
beforeAll(async () => {
  core = await kmsHarness(coreDir.dir);
  const root = core.root;
  const key = async (req: Record<string, unknown>): Promise<string> => ((await core.core.call('CreateKey', req, root)) as { KeyMetadata: { Arn: string } }).KeyMetadata.Arn;
  const hmac = { KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC' };
  const ks = new KmsCoreKeyService(core.core);
  // The harness's host role reads key states (DescribeKey on *) and nothing more: no GenerateMac.
  coreImpl = {
    ks, caller: root, macKey: await key(hmac), otherMacKey: await key(hmac), symmetricKey: await key({}), denied: { ks, caller: core.host },
    openStore: async () => {
      const dir = tempDir('ebsd-manifest-mac-');
      return { store: await DirSnapshotStore.open(dir.dir), file: (k) => join(dir.dir, k), close: dir.cleanup };
    },
  };
});
afterAll(async () => {
  await core?.close();
  coreDir.cleanup();
});
runSuite('embedded core (KmsCoreKeyService)', () => coreImpl);

// ---- AwsKeyService over the AWS KMS protocol (a fleet host) -----------------
const VARS = ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_REGION', 'AWS_ENDPOINT_URL', 'AWS_PROFILE', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_EC2_METADATA_DISABLED'];
const env = new Env('manifest-mac-remote');
const saved = Object.fromEntries(VARS.map((k) => [k, process.env[k]]));
const clients: AwsKeyService[] = [];
let awsImpl: Impl;
let s3: S3Server | undefined;
let remoteUrl = '';
beforeAll(async () => {
  ensureBuilt();
  s3 = await startS3Server();
  const server = s3;
  const { url } = await startKmsDaemon(env);
  remoteUrl = url;
  // What README "Snapshot store" tells a fleet host to be allowed on the manifest key.
  const host = await makeAccessKey(env, 'host', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: ['kms:GenerateMac', 'kms:VerifyMac', 'kms:DescribeKey'], Resource: '*' }] }));
  const reader = await makeAccessKey(env, 'reader', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: ['kms:DescribeKey'], Resource: '*' }] }));
  for (const k of VARS) delete process.env[k];
  const client = (k: typeof host.key): AwsKeyService => {
    Object.assign(process.env, { AWS_ACCESS_KEY_ID: k.AccessKeyId, AWS_SECRET_ACCESS_KEY: k.SecretAccessKey, AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL: url, AWS_EC2_METADATA_DISABLED: 'true' });
    const c = new AwsKeyService({ endpoint: url });
    clients.push(c);
    return c;
  };
  const key = async (req: Record<string, unknown>): Promise<string> => (await env.api('TrentService.CreateKey', req)).KeyMetadata.Arn;
  const hmac = { KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC' };
  const symmetricKey = await key({});
  // Each client's credentials are read from the environment at its first KMS call and kept: one call each, in turn.
  const hostKs = client(host.key);
  const hostCaller = await hostKs.hostPrincipal();
  await hostKs.describeKey({ KeyId: symmetricKey }, hostCaller);
  const readerKs = client(reader.key);
  const readerCaller = await readerKs.hostPrincipal();
  await readerKs.describeKey({ KeyId: symmetricKey }, readerCaller);
  awsImpl = { ks: hostKs, caller: hostCaller, macKey: await key(hmac), otherMacKey: await key(hmac), symmetricKey, denied: { ks: readerKs, caller: readerCaller },
    openStore: async () => {
      const store = await S3SnapshotStore.open({ bucket: server.bucket, prefix: 'signed', endpoint: server.endpoint, credentials: S3RVER_CREDENTIALS });
      return { store, file: (k) => server.objectFile(`signed/${k}`), close: () => store.close() };
    },
  };
}, 60_000);
afterAll(async () => {
  for (const c of clients) c.close();
  await s3?.stop();
  for (const k of VARS) if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k];
  await env.cleanup();
});
runSuite('AwsKeyService against a --kms-only daemon', () => awsImpl);

// ---- a KMS that does not answer when the key is opened -----------------------
describe('signed manifests: the KMS not answering at open', () => {
  it('is no refusal: open throws ManifestKeyUnavailable (the daemon starts), and ManifestKeyOpener opens the key once the KMS answers', async () => {
    const { ks, caller, macKey } = awsImpl;
    await env.stop();
    const signer = new ManifestSigner(macKey);
    const err = await signer.open(ks, caller).then(() => undefined, (e: unknown) => e);
    // Not the refusal that stops a start (exit 9): the KMS never said no.
    expect((err as Error).name).not.toBe('ArgRangeError');
    expect(err).toBeInstanceOf(ManifestKeyUnavailable);
    expect((err as Error).message).toContain('--snapshot-manifest-key');
    // Closed meanwhile: a read fails as the store failing, nothing is trusted or called corrupt.
    await expect(signer.verify(S1, manifest(S1, []))).rejects.toMatchObject({ code: 'SNAPSHOT_STORE' });
    const lines: string[] = [];
    const opener = new ManifestKeyOpener({ signer, open: () => signer.open(ks, caller), log: pino({ level: 'info' }, { write: (l: string) => void lines.push(l) }) });
    opener.start(err as ManifestKeyUnavailable);
    await env.start(['--kms-only', '--kms-listen', new URL(remoteUrl).host]);
    await opener.opened;
    await opener.stop();
    expect(signer.keyArn).toBe(macKey);
    const signed = await signer.sign(manifest(S1, [[0, H('1')]]));
    await signer.verify(S1, signed);
    const logged = lines.map((l) => JSON.parse(l));
    // Logged once per kind of failure, not per try; the opening once.
    expect(logged.filter((l) => l.msg.startsWith('the KMS did not answer for the key of --snapshot-manifest-key'))).toHaveLength(1);
    expect(logged.filter((l) => l.msg.startsWith('the key of --snapshot-manifest-key is open'))).toHaveLength(1);
  }, 60_000);
});
