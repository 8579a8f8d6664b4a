/**
 * AwsKeyService (src/volume/aws-key-service.ts) against a real `ebsd daemon
 * --kms-only --kms-listen` on loopback, credentials from the environment
 * only: the names the key cache sorts refusals by, AccessDenied naming the
 * missing permission, and the circuit: opened by a dead KMS, failing fast
 * without a network call, closed by the first answer once it is back; opened
 * too by server faults (DependencyTimeoutException and other 5xx answers, from
 * a small AWS JSON 1.1 server on loopback standing in for a failing KMS), not
 * by a throttle.
 */
import { createServer, type Server } from 'node:http';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AwsKeyService, probeDelayMs } from '../../src/volume/aws-key-service.js';
import { KeyServiceError } from '../../src/volume/errors.js';
import { toKeyServiceError } from '../../src/volume/key-service.js';
import type { Caller } from '../../src/kms/types.js';
import { CLI, Env, ensureBuilt, run } from '../e2e/helpers.js';
import { restartOnSamePort, unusedPort } from '../helpers/ports.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { until } from './netns.js';

const VARS = ['AWS_ENDPOINT_URL_STS', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_REGION', 'AWS_ENDPOINT_URL', 'AWS_PROFILE', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_EC2_METADATA_DISABLED'];
const ANY: Caller = { arn: 'ignored', accountId: '000000000000', type: 'Root' };
const CTX = { 'aws:ebs:id': 'vol-0123456789abcdef0' };

