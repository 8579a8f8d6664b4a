import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CompleteSnapshotCommand, ConflictException, EBSClient, ListSnapshotBlocksCommand, PutSnapshotBlockCommand, StartSnapshotCommand, ValidationException,
} from '@aws-sdk/client-ebs';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { callDaemon, socketPathFor } from '../../src/cli/client.js';
import { api } from './helpers.js';
import { rejection } from '../helpers/rejection.js';

/**
 * StartSnapshot ClientTokens across a daemon restart (docs/architecture.md
 * §15, "Pending snapshots"): a real daemon killed with SIGKILL (or stopped)
 * and started again on its state dir, driven by @aws-sdk/client-ebs over its
 * network listener. A retry with the same token and request answers the
 * first snapshot and starts none; another request, or another caller, with
 * the token is ConflictException.
 */
const BLOCK = 512 * 1024;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('base64');

describe('StartSnapshot ClientTokens survive a daemon restart (real daemon, SIGKILL, @aws-sdk/client-ebs)', () => {
  const env = new Env('ebs-tokens');
  const call = api(env);
  const sock = (target: string, body: Record<string, unknown> = {}): Promise<any> => callDaemon(socketPathFor(env.state), target, body);
  const keys = new Map<string, { AccessKeyId: string; SecretAccessKey: string }>();
  const clients: EBSClient[] = [];
  let region = '';
  /** kmsUrl lines seen so far in the daemon log (it keeps every run's), and the running daemon's. */
  let urls = 0;
  let endpoint = '';

  /** The listener's URL of the daemon just started: the first kmsUrl line past those of earlier runs. */
  const nextUrl = async (): Promise<string> => {
    for (let i = 0; i < 400; i++) {
      const all = [...env.daemonLog().matchAll(/"kmsUrl":"([^"]+)"/g)];
      if (all.length > urls) {
        urls = all.length;
        return all[all.length - 1]![1]!;
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`no new kmsUrl in the daemon log:\n${env.daemonLog()}`);
  };
  /** bob's and carol's clients on the running daemon's listener (static credentials: no environment to set). */
  const connect = (): { bob: EBSClient; carol: EBSClient } => {
    const make = (u: string): EBSClient => {
      const k = keys.get(u)!;
      const c = new EBSClient({ endpoint, region, maxAttempts: 1, credentials: { accessKeyId: k.AccessKeyId, secretAccessKey: k.SecretAccessKey } });
      clients.push(c);
      return c;
    };
    return { bob: make('bob'), carol: make('carol') };
  };
  const start = async (): Promise<void> => {
    await env.start(['--kms-listen', '127.0.0.1:0']);
    endpoint = await nextUrl();
  };
  const snapshotIds = async (): Promise<string[]> => ((await call('DescribeSnapshots', {})).Snapshots as { SnapshotId: string }[]).map((s) => s.SnapshotId).sort();
  const stateOf = async (id: string): Promise<string> => ((await call('DescribeSnapshots', { SnapshotIds: [id] })).Snapshots as { State: string }[])[0]!.State;

  beforeAll(async () => {
    ensureBuilt();
    await start();
    region = (await sock('ebsd.Status')).Daemon.Region as string;
    const policy = JSON.stringify({ Version: '2012-10-17', Statement: [
      { Effect: 'Allow', Action: 'ebs:*', Resource: `arn:aws:ec2:${region}::snapshot/*` },
      { Effect: 'Allow', Action: ['kms:Decrypt', 'kms:GenerateDataKeyWithoutPlaintext', 'kms:DescribeKey', 'kms:CreateGrant'], Resource: '*' },
    ] });
    for (const u of ['bob', 'carol']) {
      await sock('ebsd.IamCreateUser', { UserName: u });
      await sock('ebsd.IamPutPolicy', { Principal: `user/${u}`, PolicyName: 'ebs', PolicyDocument: policy });
      keys.set(u, (await sock('ebsd.IamCreateAccessKey', { UserName: u })).AccessKey);
    }
  }, 120_000);
  afterAll(async () => {
    for (const c of clients) c.destroy();
    await env.cleanup();
  });

  it('after SIGKILL: the same token and request answer the first snapshot and start none; another request or caller is ConflictException; a new token starts and completes', async () => {
    let { bob, carol } = connect();
    const req = { VolumeSize: 1, ClientToken: 'backup-job-7', Description: 'nightly' };
    const first = await bob.send(new StartSnapshotCommand(req));
    const snap = first.SnapshotId!;
    const data = randomBytes(BLOCK);
    await bob.send(new PutSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: 3, BlockData: data, DataLength: BLOCK, Checksum: sha(data), ChecksumAlgorithm: 'SHA256' }));
    const before = await snapshotIds();
    expect(before).toContain(snap);

    await env.kill9();
    await start();
    ({ bob, carol } = connect());
    const again = await bob.send(new StartSnapshotCommand(req));
    expect(again.SnapshotId).toBe(snap);
    expect(again).toMatchObject({ OwnerId: first.OwnerId, Status: 'pending', VolumeSize: 1, Description: 'nightly', KmsKeyArn: first.KmsKeyArn });
    expect(again.StartTime?.getTime()).toBe(first.StartTime?.getTime());
    expect(await snapshotIds()).toEqual(before); // no second snapshot

    // A pending snapshot does not outlive its daemon (the blocks written lived in the killed process): the
    // restart made it error, so it takes no more blocks, and the caller starts over with a new token.
    expect(await stateOf(snap)).toBe('error');
    const refused = await rejection(bob.send(new PutSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: 4, BlockData: data, DataLength: BLOCK, Checksum: sha(data), ChecksumAlgorithm: 'SHA256' })));
    expect(refused).toBeInstanceOf(ValidationException);

    expect(await rejection(bob.send(new StartSnapshotCommand({ ...req, VolumeSize: 2 })))).toBeInstanceOf(ConflictException);
    // The token never hands another caller bob's snapshot.
    expect(await rejection(carol.send(new StartSnapshotCommand(req)))).toBeInstanceOf(ConflictException);
    expect(await snapshotIds()).toEqual(before);

    const next = (await bob.send(new StartSnapshotCommand({ ...req, ClientToken: 'backup-job-7b' }))).SnapshotId!;
    await bob.send(new PutSnapshotBlockCommand({ SnapshotId: next, BlockIndex: 3, BlockData: data, DataLength: BLOCK, Checksum: sha(data), ChecksumAlgorithm: 'SHA256' }));
    expect((await bob.send(new CompleteSnapshotCommand({ SnapshotId: next, ChangedBlocksCount: 1 }))).Status).toBe('completed');
    expect((await bob.send(new StartSnapshotCommand({ ...req, ClientToken: 'backup-job-7b' }))).SnapshotId).toBe(next);
  }, 120_000);

  it('a completed snapshot\'s token, after SIGKILL and after a clean stop: the original answer, the snapshot readable, nothing started', async () => {
    let { bob } = connect();
    const req = { VolumeSize: 1, ClientToken: 'done-1' };
    const first = await bob.send(new StartSnapshotCommand(req));
    const snap = first.SnapshotId!;
    const data = randomBytes(BLOCK);
    await bob.send(new PutSnapshotBlockCommand({ SnapshotId: snap, BlockIndex: 0, BlockData: data, DataLength: BLOCK, Checksum: sha(data), ChecksumAlgorithm: 'SHA256' }));
    await bob.send(new CompleteSnapshotCommand({ SnapshotId: snap, ChangedBlocksCount: 1 }));
    const before = await snapshotIds();

    for (const restart of [() => env.kill9(), () => env.stop()]) {
      await restart();
      await start();
      ({ bob } = connect());
      const again = await bob.send(new StartSnapshotCommand(req));
      expect(again.SnapshotId).toBe(snap);
      expect(again.Status).toBe('pending'); // the original result, as EBS returns it for a retry
      expect(await snapshotIds()).toEqual(before);
      expect(await stateOf(snap)).toBe('completed');
      expect((await bob.send(new ListSnapshotBlocksCommand({ SnapshotId: snap }))).Blocks?.map((b) => b.BlockIndex)).toEqual([0]);
    }
  }, 120_000);
});
