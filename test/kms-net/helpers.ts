/**
 * Set-up the kms-net tests share, one function per concept: a KMS-only daemon
 * with a listener (and, for HTTPS, a CA made with openssl), an IAM user with
 * an access key, the standard credential chain (environment variables) for
 * SDK clients, an environment for the Debian `aws` CLI, the audit events.
 * Each test file still owns its `Env` (created in `describe`, cleaned up in
 * `afterAll`), so cleanup runs on failure as before.
 */
import { writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { KMSClient } from '@aws-sdk/client-kms';
import { SignatureV4 } from '@smithy/signature-v4';
import { sh, type Env } from '../e2e/helpers.js';
import { Sha256 } from './smithy-sha256.js';

/** The Debian package (scripts/setup.sh installs it). */
export const AWS_CLI = '/usr/bin/aws';
export const REGION = 'us-east-1';

/** `{"Statement":[Allow kms:* on *]}`, the policy most tests give their users and roles. */
export const KMS_ADMIN_POLICY = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] });

/** The listener URL from the daemon's ready line; polls, since the log file is written behind the ready event. */
export async function kmsUrl(env: Env): Promise<string> {
  for (let i = 0; i < 200; i++) {
    const m = /"kmsUrl":"([^"]+)"/.exec(env.daemonLog());
    if (m) return m[1]!;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`no kmsUrl in the daemon log:\n${env.daemonLog()}`);
}

/** A test CA and a server certificate for localhost / 127.0.0.1 signed by it, in `dir`. */
export async function makeTestCa(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const ca = join(dir, 'ca');
  const cert = join(dir, 'server.pem');
  const key = join(dir, 'server.key');
  await sh('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${ca}.key`, '-out', `${ca}.pem`, '-days', '1', '-subj', '/CN=ebsd test CA']);
  await sh('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', join(dir, 'server.csr'), '-subj', '/CN=localhost']);
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  await sh('openssl', ['x509', '-req', '-in', join(dir, 'server.csr'), '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', cert, '-days', '1', '-extfile', join(dir, 'ext.cnf')]);
  return { ca: `${ca}.pem`, cert, key };
}

/**
 * The listener tests that run on both front ends (src/daemon/kms-front.ts): 1, TLS and HTTP on the
 * front-end worker (the default with --kms-only), and 0, on the daemon's main thread.
 */
export const FRONT_THREADS = [1, 0] as const;

/**
 * `ebsd daemon --kms-only --kms-listen 127.0.0.1:0` as a child of `env`; with `tls`, HTTPS with a
 * certificate from a fresh test CA (`ca`: the CA's PEM file, for AWS_CA_BUNDLE / NODE_EXTRA_CA_CERTS);
 * with `frontThreads`, that `--kms-front-threads` (else the daemon's default).
 */
export async function startKmsDaemon(env: Env, o: { tls?: boolean; frontThreads?: number; extra?: string[] } = {}): Promise<{ url: string; ca?: string }> {
  const front = [...(o.frontThreads !== undefined ? ['--kms-front-threads', String(o.frontThreads)] : []), ...(o.extra ?? [])];
  if (!o.tls) {
    await env.start(['--kms-only', '--kms-listen', '127.0.0.1:0', ...front]);
    return { url: await kmsUrl(env) };
  }
  const t = await makeTestCa(env.dir);
  await env.start(['--kms-only', '--kms-listen', '127.0.0.1:0', '--tls-cert', t.cert, '--tls-key', t.key, ...front]);
  return { url: await kmsUrl(env), ca: t.ca };
}

export interface AccessKey { AccessKeyId: string; SecretAccessKey: string; UserName: string; Status: string; CreateDate: string }

/**
 * IAM user `name` (with the inline policy `policy`, named `policyName`, if given) and one access key,
 * as `ebsd iam create-access-key` prints it. `arn` and `accountId` come from create-user.
 * Set-up: straight to the control socket (Env.api), no CLI process per call.
 */