describe('AwsKeyService against a --kms-only daemon', () => {
  const env = new Env('awsks');
  const saved = Object.fromEntries(VARS.map((k) => [k, process.env[k]]));
  const services: AwsKeyService[] = [];
  let url = '';
  let keyArn = '';
  const creds: Record<string, { AccessKeyId: string; SecretAccessKey: string }> = {};
  const lines: string[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => void lines.push(s) });

  /** A key service signing as `user`, credentials from the environment (the SDK reads them at its first call). */
  const as = async (user: string, o: Partial<ConstructorParameters<typeof AwsKeyService>[0]> = {}): Promise<AwsKeyService> => {
    for (const k of VARS) delete process.env[k];
    Object.assign(process.env, { AWS_ACCESS_KEY_ID: creds[user]!.AccessKeyId, AWS_SECRET_ACCESS_KEY: creds[user]!.SecretAccessKey, AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL: url, AWS_EC2_METADATA_DISABLED: 'true' });
    const ks = new AwsKeyService({ endpoint: url, logger, ...o });
    services.push(ks);
    await ks.hostPrincipal();
    return ks;
  };

  beforeAll(async () => {
    ensureBuilt();
    url = (await startKmsDaemon(env)).url;
    for (const u of ['host', 'nobody']) {
      await env.api('ebsd.IamCreateUser', { UserName: u });
      creds[u] = (await env.api('ebsd.IamCreateAccessKey', { UserName: u })).AccessKey;
    }
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/host', PolicyName: 'kms', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }) });
    keyArn = (await env.api('TrentService.CreateKey')).KeyMetadata.Arn;
  }, 60_000);

  afterAll(async () => {
    for (const s of services) s.close();
    for (const k of VARS) if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k];
    await env.cleanup();
  });

  it('a refusal keeps its AWS name and is authoritative; AccessDenied names the permission, the principal and the key', async () => {
    const ks = await as('host');
    expect(ks.health().HostPrincipal).toMatch(/:user\/host$/);
    const gen = await ks.generateDataKeyWithoutPlaintext({ KeyId: keyArn, NumberOfBytes: 64, EncryptionContext: CTX }, ANY);
    const blob = gen.CiphertextBlob;
    expect((await ks.decrypt({ CiphertextBlob: blob, EncryptionContext: CTX }, ANY)).Plaintext).toHaveLength(64);
    await env.api('TrentService.DisableKey', { KeyId: keyArn });
    const off = await ks.decrypt({ CiphertextBlob: blob, EncryptionContext: CTX }, ANY).catch((e: unknown) => e);
    expect(off).toBeInstanceOf(KeyServiceError);
    expect(off).toMatchObject({ code: 'KMS_REFUSED', awsName: 'DisabledException', authoritative: true });
    await env.api('TrentService.EnableKey', { KeyId: keyArn });

    const nobody = await as('nobody');
    const denied = await nobody.generateDataKeyWithoutPlaintext({ KeyId: keyArn, NumberOfBytes: 64, EncryptionContext: CTX }, ANY).catch((e: unknown) => e);
    expect(denied).toMatchObject({ code: 'KMS_REFUSED', awsName: 'AccessDeniedException', authoritative: true });
    expect((denied as Error).message).toContain(`kms:GenerateDataKeyWithoutPlaintext denied for ${nobody.health().HostPrincipal} on ${keyArn}: add an Allow`);
    expect(nobody.health().Circuit).toBe('closed'); // a refusal is an answer
  });

  it('an explicit Deny on the host (a revoked session) is named as one, not as a revoked grant nor a missing key-policy Allow', async () => {
    await env.api('ebsd.IamCreateUser', { UserName: 'denied' });
    creds.denied = (await env.api('ebsd.IamCreateAccessKey', { UserName: 'denied' })).AccessKey;
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/denied', PolicyName: 'kms', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }) });
    const ks = await as('denied');
    const blob = (await ks.generateDataKeyWithoutPlaintext({ KeyId: keyArn, NumberOfBytes: 64, EncryptionContext: CTX }, ANY)).CiphertextBlob;
    const { GrantToken } = await env.api('TrentService.CreateGrant', { KeyId: keyArn, GranteePrincipal: ks.health().HostPrincipal, Operations: ['Decrypt'], Constraints: { EncryptionContextSubset: CTX } });
    expect((await ks.decrypt({ CiphertextBlob: blob, EncryptionContext: CTX, GrantTokens: [GrantToken] }, ANY)).Plaintext).toHaveLength(64);
    // The grant stays; a Deny on the principal, as a role's AWSRevokeOlderSessions is, refuses the call through it.
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/denied', PolicyName: 'revoke', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Deny', Action: '*', Resource: '*' }] }) });
    const viaGrant = await ks.decrypt({ CiphertextBlob: blob, EncryptionContext: CTX, GrantTokens: [GrantToken] }, ANY).catch((e: unknown) => e);
    expect(viaGrant).toMatchObject({ code: 'KMS_REFUSED', awsName: 'AccessDeniedException', authoritative: true });
    expect((viaGrant as Error).message).toContain(`kms:Decrypt denied for ${ks.health().HostPrincipal} on the key by an explicit deny in an identity-based policy; no Allow or grant overrides a Deny`);
    expect((viaGrant as Error).message).not.toContain('the grant was revoked');
    const direct = await ks.generateDataKeyWithoutPlaintext({ KeyId: keyArn, NumberOfBytes: 64, EncryptionContext: CTX }, ANY).catch((e: unknown) => e);
    expect((direct as Error).message).toContain(`kms:GenerateDataKeyWithoutPlaintext denied for ${ks.health().HostPrincipal} on ${keyArn} by an explicit deny in an identity-based policy`);
    expect((direct as Error).message).toContain('(KMS: User: '); // the KMS's own words follow
    expect((direct as Error).message).not.toContain('add an Allow');
  });

  it('deleted host credentials are a refusal (UnrecognizedClientException); a bad signature or an expired session is not', async () => {
    await env.api('ebsd.IamCreateUser', { UserName: 'gone' });
    creds.gone = (await env.api('ebsd.IamCreateAccessKey', { UserName: 'gone' })).AccessKey;
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/gone', PolicyName: 'kms', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }) });
    const ks = await as('gone');
    const blob = (await ks.generateDataKeyWithoutPlaintext({ KeyId: keyArn, NumberOfBytes: 64, EncryptionContext: CTX }, ANY)).CiphertextBlob;
    await env.api('ebsd.IamDeleteAccessKey', { UserName: 'gone', AccessKeyId: creds.gone.AccessKeyId });
    const e = await ks.decrypt({ CiphertextBlob: blob, EncryptionContext: CTX }, ANY).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: 'KMS_REFUSED', awsName: 'UnrecognizedClientException', authoritative: true });
    for (const name of ['InvalidSignatureException', 'ExpiredTokenException']) {
      expect(toKeyServiceError('Decrypt', { name, message: 'x' })).toMatchObject({ awsName: name, authoritative: false });
    }
  });

  it('a host clock 20 minutes off (past SigV4\'s 15 minutes), behind or ahead: the SDK takes the offset from the KMS\'s Date header and the call succeeds, not "not now" until max-stale', async () => {
    const ks = await as('host');
    const blob = (await ks.generateDataKeyWithoutPlaintext({ KeyId: keyArn, NumberOfBytes: 64, EncryptionContext: CTX }, ANY)).CiphertextBlob;
    // Clients without retries, resolved before the clock goes off: one per skew (each learns its own offset).
    const once = { [-20 * 60_000]: await as('host', { maxAttempts: 1 }), [20 * 60_000]: await as('host', { maxAttempts: 1 }) };
    for (const skewMs of [-20 * 60_000, 20 * 60_000]) {
      // Only Date is faked (timers stay real): this process's clock is off, the KMS daemon's is not.
      vi.useFakeTimers({ toFake: ['Date'] });
      try {
        vi.setSystemTime(Date.now() + skewMs);
        expect((await ks.decrypt({ CiphertextBlob: blob, EncryptionContext: CTX }, ANY)).Plaintext).toHaveLength(64);
        expect(ks.health()).toMatchObject({ Circuit: 'closed', ConsecutiveFailures: 0 });
        // The skew was real: a client without retries (its clock as far off) is refused once, ridden out as "not now", then corrected.
        const e = await once[skewMs]!.decrypt({ CiphertextBlob: blob, EncryptionContext: CTX }, ANY).catch((x: unknown) => x);
        expect(e).toMatchObject({ awsName: 'InvalidSignatureException', authoritative: false });
        expect((e as Error).message).toMatch(skewMs < 0 ? /Signature expired/ : /Signature not yet current/);
        expect((await once[skewMs]!.decrypt({ CiphertextBlob: blob, EncryptionContext: CTX }, ANY)).Plaintext).toHaveLength(64);
      } finally {
        vi.useRealTimers();
      }
    }
  });

  it('a dead KMS opens the circuit after 3 unanswered calls; calls then fail fast without a request; the first answer closes it', async () => {
    // Open for 5 s: the checks below that it is open and fails fast must not outlast it on a loaded machine
    // (at 300 ms, a test process stalled that long would find it closed and send the "fast" call out as a probe).
    const ks = await as('host', { maxAttempts: 1, circuitOpenMs: 5_000, connectionTimeoutMs: 1000, requestTimeoutMs: 2000 });
    const blob = (await ks.generateDataKeyWithoutPlaintext({ KeyId: keyArn, NumberOfBytes: 64, EncryptionContext: CTX }, ANY)).CiphertextBlob;
    await env.kill9();
    const before = ks.health().Calls.Decrypt ?? 0;
    for (let i = 0; i < 3; i++) {
      const e = await ks.decrypt({ CiphertextBlob: blob, EncryptionContext: CTX }, ANY).catch((x: unknown) => x);
      expect(e).toMatchObject({ code: 'KMS_UNAVAILABLE', authoritative: false });
    }
    expect(ks.health()).toMatchObject({ Circuit: 'open', ConsecutiveFailures: 3, Calls: { Decrypt: before + 3 } });
    const fast = await ks.decrypt({ CiphertextBlob: blob, EncryptionContext: CTX }, ANY).catch((x: unknown) => x);
    expect((fast as Error).message).toMatch(/circuit open/);
    expect(ks.health().Calls.Decrypt).toBe(before + 3); // no request went out
    // Back on its old port: the key service's endpoint is that address.
    await restartOnSamePort(env, ['--kms-only', '--kms-listen', new URL(url).host]);
    const back = await until('a decrypt through the closed circuit', async () =>
      (await ks.decrypt({ CiphertextBlob: blob, EncryptionContext: CTX }, ANY).catch(() => undefined))?.Plaintext);
    expect(back).toHaveLength(64);
    expect(ks.health()).toMatchObject({ Circuit: 'closed', ConsecutiveFailures: 0 });
    // One line per transition, however many calls failed in between.
    expect(lines.filter((l) => l.includes('circuit open, calls fail fast'))).toHaveLength(1);
    expect(lines.filter((l) => l.includes('circuit closed'))).toHaveLength(1);
  });

  it('a circuit whose open period is over shows half-open until an answer closes it, not closed with the failures still counted', async () => {
    // STS (where the host learns who it is) answers; the KMS endpoint is a port nothing listens on.
    const dead = `http://127.0.0.1:${await unusedPort()}`;
    const ks = await as('host', { endpoint: dead, maxAttempts: 1, circuitOpenMs: 300, connectionTimeoutMs: 1000, requestTimeoutMs: 2000 });
    for (let i = 0; i < 3; i++) await ks.decrypt({ CiphertextBlob: new Uint8Array(200), EncryptionContext: CTX }, ANY).catch(() => undefined);
    expect(ks.health()).toMatchObject({ Circuit: 'open', ConsecutiveFailures: 3, NextProbeTime: expect.any(String) });
    const over = await until('the open period over', () => { const h = ks.health(); return h.NextProbeTime === undefined ? h : undefined; });
    expect(over).toMatchObject({ Circuit: 'half-open', ConsecutiveFailures: 3, Reachable: false });
    // Its trial fails: open again (for twice as long), as the log said once.
    await ks.decrypt({ CiphertextBlob: new Uint8Array(200), EncryptionContext: CTX }, ANY).catch(() => undefined);
    expect(ks.health()).toMatchObject({ Circuit: 'open', ConsecutiveFailures: 4 });
  });

  it('a daemon that cannot tell who it is to the KMS does not start, and says where credentials come from; --kms-region needs --kms-endpoint', async () => {
    const other = new Env('awsks-nocreds');
    try {
      const noAws = Object.fromEntries(VARS.map((k) => [k, undefined]));
      const r = await run(process.execPath, [CLI, 'daemon', '--state-dir', other.state, '--mount', other.mnt, '--kms-endpoint', url], {
        env: { ...noAws, AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL_STS: url, AWS_EC2_METADATA_DISABLED: 'true', AWS_CONFIG_FILE: `${other.dir}/none`, AWS_SHARED_CREDENTIALS_FILE: `${other.dir}/none`, HOME: other.dir }, timeoutMs: 60_000,
      });
      expect(r.code).toBe(9);
      expect(r.stderr).toMatch(/GetCallerIdentity: cannot tell who this host is to http:\/\/127\.0\.0\.1:\d+ \(credentials from the AWS chain/);
      const bad = await run(process.execPath, [CLI, 'daemon', '--state-dir', other.state, '--mount', other.mnt, '--kms-region', 'eu-west-1'], { timeoutMs: 60_000 });
      expect(bad.code).toBe(2); // a flag without the one it needs: usage (src/cli/exit-codes.ts)
      expect(bad.stderr).toContain('--kms-region');
    } finally {
      await other.cleanup();
    }
  });

  it('a --kms-endpoint that is not AWS with no STS endpoint configured is refused at start (GetCallerIdentity would go to AWS); with AWS_ENDPOINT_URL_STS the host starts', async () => {
    const other = new Env('awsks-nosts');
    try {
      const hostEnv = {
        AWS_ACCESS_KEY_ID: creds.host!.AccessKeyId, AWS_SECRET_ACCESS_KEY: creds.host!.SecretAccessKey, AWS_REGION: 'us-east-1', AWS_EC2_METADATA_DISABLED: 'true',
        AWS_CONFIG_FILE: `${other.dir}/none`, AWS_SHARED_CREDENTIALS_FILE: `${other.dir}/none`,
      };
      const noAws = Object.fromEntries(VARS.map((k) => [k, undefined]));
      // Refused before any request is built to completion: the endpoint is resolved by the SDK, nothing is signed or sent.
      const r = await run(process.execPath, [CLI, 'daemon', '--state-dir', other.state, '--mount', other.mnt, '--kms-endpoint', url], { env: { ...noAws, ...hostEnv, HOME: other.dir }, timeoutMs: 60_000 });
      expect(r.code, r.stderr).not.toBe(0);
      expect(r.stderr).toContain(`--kms-endpoint ${url} is not an AWS endpoint, but no STS endpoint is configured: GetCallerIdentity would go to https://sts.us-east-1.amazonaws.com`);
      expect(r.stderr).toContain(`Set AWS_ENDPOINT_URL_STS (or AWS_ENDPOINT_URL, or endpoint_url in the AWS profile) to the KMS host's listener, e.g. AWS_ENDPOINT_URL_STS=${url}`);
      // STS configured for STS alone (the KMS client takes --kms-endpoint): the host starts as the user.
      for (const k of VARS) delete process.env[k];
      Object.assign(process.env, hostEnv, { AWS_ENDPOINT_URL_STS: url });
      await other.start(['--kms-endpoint', url]);
      expect((await other.api('ebsd.Status')).Daemon.Kms).toMatchObject({ Endpoint: url, HostPrincipal: expect.stringMatching(/:user\/host$/) });
      expect(await other.stop()).toBe(0);
    } finally {
      await other.cleanup();
    }
  });

  it('with a remote KMS, the local identity decides what a local caller may do with a key (the remote policy judges only the host)', async () => {
    await env.api('ebsd.IamPutPolicy', { Principal: 'user/host', PolicyName: 'kms', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }) });
    for (const k of VARS) delete process.env[k];
    Object.assign(process.env, { AWS_ACCESS_KEY_ID: creds.host!.AccessKeyId, AWS_SECRET_ACCESS_KEY: creds.host!.SecretAccessKey, AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL: url, AWS_EC2_METADATA_DISABLED: 'true' });
    const host = new Env('awsks-host');
    try {
      await host.start(['--kms-endpoint', url, '--metrics-listen', '127.0.0.1:0']);
      const ALICE = 1000;
      await host.api('ebsd.IamCreateUser', { UserName: 'alice' });
      await host.api('ebsd.IamMapUid', { Uid: ALICE, Principal: 'user/alice' });
      await host.api('ebsd.IamPutPolicy', { Principal: 'user/alice', PolicyName: 'ec2', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'ec2:*', Resource: '*' }] }) });
      const create = () => host.cli(['volume', 'create', '--size', '64MiB', '--kms-key', keyArn, '--output', 'json'], { uid: ALICE });
      // EC2 allows it, the host may use the key, but alice may not: refused before any KMS call.
      const refused = await create();
      expect(refused.code).toBe(4);
      expect(refused.stderr).toContain('UnauthorizedOperation');
      expect(refused.stderr).toContain(`kms:GenerateDataKeyWithoutPlaintext on resource: ${keyArn}`);
      expect((await host.api('ebsd.DescribeVolumes')).Volumes).toHaveLength(0);
      // A local identity policy for the key (through EC2, as EBS asks) lets her create; attaching needs CreateGrant.
      await host.api('ebsd.IamPutPolicy', { Principal: 'user/alice', PolicyName: 'key', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:GenerateDataKeyWithoutPlaintext', Resource: keyArn, Condition: { StringEquals: { 'kms:ViaService': 'ec2.us-east-1.amazonaws.com' } } }] }) });
      const created = await create();
      expect(created.code, created.stderr).toBe(0);
      const vol = JSON.parse(created.stdout).VolumeId as string;
      const attach = await host.cli(['attach', vol], { uid: ALICE });
      expect(attach.code).toBe(4);
      expect(attach.stderr).toContain('kms:CreateGrant');
      // Root is not judged by identity policies: it attaches through the host's grant.
      expect((await host.api('ebsd.AttachVolume', { VolumeId: vol })).State).toBe('attached');
      expect((await host.api('ebsd.DetachVolume', { VolumeId: vol, Force: false })).State).toBe('detached');
      // The remote KMS's calls are metered like the embedded core's (ebsd_kms_requests_total).
      const metricsUrl = (await host.api('ebsd.Status')).Daemon.MetricsUrl as string;
      const text = await (await fetch(metricsUrl)).text();
      const count = (op: string, outcome: string): number => Number(new RegExp(`^ebsd_kms_requests_total\\{operation="${op}",outcome="${outcome}"\\} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
      expect(count('GenerateDataKeyWithoutPlaintext', 'ok')).toBe(1);
      expect(count('CreateGrant', 'ok')).toBeGreaterThanOrEqual(1);
      expect(count('Decrypt', 'ok')).toBeGreaterThanOrEqual(1);
      expect(count('RetireGrant', 'ok')).toBeGreaterThanOrEqual(1);
    } finally {
      await host.cleanup();
    }
  });
});

/**
 * A KMS that answers every request with an AWS JSON 1.1 error (a real HTTP
 * peer on loopback; ebsd's own KMS has no way to answer DependencyTimeoutException).
 * `reply` is what it answers now; `requests` counts what reached it.
 */
class FailingKms {
  reply = { status: 500, type: 'DependencyTimeoutException' };
  requests = 0;
  /** While set, STS requests (the idle probe: no X-Amz-Target) are not answered until released, then with `reply`. */
  holdProbes = false;
  readonly held: Array<() => void> = [];
  private server: Server | undefined;

  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        this.requests++;
        const answer = (): void => {
          const { status, type } = this.reply;
          const body = JSON.stringify({ __type: type, message: `${type} from the test's KMS` });
          res.writeHead(status, { 'content-type': 'application/x-amz-json-1.1', 'x-amzn-requestid': `req-${this.requests}`, 'content-length': Buffer.byteLength(body) });
          res.end(body);
        };
        if (this.holdProbes && req.headers['x-amz-target'] === undefined) this.held.push(answer);
        else answer();
      });
    });
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', () => r()));
    return `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}

describe('AwsKeyService against a KMS answering server faults', () => {
  const sts = new Env('awsks-5xx');
  const failing = new FailingKms();
  const saved = Object.fromEntries(VARS.map((k) => [k, process.env[k]]));
  let ks: AwsKeyService | undefined;

  beforeAll(async () => {
    ensureBuilt();
    // STS (GetCallerIdentity) from a real --kms-only daemon; the KMS calls go to the failing server.
    const url = (await startKmsDaemon(sts)).url;
    await sts.api('ebsd.IamCreateUser', { UserName: 'host' });
    const k = (await sts.api('ebsd.IamCreateAccessKey', { UserName: 'host' })).AccessKey;

    for (const v of VARS) delete process.env[v];
    Object.assign(process.env, { AWS_ACCESS_KEY_ID: k.AccessKeyId, AWS_SECRET_ACCESS_KEY: k.SecretAccessKey, AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL_STS: url, AWS_EC2_METADATA_DISABLED: 'true' });
  }, 60_000);

  afterAll(async () => {
    ks?.close();
    await failing.stop();
    for (const k of VARS) if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k];
    await sts.cleanup();
  });

  it('DependencyTimeoutException, KMSInternalException and an unmodeled 503 open the circuit after the configured failures; each stays "not now" for the key cache; a throttle does not', async () => {
    const endpoint = await failing.start();
    // Open for 5 s, as in the dead-KMS case above: the fail-fast check must not outlast it.
    ks = new AwsKeyService({ endpoint, maxAttempts: 1, circuitFailures: 4, circuitOpenMs: 5_000 });
    await ks.hostPrincipal();
    const decrypt = () => ks!.decrypt({ CiphertextBlob: new Uint8Array(64), EncryptionContext: CTX }, ANY).catch((x: unknown) => x);

    // A throttle is an answer: it neither counts toward the circuit nor leaves it open.
    failing.reply = { status: 400, type: 'ThrottlingException' };
    for (let i = 0; i < 5; i++) expect(await decrypt()).toMatchObject({ code: 'KMS_UNAVAILABLE', awsName: 'ThrottlingException', authoritative: false });
    expect(ks.health()).toMatchObject({ Circuit: 'closed', ConsecutiveFailures: 0 });

    const faults = [{ status: 500, type: 'DependencyTimeoutException' }, { status: 500, type: 'KMSInternalException' }, { status: 500, type: 'DependencyTimeoutException' }, { status: 503, type: 'ServiceUnavailable' }];
    for (const [i, f] of faults.entries()) {
      failing.reply = f;
      const e = await decrypt();
      expect(e).toBeInstanceOf(KeyServiceError);
      expect(e).toMatchObject({ authoritative: false }); // not a refusal: the key cache serves until max-stale
      if (f.type.endsWith('Exception')) expect(e).toMatchObject({ awsName: f.type });
      expect(ks.health()).toMatchObject({ ConsecutiveFailures: i + 1, Circuit: i + 1 < 4 ? 'closed' : 'open' });
    }
    expect(failing.requests).toBe(5 + 4);
    const h = ks.health();
    expect(h).toMatchObject({ Circuit: 'open', NextProbeTime: expect.any(String), LastError: { Operation: 'Decrypt' } });
    // Open: a call fails at once, nothing reaches the KMS.
    const fast = await decrypt();
    expect((fast as Error).message).toMatch(/circuit open/);
    expect(failing.requests).toBe(9);
  });

  it('idle probes set only Reachable: failing ones neither count toward the circuit nor open it, the next call goes out; a refused one is reachable and no LastError', async () => {
    const f = new FailingKms();
    const endpoint = await f.start();
    // Two failures would open the circuit for a minute, were probes counted.
    const probing = new AwsKeyService({ endpoint, maxAttempts: 1, circuitFailures: 2, circuitOpenMs: 60_000 });
    try {
      await probing.hostPrincipal();
      // Not AWS's host name: the probe is STS GetCallerIdentity, here answered by the failing server.
      const probes = (): number => probing.health().Calls.GetCallerIdentity ?? 0;
      f.reply = { status: 503, type: 'ServiceUnavailable' };
      probing.startIdleProbe(20);
      await until('four unanswered probes', () => (probes() >= 4 ? true : undefined));
      expect(probing.health()).toMatchObject({ Reachable: false, Circuit: 'closed', ConsecutiveFailures: 0, LastError: { Operation: 'GetCallerIdentity' } });

      // A refusal: the call went out (no "circuit open"), and it is LastError as any call's refusal is.
      f.reply = { status: 400, type: 'AccessDeniedException' };
      const requests = f.requests;
      const e = await probing.decrypt({ CiphertextBlob: new Uint8Array(64), EncryptionContext: CTX }, ANY).catch((x: unknown) => x);
      expect(e).toMatchObject({ awsName: 'AccessDeniedException', authoritative: true });
      expect(f.requests).toBeGreaterThan(requests);
      expect(probing.health()).toMatchObject({ Reachable: true, LastError: { Operation: 'Decrypt', AwsName: 'AccessDeniedException' } });

      // Probes refused (as AWS KMS refuses ListKeys to a host policy without it): reachable, LastError still the Decrypt's.
      const seen = probes();
      await until('two refused probes', () => (probes() >= seen + 2 ? true : undefined));
      expect(probing.health()).toMatchObject({ Reachable: true, Circuit: 'closed', LastError: { Operation: 'Decrypt' } });

      // Unanswered again: unreachable, the circuit untouched.
      f.reply = { status: 503, type: 'ServiceUnavailable' };
      await until('unreachable again', () => (probing.health().Reachable ? undefined : true));
      const seen2 = probes();
      await until('three more unanswered probes', () => (probes() >= seen2 + 3 ? true : undefined));
      expect(probing.health()).toMatchObject({ Reachable: false, Circuit: 'closed', ConsecutiveFailures: 0 });
    } finally {
      probing.close();
      await f.stop();
    }
  });

  it('a probe that fails after a later call was answered does not show the KMS unreachable (Reachable is the last request sent)', async () => {
    const f = new FailingKms();
    const endpoint = await f.start();
    const racing = new AwsKeyService({ endpoint, maxAttempts: 1, circuitFailures: 2, circuitOpenMs: 60_000 });
    try {
      await racing.hostPrincipal();
      f.holdProbes = true;
      racing.startIdleProbe(20);
      await until('a probe held by the KMS', () => (f.held.length > 0 ? true : undefined));
      // A call sent after the probe is answered (a refusal is an answer): reachable.
      f.reply = { status: 400, type: 'AccessDeniedException' };
      expect(await racing.decrypt({ CiphertextBlob: new Uint8Array(64), EncryptionContext: CTX }, ANY).catch((x: unknown) => x)).toMatchObject({ awsName: 'AccessDeniedException' });
      expect(racing.health()).toMatchObject({ Reachable: true });
      // Then the probe, sent before that call, fails: its error is recorded, but it is not the last request's outcome.
      f.reply = { status: 503, type: 'ServiceUnavailable' };
      f.held.shift()!();
      await until('the late probe failure recorded', () => (racing.health().LastError?.Operation === 'GetCallerIdentity' ? true : undefined));
      expect(racing.health()).toMatchObject({ Reachable: true, Circuit: 'closed' });
      // The next probe (sent after the call) failing does show it.
      await until('the next probe held', () => (f.held.length > 0 ? true : undefined));
      f.held.shift()!();
      await until('unreachable after the next probe', () => (racing.health().Reachable ? undefined : true));
    } finally {
      racing.close();
      f.holdProbes = false;
      for (const answer of f.held.splice(0)) answer();
      await f.stop();
    }
  });

  it('closes a circuit that calls opened: the next call goes out at once, not after the open period', async () => {
    const f = new FailingKms();
    const endpoint = await f.start();
    const opened = new AwsKeyService({ endpoint, maxAttempts: 1, circuitFailures: 2, circuitOpenMs: 60_000 });
    try {
      await opened.hostPrincipal();
      const decrypt = () => opened.decrypt({ CiphertextBlob: new Uint8Array(64), EncryptionContext: CTX }, ANY).catch((x: unknown) => x);
      f.reply = { status: 503, type: 'ServiceUnavailable' };
      await decrypt();
      await decrypt();
      expect(opened.health()).toMatchObject({ Circuit: 'open', Reachable: false });
      // The KMS answers again (a refusal is an answer); an idle probe finds it.
      f.reply = { status: 400, type: 'AccessDeniedException' };
      opened.startIdleProbe(20);
      await until('the circuit closed by an answered probe', () => (opened.health().Circuit === 'closed' ? true : undefined));
      expect(opened.health()).toMatchObject({ Reachable: true, ConsecutiveFailures: 0 });
      const requests = f.requests;
      expect(await decrypt()).toMatchObject({ awsName: 'AccessDeniedException' }); // went out: not "circuit open"
      expect(f.requests).toBeGreaterThan(requests);
    } finally {
      opened.close();
      await f.stop();
    }
  });
});

describe("the idle probe's wait", () => {
  it('is the interval ±20 %, drawn from the random source given', () => {
    expect(probeDelayMs(30_000, () => 0)).toBe(24_000);
    expect(probeDelayMs(30_000, () => 0.5)).toBe(30_000);
    expect(probeDelayMs(30_000, () => 1 - 2 ** -53)).toBe(36_000);
    // A seeded generator (Park-Miller, seed 1): the waits spread over the whole range.
    let seed = 1;
    const random = (): number => (seed = (seed * 48_271) % 2_147_483_647) / 2_147_483_647;
    const waits = Array.from({ length: 200 }, () => probeDelayMs(30_000, random));
    expect(Math.min(...waits)).toBeGreaterThanOrEqual(24_000);
    expect(Math.max(...waits)).toBeLessThanOrEqual(36_000);
    expect(waits.filter((w) => w < 27_000).length).toBeGreaterThan(20);
    expect(waits.filter((w) => w > 33_000).length).toBeGreaterThan(20);
  });
});
