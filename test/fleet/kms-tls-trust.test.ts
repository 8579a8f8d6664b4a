/**
 * A host daemon trusts its KMS's certificate only through the CA it is given
 * (README "A fleet": AWS_CA_BUNDLE, NODE_EXTRA_CA_CERTS): against a KMS whose
 * certificate another CA signed, the TLS handshake fails, so no request (and
 * no access key id) reaches the KMS, and the host does not start: exit 9
 * naming the certificate error, as for missing credentials (a trust that
 * waiting would not change). Started again with the KMS's own CA it creates
 * and attaches. Nothing in src/ turns verification off (no rejectUnauthorized).
 */
import { mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { auditEvents, makeTestCa, startKmsDaemon } from '../kms-net/helpers.js';
import { callDaemon, socketPathFor } from '../../src/cli/client.js';
import { cleanupHostAndKms, createRemoteHostUser, hostBEnv, hostKeyPolicy, savedAwsEnv, type RemoteHostUser } from './remote-host.js';

describe('a host daemon and the CA of its KMS', () => {
  const a = new Env('tls-kms');
  const b = new Env('tls-host');
  const saved = savedAwsEnv();
  let url = '';
  let ca = '';
  let otherCa = '';
  let k = '';
  let host: RemoteHostUser;
  const status = (): Promise<any> => callDaemon(socketPathFor(b.state), 'ebsd.Status', {});
  const fromHost = (): any[] => auditEvents(a).filter((e) => String(e.userIdentity?.arn ?? '').endsWith(':user/host-b') || e.userIdentity?.accessKeyId === host.key.AccessKeyId);

  beforeAll(async () => {
    ensureBuilt();
    ({ url, ca: ca as string } = await startKmsDaemon(a, { tls: true }) as { url: string; ca: string });
    mkdirSync(join(a.dir, 'other'));
    otherCa = (await makeTestCa(join(a.dir, 'other'))).ca;
    host = await createRemoteHostUser(a);
    k = (await a.api('TrentService.CreateKey', { Description: 'K' })).KeyMetadata.Arn;
    await a.api('TrentService.PutKeyPolicy', { KeyId: k, PolicyName: 'default', Policy: hostKeyPolicy(host) });
  }, 120_000);

  afterAll(() => cleanupHostAndKms(b, a, saved), 60_000);

  it('another CA: the TLS handshake fails, no request reaches the KMS, and the host does not start (exit 9, the certificate error named)', async () => {
    hostBEnv(host, url);
    Object.assign(process.env, { AWS_CA_BUNDLE: otherCa, NODE_EXTRA_CA_CERTS: otherCa });
    const before = fromHost().length;
    const sessions = auditEvents(a).length;
    await expect(b.start(['--kms-endpoint', url, '--key-cache-ttl', '2s'])).rejects.toThrow(/exited 9[\s\S]*TLS certificate did not verify against the trusted CAs[^\n]*unable to verify the first certificate/);
    expect(fromHost().length).toBe(before);
    expect(auditEvents(a).length).toBe(sessions); // not even a refused request: the handshake came first
    expect(b.daemonLog()).not.toContain(host.key.SecretAccessKey);
  }, 60_000);

  it('the KMS\'s own CA: the same host creates, attaches and detaches', async () => {
    hostBEnv(host, url);
    Object.assign(process.env, { AWS_CA_BUNDLE: ca, NODE_EXTRA_CA_CERTS: ca });
    await b.start(['--kms-endpoint', url, '--key-cache-ttl', '2s']);
    expect((await status()).Daemon.Kms.Waiting).toBeUndefined();
    const vol = (await b.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: k })).VolumeId as string;
    await b.api('ebsd.AttachVolume', { VolumeId: vol });
    await b.api('ebsd.DetachVolume', { VolumeId: vol });
    expect(fromHost().some((e) => e.eventName === 'CreateGrant' && !e.errorCode)).toBe(true);
  }, 60_000);

  it('no file under src/ turns TLS verification off', () => {
    const files = (dir: string): string[] => readdirSync(dir).flatMap((f) => {
      const p = join(dir, f);
      return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
    });
    const root = join(import.meta.dirname, '..', '..', 'src');
    const off = files(root).filter((f) => /rejectUnauthorized\s*:\s*false|NODE_TLS_REJECT_UNAUTHORIZED/.test(readFileSync(f, 'utf8')));
    expect(off).toEqual([]);
  });
});
