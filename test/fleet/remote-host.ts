import type { Env } from '../e2e/helpers.js';

/**
 * A host B that reaches host A's KMS with --kms-endpoint, as the fleet's
 * local-authorization tests set it up: an IAM user `host-b` on A with an access
 * key (and kms:ListRetirableGrants for its start-up sweep), the key-policy
 * statements a customer key gives it (README "A fleet"), and the AWS
 * environment B's SDK reads (credentials, STS at A), restored afterwards.
 */
export interface RemoteHostUser {
  hostArn: string;
  account: string;
  key: { AccessKeyId: string; SecretAccessKey: string };
}

export async function createRemoteHostUser(a: Env): Promise<RemoteHostUser> {
  const hostArn = (await a.api('ebsd.IamCreateUser', { UserName: 'host-b' })).User.Arn as string;
  const key = (await a.api('ebsd.IamCreateAccessKey', { UserName: 'host-b' })).AccessKey;
  await a.api('ebsd.IamPutPolicy', { Principal: 'user/host-b', PolicyName: 'housekeeping', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:ListRetirableGrants', Resource: '*' }] }) });

  return { hostArn, account: hostArn.split(':')[4]!, key };
}

/** A key policy: the account may do everything, host B what a host needs. */
export function hostKeyPolicy(h: RemoteHostUser): string {
  return JSON.stringify({
    Version: '2012-10-17',
    Statement: [
      { Sid: 'Account', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${h.account}:root` }, Action: 'kms:*', Resource: '*' },
      { Sid: 'HostB', Effect: 'Allow', Principal: { AWS: h.hostArn }, Action: ['kms:GenerateDataKeyWithoutPlaintext', 'kms:Decrypt', 'kms:ReEncrypt*', 'kms:CreateGrant', 'kms:DescribeKey'], Resource: '*' },
    ],
  });
}

/** The manifest MAC actions README "Snapshot store" tells a fleet host to be allowed on the key of --snapshot-manifest-key. */
export const MANIFEST_KEY_HOST_ACTIONS = ['kms:GenerateMac', 'kms:VerifyMac', 'kms:DescribeKey'];

/**
 * An HMAC_256 key for --snapshot-manifest-key on the KMS of `a`, its policy letting the account do
 * everything and host B `actions` (a test of a refusal gives fewer); returns its ARN.
 */
export async function createManifestKey(a: Env, h: RemoteHostUser, actions: string[] = MANIFEST_KEY_HOST_ACTIONS): Promise<string> {
  const arn = (await a.api('TrentService.CreateKey', { KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC', Description: 'manifests' })).KeyMetadata.Arn as string;
  await a.api('TrentService.PutKeyPolicy', { KeyId: arn, PolicyName: 'default', Policy: JSON.stringify({
    Version: '2012-10-17',
    Statement: [
      { Sid: 'Account', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${h.account}:root` }, Action: 'kms:*', Resource: '*' },
      { Sid: 'HostB', Effect: 'Allow', Principal: { AWS: h.hostArn }, Action: actions, Resource: '*' },
    ],
  }) });
  return arn;
}

/** The AWS_* environment now: restoreAwsEnv puts it back. */
export function savedAwsEnv(): Record<string, string | undefined> {
  return Object.fromEntries(Object.entries(process.env).filter(([x]) => x.startsWith('AWS_')));
}

/** Only `vars` of the AWS_* environment, for the host daemon started next. */
export function setAwsEnv(vars: Record<string, string>): void {
  for (const x of Object.keys(process.env)) if (x.startsWith('AWS_')) delete process.env[x];
  Object.assign(process.env, vars);
}

/** Host B's SDK environment: its access key, STS at `url`, no config files. */
export function hostBEnv(h: RemoteHostUser, url: string): void {
  setAwsEnv({
    AWS_ACCESS_KEY_ID: h.key.AccessKeyId, AWS_SECRET_ACCESS_KEY: h.key.SecretAccessKey, AWS_REGION: 'us-east-1',
    AWS_ENDPOINT_URL_STS: url, AWS_CONFIG_FILE: '/nonexistent', AWS_SHARED_CREDENTIALS_FILE: '/nonexistent',
  });
}

export function restoreAwsEnv(saved: Record<string, string | undefined>): void {
  setAwsEnv(saved as Record<string, string>);
}

/** A remote-KMS test's end: the host daemon, then the KMS daemon, cleaned up, and the AWS_* environment put back whatever happens. */
export async function cleanupHostAndKms(host: Env, kms: Env, saved: Record<string, string | undefined>): Promise<void> {
  try {
    await host.cleanup();
    await kms.cleanup();
  } finally {
    restoreAwsEnv(saved);
  }
}
