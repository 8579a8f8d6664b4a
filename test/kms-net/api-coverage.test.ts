/**
 * Coverage of the AWS KMS API as the installed @aws-sdk/client-kms models it, through a real SDK
 * client against `ebsd daemon --kms-only` (docs/architecture.md §2.5):
 * - every operation of the SDK gets a typed answer (HTTP 4xx or success), never
 *   UnknownOperationException, a 500 or a hang; the operations ebsd does not serve
 *   (src/kms/unserved.ts) are UnsupportedOperationException naming the operation;
 * - request values of the API ebsd cannot serve (key specs, key usages, data key pair specs,
 *   signing algorithms, grants to service principals, XksKeyId) are refused with the exception
 *   AWS uses, naming the member, never accepted and ignored;
 * - ListKeyRotations IncludeKeyMaterial is validated and ALL_KEY_MATERIAL lists the first material.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as K from '@aws-sdk/client-kms';
import { KMS_ADMIN_POLICY, auditEvents, makeAccessKey, startKmsDaemon } from './helpers.js';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { UNSERVED_OPERATIONS } from '../../src/kms/unserved.js';

type Command = new (input: object) => Parameters<K.KMSClient['send']>[0];

/** Every operation the SDK has: its `<Operation>Command` classes. */
const SDK_OPERATIONS: [string, Command][] = Object.entries(K)
  .filter(([n, v]) => /^[A-Z][A-Za-z]+Command$/.test(n) && typeof v === 'function')
  .map(([n, v]) => [n.slice(0, -'Command'.length), v as unknown as Command]);

const failure = (p: Promise<unknown>): Promise<K.KMSServiceException | undefined> =>
  p.then(() => undefined, (e: unknown) => e as K.KMSServiceException);

