/**
 * A shared (S3) store whose settings object (`PREFIX/settings.json`,
 * src/snapshot/store-settings.ts) this daemon cannot follow: `snapshot
 * create`, StartSnapshot and a same-key CopySnapshot are refused at once,
 * naming the object and what is wrong with it, before anything is written
 * (no manifest, no block, no pending marker), not failed after every block
 * was copied. With the settings mended, the same create completes.
 */
import { closeSync, existsSync, openSync, readdirSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { S3RVER_CREDENTIALS, startS3Server, useTestDeleteWindows, type S3Server } from './s3-helpers.js';
import { settled } from './helpers.js';

const MiB = 1 << 20;
const PREFIX = 'settings';
/** A margin given as text: SNAPSHOT_CORRUPT naming deleteMarginMs. */
const MALFORMED = '{"formatVersion":1,"deleteWindowMs":250,"deleteMarginMs":"250ms"}\n';

describe('a shared store whose settings.json is malformed', () => {
  const env = new Env('s3-settings');
  let server: S3Server;
  const saved = { ...process.env };
  let vol = '';
  const where = (): string => `s3://${server.bucket}/${PREFIX}/settings.json`;

  /** The objects under the prefix, settings.json aside (s3rver's files: `<key>._S3rver_object`). */
  const objects = (): string[] => {
    const out: string[] = [];
    const walk = (dir: string, rel: string): void => {
      if (!existsSync(dir)) return;
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        if (e.isDirectory()) walk(join(dir, e.name), `${rel}${e.name}/`);
        else if (e.name.endsWith('._S3rver_object')) out.push(`${rel}${e.name.slice(0, -'._S3rver_object'.length)}`);
      }
    };
    walk(join(server.dir, server.bucket, PREFIX), '');
    return out.filter((k) => k !== 'settings.json').sort();
  };
  /** Pending markers of creates, copies and EBS direct snapshots. */
  const markers = (): string[] => [join(env.state, 'snapshots-local', 'pending'), join(env.state, 'snapshots-local', 'copies'), join(env.state, 'ebs-direct-pending')]
    .flatMap((d) => (existsSync(d) ? readdirSync(d).filter((n) => n.startsWith('snap-')) : []));

  const putSettingsText = async (text: string): Promise<void> => {
    const s3 = new S3Client({ endpoint: server.endpoint, region: 'us-east-1', credentials: S3RVER_CREDENTIALS, forcePathStyle: true });
    try {
      await s3.send(new PutObjectCommand({ Bucket: server.bucket, Key: `${PREFIX}/settings.json`, Body: text, ContentType: 'application/json' }));
    } finally {
      s3.destroy();
    }
  };

  beforeAll(async () => {
    ensureBuilt();
    server = await startS3Server();
    await putSettingsText(MALFORMED);
    for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
    Object.assign(process.env, server.env);
    await env.start(['--snapshot-store', `s3://${server.bucket}/${PREFIX}`]);
    vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB' })).VolumeId as string;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    const fd = openSync(env.file(vol), 'r+');
    try {
      writeSync(fd, randomBytes(2 * MiB), 0, 2 * MiB, MiB);
    } finally {
      closeSync(fd);
    }
    await env.untilClosed(vol); // FUSE RELEASE reaches the daemon after close() returns
    await env.api('ebsd.DetachVolume', { VolumeId: vol, Force: false });
  }, 120_000);

  afterAll(async () => {
    await env.cleanup();
    for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
    Object.assign(process.env, Object.fromEntries(Object.entries(saved).filter(([k]) => k.startsWith('AWS_'))));
    await server?.stop();
  }, 60_000);

  it('snapshot create is refused at once naming settings.json and the member; nothing is written', async () => {
    const r = await env.cli(['snapshot', 'create', vol, '--output', 'json']);
    expect(r.code, r.stderr).not.toBe(0);
    expect(r.stderr).toContain(where());
    expect(r.stderr).toContain('deleteMarginMs is "250ms"');
    expect((await env.api('ebsd.DescribeSnapshots')).Snapshots).toEqual([]);
    expect(objects()).toEqual([]);
    expect(markers()).toEqual([]);
  }, 60_000);

  it('StartSnapshot is refused too, before its data key is made and its header put', async () => {
    const keyCalls = (): number => env.auditText().trim().split('\n').filter((l) => l && /^GenerateDataKey/.test(JSON.parse(l).eventName)).length;
    const before = keyCalls();
    await expect(env.api('ebs.StartSnapshot', { VolumeSize: 1 })).rejects.toThrow(where());
    expect(objects()).toEqual([]);
    expect(markers()).toEqual([]);
    expect(keyCalls()).toBe(before); // no KMS call for a start the settings refuse
  }, 60_000);

  it('with the settings mended the same create completes; a same-key copy under malformed settings is refused before its pending manifest', async () => {
    await useTestDeleteWindows(server, PREFIX);
    const snap = await settled(env, (await env.api('ebsd.CreateSnapshot', { VolumeId: vol })).SnapshotId);
    expect(snap.State).toBe('completed');
    // The daemon keeps the settings it read: broken again, they are seen at the next start.
    await putSettingsText(MALFORMED);
    await env.stop();
    await env.start(['--snapshot-store', `s3://${server.bucket}/${PREFIX}`]);
    const before = objects();
    const region = (await env.api('ebsd.Status')).Daemon.Region as string;
    await expect(env.api('ebsd.CopySnapshot', { SourceSnapshotId: snap.SnapshotId, SourceRegion: region })).rejects.toThrow(where());
    expect((await env.api('ebsd.DescribeSnapshots')).Snapshots.map((s: { SnapshotId: string }) => s.SnapshotId)).toEqual([snap.SnapshotId]);
    expect(objects()).toEqual(before);
    expect(markers()).toEqual([]);
  }, 120_000);
});
