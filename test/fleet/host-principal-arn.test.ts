/**
 * `--host-principal-arn` (README "A fleet"): STS names an assumed-role session
 * by its role's name only (`assumed-role/NAME/SESSION`), so a host whose role
 * has a path gives the role's ARN itself. The daemon checks it against STS at
 * start: a role of another name or account is refused, naming both ARNs; one
 * that agrees is the host's principal and the grantee of its attach grants.
 * The host is a real daemon whose role session comes from the standard chain
 * (`role_arn` + `source_profile`, STS at a real `--kms-only` daemon on loopback).
 * ebsd's own IAM has no role paths: the path case is seen up to the grant
 * ebsd's KMS refuses, naming the grantee the host sent.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, Env, ensureBuilt, run } from '../e2e/helpers.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { cleanupHostAndKms, savedAwsEnv, setAwsEnv } from './remote-host.js';

describe('--host-principal-arn', () => {
  const kms = new Env('hostarn-kms');
  const host = new Env('hostarn-host');
  const saved = savedAwsEnv();
  let url = '';
  let account = '';
  let keyArn = '';
  const roleArn = (path: string, name: string, acct = account): string => `arn:aws:iam::${acct}:role/${path}${name}`;
  /** A daemon start expected to be refused: its exit code and stderr. */
  const refusedStart = async (arn: string) => {
    const other = new Env('hostarn-refused');
    try {
      return await run(process.execPath, [CLI, 'daemon', '--state-dir', other.state, '--mount', other.mnt, '--kms-endpoint', url, '--host-principal-arn', arn], { timeoutMs: 60_000 });
    } finally {
      await other.cleanup();
    }
  };

  beforeAll(async () => {
    ensureBuilt();
    url = (await startKmsDaemon(kms)).url;
    const userArn = (await kms.api('ebsd.IamCreateUser', { UserName: 'fleet' })).User.Arn as string;
    account = userArn.split(':')[4]!;
    const k = (await kms.api('ebsd.IamCreateAccessKey', { UserName: 'fleet' })).AccessKey;
    await kms.api('ebsd.IamCreateRole', { RoleName: 'host-a' });
    await kms.api('ebsd.IamUpdateAssumeRolePolicy', { RoleName: 'host-a', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Principal: { AWS: userArn }, Action: 'sts:AssumeRole' }] }) });
    await kms.api('ebsd.IamPutPolicy', { Principal: 'role/host-a', PolicyName: 'housekeeping', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:ListRetirableGrants', Resource: '*' }] }) });
    keyArn = (await kms.api('TrentService.CreateKey')).KeyMetadata.Arn as string;
    await kms.api('TrentService.PutKeyPolicy', { KeyId: keyArn, PolicyName: 'default', Policy: JSON.stringify({
      Version: '2012-10-17',
      Statement: [
        { Sid: 'Account', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${account}:root` }, Action: 'kms:*', Resource: '*' },
        { Sid: 'Host', Effect: 'Allow', Principal: { AWS: roleArn('', 'host-a') }, Action: ['kms:GenerateDataKeyWithoutPlaintext', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:CreateGrant', 'kms:DescribeKey'], Resource: '*' },
      ],
    }) });
    // The host's chain: a role session of host-a through STS at the KMS daemon, as README "A fleet" sets it up.
    const aws = join(host.dir, 'aws');
    mkdirSync(aws);
    writeFileSync(join(aws, 'config'), [
      '[profile base]', 'region = us-east-1', `endpoint_url = ${url}`, '',
      '[profile host]', `role_arn = ${roleArn('', 'host-a')}`, 'role_session_name = host-a-1', 'source_profile = base', 'region = us-east-1', `endpoint_url = ${url}`, '',
    ].join('\n'));
    writeFileSync(join(aws, 'credentials'), `[base]\naws_access_key_id = ${k.AccessKeyId}\naws_secret_access_key = ${k.SecretAccessKey}\n`, { mode: 0o600 });
    setAwsEnv({ AWS_CONFIG_FILE: join(aws, 'config'), AWS_SHARED_CREDENTIALS_FILE: join(aws, 'credentials'), AWS_PROFILE: 'host', AWS_EC2_METADATA_DISABLED: 'true' });
  }, 60_000);

  afterAll(async () => {
    await cleanupHostAndKms(host, kms, saved);
  });

  it('a role of another name, another account, or a malformed ARN is refused at start, naming both the given ARN and the STS identity', async () => {
    for (const arn of [roleArn('fleet/', 'host-b'), roleArn('', 'host-a', '000000000000'), `arn:aws:iam::${account}:user/host-a`]) {
      const r = await refusedStart(arn);
      expect(r.code, r.stderr).not.toBe(0);
      expect(r.stderr).toContain(`--host-principal-arn ${arn} is not this host: STS GetCallerIdentity says arn:aws:sts::${account}:assumed-role/host-a/host-a-1`);
      expect(r.stderr).toContain(`role/[PATH/]host-a`);
    }
    const bad = await refusedStart('role/fleet/host-a');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('--host-principal-arn "role/fleet/host-a" is not an IAM role or user ARN');
    const alone = await run(process.execPath, [CLI, 'daemon', '--state-dir', host.state, '--mount', host.mnt, '--host-principal-arn', roleArn('', 'host-a')], { timeoutMs: 60_000 });
    expect(alone.code).not.toBe(0);
    expect(alone.stderr).toContain('--host-principal-arn needs --kms-endpoint');
  });

  it('a role ARN with a path whose last segment is the session\'s role is the host principal: the grant names it as given', async () => {
    const withPath = roleArn('fleet/', 'host-a');
    await host.start(['--kms-endpoint', url, '--host-principal-arn', withPath]);
    try {
      expect((await host.api('ebsd.Status')).Daemon.Kms.HostPrincipal).toBe(withPath);
      // ebsd's IAM has no role paths: its KMS refuses a grantee that does not exist, and says which one the host sent.
      // The first grant is the create's own (its digest's unwrap goes through a short-lived grant to the host).
      const create = await host.cli(['volume', 'create', '--size', '16MiB', '--kms-key', keyArn]);
      expect(create.code).not.toBe(0);
      expect(create.stderr).toContain(`GranteePrincipal "${withPath}" is not a valid principal: no such identity`);
    } finally {
      expect(await host.stop()).toBe(0);
    }
  });

  it('the role ARN as it exists is the grantee and retiring principal of the attach grant (ebsd kms list-grants on the KMS host)', async () => {
    const asIs = roleArn('', 'host-a');
    await host.start(['--kms-endpoint', url, '--host-principal-arn', asIs]);
    expect((await host.api('ebsd.Status')).Daemon.Kms.HostPrincipal).toBe(asIs);
    const vol = (await host.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: keyArn })).VolumeId as string;
    expect((await host.api('ebsd.AttachVolume', { VolumeId: vol })).State).toBe('attached');
    const grants = (await kms.ok(['kms', 'list-grants', '--key-id', keyArn])).Grants as { Name?: string; GranteePrincipal: string; RetiringPrincipal?: string }[];
    expect(grants.filter((g) => g.Name?.endsWith(vol))).toEqual([expect.objectContaining({ GranteePrincipal: asIs, RetiringPrincipal: asIs })]);
    await host.untilClosed(vol);
    expect((await host.api('ebsd.DetachVolume', { VolumeId: vol, Force: false })).State).toBe('detached');

    expect(await host.stop()).toBe(0);
  });
});
