/**
 * Callers' KMS calls wait for turns while the volume data path is busy
 * (src/daemon/data-path-first.ts, docs/architecture.md §3.6): one daemon with
 * a mounted volume and `--kms-listen`, fio writing and verifying the volume
 * file while the AWS SDK (SigV4 over the listener) and `ebsd kms` (control
 * socket) make KMS calls. Every call is answered and right, the data path
 * still verifies after, the calls that came while fio ran are counted as held
 * (ebsd_kms_calls_held_for_io_total), and once the volume is quiet calls pass
 * without waiting (the counter stays). Counts, not times: the pace itself is
 * checked in test/daemon/data-path-first.test.ts on a fake clock and measured
 * by scripts/bench/datapath-under-kms.mjs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { KMSClient, GenerateRandomCommand, EncryptCommand, DecryptCommand, CreateKeyCommand } from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt, rawControlCall } from './helpers.js';
import { KMS_ADMIN_POLICY, kmsUrl, makeAccessKey, REGION } from '../kms-net/helpers.js';

async function scrape(url: string, name: string): Promise<number> {
  const text = await (await fetch(url)).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  if (!m) throw new Error(`${name} not in the metrics:\n${text.slice(0, 2000)}`);
  return Number(m[1]);
}

describe('KMS calls beside a busy data path (real daemon, FUSE, fio, AWS SDK)', () => {
  const env = new Env('dp-first');
  let metrics = '';
  let kms: KMSClient;
  let file = '';
  let fio: ChildProcess | undefined;

  beforeAll(async () => {
    ensureBuilt();
    // A low rate, so that the calls below find the gate's burst spent while fio runs.
    await env.start(['--kms-listen', '127.0.0.1:0', '--metrics-listen', '127.0.0.1:0', '--kms-rate-while-io-busy', '50']);
    const url = await kmsUrl(env);
    metrics = (/"metrics":"([^"]+)"/.exec(await env.untilLog(/"metrics":"/)) ?? [])[1]!;
    const { key } = await makeAccessKey(env, 'app', KMS_ADMIN_POLICY);
    kms = new KMSClient({ endpoint: url, region: REGION, credentials: { accessKeyId: key.AccessKeyId, secretAccessKey: key.SecretAccessKey }, maxAttempts: 1 });
    const vol = (await env.ok(['volume', 'create', '--size', '64MiB', '--wait'])).VolumeId;
    await env.ok(['attach', vol]);
    file = env.file(vol);
  }, 120_000);
  afterAll(async () => {
    fio?.kill('SIGKILL');
    kms?.destroy();
    await env.cleanup();
  });

  it('while fio writes and verifies the volume: SDK and socket calls are all answered, held calls counted; quiet again, none held', async () => {
    const keyId = (await kms.send(new CreateKeyCommand({}))).KeyMetadata!.KeyId!;
    const heldBefore = await scrape(metrics, 'ebsd_kms_calls_held_for_io_total');
    // Bounded: 30 s at most, killed once the calls are done.
    fio = spawn('fio', ['--name=busy', `--filename=${file}`, '--ioengine=libaio', '--direct=1', '--rw=randwrite', '--bs=4k', '--iodepth=8',
      '--size=32m', '--time_based=1', '--runtime=30', '--verify=crc32c', '--verify_fatal=1', '--do_verify=0'], { stdio: 'ignore' });
    const fioExit = new Promise<number | null>((r) => fio!.once('exit', (c) => r(c)));
    try {
      // fio is writing: the volume's write count moves.
      const writes = async (): Promise<number> => {
        const text = await (await fetch(metrics)).text();
        return [...text.matchAll(/^ebsd_volume_operations_total\{[^}]*operation="write"[^}]*\} (\S+)$/gm)].reduce((a, m) => a + Number(m[1]), 0);
      };
      const w0 = await writes();
      for (let i = 0; i < 200 && (await writes()) === w0; i++) await new Promise((r) => setTimeout(r, 50));
      expect(await writes()).toBeGreaterThan(w0);

      const plaintexts = Array.from({ length: 40 }, (_, i) => Buffer.alloc(32, i));
      const sdk = Promise.all(plaintexts.map(async (p) => {
        const blob = (await kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: p, EncryptionContext: { n: String(p[0]) } }))).CiphertextBlob!;
        const back = (await kms.send(new DecryptCommand({ CiphertextBlob: blob, EncryptionContext: { n: String(p[0]) } }))).Plaintext!;
        return Buffer.from(back).equals(p);
      }));
      expect(await sdk).toEqual(plaintexts.map(() => true));
      const heldSdk = await scrape(metrics, 'ebsd_kms_calls_held_for_io_total');
      expect(heldSdk).toBeGreaterThan(heldBefore);
      // The control socket's calls wait their turns too (ten at once, each on its own connection, one uid).
      const socket = await Promise.all(Array.from({ length: 10 }, () => rawControlCall(env.state, 'TrentService.GenerateRandom', { NumberOfBytes: 16 })));
      for (const r of socket) {
        expect(r.status).toBe(200);
        expect(Buffer.from(r.body.Plaintext as string, 'base64')).toHaveLength(16);
      }
      expect(await scrape(metrics, 'ebsd_kms_calls_held_for_io_total')).toBeGreaterThan(heldSdk);
      expect(fio.exitCode).toBeNull(); // fio ran through all of it
    } finally {
      fio.kill('SIGTERM');
    }
    await fioExit;
    fio = undefined;
    // The data path still writes and reads back right after the load (fio's write-then-verify pass).
    const verify = await new Promise<number | null>((r) => spawn('fio', ['--name=busy', `--filename=${file}`, '--ioengine=libaio', '--direct=1', '--rw=randwrite', '--bs=4k', '--iodepth=8',
      '--size=4m', '--verify=crc32c', '--verify_fatal=1', '--do_verify=1'], { stdio: 'ignore' }).once('exit', r));
    expect(verify).toBe(0);

    // Quiet: after the data path's window, calls pass straight through.
    await new Promise((r) => setTimeout(r, 100));
    const held = await scrape(metrics, 'ebsd_kms_calls_held_for_io_total');
    await Promise.all(Array.from({ length: 20 }, () => kms.send(new GenerateRandomCommand({ NumberOfBytes: 8 }))));
    expect(await scrape(metrics, 'ebsd_kms_calls_held_for_io_total')).toBe(held);
    expect(await scrape(metrics, 'ebsd_kms_calls_waiting_for_io')).toBe(0);
  }, 120_000);
});
