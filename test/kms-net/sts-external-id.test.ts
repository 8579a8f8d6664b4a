/**
 * AssumeRole with a trust policy that has Conditions (sts:ExternalId,
 * aws:SourceIp), over the real listener (`--kms-only --kms-listen
 * 127.0.0.1:0`, the daemon as a child process), driven by
 * `@aws-sdk/client-sts` and by the Debian `aws` CLI: `aws sts assume-role
 * --external-id`, and a shared-config profile with role_arn + source_profile +
 * external_id. The session credentials then work against KMS; a wrong or
 * missing ExternalId, a source address outside the condition, or
 * aws:SecureTransport over plain HTTP, is AccessDenied (403) and audited.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { KMSClient, CreateKeyCommand, ListKeysCommand } from '@aws-sdk/client-kms';
import { STSClient, AssumeRoleCommand, GetCallerIdentityCommand, type STSServiceException } from '@aws-sdk/client-sts';
import { AWS_CLI, KMS_ADMIN_POLICY, StandardChain, auditEvents, awsCliEnv, keyVars, makeAccessKey, startKmsDaemon, type AccessKey } from './helpers.js';
import { Env, ensureBuilt, run } from '../e2e/helpers.js';

const EXTERNAL_ID = 'Partner-7f3a:prod';

describe('AssumeRole trust-policy Conditions over the listener: SDK and aws CLI', () => {
  const env = new Env('stsext');
  const chain = new StandardChain();
  let url = '';
  let accountId = '';
  let alice: AccessKey;
  let partnerArn = '';
  let elsewhereArn = '';

  const denied = (arn: string) => `User: arn:aws:iam::${accountId}:user/alice is not authorized to perform: sts:AssumeRole on resource: ${arn}`;
  /** The aws CLI as `k` (default alice; null: no key in the environment, a profile decides). */
  const aws = (args: string[], extra: Record<string, string> = {}, k: AccessKey | null = alice) =>
    run(AWS_CLI, [...args, '--output', 'json'], { env: awsCliEnv(env.dir, k ?? undefined, { extra }), timeoutMs: 60_000 });

  beforeAll(async () => {
    ensureBuilt();
    ({ url } = await startKmsDaemon(env));
    // alice has no KMS permission of her own: what she does with KMS, she does as the role.
    ({ key: alice, accountId } = await makeAccessKey(env, 'alice'));
    const trust = (Condition: Record<string, unknown>) => JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${accountId}:user/alice` }, Action: 'sts:AssumeRole', Condition }] });
    for (const [role, cond] of [
      ['partner', { StringEquals: { 'sts:ExternalId': EXTERNAL_ID }, IpAddress: { 'aws:SourceIp': '127.0.0.1/32' } }],
      ['elsewhere', { IpAddress: { 'aws:SourceIp': '10.0.0.0/8' } }],
      ['tlsonly', { Bool: { 'aws:SecureTransport': 'true' } }],
    ] as const) {
      await env.api('ebsd.IamCreateRole', { RoleName: role });
      await env.api('ebsd.IamPutPolicy', { Principal: `role/${role}`, PolicyName: 'kms', PolicyDocument: KMS_ADMIN_POLICY });
      await env.api('ebsd.IamUpdateAssumeRolePolicy', { RoleName: role, PolicyDocument: trust(cond) });

    }
    partnerArn = `arn:aws:iam::${accountId}:role/partner`;
    elsewhereArn = `arn:aws:iam::${accountId}:role/elsewhere`;
  });
  // The aws CLI inherits this process's environment: no test leaves a profile or a session in it.
  afterEach(() => chain.use({}));
  afterAll(async () => {
    chain.restore();
    await env.cleanup();
  });

  it('@aws-sdk/client-sts: the right ExternalId from 127.0.0.1 yields a session that works against KMS; wrong, missing or another address is AccessDenied, audited', async () => {
    chain.use(keyVars(alice, url));
    const sts = new STSClient({ maxAttempts: 1 });
    try {
      const r = await sts.send(new AssumeRoleCommand({ RoleArn: partnerArn, RoleSessionName: 'sdk', ExternalId: EXTERNAL_ID }));
      expect(r.AssumedRoleUser!.Arn).toBe(`arn:aws:sts::${accountId}:assumed-role/partner/sdk`);
      chain.use(keyVars({ AccessKeyId: r.Credentials!.AccessKeyId!, SecretAccessKey: r.Credentials!.SecretAccessKey!, SessionToken: r.Credentials!.SessionToken! }, url));
      const kms = new KMSClient({});
      try {
        const k = await kms.send(new CreateKeyCommand({ Description: 'by the partner session' }));
        expect(k.KeyMetadata!.Arn).toMatch(new RegExp(`^arn:aws:kms:us-east-1:${accountId}:key/`));
      } finally {
        kms.destroy();
      }

      for (const [what, input, arn] of [
        ['wrong ExternalId', { RoleArn: partnerArn, RoleSessionName: 'sdk', ExternalId: 'Partner-0000:prod' }, partnerArn],
        ['no ExternalId', { RoleArn: partnerArn, RoleSessionName: 'sdk' }, partnerArn],
        ['aws:SourceIp outside 10.0.0.0/8', { RoleArn: elsewhereArn, RoleSessionName: 'sdk' }, elsewhereArn],
        // This listener is plain HTTP (loopback): aws:SecureTransport is false.
        ['aws:SecureTransport over plain HTTP', { RoleArn: `arn:aws:iam::${accountId}:role/tlsonly`, RoleSessionName: 'sdk' }, `arn:aws:iam::${accountId}:role/tlsonly`],
      ] as const) {
        const e = await sts.send(new AssumeRoleCommand(input)).then(() => undefined, (x: unknown) => x as STSServiceException);
        expect(e, what).toBeDefined();
        expect({ what, name: e!.name, status: e!.$metadata.httpStatusCode, message: e!.message }).toEqual({ what, name: 'AccessDenied', status: 403, message: denied(arn) });
        const ev = auditEvents(env).filter((x) => x.requestID === e!.$metadata.requestId);
        expect(ev, what).toMatchObject([{ eventSource: 'sts.amazonaws.com', eventName: 'AssumeRole', errorCode: 'AccessDenied', sourceIPAddress: '127.0.0.1', userIdentity: { arn: `arn:aws:iam::${accountId}:user/alice` } }]);
      }
      // Members this STS does not implement narrow or label a session: refused by name, never ignored
      // (ignoring a managed session policy would hand out a session broader than the caller asked for).
      for (const [member, extra] of [
        ['PolicyArns', { PolicyArns: [{ arn: 'arn:aws:iam::aws:policy/ReadOnlyAccess' }] }],
        ['Tags', { Tags: [{ Key: 'team', Value: 'a' }] }],
        ['SourceIdentity', { SourceIdentity: 'alice-laptop' }],
      ] as const) {
        const e = await sts.send(new AssumeRoleCommand({ RoleArn: partnerArn, RoleSessionName: 'sdk', ExternalId: EXTERNAL_ID, ...extra })).then(() => undefined, (x: unknown) => x as STSServiceException);
        expect(e, member).toBeDefined();
        expect({ member, name: e!.name, status: e!.$metadata.httpStatusCode }).toEqual({ member, name: 'ValidationError', status: 400 });
        expect(e!.message).toContain(member === 'PolicyArns' ? 'AssumeRole member PolicyArns.member.1.arn names a managed policy' : `AssumeRole member ${member} is not supported`);
        expect(auditEvents(env).filter((x) => x.requestID === e!.$metadata.requestId), member).toMatchObject([{ eventName: 'AssumeRole', errorCode: 'ValidationError' }]);
      }
    } finally {
      sts.destroy();
    }
    // The ExternalId is a request parameter, not something the audit or the log keeps. (The trust policy that
    // names it is recorded by IAM's UpdateAssumeRolePolicy event, as CloudTrail records it.)
    const notIam = auditEvents(env).filter((x) => x.eventSource !== 'iam.amazonaws.com');
    expect(notIam.some((x) => x.eventSource === 'sts.amazonaws.com')).toBe(true);
    expect(JSON.stringify(notIam)).not.toContain(EXTERNAL_ID);
    expect(env.daemonLog()).not.toContain(EXTERNAL_ID);
  });

  it('@aws-sdk/client-sts with an inline session Policy: PackedPolicySize, and KMS allows the session only what the policy allows too', async () => {
    chain.use(keyVars(alice, url));
    const sts = new STSClient({ maxAttempts: 1 });
    const Policy = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:ListKeys', Resource: '*' }] });
    let r;
    try {
      r = await sts.send(new AssumeRoleCommand({ RoleArn: partnerArn, RoleSessionName: 'scoped', ExternalId: EXTERNAL_ID, Policy }));
      const bad = await sts.send(new AssumeRoleCommand({ RoleArn: partnerArn, RoleSessionName: 'scoped', ExternalId: EXTERNAL_ID, Policy: '{"Statement":' })).then(() => undefined, (x: unknown) => x as STSServiceException);
      expect({ name: bad?.name, status: bad?.$metadata.httpStatusCode }).toEqual({ name: 'MalformedPolicyDocumentException', status: 400 });
    } finally {
      sts.destroy();
    }
    expect(r.PackedPolicySize).toBeGreaterThan(0);
    expect(r.PackedPolicySize).toBeLessThanOrEqual(100);
    const ev = auditEvents(env).filter((x) => x.requestID === r.$metadata.requestId);
    expect(ev).toMatchObject([{ eventName: 'AssumeRole', requestParameters: { roleSessionName: 'scoped', policy: Policy } }]);
    chain.use(keyVars({ AccessKeyId: r.Credentials!.AccessKeyId!, SecretAccessKey: r.Credentials!.SecretAccessKey!, SessionToken: r.Credentials!.SessionToken! }, url));
    const kms = new KMSClient({ maxAttempts: 1 });
    try {
      await expect(kms.send(new ListKeysCommand({}))).resolves.toHaveProperty('Keys');
      const e = await kms.send(new CreateKeyCommand({ Description: 'not in the session policy' })).then(() => undefined, (x: unknown) => x as Error);
      expect({ name: e?.name, message: e?.message }).toEqual({
        name: 'AccessDeniedException',
        message: `User: arn:aws:sts::${accountId}:assumed-role/partner/scoped is not authorized to perform: kms:CreateKey on resource: * because no session policy allows the kms:CreateKey action`,
      });
    } finally {
      kms.destroy();
    }
  });

  it('@aws-sdk/client-sts through a shared config profile with role_arn + source_profile + external_id', async () => {
    const config = join(env.dir, 'sdk-config');
    const creds = join(env.dir, 'sdk-credentials');
    writeFileSync(creds, `[base]\naws_access_key_id = ${alice.AccessKeyId}\naws_secret_access_key = ${alice.SecretAccessKey}\n`, { mode: 0o600 });
    const profile = (name: string, externalId: string) => `[profile ${name}]\nrole_arn = ${partnerArn}\nrole_session_name = ini\nsource_profile = base\nexternal_id = ${externalId}\nregion = us-east-1\nendpoint_url = ${url}\n`;
    writeFileSync(config, `[profile base]\nregion = us-east-1\nendpoint_url = ${url}\n\n${profile('partner', EXTERNAL_ID)}\n${profile('impostor', 'Partner-0000:prod')}`);
    chain.use({ AWS_CONFIG_FILE: config, AWS_SHARED_CREDENTIALS_FILE: creds, AWS_PROFILE: 'partner' });
    const kms = new KMSClient({});
    try {
      expect(await new STSClient({}).send(new GetCallerIdentityCommand({}))).toMatchObject({ Arn: `arn:aws:sts::${accountId}:assumed-role/partner/ini` });
      expect((await kms.send(new ListKeysCommand({}))).Keys!.length).toBeGreaterThanOrEqual(1);
    } finally {
      kms.destroy();
    }
    chain.use({ AWS_CONFIG_FILE: config, AWS_SHARED_CREDENTIALS_FILE: creds, AWS_PROFILE: 'impostor' });
    await expect(new STSClient({ maxAttempts: 1 }).send(new GetCallerIdentityCommand({}))).rejects.toMatchObject({ name: 'AccessDenied' });
  });

  it('aws CLI: sts assume-role --external-id, then KMS with the session; a wrong one exits 254 (AccessDenied)', async () => {
    const ok = await aws(['sts', 'assume-role', '--role-arn', partnerArn, '--role-session-name', 'cli', '--external-id', EXTERNAL_ID, '--endpoint-url', url]);
    expect(ok.stderr).toBe('');
    const r = JSON.parse(ok.stdout);
    expect(r.AssumedRoleUser.Arn).toBe(`arn:aws:sts::${accountId}:assumed-role/partner/cli`);
    const session = await aws(['kms', 'list-keys', '--endpoint-url', url], { AWS_SESSION_TOKEN: r.Credentials.SessionToken },
      { ...alice, AccessKeyId: r.Credentials.AccessKeyId, SecretAccessKey: r.Credentials.SecretAccessKey });
    expect([session.code, session.stderr]).toEqual([0, '']);
    expect(JSON.parse(session.stdout).Keys.length).toBeGreaterThanOrEqual(1);
    const bad = await aws(['sts', 'assume-role', '--role-arn', partnerArn, '--role-session-name', 'cli', '--external-id', 'Partner-0000:prod', '--endpoint-url', url]);
    expect(bad.code).toBe(254); // awscli: the service answered with an error
    expect(bad.stderr).toContain('(AccessDenied)');
    expect(bad.stderr).toContain(denied(partnerArn));
  });

  it('aws CLI: a shared config profile with role_arn + source_profile + external_id assumes the role and reaches KMS', async () => {
    // This CLI (2.9) has no endpoint_url setting, and its assume-role provider ignores --endpoint-url:
    // an endpoint rule set under AWS_DATA_PATH (botocore's data override) sends its STS calls here.
    const data = join(env.dir, 'aws-data', 'sts', '2011-06-15');
    mkdirSync(data, { recursive: true });
    const param = (builtIn: string, type: 'String' | 'Boolean', required = false) => ({ builtIn, type, required, ...(type === 'Boolean' ? { default: false, required: true } : {}), documentation: builtIn });
    writeFileSync(join(data, 'endpoint-rule-set-1.json'), JSON.stringify({
      version: '1.0',
      parameters: { Region: param('AWS::Region', 'String'), UseDualStack: param('AWS::UseDualStack', 'Boolean'), UseFIPS: param('AWS::UseFIPS', 'Boolean'), Endpoint: param('SDK::Endpoint', 'String'), UseGlobalEndpoint: param('AWS::STS::UseGlobalEndpoint', 'Boolean') },
      rules: [
        { conditions: [{ fn: 'isSet', argv: [{ ref: 'Endpoint' }] }], endpoint: { url: { ref: 'Endpoint' }, properties: {}, headers: {} }, type: 'endpoint' },
        { conditions: [], endpoint: { url, properties: {}, headers: {} }, type: 'endpoint' },
      ],
    }));
    const config = join(env.dir, 'cli-config');
    const creds = join(env.dir, 'cli-credentials');
    writeFileSync(creds, `[base]\naws_access_key_id = ${alice.AccessKeyId}\naws_secret_access_key = ${alice.SecretAccessKey}\n`, { mode: 0o600 });
    const profile = (name: string, externalId: string) => `[profile ${name}]\nrole_arn = ${partnerArn}\nrole_session_name = cli-profile\nsource_profile = base\nexternal_id = ${externalId}\nregion = us-east-1\n`;
    writeFileSync(config, `[profile base]\nregion = us-east-1\n\n${profile('partner', EXTERNAL_ID)}\n${profile('impostor', 'Partner-0000:prod')}`);
    const files = { AWS_CONFIG_FILE: config, AWS_SHARED_CREDENTIALS_FILE: creds, AWS_DATA_PATH: join(env.dir, 'aws-data') };

    const me = await aws(['sts', 'get-caller-identity', '--profile', 'partner', '--endpoint-url', url], files, null);
    expect([me.code, me.stderr]).toEqual([0, '']);
    expect(JSON.parse(me.stdout).Arn).toBe(`arn:aws:sts::${accountId}:assumed-role/partner/cli-profile`);
    const key = await aws(['kms', 'create-key', '--description', 'by the cli profile', '--profile', 'partner', '--endpoint-url', url], files, null);
    expect([key.code, key.stderr]).toEqual([0, '']);
    const keyId = JSON.parse(key.stdout).KeyMetadata.KeyId;
    expect(auditEvents(env).filter((e) => e.eventName === 'CreateKey' && e.responseElements?.keyMetadata?.KeyId === keyId).map((e) => e.userIdentity.arn))
      .toEqual([`arn:aws:sts::${accountId}:assumed-role/partner/cli-profile`]);

    const impostor = await aws(['kms', 'list-keys', '--profile', 'impostor', '--endpoint-url', url], files, null);
    expect(impostor.code).not.toBe(0);
    expect(impostor.stderr).toContain('AccessDenied');
  });
});