describe('AWS KMS API coverage through @aws-sdk/client-kms', () => {
  const env = new Env('kmscov');
  let kms: K.KMSClient;
  let sym = '';
  let ecc = '';
  let url = '';

  beforeAll(async () => {
    ensureBuilt();
    url = (await startKmsDaemon(env)).url;
    const k = (await makeAccessKey(env, 'admin', KMS_ADMIN_POLICY)).key;
    kms = new K.KMSClient({
      endpoint: url, region: 'us-east-1', credentials: { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey },
      maxAttempts: 1, // a 500 would be retried: one attempt, so the answer seen is the daemon's first
    });
    sym = (await kms.send(new K.CreateKeyCommand({}))).KeyMetadata!.KeyId!;
    ecc = (await kms.send(new K.CreateKeyCommand({ KeySpec: 'ECC_NIST_P256', KeyUsage: 'SIGN_VERIFY' }))).KeyMetadata!.KeyId!;
  }, 120_000);
  afterAll(async () => {
    kms?.destroy();
    await env.cleanup();
  });

  it('the SDK models the operations the unserved table names (the table is not stale)', () => {
    const names = new Set(SDK_OPERATIONS.map(([n]) => n));
    expect(names.size).toBeGreaterThan(50);
    expect(names.has('CreateKey') && names.has('Decrypt')).toBe(true);
    for (const op of UNSERVED_OPERATIONS) expect(names.has(op), op).toBe(true);
  });

  it('every SDK operation, called with an empty request, gets a typed answer: success or HTTP 400, never an unknown operation or a 500', async () => {
    for (const [op, Cmd] of SDK_OPERATIONS) {
      const e = await failure(kms.send(new Cmd({})));
      if (!e) continue; // ListKeys, ListAliases, CreateKey... serve an empty request
      expect([op, e.name, e.$metadata?.httpStatusCode]).not.toEqual([op, 'UnknownOperationException', 400]);
      expect([op, e.$metadata?.httpStatusCode, e.$fault]).toEqual([op, 400, 'client']);
      expect(e, op).toBeInstanceOf(K.KMSServiceException);
      if (UNSERVED_OPERATIONS.has(op)) {
        expect([op, e.name]).toEqual([op, 'UnsupportedOperationException']);
        expect(e).toBeInstanceOf(K.UnsupportedOperationException);
        expect(e.message).toContain(op);
      }
    }
  }, 60_000);

  it('unserved operations with a full request: UnsupportedOperationException naming the operation, recorded in the audit log', async () => {
    const calls: [string, Promise<unknown>][] = [
      ['DeriveSharedSecret', kms.send(new K.DeriveSharedSecretCommand({ KeyId: ecc, KeyAgreementAlgorithm: 'ECDH', PublicKey: new Uint8Array(91) }))],
      ['ReplicateKey', kms.send(new K.ReplicateKeyCommand({ KeyId: sym, ReplicaRegion: 'us-west-2' }))],
      ['UpdatePrimaryRegion', kms.send(new K.UpdatePrimaryRegionCommand({ KeyId: sym, PrimaryRegion: 'us-west-2' }))],
      ['ConnectCustomKeyStore', kms.send(new K.ConnectCustomKeyStoreCommand({ CustomKeyStoreId: 'cks-1234567890abcdef0' }))],
      ['GetParametersForImport', kms.send(new K.GetParametersForImportCommand({ KeyId: sym, WrappingAlgorithm: 'RSAES_OAEP_SHA_256', WrappingKeySpec: 'RSA_2048' }))],
      ['ImportKeyMaterial', kms.send(new K.ImportKeyMaterialCommand({ KeyId: sym, ImportToken: new Uint8Array(8), EncryptedKeyMaterial: new Uint8Array(8) }))],
      ['Encapsulate', kms.send(new K.EncapsulateCommand({ KeyId: sym, EncapsulationAlgorithm: 'ML_KEM' }))],
      ['GetKeyLastUsage', kms.send(new K.GetKeyLastUsageCommand({ KeyId: sym }))],
    ];
    for (const [op, p] of calls) {
      const e = await failure(p);
      expect([op, e?.name, e?.$metadata.httpStatusCode]).toEqual([op, 'UnsupportedOperationException', 400]);
      expect(e!.message).toMatch(new RegExp(`^${op} is not supported by this KMS`));
    }
    const ev = auditEvents(env).find((x) => x.eventName === 'GetParametersForImport');
    expect(ev).toMatchObject({ errorCode: 'UnsupportedOperationException', readOnly: true });
  });

  it('DescribeCustomKeyStores: an empty list, as AWS answers an account without custom key stores; an id or name names nothing', async () => {
    const all = await kms.send(new K.DescribeCustomKeyStoresCommand({}));
    expect([all.CustomKeyStores, all.Truncated, all.NextMarker]).toEqual([[], false, undefined]);
    expect((await kms.send(new K.DescribeCustomKeyStoresCommand({ Limit: 1000 }))).CustomKeyStores).toEqual([]);
    const byId = await failure(kms.send(new K.DescribeCustomKeyStoresCommand({ CustomKeyStoreId: 'cks-1234567890abcdef0' })));
    expect([byId?.name, byId?.$metadata.httpStatusCode]).toEqual(['CustomKeyStoreNotFoundException', 400]);
    expect(byId).toBeInstanceOf(K.CustomKeyStoreNotFoundException);
    expect(byId!.message).toContain('cks-1234567890abcdef0');
    const byName = await failure(kms.send(new K.DescribeCustomKeyStoresCommand({ CustomKeyStoreName: 'ExampleKeyStore' })));
    expect(byName).toBeInstanceOf(K.CustomKeyStoreNotFoundException);
    expect(byName!.message).toContain('ExampleKeyStore');
    // Limit and Marker checked as the List operations check them.
    for (const [req, name, msg] of [
      [{ Limit: 0 }, 'ValidationException', /'limit'/],
      [{ Limit: 1001 }, 'ValidationException', /'limit'/],
      [{ Marker: 'bm90LWEtbWFya2Vy' }, 'InvalidMarkerException', /marker/],
      [{ CustomKeyStoreId: 'c'.repeat(65) }, 'ValidationException', /'customKeyStoreId'/],
      [{ CustomKeyStoreName: 'n'.repeat(257) }, 'ValidationException', /'customKeyStoreName'/],
    ] as const) {
      const e = await failure(kms.send(new K.DescribeCustomKeyStoresCommand(req)));
      expect([JSON.stringify(req), e?.name, e?.$metadata.httpStatusCode]).toEqual([JSON.stringify(req), name, 400]);
      expect(e!.message).toMatch(msg);
    }
    // This test's nine calls, after the empty request of the sweep above.
    const evs = auditEvents(env).filter((x) => x.eventName === 'DescribeCustomKeyStores').slice(-9);
    expect(evs.length).toBe(9);
    expect(evs[0]).toMatchObject({ readOnly: true, eventSource: 'kms.amazonaws.com' });
    expect(evs[0]!.errorCode).toBeUndefined();
    expect(evs.find((x) => x.requestParameters?.customKeyStoreId === 'cks-1234567890abcdef0')).toMatchObject({ errorCode: 'CustomKeyStoreNotFoundException' });
  });

  it('DescribeCustomKeyStores is authorized by IAM policy alone (kms:DescribeCustomKeyStores on *); a denial is audited', async () => {
    const other = (await makeAccessKey(env, 'lister', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:ListKeys', Resource: '*' }] }))).key;
    const c = new K.KMSClient({ endpoint: url, region: 'us-east-1', credentials: { accessKeyId: other.AccessKeyId, secretAccessKey: other.SecretAccessKey }, maxAttempts: 1 });
    try {
      const e = await failure(c.send(new K.DescribeCustomKeyStoresCommand({})));
      expect([e?.name, e?.$metadata.httpStatusCode]).toEqual(['AccessDeniedException', 400]);
      expect(e!.message).toMatch(/not authorized to perform: kms:DescribeCustomKeyStores on resource: \*/);
      // A CustomKeyStoreId does not tell an unauthorized caller whether the store exists.
      const byId = await failure(c.send(new K.DescribeCustomKeyStoresCommand({ CustomKeyStoreId: 'cks-1234567890abcdef0' })));
      expect(byId?.name).toBe('AccessDeniedException');
      const denied = auditEvents(env).filter((x) => x.eventName === 'DescribeCustomKeyStores' && x.errorCode === 'AccessDeniedException');
      expect(denied.length).toBeGreaterThanOrEqual(1);
      expect(denied[0]!.userIdentity.arn).toMatch(/:user\/lister$/);
    } finally {
      c.destroy();
    }
  });

  const cases: { name: string; call: () => Promise<unknown>; error: string; member: RegExp }[] = [
    { name: 'CreateKey KeySpec ML_DSA_65', call: () => kms.send(new K.CreateKeyCommand({ KeySpec: 'ML_DSA_65', KeyUsage: 'SIGN_VERIFY' })), error: 'UnsupportedOperationException', member: /^KeySpec ML_DSA_65 /u },
    { name: 'CreateKey KeySpec ML_KEM_768', call: () => kms.send(new K.CreateKeyCommand({ KeySpec: 'ML_KEM_768', KeyUsage: 'ENCAPSULATE_DECAPSULATE' })), error: 'UnsupportedOperationException', member: /^KeySpec ML_KEM_768 / },
    { name: 'CreateKey KeySpec ECC_NIST_EDWARDS25519', call: () => kms.send(new K.CreateKeyCommand({ KeySpec: 'ECC_NIST_EDWARDS25519', KeyUsage: 'SIGN_VERIFY' })), error: 'UnsupportedOperationException', member: /^KeySpec ECC_NIST_EDWARDS25519 / },
    { name: 'CreateKey KeySpec SM2', call: () => kms.send(new K.CreateKeyCommand({ KeySpec: 'SM2', KeyUsage: 'SIGN_VERIFY' })), error: 'UnsupportedOperationException', member: /^KeySpec SM2 .*China Regions/ },
    { name: 'CreateKey CustomerMasterKeySpec SM2', call: () => kms.send(new K.CreateKeyCommand({ CustomerMasterKeySpec: 'SM2', KeyUsage: 'SIGN_VERIFY' })), error: 'UnsupportedOperationException', member: /^CustomerMasterKeySpec SM2 / },
    { name: 'CreateKey KeySpec outside the API', call: () => kms.send(new K.CreateKeyCommand({ KeySpec: 'RSA_1024' as K.KeySpec })), error: 'ValidationException', member: /'keySpec'.*enum value set/ },
    { name: 'CreateKey KeyUsage ENCAPSULATE_DECAPSULATE on a symmetric key', call: () => kms.send(new K.CreateKeyCommand({ KeyUsage: 'ENCAPSULATE_DECAPSULATE' })), error: 'ValidationException', member: /^KeyUsage ENCAPSULATE_DECAPSULATE is not compatible with KeySpec SYMMETRIC_DEFAULT/ },
    { name: 'CreateKey XksKeyId without an external key store', call: () => kms.send(new K.CreateKeyCommand({ XksKeyId: 'ext-key-1' })), error: 'ValidationException', member: /^XksKeyId .*EXTERNAL_KEY_STORE/ },
    { name: 'CreateKey Origin EXTERNAL_KEY_STORE with XksKeyId', call: () => kms.send(new K.CreateKeyCommand({ Origin: 'EXTERNAL_KEY_STORE', XksKeyId: 'ext-key-1', CustomKeyStoreId: 'cks-1234567890abcdef0' })), error: 'UnsupportedOperationException', member: /^Origin EXTERNAL_KEY_STORE / },
    { name: 'CreateKey MultiRegion', call: () => kms.send(new K.CreateKeyCommand({ MultiRegion: true })), error: 'UnsupportedOperationException', member: /Multi-Region/ },
    { name: 'GenerateDataKeyPair KeyPairSpec ECC_NIST_EDWARDS25519', call: () => kms.send(new K.GenerateDataKeyPairCommand({ KeyId: sym, KeyPairSpec: 'ECC_NIST_EDWARDS25519' })), error: 'UnsupportedOperationException', member: /^KeyPairSpec ECC_NIST_EDWARDS25519 / },
    { name: 'GenerateDataKeyPairWithoutPlaintext KeyPairSpec ML_KEM_1024', call: () => kms.send(new K.GenerateDataKeyPairWithoutPlaintextCommand({ KeyId: sym, KeyPairSpec: 'ML_KEM_1024' })), error: 'UnsupportedOperationException', member: /^KeyPairSpec ML_KEM_1024 / },
    { name: 'Sign SigningAlgorithm ED25519_SHA_512 with an ECC_NIST_P256 key', call: () => kms.send(new K.SignCommand({ KeyId: ecc, Message: new Uint8Array(32), SigningAlgorithm: 'ED25519_SHA_512' })), error: 'InvalidKeyUsageException', member: /ED25519_SHA_512 is incompatible with key spec ECC_NIST_P256/ },
    { name: 'Verify SigningAlgorithm ML_DSA_SHAKE_256 with an ECC_NIST_P256 key', call: () => kms.send(new K.VerifyCommand({ KeyId: ecc, Message: new Uint8Array(32), Signature: new Uint8Array(64), SigningAlgorithm: 'ML_DSA_SHAKE_256' })), error: 'InvalidKeyUsageException', member: /ML_DSA_SHAKE_256 is incompatible/ },
    { name: 'Sign MessageType EXTERNAL_MU with an ECDSA key', call: () => kms.send(new K.SignCommand({ KeyId: ecc, Message: new Uint8Array(64), MessageType: 'EXTERNAL_MU', SigningAlgorithm: 'ECDSA_SHA_256' })), error: 'ValidationException', member: /EXTERNAL_MU/ },
    { name: 'CreateGrant Operations Encapsulate on a symmetric key', call: () => kms.send(new K.CreateGrantCommand({ KeyId: sym, GranteePrincipal: 'arn:aws:iam::111122223333:root', Operations: ['Encapsulate'] })), error: 'ValidationException', member: /^Grant operation Encapsulate is not valid for a key with KeySpec SYMMETRIC_DEFAULT/ },
    { name: 'CreateGrant GranteeServicePrincipal', call: () => kms.send(new K.CreateGrantCommand({ KeyId: sym, GranteeServicePrincipal: 'ec2.amazonaws.com', RetiringPrincipal: 'arn:aws:iam::111122223333:root', Operations: ['Decrypt'], Constraints: { SourceArn: 'arn:aws:ec2:us-east-1:111122223333:volume/vol-1' } })), error: 'UnsupportedOperationException', member: /^GranteeServicePrincipal / },
    { name: 'CreateGrant RetiringServicePrincipal', call: () => kms.send(new K.CreateGrantCommand({ KeyId: sym, GranteePrincipal: 'arn:aws:iam::111122223333:root', RetiringServicePrincipal: 'ec2.amazonaws.com', Operations: ['Decrypt'] })), error: 'UnsupportedOperationException', member: /^RetiringServicePrincipal / },
    { name: 'CreateGrant Constraints.SourceArn', call: () => kms.send(new K.CreateGrantCommand({ KeyId: sym, GranteePrincipal: 'arn:aws:iam::111122223333:root', Operations: ['Decrypt'], Constraints: { SourceArn: 'arn:aws:ec2:us-east-1:111122223333:volume/vol-1' } })), error: 'UnsupportedOperationException', member: /^Constraints\.SourceArn / },
    { name: 'ListGrants GranteeServicePrincipal (a filter, never ignored)', call: () => kms.send(new K.ListGrantsCommand({ KeyId: sym, GranteeServicePrincipal: 'ec2.amazonaws.com' })), error: 'UnsupportedOperationException', member: /^GranteeServicePrincipal / },
    { name: 'ListRetirableGrants RetiringServicePrincipal', call: () => kms.send(new K.ListRetirableGrantsCommand({ RetiringServicePrincipal: 'ec2.amazonaws.com' })), error: 'UnsupportedOperationException', member: /^RetiringServicePrincipal / },
    { name: 'ListKeyRotations IncludeKeyMaterial outside the API', call: () => kms.send(new K.ListKeyRotationsCommand({ KeyId: sym, IncludeKeyMaterial: 'EVERYTHING' as K.IncludeKeyMaterial })), error: 'ValidationException', member: /'includeKeyMaterial'.*ALL_KEY_MATERIAL, ROTATIONS_ONLY/ },
    { name: 'EnableKeyRotation RotationPeriodInDays 89', call: () => kms.send(new K.EnableKeyRotationCommand({ KeyId: sym, RotationPeriodInDays: 89 })), error: 'ValidationException', member: /'rotationPeriodInDays'.*greater than or equal to 90/ },
    { name: 'EnableKeyRotation RotationPeriodInDays 2561', call: () => kms.send(new K.EnableKeyRotationCommand({ KeyId: sym, RotationPeriodInDays: 2561 })), error: 'ValidationException', member: /'rotationPeriodInDays'.*less than or equal to 2560/ },
  ];
  for (const c of cases) {
    it(`${c.name}: ${c.error}, naming the member`, async () => {
      const e = await failure(c.call());
      expect(e, `${c.name} succeeded`).toBeDefined();
      expect([e!.name, e!.$metadata.httpStatusCode]).toEqual([c.error, 400]);
      // The SDK's own class where the KMS model has one (it has none for ValidationException: a KMSServiceException named so).
      expect(e).toBeInstanceOf((K as unknown as Record<string, new (...a: never[]) => unknown>)[c.error] ?? K.KMSServiceException);
      expect(e!.message).toMatch(c.member);
    });
  }

  it('a refused CreateKey made no key: the keys are those of the CreateKey calls that succeeded', async () => {
    const keys = (await kms.send(new K.ListKeysCommand({}))).Keys!;
    const made = auditEvents(env).filter((x) => x.eventName === 'CreateKey' && x.errorCode === undefined);
    expect(auditEvents(env).filter((x) => x.eventName === 'CreateKey' && x.errorCode !== undefined).length).toBeGreaterThan(5);
    expect(keys.length).toBe(made.length);
  });

  it('GetKeyPolicy and PutKeyPolicy without PolicyName (optional in the API) use the default policy', async () => {
    const got = await kms.send(new K.GetKeyPolicyCommand({ KeyId: sym }));
    expect(got.PolicyName).toBe('default');
    await kms.send(new K.PutKeyPolicyCommand({ KeyId: sym, Policy: got.Policy! }));
  });

  it('EnableKeyRotation RotationPeriodInDays 90..2560 shows in GetKeyRotationStatus; ListKeyRotations IncludeKeyMaterial', async () => {
    const key = (await kms.send(new K.CreateKeyCommand({}))).KeyMetadata!;
    await kms.send(new K.EnableKeyRotationCommand({ KeyId: key.KeyId, RotationPeriodInDays: 2560 }));
    const st = await kms.send(new K.GetKeyRotationStatusCommand({ KeyId: key.KeyId }));
    expect(st).toMatchObject({ KeyRotationEnabled: true, RotationPeriodInDays: 2560 });
    expect(st.NextRotationDate!.getTime()).toBeGreaterThan(key.CreationDate!.getTime());
    expect(st.OnDemandRotationStartDate).toBeUndefined(); // on-demand rotation completes within the call here
    await kms.send(new K.RotateKeyOnDemandCommand({ KeyId: key.KeyId }));
    const current = (await kms.send(new K.DescribeKeyCommand({ KeyId: key.KeyId }))).KeyMetadata!.CurrentKeyMaterialId;

    const only = (await kms.send(new K.ListKeyRotationsCommand({ KeyId: key.KeyId }))).Rotations!;
    expect(only).toEqual([{ KeyId: key.Arn, KeyMaterialId: current, KeyMaterialState: 'CURRENT', RotationDate: expect.any(Date), RotationType: 'ON_DEMAND' }]);
    expect((await kms.send(new K.ListKeyRotationsCommand({ KeyId: key.KeyId, IncludeKeyMaterial: 'ROTATIONS_ONLY' }))).Rotations).toEqual(only);

    // ALL_KEY_MATERIAL adds the first material: no RotationDate nor RotationType (KMS API reference, RotationsListEntry).
    const all = await kms.send(new K.ListKeyRotationsCommand({ KeyId: key.KeyId, IncludeKeyMaterial: 'ALL_KEY_MATERIAL', Limit: 1 }));
    expect(all.Rotations).toEqual([{ KeyId: key.Arn, KeyMaterialId: expect.stringMatching(/^[0-9a-f]{64}$/), KeyMaterialState: 'NON_CURRENT' }]);
    expect(all.Rotations![0]!.KeyMaterialId).not.toBe(current);
    const next = await kms.send(new K.ListKeyRotationsCommand({ KeyId: key.KeyId, IncludeKeyMaterial: 'ALL_KEY_MATERIAL', Marker: all.NextMarker }));
    expect(next.Rotations).toEqual(only);
    expect(next.Truncated).toBe(false);
  });
});
