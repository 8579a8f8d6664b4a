/**
 * `ebsd audit verify` checks the signed digests against the HSM's own audit
 * public key (derived from its sealed private key), not against the PEM file
 * beside the log: anyone able to write the state dir could swap that file
 * while the daemon runs, and a forged digest would then verify. Real daemon,
 * real CLI.
 */
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';

describe('audit verify judges digests by the HSM\'s key', () => {
  const env = new Env('audit-verify-key');
  const pemFile = (): string => join(env.state, 'kms', 'audit', 'digest-public-key.pem');

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    await env.ok(['kms', 'create-key']);
  }, 60_000);
  afterAll(() => env.cleanup(), 60_000);

  it('with the PEM file beside the log swapped for another key, verify still passes (the HSM\'s key), and a restart writes the right one back', async () => {
    const good = readFileSync(pemFile(), 'utf8');
    const other = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();
    writeFileSync(pemFile(), other);
    const r = await env.ok(['audit', 'verify']);
    expect(r).toMatchObject({ ok: true });
    expect(r.digests).toBeGreaterThanOrEqual(1);
    expect(await env.stop()).toBe(0);
    await env.start();
    expect(readFileSync(pemFile(), 'utf8')).toBe(good);
  });
});
