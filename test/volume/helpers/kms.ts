import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { KmsService } from '../../../src/kms/kms-core.js';
import type { AuthzHandles } from '../../../src/kms/authz/index.js';
import { openKms } from '../../../src/kms/open-kms.js';
import type { Caller } from '../../../src/kms/types.js';
import { KmsCoreKeyService, type KeyService } from '../../../src/volume/key-service.js';
import { KeyServiceError } from '../../../src/volume/errors.js';

/**
 * The REAL KMS core for the volume tests (docs/architecture.md §10: no mocks of the KMS
 * core): HSM simulator (inline transport, for start-up speed), keystore,
 * audit log, the policy authorizer with identities and grants, and the grant
 * and key-policy operations, wired by the daemon's own factory
 * (src/kms/open-kms.ts).
 *
 * Principals: the account root (operator levers: CreateKey, DisableKey,
 * RevokeGrant, ListGrants), `user/alice` (uid 1000, the volume owner) and the
 * host role `role/EbsdHost` (uid 999, session `host-1`), grantee and
 * retiring principal of attach grants.
 */
export const ACCOUNT = '111122223333';
export const REGION = 'us-east-1';
export const VIA = `ec2.${REGION}.amazonaws.com`;

/** alice may use any key of the account, but only through EC2 (how EBS users are usually scoped). */
const ALICE_VIA_EC2 = JSON.stringify({
  Version: '2012-10-17',
  Statement: [
    {
      Sid: 'UseKeysForEbsThroughEc2',
      Effect: 'Allow',
      Action: ['kms:GenerateDataKeyWithoutPlaintext', 'kms:Decrypt', 'kms:CreateGrant', 'kms:DescribeKey'],
      Resource: '*',
      Condition: { StringEquals: { 'kms:ViaService': VIA } },
    },
  ],
});

export interface AuditEvent {
  eventName: string;
  userIdentity: { arn?: string; type?: string; invokedBy?: string };
  requestParameters?: Record<string, unknown> & { encryptionContext?: Record<string, string> };
  errorCode?: string;
  additionalEventData?: Record<string, unknown>;
}

export interface KmsHarness {
  kind: 'real-core';
  core: KmsService;
  authz: AuthzHandles;
  /** What the VolumeManager gets: KmsCoreKeyService over the core, behind a switch that can make it unreachable. */
  keyService: KeyService;
  host: Caller;
  user: Caller;
  root: Caller;
  /** CreateKey as the account root (default key policy: delegates to IAM); optional alias. Returns the key ARN. */
  createKey(alias?: string): Promise<string>;
  disableKey(arn: string): Promise<void>;
  enableKey(arn: string): Promise<void>;
  revokeGrant(keyArn: string, grantId: string): Promise<void>;
  /** ListGrants as root: the grant ids on a key. */
  grantIds(keyArn: string): Promise<string[]>;
  /**
   * Make KMS stop answering. This is fault injection on the transport (the
   * core itself is untouched and keeps its state): calls fail with
   * KMSInternalException as a dead endpoint would, which the volume layer
   * must treat as "unreachable", not as a refusal.
   */
  setUnreachable(down: boolean): void;
  /** The core's CloudTrail-format audit events so far (events.ndjson). */
  auditEvents(): Promise<AuditEvent[]>;
  /** Make RetireGrant alone fail as unreachable (detach retry tests). */
  setRetireFails(fail: boolean): void;
  close(): Promise<void>;
}

/** `stateDir` plays the daemon's state dir: identities.json in it, the core under `<stateDir>/kms`. */
export async function kmsHarness(stateDir: string): Promise<KmsHarness> {
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  const kmsDir = join(stateDir, 'kms');
  const authz = await openKms({ stateDir, kmsDir, accountId: ACCOUNT, region: REGION, hsmMode: 'inline' });
  const core = authz.core;
  const ids = authz.identities;
  await ids.createUser('alice');
  await ids.mapUid(1000, 'user/alice');
  await ids.attachPolicy('user/alice', 'ebs-via-ec2', ALICE_VIA_EC2);
  await ids.createRole('EbsdHost');
  // As the daemon gives its host role (src/daemon/daemon.ts): list its own grants, read key states for the shared key check.
  await ids.attachPolicy('role/EbsdHost', 'housekeeping', JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: ['kms:ListRetirableGrants', 'kms:DescribeKey'], Resource: '*' }] }));
  await ids.mapUid(999, 'role/EbsdHost', { session: 'host-1' });
  const root = ids.callerForUid(0);
  const user = ids.callerForUid(1000);
  const host = ids.callerForUid(999);

  const real = new KmsCoreKeyService(core);
  let down = false;
  let retireFails = false;
  const unreachable = (op: string) => new KeyServiceError(op, 'KMSInternalException', false, 'KMS endpoint unreachable (test fault injection)');
  const gate = <A extends unknown[], R>(op: string, f: (...a: A) => Promise<R>) => async (...a: A): Promise<R> => {
    if (down || (retireFails && op === 'RetireGrant')) throw unreachable(op);
    return f.apply(real, a);
  };
  const keyService: KeyService = {
    generateDataKeyWithoutPlaintext: gate('GenerateDataKeyWithoutPlaintext', real.generateDataKeyWithoutPlaintext),
    createGrant: gate('CreateGrant', real.createGrant),
    decrypt: gate('Decrypt', real.decrypt),
    reEncrypt: gate('ReEncrypt', real.reEncrypt),
    retireGrant: gate('RetireGrant', real.retireGrant),
    describeKey: gate('DescribeKey', real.describeKey),
    listRetirableGrants: gate('ListRetirableGrants', real.listRetirableGrants),
  };

  return {
    kind: 'real-core',
    core,
    authz,
    keyService,
    host,
    user,
    root,
    async createKey(alias) {
      const r = (await core.call('CreateKey', { Description: 'volume test key' }, root)) as { KeyMetadata: { Arn: string; KeyId: string } };
      if (alias) await core.call('CreateAlias', { AliasName: alias, TargetKeyId: r.KeyMetadata.KeyId }, root);
      return r.KeyMetadata.Arn;
    },
    async disableKey(arn) {
      await core.call('DisableKey', { KeyId: arn }, root);
    },
    async enableKey(arn) {
      await core.call('EnableKey', { KeyId: arn }, root);
    },
    async revokeGrant(keyArn, grantId) {
      await core.call('RevokeGrant', { KeyId: keyArn, GrantId: grantId }, root);
    },
    async grantIds(keyArn) {
      const r = (await core.call('ListGrants', { KeyId: keyArn }, root)) as { Grants: { GrantId: string }[] };
      return r.Grants.map((g) => g.GrantId);
    },
    async auditEvents() {
      const text = await readFile(join(kmsDir, 'audit', 'events.ndjson'), 'utf8');
      return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as AuditEvent);
    },
    setUnreachable: (d) => void (down = d),
    setRetireFails: (f) => void (retireFails = f),
    close: () => authz.close(),
  };
}
