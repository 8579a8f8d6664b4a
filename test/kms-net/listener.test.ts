/**
 * The KMS as a network service, driven by the real AWS SDK clients configured
 * only through the standard chain (environment variables; a shared config
 * file with role_arn + source_profile + endpoint_url), against the daemon as
 * a child process (`--kms-only --kms-listen 127.0.0.1:0`), with TLS and HTTP on
 * the front-end worker and on the main thread (`--kms-front-threads 1`, `0`).
 */
import { writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  KMSClient, CreateKeyCommand, EncryptCommand, DecryptCommand, DescribeKeyCommand, ListKeysCommand, NotFoundException,
  InvalidCiphertextException, paginateListKeys,
} from '@aws-sdk/client-kms';
import { STSClient, GetCallerIdentityCommand } from '@aws-sdk/client-sts';
import { SignatureV4 } from '@smithy/signature-v4';
import { FRONT_THREADS, KMS_ADMIN_POLICY, Sha256, StandardChain, auditEvents, keyVars, kmsUrl, makeAccessKey, startKmsDaemon } from './helpers.js';
import { Env, ensureBuilt, run, CLI } from '../e2e/helpers.js';
import { poll } from '../helpers/poll.js';

describe.each(FRONT_THREADS)('KMS and STS over HTTP + SigV4, real SDK clients (--kms-front-threads %i)', (front) => {
  const env = new Env('kmsnet');
  const chain = new StandardChain();
  let url = '';
  let alice = { AccessKeyId: '', SecretAccessKey: '' };
  let accountId = '';

  const useEnv = (vars: Record<string, string>): void => chain.use(vars);
  const asAlice = (): void => useEnv(keyVars(alice, url));
  const events = (): Record<string, any>[] => auditEvents(env);

  /** A request signed by the reference signer, then changed by `mutate`, sent with fetch. */
  const signed = async (body: string, o: { secret?: string; accessKeyId?: string; region?: string; service?: string; date?: Date; target?: string; unsigned?: string[]; mutate?: (h: Record<string, string>, b: string) => [Record<string, string>, string] } = {}) => {
    const u = new URL(url);
    const signer = new SignatureV4({
      credentials: { accessKeyId: o.accessKeyId ?? alice.AccessKeyId, secretAccessKey: o.secret ?? alice.SecretAccessKey },
      region: o.region ?? 'us-east-1', service: o.service ?? 'kms', sha256: Sha256,
    });
    const req = await signer.sign({
      method: 'POST', protocol: 'http:', hostname: u.hostname, port: Number(u.port), path: '/', query: {},
      headers: { host: u.host, 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `TrentService.${o.target ?? 'CreateKey'}`, 'user-agent': 'kmsnet-test' }, body,
    }, { ...(o.date ? { signingDate: o.date } : {}), ...(o.unsigned ? { unsignableHeaders: new Set(o.unsigned) } : {}) });
    let headers = req.headers as Record<string, string>;
    let b = body;
    if (o.mutate) [headers, b] = o.mutate({ ...headers }, body);
    delete headers.host;
    const res = await fetch(url, { method: 'POST', headers, body: b });
    return { status: res.status, requestId: res.headers.get('x-amzn-requestid')!, body: await res.json() as Record<string, unknown> };
  };

  beforeAll(async () => {
    ensureBuilt();
    ({ url } = await startKmsDaemon(env, { frontThreads: front }));
    ({ key: alice, accountId } = await makeAccessKey(env, 'alice', KMS_ADMIN_POLICY, 'admin'));
    await env.api('ebsd.IamCreateRole', { RoleName: 'app' });
    await env.api('ebsd.IamPutPolicy', { Principal: 'role/app', PolicyName: 'admin', PolicyDocument: KMS_ADMIN_POLICY });
    await env.api('ebsd.IamUpdateAssumeRolePolicy', { RoleName: 'app', PolicyDocument:
      JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${accountId}:user/alice` }, Action: 'sts:AssumeRole' }] }) });
  });

  afterAll(async () => {
    chain.restore();
    await env.cleanup();
  });

  it('create-access-key answers in the shape of aws iam create-access-key, and the secret is stored only sealed', async () => {
    expect(alice).toMatchObject({ UserName: 'alice', Status: 'Active', AccessKeyId: expect.stringMatching(/^AKIA[A-Z2-7]{16}$/), SecretAccessKey: expect.stringMatching(/^[A-Za-z0-9+/]{40}$/) });
    const listed = await env.ok(['iam', 'list-access-keys', '--user-name', 'alice']);
    expect(listed.AccessKeyMetadata).toEqual([{ UserName: 'alice', AccessKeyId: alice.AccessKeyId, Status: 'Active', CreateDate: expect.any(String) }]);
    expect(JSON.stringify(listed)).not.toContain(alice.SecretAccessKey);
    const r = await run('grep', ['-rlF', alice.SecretAccessKey, env.dir]);
    expect(r.stdout).toBe(''); // not in the state dir, the audit log or the daemon's log
  });

  it('create-key, encrypt/decrypt with context, a typed NotFoundException and a paginator (credentials from the environment)', async () => {
    asAlice();
    const kms = new KMSClient({});
    const { KeyMetadata } = await kms.send(new CreateKeyCommand({ Description: 'over the wire' }));
    expect(KeyMetadata!.Arn).toMatch(new RegExp(`^arn:aws:kms:us-east-1:${accountId}:key/`));
    const ctx = { app: 'kmsnet' };
    const enc = await kms.send(new EncryptCommand({ KeyId: KeyMetadata!.KeyId, Plaintext: Buffer.from('secret words'), EncryptionContext: ctx }));
    const dec = await kms.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob, EncryptionContext: ctx }));
    expect(Buffer.from(dec.Plaintext!).toString()).toBe('secret words');
    await expect(kms.send(new DecryptCommand({ CiphertextBlob: enc.CiphertextBlob, EncryptionContext: { app: 'other' } }))).rejects.toBeInstanceOf(InvalidCiphertextException);
    const nf = await kms.send(new DescribeKeyCommand({ KeyId: 'alias/does-not-exist' })).catch((e: unknown) => e);
    expect(nf).toBeInstanceOf(NotFoundException);
    // The audit event of the call carries the id the SDK saw (x-amzn-RequestId).
    const rid = (nf as NotFoundException).$metadata.requestId!;
    expect(events().find((e) => e.requestID === rid)).toMatchObject({ eventName: 'DescribeKey', errorCode: 'NotFoundException', sourceIPAddress: '127.0.0.1', userIdentity: { arn: `arn:aws:iam::${accountId}:user/alice`, accessKeyId: alice.AccessKeyId } });
    for (let i = 0; i < 2; i++) await kms.send(new CreateKeyCommand({}));
    const pages: number[] = [];
    const ids: string[] = [];
    for await (const p of paginateListKeys({ client: kms, pageSize: 1 }, {})) { pages.push(p.Keys!.length); ids.push(...p.Keys!.map((k) => k.KeyId!)); }
    expect(pages.length).toBeGreaterThanOrEqual(3);
    expect(new Set(ids).size).toBe(ids.length);
    kms.destroy();
  });

  it('STS: GetCallerIdentity, and a shared-config profile with role_arn + source_profile + endpoint_url reaches KMS as the assumed role', async () => {
    asAlice();
    const me = await new STSClient({}).send(new GetCallerIdentityCommand({}));
    expect(me).toMatchObject({ Account: accountId, Arn: `arn:aws:iam::${accountId}:user/alice` });
    const config = join(env.dir, 'aws-config');
    const creds = join(env.dir, 'aws-credentials');
    writeFileSync(creds, `[base]\naws_access_key_id = ${alice.AccessKeyId}\naws_secret_access_key = ${alice.SecretAccessKey}\n`, { mode: 0o600 });
    writeFileSync(config, `[profile base]\nregion = us-east-1\nendpoint_url = ${url}\n\n[profile app]\nrole_arn = arn:aws:iam::${accountId}:role/app\nrole_session_name = kmsnet\nsource_profile = base\nregion = us-east-1\nendpoint_url = ${url}\n`);
    useEnv({ AWS_CONFIG_FILE: config, AWS_SHARED_CREDENTIALS_FILE: creds, AWS_PROFILE: 'app' });
    const session = `arn:aws:sts::${accountId}:assumed-role/app/kmsnet`;
    expect(await new STSClient({}).send(new GetCallerIdentityCommand({}))).toMatchObject({ Arn: session });
    const kms = new KMSClient({});
    const k = await kms.send(new CreateKeyCommand({ Description: 'by the role' }));
    expect(events().filter((e) => e.eventName === 'CreateKey' && e.responseElements?.keyMetadata?.KeyId === k.KeyMetadata!.KeyId).map((e) => e.userIdentity.arn)).toEqual([session]);
    expect(events().some((e) => e.eventSource === 'sts.amazonaws.com' && e.eventName === 'AssumeRole' && !e.errorCode)).toBe(true);
    expect(env.auditText()).not.toMatch(/ASIA[A-Z2-7]{16}.*SessionToken|secretAccessKey/i);
    kms.destroy();
  });

  it('refuses each unauthenticated request with the AWS name, audits it, and never runs the operation', async () => {
    const keysBefore = await (async () => { asAlice(); return (await new KMSClient({}).send(new ListKeysCommand({ Limit: 1000 }))).Keys!.length; })();
    const minutes = (n: number) => new Date(Date.now() + n * 60_000);
    const cases: [string, Awaited<ReturnType<typeof signed>>, string][] = [
      ['no signature', await signed('{}', { mutate: (h, b) => { delete h.authorization; return [h, b]; } }), 'MissingAuthenticationTokenException'],
      ['bad signature', await signed('{}', { mutate: (h, b) => [{ ...h, authorization: h.authorization!.replace(/Signature=\w{4}/, 'Signature=0000') }, b] }), 'InvalidSignatureException'],
      ['garbage Authorization', await signed('{}', { mutate: (h, b) => [{ ...h, authorization: 'AWS4-HMAC-SHA256 nonsense' }, b] }), 'IncompleteSignatureException'],
      ['wrong secret', await signed('{}', { secret: 'x'.repeat(40) }), 'InvalidSignatureException'],
      ['tampered body', await signed('{"Description":"a"}', { mutate: (h) => [h, '{"Description":"b"}'] }), 'InvalidSignatureException'],
      ['wrong region', await signed('{}', { region: 'eu-west-1' }), 'InvalidSignatureException'],
      ['wrong service', await signed('{}', { service: 'sts' }), 'InvalidSignatureException'],
      ['date 17 minutes off', await signed('{}', { date: minutes(-17) }), 'InvalidSignatureException'],
      ['unknown access key', await signed('{}', { accessKeyId: 'AKIAAAAAAAAAAAAAAAAA' }), 'UnrecognizedClientException'],
      // A signature that leaves the operation out could be replayed as another operation.
      ['operation not signed', await signed('{}', { unsigned: ['x-amz-target'] }), 'IncompleteSignatureException'],
      ['content type not signed', await signed('{}', { unsigned: ['content-type'] }), 'IncompleteSignatureException'],
    ];
    for (const [what, r, name] of cases) {
      expect({ what, status: r.status, body: r.body }).toEqual({ what, status: 400, body: { __type: name, message: expect.any(String) } });
      const ev = events().filter((e) => e.requestID === r.requestId);
      expect(ev, what).toHaveLength(1);
      expect(ev[0], what).toMatchObject({ eventName: 'CreateKey', errorCode: name, sourceIPAddress: '127.0.0.1', userAgent: 'kmsnet-test' });
      if (what !== 'no signature' && what !== 'garbage Authorization') expect(ev[0].userIdentity.accessKeyId, what).toMatch(/^AKIA/);
    }
    // Inactive, then active again: the same key, the same SDK client.
    await env.ok(['iam', 'update-access-key', '--access-key-id', alice.AccessKeyId, '--status', 'Inactive']);
    const off = await signed('{}');
    expect(off).toMatchObject({ status: 400, body: { __type: 'UnrecognizedClientException' } });
    asAlice();
    await expect(new KMSClient({}).send(new ListKeysCommand({}))).rejects.toMatchObject({ name: 'UnrecognizedClientException' });
    await env.ok(['iam', 'update-access-key', '--access-key-id', alice.AccessKeyId, '--status', 'Active']);
    const keysAfter = (await new KMSClient({}).send(new ListKeysCommand({ Limit: 1000 }))).Keys!.length;
    expect(keysAfter).toBe(keysBefore); // none of the refused CreateKeys ran
  });

  it('refuses a body over the limit with a typed 413, and plain HTTP on a non-loopback address (exit 9)', async () => {
    const big = await signed(JSON.stringify({ Description: 'x'.repeat(1 << 20) }));
    expect(big).toMatchObject({ status: 413, body: { __type: 'RequestEntityTooLargeException' } });
    const other = new Env('kmsnet-plain');
    try {
      const r = await run(process.execPath, [CLI, 'daemon', '--state-dir', other.state, '--kms-only', '--kms-listen', '0.0.0.0:0'], { timeoutMs: 30_000 });
      expect(r.code).toBe(9);
      expect(r.stderr).toMatch(/plain HTTP.*loopback/);
    } finally {
      await other.cleanup();
    }
  });
});

/**
 * `ebsd status` names the URL each listener bound (with port 0 the ready log line was the only other place to
 * find it), on a --kms-only daemon as on one serving volumes, and leaves out of a --kms-only daemon's status
 * what applies to volumes only (README, "KMS over the network").
 */
describe('ebsd status names the listeners a daemon has, and a --kms-only one shows no volume settings', () => {
  const VOLUME_ONLY = ['MountDir', 'AllowUnencrypted', 'XtsEngine', 'WriteBehind', 'KeyCacheTtlSeconds', 'KeyCacheMaxStaleSeconds'];
  const kmsOnly = new Env('kmsnet-status');
  const full = new Env('kmsnet-status-full');
  afterAll(async () => {
    await kmsOnly.cleanup();
    await full.cleanup();
  }, 60_000);

  it('--kms-only with --metrics-listen: KmsUrl and MetricsUrl (both answer), KmsOnly, no volume-only setting, no volume table', async () => {
    ensureBuilt();
    const { url } = await startKmsDaemon(kmsOnly, { extra: ['--metrics-listen', '127.0.0.1:0'] });
    const st = await kmsOnly.ok(['status']);
    expect(st.Daemon).toMatchObject({ KmsOnly: true, KmsUrl: url, MetricsUrl: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/) });
    for (const k of VOLUME_ONLY) expect(st.Daemon, k).not.toHaveProperty(k);
    expect(st.Volumes).toEqual([]);
    // The URLs are the listeners' own: the KMS one answers an unsigned request with KMS's refusal, the metrics one its page.
    const kms = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'TrentService.ListKeys' }, body: '{}' });
    expect(((await kms.json()) as { __type: string }).__type).toBe('MissingAuthenticationTokenException');
    expect((await fetch(st.Daemon.MetricsUrl)).status).toBe(200);
    const text = await kmsOnly.cli(['status', '--output', 'table']);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toContain(`KmsUrl: ${url}`);
    expect(text.stdout).toContain(`MetricsUrl: ${st.Daemon.MetricsUrl}`);
    for (const k of [...VOLUME_ONLY, '(none)', 'EXPIRES']) expect(text.stdout, k).not.toContain(k);
  }, 60_000);

  it('--kms-only (the guard on the front-end worker): its connections, the busiest source and the refusals, in status and in the metrics', async () => {
    const st0 = await kmsOnly.api('ebsd.Status');
    const url = new URL(st0.Daemon.KmsUrl as string);
    const metricsUrl = st0.Daemon.MetricsUrl as string;
    // Another local user sees the counts, not which sources hold the connections (asked before the connections
    // below: they must be checked within the listener's 10 s header timeout, which closes them after that).
    await kmsOnly.api('ebsd.IamCreateUser', { UserName: 'viewer' });
    await kmsOnly.api('ebsd.IamMapUid', { Uid: 4242, Principal: 'user/viewer' });
    const other = await kmsOnly.cli(['status', '--output', 'json'], { uid: 4242 });
    expect(other.code, other.stderr).toBe(0);
    const seen = (other.json() as { Daemon: { KmsListener: Record<string, unknown> } }).Daemon.KmsListener;
    expect(seen).toMatchObject({ Connections: expect.any(Number), Sources: expect.any(Number), MaxConnectionsPerSource: 128 });
    expect(seen).not.toHaveProperty('BusiestSources');
    const table = await kmsOnly.cli(['status', '--output', 'table']);
    expect(table.stdout).toMatch(/KmsListener:\n {2}Connections: \d+/);
    // The case above left a keep-alive connection (fetch's): gone once idle for the listener's 5 s.
    await poll(async () => (await kmsOnly.api('ebsd.Status')).Daemon.KmsListener.Connections === 0, { tries: 300, everyMs: 50 });
    const socks: Socket[] = [];
    try {
      // One source (this process's user on loopback) past its cap: 128 held, the rest refused at accept.
      for (let i = 0; i < 131; i++) {
        const s = connect({ host: url.hostname, port: Number(url.port) });
        s.on('error', () => {});
        socks.push(s);
      }
      // Straight to the control socket (no CLI process per poll).
      const st = await poll(async () => {
        const v = await kmsOnly.api('ebsd.Status');
        const l = v.Daemon.KmsListener;
        return l.Connections === 128 && (l.RefusedSinceStart['per-caller-limit'] ?? 0) >= 3 ? v : undefined;
      }, { tries: 200, everyMs: 25 });
      expect(st.Daemon.KmsListener).toMatchObject({
        Connections: 128, MaxConnections: 1024, Sources: 1, MaxConnectionsPerSource: 128,
        BusiestSources: [{ Source: 'uid:0', Connections: 128 }],
      });
      const text = await (await fetch(metricsUrl)).text();
      expect(Number(/^ebsd_kms_listener_refusals_total\{reason="per-caller-limit"\} (\d+)$/m.exec(text)?.[1])).toBeGreaterThanOrEqual(3);
      expect(text).toMatch(/^ebsd_kms_listener_refusals_total\{reason="total-limit"\} 0$/m);
      // The gauge counts them too (fewer if the header timeout, 10 s without a request, has closed some by now).
      expect(Number(/^ebsd_kms_listener_connections (\d+)$/m.exec(text)?.[1])).toBeGreaterThan(0);
    } finally {
      for (const s of socks) s.destroy();
    }
    const after = await poll(async () => {
      const v = await kmsOnly.api('ebsd.Status');
      return v.Daemon.KmsListener.Connections === 0 ? v : undefined;
    }, { tries: 200, everyMs: 50 });
    expect(after.Daemon.KmsListener).toMatchObject({ Sources: 0, BusiestSources: [] });
  }, 60_000);

  it('a daemon serving volumes with --kms-listen: KmsUrl beside its volume settings', async () => {
    ensureBuilt();
    await full.start(['--kms-listen', '127.0.0.1:0']);
    const url = await kmsUrl(full);
    const st = await full.ok(['status']);
    // The guard on the main thread (no front-end worker without --kms-only): the same section.
    expect(st.Daemon.KmsListener).toMatchObject({ Connections: expect.any(Number), MaxConnectionsPerSource: 128, RefusedSinceStart: {} });
    expect(st.Daemon).toMatchObject({ KmsUrl: url, MountDir: full.mnt, WriteBehind: expect.any(Boolean), XtsEngine: expect.any(String), KeyCacheTtlSeconds: expect.any(Number) });
    expect(st.Daemon).not.toHaveProperty('KmsOnly');
    expect(st.Daemon).not.toHaveProperty('MetricsUrl');
    const text = await full.cli(['status', '--output', 'table']);
    expect(text.stdout).toContain(`KmsUrl: ${url}`);
    expect(text.stdout).toContain('(times UTC; EXPIRES'); // the volume table (empty: "(none)") and its note
  }, 60_000);
});
