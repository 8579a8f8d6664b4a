/**
 * A plaintext sent to the KMS does not stay in the daemon's memory once it is
 * answered (docs/architecture.md §5.2, §5.6, §6.5): a real `--kms-only`
 * daemon, Encrypt over the network listener (SigV4, the body sent in two
 * writes so the listener reads it in pieces) and over the control socket,
 * then the daemon's whole writable memory, freed memory included, is
 * searched for the plaintext (/proc/<pid>/mem, which root may read although
 * the daemon is not dumpable; test/helpers/own-memory.ts): no whole copy.
 * The base64 text of the request is a string and is not searched (strings
 * cannot be wiped). Both front ends (--kms-front-threads 1 and 0).
 */
import { connect, type Socket } from 'node:net';
import { randomFillSync } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { countInMemory, invert } from '../helpers/own-memory.js';
import { FRONT_THREADS, KMS_ADMIN_POLICY, answers, makeAccessKey, signedBytes, startKmsDaemon, type AccessKey } from './helpers.js';

/** Random bytes the test holds only inverted (own-memory.ts), and their base64 for the request. */
function plaintext(n: number): { inverse: Buffer; b64: string } {
  const p = Buffer.allocUnsafeSlow(n);
  randomFillSync(p);
  const out = { inverse: invert(p), b64: p.toString('base64') };
  p.fill(0);
  return out;
}

describe.each(FRONT_THREADS)('daemon memory after Encrypt (--kms-front-threads %i)', (front) => {
  const env = new Env(`kms-mem-${front}`);
  const open: Socket[] = [];
  let url: URL;
  let key: AccessKey;
  let keyId = '';

  beforeAll(async () => {
    ensureBuilt();
    url = new URL((await startKmsDaemon(env, { frontThreads: front })).url);
    ({ key } = await makeAccessKey(env, 'mem', KMS_ADMIN_POLICY));
    keyId = (await env.api('TrentService.CreateKey', {})).KeyMetadata.KeyId as string;
  }, 60_000);
  afterAll(async () => {
    for (const s of open) s.destroy();
    await env.cleanup();
  });

  it.each([48, 4096])('over the network, a %i-byte plaintext read in two pieces: no copy left once answered', async (n) => {
    const p = plaintext(n);
    const bytes = await signedBytes(url, key, 'Encrypt', JSON.stringify({ KeyId: keyId, Plaintext: p.b64 }));
    const s = connect({ host: url.hostname, port: Number(url.port) });
    open.push(s);
    await new Promise<void>((r, j) => { s.once('connect', r); s.once('error', j); });
    const got = answers(s, 1);
    const cut = bytes.length - (p.b64.length >> 1); // in the middle of the Plaintext member
    s.write(bytes.subarray(0, cut));
    // A pause between the writes so that the daemon reads them apart (not a wait for a state: either way is an answer).
    await new Promise((r) => setTimeout(r, 50));
    s.write(bytes.subarray(cut));
    const [a] = await got;
    expect(a!.status, JSON.stringify(a!.body)).toBe(200);
    s.destroy();
    expect(countInMemory(env.pid!, p.inverse)).toBe(0);
  }, 60_000);

  it('over the control socket: no copy left once answered', async () => {
    const p = plaintext(48);
    expect((await env.api('TrentService.Encrypt', { KeyId: keyId, Plaintext: p.b64 })).CiphertextBlob).toBeTruthy();
    expect(countInMemory(env.pid!, p.inverse)).toBe(0);
  }, 60_000);
});
