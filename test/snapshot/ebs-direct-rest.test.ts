import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SignatureV4 } from '@smithy/signature-v4';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { kmsUrl } from '../kms-net/helpers.js';
import { Sha256 } from '../kms-net/smithy-sha256.js';

/**
 * The EBS direct APIs as REST on the network listener (--kms-listen),
 * SigV4 service `ebs`, signed by @smithy/signature-v4 (the AWS SDKs' signer):
 * StartSnapshot, PutSnapshotBlock with the block unsigned (UNSIGNED-PAYLOAD,
 * as the SDKs send it) and its checksum in signed headers, CompleteSnapshot,
 * ListSnapshotBlocks, GetSnapshotBlock with the block as the raw body.
 */
const BLOCK = 512 * 1024;


describe('EBS direct APIs over SigV4 REST (real daemon, --kms-listen)', () => {
  const env = new Env('ebs-rest');
  let base = '';
  let creds = { accessKeyId: '', secretAccessKey: '' };

  /** Signs `body` and `headers`; sends `sentBody` (default `body`) and `extra` headers added after signing. */
  const call = async (method: string, path: string, o: { query?: Record<string, string>; headers?: Record<string, string>; body?: Buffer | string; unsigned?: boolean; service?: string; sentBody?: Buffer | string; extra?: Record<string, string> } = {}) => {
    const url = new URL(base);
    const body = o.body ?? '';
    const headers: Record<string, string> = { host: url.host, ...(o.headers ?? {}), ...(o.unsigned ? { 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' } : {}) };
    const signed = await new SignatureV4({ credentials: creds, region: 'us-east-1', service: o.service ?? 'ebs', sha256: Sha256, applyChecksum: !o.unsigned }).sign({
      method, protocol: 'http:', hostname: url.hostname, port: Number(url.port), path, query: o.query ?? {}, headers, body,
    });
    const qs = new URLSearchParams(o.query ?? {}).toString();
    const res = await fetch(`${base}${path}${qs ? `?${qs}` : ''}`, { method, headers: { ...(signed.headers as Record<string, string>), ...(o.extra ?? {}) }, ...(method === 'GET' ? {} : { body: o.sentBody ?? body }) });
    return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
  };
  const json = (r: { body: Buffer }): Record<string, any> => JSON.parse(r.body.toString('utf8'));
  const sha = (b: Buffer): string => createHash('sha256').update(b).digest('base64');

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--kms-listen', '127.0.0.1:0']);
    base = await kmsUrl(env);
    const st = await env.ok(['status']);
    await env.ok(['iam', 'create-user', 'bob']);
    const policy = join(env.dir, 'p.json');
    writeFileSync(policy, JSON.stringify({ Version: '2012-10-17', Statement: [
      { Effect: 'Allow', Action: 'ebs:*', Resource: `arn:aws:ec2:${st.Daemon.Region}::snapshot/*` },
    ] }));
    await env.ok(['iam', 'put-policy', 'user/bob', '--policy-name', 'ebs', '--policy-document', `file://${policy}`]);
    const k = (await env.ok(['iam', 'create-access-key', '--user-name', 'bob'])).AccessKey;
    creds = { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey };
  }, 120_000);
  afterAll(() => env.cleanup());

  it('start, put (unsigned payload, signed checksum), complete, list, get: the block comes back byte for byte with its checksum headers', async () => {
    const start = await call('POST', '/snapshots', { headers: { 'content-type': 'application/json' }, body: JSON.stringify({ VolumeSize: 1, Description: 'rest' }) });
    expect(start.status, start.body.toString()).toBe(201);
    const snap = json(start).SnapshotId as string;
    expect(json(start)).toMatchObject({ Status: 'pending', VolumeSize: 1, BlockSize: BLOCK });
    expect(typeof json(start).StartTime).toBe('number');

    const data = randomBytes(BLOCK);
    const putHeaders = { 'x-amz-data-length': String(BLOCK), 'x-amz-checksum': sha(data), 'x-amz-checksum-algorithm': 'SHA256' };
    const put = await call('PUT', `/snapshots/${snap}/blocks/3`, { headers: putHeaders, body: data, unsigned: true });
    expect(put.status, put.body.toString()).toBe(201);
    expect(put.headers.get('x-amz-checksum')).toBe(sha(data));
    // The block is unsigned, the checksum is not: other bytes under the same headers are refused.
    const forged = await call('PUT', `/snapshots/${snap}/blocks/4`, { headers: putHeaders, body: randomBytes(BLOCK), unsigned: true });
    expect(forged.status).toBe(400);
    expect(forged.headers.get('x-amzn-errortype')).toBe('ValidationException');
    expect(json(forged).Reason).toBe('INVALID_PARAMETER_VALUE');

    const done = await call('POST', `/snapshots/completion/${snap}`, { headers: { 'x-amz-changedblockscount': '1', 'content-type': 'application/json' } });
    expect(done.status, done.body.toString()).toBe(202);
    expect(json(done)).toEqual({ Status: 'completed' });

    const list = await call('GET', `/snapshots/${snap}/blocks`, { query: { maxResults: '100' } });
    expect(list.status).toBe(200);
    const blocks = json(list).Blocks as { BlockIndex: number; BlockToken: string }[];
    expect(blocks.map((b) => b.BlockIndex)).toEqual([3]);
    expect(typeof json(list).ExpiryTime).toBe('number');
    const get = await call('GET', `/snapshots/${snap}/blocks/3`, { query: { blockToken: blocks[0]!.BlockToken } });
    expect(get.status).toBe(200);
    expect(get.body.equals(data)).toBe(true);
    expect(get.headers.get('x-amz-checksum')).toBe(sha(data));
    expect(get.headers.get('x-amz-data-length')).toBe(String(BLOCK));

    // Signed for another service, or not at all: refused before anything runs.
    const kmsSigned = await call('GET', `/snapshots/${snap}/blocks`, { service: 'kms' });
    expect(kmsSigned.status).toBe(400);
    expect(kmsSigned.headers.get('x-amzn-errortype')).toMatch(/Signature|Credential/);
    const anon = await fetch(`${base}/snapshots/${snap}/blocks`);
    expect(anon.status).toBeGreaterThanOrEqual(400);
    // UNSIGNED-PAYLOAD is for EBS only: the KMS on the same listener still hashes the body.
    const kmsUnsigned = await call('POST', '/', { service: 'kms', unsigned: true, headers: { 'x-amz-target': 'TrentService.ListKeys', 'content-type': 'application/x-amz-json-1.1' }, body: '{}' });
    expect(kmsUnsigned.status).toBe(400);
    expect(kmsUnsigned.body.toString()).toMatch(/x-amz-content-sha256/);
    // A StartSnapshot body member named __proto__ is an unknown member, not a prototype.
    const proto = await call('POST', '/snapshots', { headers: { 'content-type': 'application/json' }, body: '{"VolumeSize":1,"__proto__":{"Encrypted":true}}' });
    expect(proto.status).toBe(400);
    expect(json(proto)).toMatchObject({ Reason: 'INVALID_PARAMETER_VALUE', message: expect.stringMatching(/no member "__proto__"/) });
    // An unknown route after a valid signature is UnknownOperationException.
    expect((await call('GET', `/snapshots/${snap}/nothing`)).headers.get('x-amzn-errortype')).toBe('UnknownOperationException');
    // Audited as EBS calls by bob.
    expect(env.auditText()).toMatch(/"userName":"bob".*"eventSource":"ebs.amazonaws.com","eventName":"GetSnapshotBlock"/);
  }, 120_000);

  it('UNSIGNED-PAYLOAD is accepted for PutSnapshotBlock only, and then with its checksum, algorithm and length signed', async () => {
    // A StartSnapshot signed over one body and sent with another: the body is hashed, so it does not match.
    const swapped = await call('POST', '/snapshots', { headers: { 'content-type': 'application/json' }, body: '{"VolumeSize":1}', sentBody: '{"VolumeSize":7,"Description":"not signed"}', unsigned: true });
    expect(swapped.status).toBe(400);
    expect(swapped.body.toString()).toMatch(/x-amz-content-sha256/);
    // The same, signed with its own body hash, goes (UNSIGNED-PAYLOAD was the only wrong thing).
    const start = await call('POST', '/snapshots', { headers: { 'content-type': 'application/json' }, body: '{"VolumeSize":1}' });
    expect(start.status, start.body.toString()).toBe(201);
    const snap = json(start).SnapshotId as string;
    // CompleteSnapshot and ListSnapshotBlocks with UNSIGNED-PAYLOAD: refused as well.
    const complete = await call('POST', `/snapshots/completion/${snap}`, { headers: { 'x-amz-changedblockscount': '0', 'content-type': 'application/json' }, unsigned: true });
    expect(complete.status).toBe(400);
    expect(complete.body.toString()).toMatch(/x-amz-content-sha256/);

    const data = randomBytes(BLOCK);
    const all = { 'x-amz-data-length': String(BLOCK), 'x-amz-checksum': sha(data), 'x-amz-checksum-algorithm': 'SHA256' };
    for (const h of Object.keys(all) as (keyof typeof all)[]) {
      // One of the three added after signing: not among SignedHeaders.
      const { [h]: late, ...signedOnes } = all;
      const put = await call('PUT', `/snapshots/${snap}/blocks/0`, { headers: signedOnes, body: data, unsigned: true, extra: { [h]: late } });
      expect(put.status, h).toBe(400);
      expect(put.headers.get('x-amzn-errortype')).toMatch(/IncompleteSignature/);
      expect(put.body.toString()).toContain(`'${h}' must be a 'SignedHeader'`);
    }
    // x-amz-progress, when sent, too.
    const progress = await call('PUT', `/snapshots/${snap}/blocks/0`, { headers: all, body: data, unsigned: true, extra: { 'x-amz-progress': '50' } });
    expect(progress.body.toString()).toContain("'x-amz-progress' must be a 'SignedHeader'");
    // All signed: written.
    const put = await call('PUT', `/snapshots/${snap}/blocks/0`, { headers: { ...all, 'x-amz-progress': '50' }, body: data, unsigned: true });
    expect(put.status, put.body.toString()).toBe(201);
  }, 120_000);
});
