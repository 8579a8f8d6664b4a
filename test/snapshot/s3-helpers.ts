import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';

/** s3rver's fixed credentials (it refuses any other signature). */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

export interface S3Server {
  endpoint: string;
  bucket: string;
  /** s3rver's directory: `<dir>/<bucket>/<key>._S3rver_object` holds an object's bytes. */
  dir: string;
  objectFile(key: string): string;
  /** The environment a daemon or SDK client needs to reach it the standard way. */
  env: Record<string, string>;
  /** Accept these credentials too (e.g. a host's access key that also signs its KMS calls). */
  addAccessKey(accessKeyId: string, secretAccessKey: string): Promise<void>;
  /** Every PUT of a key starting with `prefix` fails with HTTP 500 InternalError from now on; undefined stops it. */
  failPuts(prefix: string | undefined): Promise<void>;
  stop(): Promise<void>;
}

/** Starts test/snapshot/s3-server.mjs (s3rver) in a child process; stop() kills it and removes its directory. */
export async function startS3Server(bucket = 'ebsd-snapshots'): Promise<S3Server> {
  const dir = mkdtempSync('/tmp/ebsd-s3rver-');
  const child: ChildProcess = spawn(process.execPath, ['--openssl-legacy-provider', '--no-warnings', resolve(import.meta.dirname, 's3-server.mjs'), dir, bucket], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (c) => (stderr += c));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await gone;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const rl = createInterface({ input: child.stdout! });
    const lines: string[] = [];
    const waiting: ((l: string) => void)[] = [];
    rl.on('line', (l) => (waiting.length ? waiting.shift()!(l) : lines.push(l)));
    const nextLine = (): Promise<string> => (lines.length ? Promise.resolve(lines.shift()!) : new Promise((r) => waiting.push(r)));
    const port = await new Promise<number>((res, rej) => {
      void nextLine().then((l) => res((JSON.parse(l) as { port: number }).port));
      child.once('exit', (code) => rej(new Error(`s3rver exited (${code}) before listening: ${stderr}`)));
    });
    const endpoint = `http://127.0.0.1:${port}`;
    return {
      endpoint, bucket, dir,
      objectFile: (key) => join(dir, bucket, `${key}._S3rver_object`),
      env: {
        AWS_ENDPOINT_URL_S3: endpoint,
        AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
        AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
        AWS_REGION: 'us-east-1',
      },
      addAccessKey: async (id, secret) => {
        child.stdin!.write(`${id} ${secret}\n`);
        const l = await nextLine();
        if (l !== `added ${id}`) throw new Error(`s3rver did not add the key: ${l}`);
      },
      failPuts: async (prefix) => {
        child.stdin!.write(`fail-puts ${prefix ?? '-'}\n`);
        const l = await nextLine();
        if (l !== `fail-puts ${prefix ?? '-'}`) throw new Error(`s3rver did not take fail-puts: ${l}`);
      },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}

/**
 * The collector's delete window and its margin this suite's S3 stores record
 * (`PREFIX/settings.json`, docs/architecture.md §13.1): s3rver on loopback acts
 * on a request within milliseconds, so a store's writers need not wait the
 * default 10 s after their last put before asking again for their blocks.
 */
export const TEST_DELETE_WINDOWS = { deleteWindowMs: 250, deleteMarginMs: 250 };

/** Records TEST_DELETE_WINDOWS in the store at `prefix`, before any daemon uses it. */
export async function useTestDeleteWindows(server: S3Server, prefix: string): Promise<void> {
  const { S3SnapshotStore } = await import('../../src/snapshot/s3-store.js');
  const s = await S3SnapshotStore.open({ bucket: server.bucket, prefix, endpoint: server.endpoint, credentials: S3RVER_CREDENTIALS });
  try {
    await s.putSettings(TEST_DELETE_WINDOWS);
  } finally {
    s.close();
  }
}