export async function makeAccessKey(env: Env, name: string, policy?: string, policyName = 'kms'): Promise<{ key: AccessKey; arn: string; accountId: string }> {
  const arn = (await env.api('ebsd.IamCreateUser', { UserName: name })).User.Arn as string;
  if (policy !== undefined) await env.api('ebsd.IamPutPolicy', { Principal: `user/${name}`, PolicyName: policyName, PolicyDocument: policy });
  const key = (await env.api('ebsd.IamCreateAccessKey', { UserName: name })).AccessKey as AccessKey;

  return { key, arn, accountId: arn.split(':')[4]! };
}

/**
 * A `--kms-only` daemon with user alice (kms:* policy, an access key) and role `app` (kms:*) that
 * alice may assume: the set-up of the session tests.
 */
export async function startWithAliceAndApp(env: Env): Promise<{ url: string; alice: AccessKey; accountId: string; roleArn: string }> {
  const { url } = await startKmsDaemon(env);
  const { key: alice, accountId } = await makeAccessKey(env, 'alice', KMS_ADMIN_POLICY, 'admin');
  await env.ok(['iam', 'create-role', 'app']);
  await env.ok(['iam', 'put-policy', 'role/app', '--policy-name', 'admin', '--policy-document', KMS_ADMIN_POLICY]);
  await env.ok(['iam', 'update-assume-role-policy', '--role-name', 'app', '--policy-document',
    JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${accountId}:user/alice` }, Action: 'sts:AssumeRole' }] })]);
  return { url, alice, accountId, roleArn: `arn:aws:iam::${accountId}:role/app` };
}

/** Every variable of the standard credential chain a test may set; cleared before each use. */
export const CRED_VARS = ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_REGION', 'AWS_ENDPOINT_URL', 'AWS_PROFILE', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_EC2_METADATA_DISABLED'];

/**
 * The SDK's standard chain, driven through process.env as a user's shell would: `use` clears every
 * chain variable, disables the instance-metadata lookup and sets `vars`; `restore` puts back what
 * the process had (call it in afterAll). A client built after `use` resolves from these variables.
 */
export class StandardChain {
  private readonly saved = Object.fromEntries(CRED_VARS.map((k) => [k, process.env[k]]));

  use(vars: Record<string, string>): void {
    for (const k of CRED_VARS) delete process.env[k];
    Object.assign(process.env, { AWS_EC2_METADATA_DISABLED: 'true' }, vars);
  }

  restore(): void {
    for (const [k, v] of Object.entries(this.saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
  }
}

/** The chain variables for an access key (or session credentials) against the listener at `url`. */
export function keyVars(k: { AccessKeyId: string; SecretAccessKey: string; SessionToken?: string }, url: string): Record<string, string> {
  return {
    AWS_ACCESS_KEY_ID: k.AccessKeyId, AWS_SECRET_ACCESS_KEY: k.SecretAccessKey, AWS_REGION: REGION, AWS_ENDPOINT_URL: url,
    ...(k.SessionToken ? { AWS_SESSION_TOKEN: k.SessionToken } : {}),
  };
}

/**
 * The environment for the `aws` CLI (and a child-process SDK) as a key's holder: credentials from
 * variables, no config or credentials file of the machine's (HOME is `dir`), the CA trusted through
 * AWS_CA_BUNDLE and NODE_EXTRA_CA_CERTS when given. `extra` overrides (a config file, a profile).
 */
export function awsCliEnv(dir: string, k: { AccessKeyId: string; SecretAccessKey: string } | undefined, o: { ca?: string; extra?: Record<string, string> } = {}): Record<string, string> {
  return {
    ...(k ? { AWS_ACCESS_KEY_ID: k.AccessKeyId, AWS_SECRET_ACCESS_KEY: k.SecretAccessKey } : {}),
    AWS_DEFAULT_REGION: REGION, AWS_REGION: REGION, AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONFIG_FILE: join(dir, 'none'), AWS_SHARED_CREDENTIALS_FILE: join(dir, 'none'), HOME: dir,
    ...(o.ca ? { AWS_CA_BUNDLE: o.ca, NODE_EXTRA_CA_CERTS: o.ca } : {}),
    ...o.extra,
  };
}

/** The audit log's events, parsed. */
export function auditEvents(env: Env): Record<string, any>[] {
  return env.auditText().split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
}

export { Sha256 } from './smithy-sha256.js';

/** The bytes of one signed KMS request over HTTP/1.1 keep-alive, as an SDK writes them. */
export async function signedBytes(url: URL, key: AccessKey, op: string, body: string): Promise<Buffer> {
  const signer = new SignatureV4({ credentials: { accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey }, region: 'us-east-1', service: 'kms', sha256: Sha256 });
  const r = await signer.sign({
    method: 'POST', protocol: 'http:', hostname: url.hostname, port: Number(url.port), path: '/', query: {},
    headers: { host: url.host, 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `TrentService.${op}`, 'content-length': String(Buffer.byteLength(body)) }, body,
  });
  let head = 'POST / HTTP/1.1\r\n';
  for (const [k, v] of Object.entries(r.headers)) head += `${k}: ${v}\r\n`;
  return Buffer.concat([Buffer.from(`${head}\r\n`), Buffer.from(body)]);
}

/** An STS request (AWS Query protocol) as signedBytes makes a KMS one: `Action=<action>` and `params`, signed for service `sts`. */
export async function signedStsBytes(url: URL, key: AccessKey, action: string, params: Record<string, string> = {}): Promise<Buffer> {
  const signer = new SignatureV4({ credentials: { accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey }, region: 'us-east-1', service: 'sts', sha256: Sha256 });
  const body = new URLSearchParams({ Action: action, Version: '2011-06-15', ...params }).toString();
  const r = await signer.sign({
    method: 'POST', protocol: 'http:', hostname: url.hostname, port: Number(url.port), path: '/', query: {},
    headers: { host: url.host, 'content-type': 'application/x-www-form-urlencoded; charset=utf-8', 'content-length': String(Buffer.byteLength(body)) }, body,
  });
  let head = 'POST / HTTP/1.1\r\n';
  for (const [k, v] of Object.entries(r.headers)) head += `${k}: ${v}\r\n`;
  return Buffer.concat([Buffer.from(`${head}\r\n`), Buffer.from(body)]);
}

/** Reads `n` HTTP/1.1 answers (Content-Length framed) from `s`, in the order they come. */
export function answers(s: Socket, n: number): Promise<{ status: number; body: any; text: string }[]> {
  return new Promise((resolve, reject) => {
    // A socket closed before the listeners below are added would never call them: fail now, not at the test's timeout.
    if (s.destroyed || s.readyState === 'closed') { reject(new Error('connection already closed')); return; }
    let buf = Buffer.alloc(0);
    const out: { status: number; body: any; text: string }[] = [];
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString('latin1');
        const len = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (buf.length < end + 4 + len) return;
        // JSON answers (KMS) parsed; XML ones (STS) only as text.
        const text = buf.subarray(end + 4, end + 4 + len).toString('utf8');
        out.push({ status: Number(head.slice(9, 12)), body: /content-type: *text\/xml/i.test(head) ? {} : JSON.parse(text || '{}'), text });
        buf = buf.subarray(end + 4 + len);
        if (out.length === n) { resolve(out); return; }
      }
    });
    s.on('error', reject);
    s.on('close', () => reject(new Error(`connection closed after ${out.length} of ${n} answers`)));
  });
}

/** A @aws-sdk/client-kms client for access key `k` at the listener `url`, kept in `made` for the test's afterAll to destroy. */
export function kmsClientFor(url: string, k: { AccessKeyId: string; SecretAccessKey: string }, made: KMSClient[]): KMSClient {
  const c = new KMSClient({ endpoint: url, region: REGION, credentials: { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey } });
  made.push(c);
  return c;
}
