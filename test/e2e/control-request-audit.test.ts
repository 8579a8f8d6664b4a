/**
 * What a control request leaves behind, by the request: its EC2 events carry
 * the request id it was answered with (`x-amzn-RequestId`) and its User-Agent,
 * as CloudTrail's requestID and userAgent are the answered request's; its log
 * line names the target cut to 128 characters, and an unmapped caller's line,
 * like an answered ebsd.Status (polled by `ebsd top`), is at debug, not info. Real daemon, requests straight to the control socket
 * (as root from this process, as uid 65534 from a child).
 */
import { request } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { socketPathFor } from '../../src/cli/client.js';
import { Env, ensureBuilt, run } from './helpers.js';
import { auditEvents } from '../kms-net/helpers.js';

/** One control request as root; the answer's status, request id and body. */
function call(env: Env, target: string, body: Record<string, unknown>, userAgent: string): Promise<{ status: number; requestId: string; body: any }> {
  const text = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request({
      socketPath: socketPathFor(env.state), method: 'POST', path: '/',
      headers: { 'Content-Type': 'application/x-amz-json-1.1', 'X-Amz-Target': target, 'Content-Length': Buffer.byteLength(text), 'User-Agent': userAgent },
    }, (res) => {
      let b = '';
      res.on('data', (c) => (b += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, requestId: String(res.headers['x-amzn-requestid']), body: b ? JSON.parse(b) : {} }));
    });
    req.on('error', reject);
    req.end(text);
  });
}

describe('control requests in the audit log and the metrics', () => {
  const env = new Env('ctl-req-audit');

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
  }, 60_000);
  afterAll(() => env.cleanup(), 60_000);

  it('CreateVolume, ModifyVolume and DeleteVolume events carry the answered request id and the caller\'s User-Agent', async () => {
    const ua = 'aws-cli/2.15.0 test-agent';
    const created = await call(env, 'ebsd.CreateVolume', { Size: 16 * 2 ** 20 }, ua);
    expect(created.status).toBe(200);
    const vol = created.body.VolumeId as string;
    const modified = await call(env, 'ebsd.ModifyVolume', { VolumeId: vol, Size: 32 * 2 ** 20 }, ua);
    expect(modified.status).toBe(200);
    const deleted = await call(env, 'ebsd.DeleteVolume', { VolumeId: vol }, ua);
    expect(deleted.status).toBe(200);
    const evs = auditEvents(env).filter((e) => e.eventSource === 'ec2.amazonaws.com' && e.requestParameters?.volumeId === vol);
    expect(evs.map((e) => [e.eventName, e.requestID, e.userAgent])).toEqual([
      ['CreateVolume', created.requestId, ua],
      ['ModifyVolume', modified.requestId, ua],
      ['DeleteVolume', deleted.requestId, ua],
    ]);
    expect(evs[0]!.userIdentity.type).toBe('Root');
  });

  it('the log line cuts a long target to 128 characters; an unmapped caller\'s lines and an answered Status are not at info', async () => {
    const long = `ebsd.${'L'.repeat(8000)}`;
    const rootCall = await call(env, long, {}, 'root-agent');
    expect(rootCall.status).toBe(400);
    const polled = await call(env, 'ebsd.Status', {}, 'ebsd-top');
    expect(polled.status).toBe(200);
    const marker = `Unmapped${Date.now()}`;
    const script = `import { request } from 'node:http';
for (const t of ['ebsd.DescribeVolumes', 'ebsd.${marker}', 'TrentService.${marker}']) {
  await new Promise((resolve) => {
    const req = request({ socketPath: process.argv[1], method: 'POST', path: '/', headers: { 'X-Amz-Target': t, 'Content-Type': 'application/x-amz-json-1.1' } }, (res) => { res.resume(); res.on('end', resolve); });
    req.on('error', resolve);
    req.end('{}');
  });
}`;
    const r = await run(process.execPath, ['--input-type=module', '-e', script, socketPathFor(env.state)], { uid: 65534 });
    expect(r.code, r.stderr).toBe(0);
    // A root request after them: once its line is in the log, theirs would be too.
    const last = await call(env, 'ebsd.DescribeVolumes', {}, 'root-agent');
    let lines: Record<string, any>[] = [];
    for (let i = 0; i < 400 && !lines.some((l) => l.requestId === last.requestId); i++) {
      await new Promise((res) => setTimeout(res, 25));
      lines = env.daemonLog().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)).filter((l) => l.msg === 'control request');
    }
    const longLine = lines.find((l) => l.requestId === rootCall.requestId);
    expect(longLine?.target).toBe(`${long.slice(0, 128)}...(truncated)`);
    expect(lines.some((l) => l.requestId === last.requestId)).toBe(true);
    expect(lines.filter((l) => l.uid === 65534)).toEqual([]);
    // An answered Status (ebsd top polls it every second) is at debug, not info.
    expect(lines.filter((l) => l.requestId === polled.requestId)).toEqual([]);
    expect(env.daemonLog()).not.toContain(marker);
  });
});
