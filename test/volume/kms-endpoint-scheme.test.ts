/**
 * A Decrypt answer carries the plaintext volume key, so the KMS client takes
 * plain HTTP only to a loopback address (src/volume/aws-key-service.ts, the
 * rule of the listener, src/util/loopback.ts); anything else needs https://.
 * The daemon refuses such a --kms-endpoint before it starts (checkDaemonConfig).
 */
import { describe, expect, it } from 'vitest';
import { checkDaemonConfig, checkDaemonFlags } from '../../src/daemon/config.js';
import { AwsKeyService } from '../../src/volume/aws-key-service.js';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, ensureBuilt, run } from '../e2e/helpers.js';

const REFUSED = ['http://10.0.0.1:4599', 'http://kms.internal:4599', 'http://[fd00::1]:4599', 'http://128.0.0.1', 'http://0.0.0.0:4599'];
const ALLOWED = ['http://127.0.0.1:4599', 'http://127.3.2.1', 'http://localhost:4599', 'http://[::1]:4599', 'https://10.0.0.1:4599', 'https://kms.us-east-1.amazonaws.com'];

describe('--kms-endpoint: plain HTTP only to a loopback address', () => {
  it('the KMS client refuses http:// elsewhere, naming the flag and the way out', () => {
    for (const endpoint of REFUSED) {
      expect(() => new AwsKeyService({ endpoint, region: 'us-east-1' }), endpoint).toThrow(/--kms-endpoint .*plain HTTP is allowed only to a loopback address.*use https:\/\//);
    }
    for (const endpoint of ALLOWED) expect(() => new AwsKeyService({ endpoint, region: 'us-east-1' }), endpoint).not.toThrow();
  });

  it('the daemon refuses it before anything starts', () => {
    const base = { stateDir: '/x', mountDir: '/y', logLevel: 'info', allowUnencrypted: false };
    for (const kmsEndpoint of REFUSED) expect(() => checkDaemonConfig({ ...base, kmsEndpoint }), kmsEndpoint).toThrow(/plain HTTP is allowed only to a loopback address/);
    for (const kmsEndpoint of ALLOWED) expect(() => checkDaemonConfig({ ...base, kmsEndpoint }), kmsEndpoint).not.toThrow();
  });
});

describe('--kms-endpoint: no user name or password in the URL', () => {
  const WITH_USERINFO = ['https://host-a:s3cr3t-token@10.0.0.1:4599', 'https://s3cr3t-token@kms.us-east-1.amazonaws.com', 'http://:s3cr3t-token@127.0.0.1:4599'];
  const refusal = /--kms-endpoint .*with a user name or password in it: not used .*SigV4/;

  it('the KMS client and the config check refuse it, and neither error repeats the secret', () => {
    const base = { stateDir: '/x', mountDir: '/y', logLevel: 'info', allowUnencrypted: false };
    for (const endpoint of WITH_USERINFO) {
      for (const f of [() => new AwsKeyService({ endpoint, region: 'us-east-1' }), () => checkDaemonConfig({ ...base, kmsEndpoint: endpoint })]) {
        let msg = '';
        try { f(); } catch (e) { msg = (e as Error).message; }
        expect(msg, endpoint).toMatch(refusal);
        expect(msg, endpoint).not.toContain('s3cr3t');
      }
    }
  });

  it('a malformed endpoint with one in it (no scheme, a bad port, another scheme) is refused without repeating it either', () => {
    const base = { stateDir: '/x', mountDir: '/y', logLevel: 'info', allowUnencrypted: false };
    // 'host-a:s3cr3t-token@…' parses as a URL of scheme 'host-a:' with no user name; the port 99999 does not parse at all.
    for (const endpoint of ['host-a:s3cr3t-token@10.0.0.1:4599', 'https://host-a:s3cr3t-token@10.0.0.1:99999', 'ftp://host-a:s3cr3t-token@10.0.0.1/x@y']) {
      for (const f of [() => new AwsKeyService({ endpoint, region: 'us-east-1' }), () => checkDaemonFlags({ ...base, kmsEndpoint: endpoint })]) {
        let msg = '';
        try { f(); } catch (e) { msg = (e as Error).message; }
        expect(msg, endpoint).toMatch(/^--kms-endpoint "[^"]*10\.0\.0\.1[^"]*"/);
        expect(msg, endpoint).not.toContain('s3cr3t');
      }
    }
  });

  it('a real daemon given one refuses to start, naming the flag, without printing the secret or touching the state dir', async () => {
    ensureBuilt();
    const dir = mkdtempSync(join(tmpdir(), 'ebsd-endpoint-userinfo-'));
    try {
      const r = await run(process.execPath, [CLI, 'daemon', '--state-dir', join(dir, 'state'), '--mount', join(dir, 'mnt'), '--kms-endpoint', WITH_USERINFO[0]!], { timeoutMs: 60_000 });
      // Refused configuration, not a malformed flag: exit 9 (src/cli/exit-codes.ts DAEMON_START).
      expect(r.code, r.stderr + r.stdout).toBe(9);
      expect(r.stderr + r.stdout).toMatch(refusal);
      expect(r.stderr + r.stdout).not.toContain('s3cr3t');
      expect(existsSync(join(dir, 'state'))).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
