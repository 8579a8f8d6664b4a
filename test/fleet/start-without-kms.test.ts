/**
 * A host daemon with --kms-endpoint whose KMS does not answer when it starts
 * (docs/architecture.md §8): it comes up (mount, control socket), `ebsd
 * status` says the KMS is unreachable and shows the recorded attachment
 * waiting, volume operations are refused as ServiceUnavailable (exit 10),
 * and once the KMS daemon is started the host resolves its principal and
 * re-attaches the volume through its stored grant: the data reads back.
 * Meanwhile its metrics say the KMS does not answer and the volume is not
 * served (ebsd_kms_remote_reachable, ebsd_volumes_unserved), then that it is.
 * The SDK's "node >= 22" notice appears nowhere in the daemon's output.
 * A KMS host name that does not resolve (ENOTFOUND) is waited for the same way.
 * Opening the volumes once the KMS answers is all or nothing: a failed open
 * leaves the volume API refusing (ServiceUnavailable) and is tried afresh.
 */
import { openSync, readSync, readFileSync, writeSync, closeSync, constants, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TcpForwarder } from './tcp-forwarder.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from '../e2e/helpers.js';
import { restartOnSamePort } from '../helpers/ports.js';
import { startKmsDaemon } from '../kms-net/helpers.js';
import { callDaemon, socketPathFor } from '../../src/cli/client.js';
import { parseMetrics } from '../../src/cli/top.js';
import { until } from './netns.js';
import { cleanupHostAndKms, savedAwsEnv } from './remote-host.js';
import { SEED, printSeedOnFailure, seeded } from '../crypto/seeded.js';

const VARS = ['AWS_ENDPOINT_URL_STS', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_REGION', 'AWS_ENDPOINT_URL', 'AWS_PROFILE', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_EC2_METADATA_DISABLED', 'AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'];

/** A 16 MiB volume under `keyArn` created, attached and written (4 KiB from `seed`) through `kmsUrl`; the host then stops with it recorded in-use. */
async function attachedAndStopped(host: Env, kmsUrl: string, keyArn: string, seed: string): Promise<{ vol: string; data: Buffer }> {
  await host.start(['--kms-endpoint', kmsUrl, '--key-cache-ttl', '2s']);
  const vol = (await host.api('ebsd.CreateVolume', { Size: '16MiB', KmsKeyId: keyArn })).VolumeId as string;
  await host.api('ebsd.AttachVolume', { VolumeId: vol });
  const data = seeded(seed).bytes(4096);
  const fd = openSync(host.file(vol), constants.O_RDWR | constants.O_DIRECT);
  writeSync(fd, data, 0, 4096, 0);
  closeSync(fd);
  expect(await host.stop()).toBe(0);
  return { vol, data };
}

/** The 4 KiB attachedAndStopped wrote read back through the volume file (O_DIRECT), then the volume detached. */
async function readsBackAndDetaches(host: Env, vol: string, data: Buffer): Promise<void> {
  const out = Buffer.alloc(4096);
  const fd = openSync(host.file(vol), constants.O_RDONLY | constants.O_DIRECT);
  readSync(fd, out, 0, 4096, 0);
  closeSync(fd);
  expect(out.equals(data), `seed ${SEED}`).toBe(true);
  await host.untilClosed(vol); // FUSE RELEASE reaches the daemon after close() returns
  expect((await host.api('ebsd.DetachVolume', { VolumeId: vol, Force: false })).State).toBe('detached');
}

/** The host's credentials and `endpoints` (AWS_ENDPOINT_URL…) as the only AWS settings of this process, which the host daemon inherits. */
function useHostCredentials(k: { AccessKeyId: string; SecretAccessKey: string }, endpoints: Record<string, string>): void {
  for (const v of VARS) delete process.env[v];
  Object.assign(process.env, { AWS_ACCESS_KEY_ID: k.AccessKeyId, AWS_SECRET_ACCESS_KEY: k.SecretAccessKey, AWS_REGION: 'us-east-1', AWS_EC2_METADATA_DISABLED: 'true', ...endpoints });
}

/** A KMS daemon started in `kms` with a user `host` allowed kms:*, its access key, and a key: what every case's host needs. */
async function kmsWithHostUser(kms: Env): Promise<{ url: string; k: { AccessKeyId: string; SecretAccessKey: string }; keyArn: string }> {
  const url = (await startKmsDaemon(kms)).url;
  await kms.api('ebsd.IamCreateUser', { UserName: 'host' });
  await kms.api('ebsd.IamPutPolicy', { Principal: 'user/host', PolicyName: 'kms', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }) });
  const k = (await kms.api('ebsd.IamCreateAccessKey', { UserName: 'host' })).AccessKey;
  const keyArn = (await kms.api('TrentService.CreateKey')).KeyMetadata.Arn as string;

  return { url, k, keyArn };
}
/**
 * The daemons of one describe: `host` and `kms`, cleaned up after it (after `stopFirst`, e.g. a
 * proxy), the AWS_* environment put back; `status` is the host's, straight from its socket (a poll
 * spawns no CLI process).
 */
function daemonsOf(hostName: string, kmsName: string, stopFirst?: () => Promise<void> | undefined): { host: Env; kms: Env; status: () => Promise<any>; reattached: (vol: string, ms: number) => Promise<any> } {
  const kms = new Env(kmsName);
  const host = new Env(hostName);
  const saved = savedAwsEnv();
  beforeAll(() => ensureBuilt(), 60_000);
  afterAll(async () => {
    try {
      await stopFirst?.();
    } finally {
      await cleanupHostAndKms(host, kms, saved);
    }
  });
  const status = async (): Promise<any> => callDaemon(socketPathFor(host.state), 'ebsd.Status', {});
  /** Waits (up to `ms`) for `vol` to be attached again, its key cached and the host waiting for no KMS; the volume's status. */
  const reattached = async (vol: string, ms: number): Promise<any> => {
    const back = await until('the volume re-attached', async () => {
      const v = (await status()).Volumes.find((x: any) => x.VolumeId === vol);
      return v?.Attached ? v : undefined;
    }, ms);
    expect(back.KeyCache.State).toMatch(/cached|refreshing/);
    expect((await status()).Daemon.Kms.Waiting).toBeUndefined();
    return back;
  };
  return { host, kms, status, reattached };
}
printSeedOnFailure();

describe('a host daemon started while its KMS is down', () => {
  const { host, kms, status, reattached } = daemonsOf('nokms-host', 'nokms-kms');
  let url = '';

  it('comes up, says it waits, refuses volume operations with ServiceUnavailable, and re-attaches its volume when the KMS starts', async () => {
    const made = await kmsWithHostUser(kms);
    url = made.url;
    const { k, keyArn } = made;
    useHostCredentials(k, { AWS_ENDPOINT_URL: url });

    // A volume attached and written while the KMS is up; the host stops with it recorded in-use.
    const { vol, data } = await attachedAndStopped(host, url, keyArn, 'start-without-kms');
    await kms.stop();

    await host.start(['--kms-endpoint', url, '--key-cache-ttl', '2s', '--metrics-listen', '127.0.0.1:0']);
    const st = await status();
    // Metrics say it too, for the shipped alerts (contrib/prometheus/ebsd-alerts.yml): the KMS does not answer, one volume is not served.
    const metricsUrl = st.Daemon.MetricsUrl as string;
    const waiting = parseMetrics(await (await fetch(metricsUrl)).text());
    expect(waiting.get(`ebsd_kms_remote_reachable{endpoint="${url}"}`)).toBe(0);
    expect(waiting.get('ebsd_volumes_unserved')).toBe(1);
    expect(st.Daemon.Kms).toMatchObject({ Endpoint: url, State: 'unreachable', Waiting: { Attempts: expect.any(Number), LastError: expect.stringContaining('ECONNREFUSED') } });
    expect(st.Volumes).toEqual([expect.objectContaining({ VolumeId: vol, State: 'in-use', Attached: false, KeyCache: { State: 'attaching' }, Problem: expect.stringContaining(`waiting for the KMS at ${url}`) })]);
    const refused = await host.cli(['volume', 'create', '--size', '16MiB', '--kms-key', keyArn]);
    expect(refused.code, refused.stderr).toBe(10);
    expect(refused.stderr).toContain('ServiceUnavailable');
    expect(refused.stderr).toContain(`KMS at ${url} has not answered`);
    // What ebsd-attach@ runs at boot: `attach --wait` waits for the volume the daemon will re-attach, and a
    // bound that passes says what it still waits for (exit 10), rather than failing as a plain attach does.
    const short = await host.cli(['attach', vol, '--wait', '1']);
    expect(short.code, short.stderr).toBe(10);
    expect(short.stderr).toContain(`${vol} is recorded attached to this host and still not served after 1 s: waiting for the KMS at ${url}`);
    const attaching = host.cli(['attach', vol, '--wait', '120', '--output', 'json']);

    // Back on its old port: the host knows only that address.
    await restartOnSamePort(kms, ['--kms-only', '--kms-listen', new URL(url).host]);
    const attached = await attaching;
    expect(attached.code, attached.stderr).toBe(0);
    expect(attached.json()).toMatchObject({ VolumeId: vol, State: 'attached', Path: host.file(vol), Device: expect.any(String), AttachTime: expect.any(String) });
    await reattached(vol, 60_000);
    const served = parseMetrics(await (await fetch(metricsUrl)).text());
    expect(served.get(`ebsd_kms_remote_reachable{endpoint="${url}"}`)).toBe(1);
    expect(served.get('ebsd_volumes_unserved')).toBe(0);
    await readsBackAndDetaches(host, vol, data);

    const log = await host.untilLog(/host principal resolved, volumes open/);
    expect(log.match(/KMS unreachable at start/g)).toHaveLength(1);
    expect(log.match(/host principal resolved, volumes open/g)).toHaveLength(1);
    expect(log).not.toContain('NodeVersionSupportWarning');
    expect(kms.daemonLog()).not.toContain('NodeVersionSupportWarning');
  });
});

describe('an idle host whose KMS goes away and comes back', () => {
  const { host, kms, status } = daemonsOf('idle-host', 'idle-kms');

  it('asks it after each --kms-probe-interval without a call: ebsd_kms_remote_reachable goes to 0 while the KMS is killed and back to 1 once it answers; the KMS host audits no probe', async () => {
    const { url, k } = await kmsWithHostUser(kms);
    useHostCredentials(k, { AWS_ENDPOINT_URL: url });
    // No volume: nothing but the probes goes to the KMS.
    await host.start(['--kms-endpoint', url, '--kms-probe-interval', '300ms', '--metrics-listen', '127.0.0.1:0']);
    const metricsUrl = (await status()).Daemon.MetricsUrl as string;
    const reachable = async (): Promise<number | undefined> => parseMetrics(await (await fetch(metricsUrl)).text()).get(`ebsd_kms_remote_reachable{endpoint="${url}"}`);
    const probes = async (): Promise<number> => ((await status()).Daemon.Kms.Calls.GetCallerIdentity as number | undefined) ?? 0;
    expect(await reachable()).toBe(1);

    // Probes go out while the host is idle, and the KMS host's audit log records none of them (STS GetCallerIdentity).
    const auditLog = join(kms.state, 'kms', 'audit', 'events.ndjson');
    const audited = readFileSync(auditLog, 'utf8');
    const first = await probes();
    await until('three idle probes', async () => ((await probes()) >= first + 3 ? true : undefined), 20_000);
    expect(readFileSync(auditLog, 'utf8')).toBe(audited);
    expect(await reachable()).toBe(1);

    await kms.kill9();
    await until('the gauge at 0', async () => ((await reachable()) === 0 ? true : undefined), 20_000);
    // The first probe after the kill may find the old connection reset rather than refused.
    await until('a probe refused a connection', async () => (/ECONNREFUSED/.test((await status()).Daemon.Kms.LastError?.Message ?? '') ? true : undefined), 20_000);
    // Probes set reachability only: the circuit that fails attaches fast is not opened by an idle host's probes.
    expect((await status()).Daemon.Kms).toMatchObject({
      Reachable: false, Circuit: 'closed', ConsecutiveFailures: 0,
      LastError: { Operation: 'GetCallerIdentity', Message: expect.stringContaining('ECONNREFUSED') },
    });

    // Back on its old port: the host knows only that address.
    await restartOnSamePort(kms, ['--kms-only', '--kms-listen', new URL(url).host]);
    await until('the gauge at 1', async () => ((await reachable()) === 1 ? true : undefined), 20_000);
    expect((await status()).Daemon.Kms).toMatchObject({ Reachable: true, ConsecutiveFailures: 0, Circuit: 'closed' });
    expect(await host.stop()).toBe(0);
  });
});

describe('a host restarted while STS answers and the KMS does not', () => {
  let proxy: TcpForwarder | undefined;
  const { host, kms, status } = daemonsOf('kmsdown-host', 'kmsdown-kms', () => proxy?.stop());

  it('retries the re-attach with back-off, shows why in status, and serves the volume again once the KMS answers', async () => {
    const { url, k, keyArn } = await kmsWithHostUser(kms);
    const u = new URL(url);
    proxy = new TcpForwarder({ host: u.hostname, port: Number(u.port) });
    await proxy.start();
    const kmsUrl = `http://127.0.0.1:${proxy.port}`;
    // STS straight to the KMS daemon, the KMS calls through the proxy.
    useHostCredentials(k, { AWS_ENDPOINT_URL_STS: url });

    const { vol, data } = await attachedAndStopped(host, kmsUrl, keyArn, 'kms-down-sts-up');
    await proxy.stop();

    // STS answers, so the host principal resolves; the re-attach's Decrypt does not get through.
    await host.start(['--kms-endpoint', kmsUrl, '--key-cache-ttl', '2s', '--metrics-listen', '127.0.0.1:0']);
    const st = await status();
    expect(st.Daemon.Kms.Waiting).toBeUndefined();
    const waiting = st.Volumes.find((x: any) => x.VolumeId === vol);
    expect(waiting).toMatchObject({ State: 'in-use', Attached: false, Problem: expect.stringContaining('retrying with back-off'), Resume: { Attempts: expect.any(Number), LastError: expect.any(String) } });
    // The failed re-attach is an unserved volume in the metrics, and the KMS's unanswered Decrypt makes it unreachable.
    const unserved = parseMetrics(await (await fetch(st.Daemon.MetricsUrl as string)).text());
    expect(unserved.get('ebsd_volumes_unserved')).toBe(1);
    expect(unserved.get(`ebsd_kms_remote_reachable{endpoint="${kmsUrl}"}`)).toBe(0);
    // Retried in the background, logged once at error (at start), not once per try.
    await until('two more tries', async () => ((await status()).Volumes.find((x: any) => x.VolumeId === vol)?.Resume?.Attempts >= 3 ? true : undefined), 30_000);
    expect(host.daemonLog().split('\n').filter((l) => l.includes('"level":50') && l.includes('could not resume attachment'))).toHaveLength(1);
    // attach --wait on a re-attach being retried: AttachVolume says VolumeInUse, the wait names the retry.
    const short = await host.cli(['attach', vol, '--wait', '1']);
    expect(short.code, short.stderr).toBe(10);
    expect(short.stderr).toMatch(new RegExp(`${vol} is recorded attached to this host and still not served after 1 s: .*retrying with back-off`));

    await proxy.start();
    const back = await until('the volume served again', async () => {
      const v = (await status()).Volumes.find((x: any) => x.VolumeId === vol);
      return v?.Attached ? v : undefined;
    }, 90_000);
    expect(back.Problem).toBeUndefined();
    expect(back.KeyCache.State).toMatch(/cached|refreshing/);
    // Served already: --wait does not turn the refusal into a success.
    const again = await host.cli(['attach', vol, '--wait', '5']);
    expect(again.code, again.stderr).toBe(6);
    expect(again.stderr).toContain('VolumeInUse');
    const served = parseMetrics(await (await fetch(st.Daemon.MetricsUrl as string)).text());
    expect(served.get('ebsd_volumes_unserved')).toBe(0);
    expect(served.get(`ebsd_kms_remote_reachable{endpoint="${kmsUrl}"}`)).toBe(1);
    await readsBackAndDetaches(host, vol, data);
    const log = await host.untilLog(/volume recorded attached is served again/);
    expect(log.match(/KMS did not answer the re-attach of volumes recorded attached/g)).toHaveLength(1);
    expect(log.match(/volume recorded attached is served again/g)).toHaveLength(1);
  });
});

describe('a host daemon whose KMS host name does not resolve', () => {
  const { host, status } = daemonsOf('nxkms-host', 'nxkms-kms');

  it('comes up and waits (getaddrinfo ENOTFOUND is unreachable, as ECONNREFUSED is), and refuses volume operations with ServiceUnavailable', async () => {
    // .invalid is reserved never to resolve, and a DNS label holds at most 63 octets, so a 64-octet
    // one cannot be put in a query: glibc's getaddrinfo fails it as EAI_NONAME (Node: ENOTFOUND)
    // without asking any resolver, so no query leaves the machine, whatever /etc/resolv.conf says.
    const url = `https://${'a'.repeat(64)}.invalid`;
    // Never sent: no connection is made. STS at the same name, as a fleet host's profile would say.
    useHostCredentials({ AccessKeyId: 'AKIAIOSFODNN7EXAMPLE', SecretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' }, { AWS_ENDPOINT_URL: url });
    await host.start(['--kms-endpoint', url]);
    const st = await status();
    expect(st.Daemon.Kms).toMatchObject({ Endpoint: url, State: 'unreachable', Waiting: { Attempts: expect.any(Number), LastError: expect.stringContaining('ENOTFOUND') } });
    const refused = await host.cli(['volume', 'create', '--size', '16MiB', '--kms-key', 'alias/aws/ebs']);
    expect(refused.code, refused.stderr).toBe(10);
    expect(refused.stderr).toContain('ServiceUnavailable');
    // A status call tries again at once: still waiting, still the same reason, still one warning.
    await until('a second try', async () => ((await status()).Daemon.Kms.Waiting.Attempts >= 2 ? true : undefined), 30_000);
    expect((await status()).Daemon.Kms.Waiting.LastError).toContain('ENOTFOUND');
    expect(host.daemonLog().match(/KMS unreachable at start/g)).toHaveLength(1);
    expect(await host.stop()).toBe(0);
  });
});

describe('a host whose volumes fail to open once its KMS answers', () => {
  const { host, kms, status, reattached } = daemonsOf('openfail-host', 'openfail-kms');

  it('publishes nothing of a failed open (volume operations stay ServiceUnavailable), and opens everything afresh on the next try', async () => {
    const { url, k, keyArn } = await kmsWithHostUser(kms);
    useHostCredentials(k, { AWS_ENDPOINT_URL: url });
    const { vol, data } = await attachedAndStopped(host, url, keyArn, 'open-fails-once');
    await kms.stop();

    // The last part openVolumes opens (the snapshot copier's markers, <state>/snapshots-local/copies)
    // cannot be: a file where its directory goes. The volume manager and snapshots open before it.
    const copies = join(host.state, 'snapshots-local', 'copies');
    rmSync(copies, { recursive: true, force: true });
    writeFileSync(copies, '');
    await host.start(['--kms-endpoint', url, '--key-cache-ttl', '2s']);
    expect((await status()).Daemon.Kms.State).toBe('unreachable');
    await restartOnSamePort(kms, ['--kms-only', '--kms-listen', new URL(url).host]);
    // A status call makes the resolver try at once (at most once a second).
    await until('an open of the volumes that failed', async () => {
      await status();
      return /could not open the volumes after the KMS answered/.test(host.daemonLog()) || undefined;
    }, 90_000);
    const st = await status();
    expect(st.Daemon.Kms.Waiting.LastError).toContain('copies');
    expect(st.Volumes).toEqual([expect.objectContaining({ VolumeId: vol, Attached: false })]);
    // Nothing of the failed open is served: every volume operation is refused as while waiting (no TypeError on a half-set daemon).
    for (const args of [['volume', 'create', '--size', '16MiB', '--kms-key', keyArn], ['volume', 'ls'], ['attach', vol]]) {
      const refused = await host.cli(args);
      expect(refused.code, `${args.join(' ')}: ${refused.stderr}`).toBe(10);
      expect(refused.stderr).toContain('ServiceUnavailable');
    }

    rmSync(copies);
    mkdirSync(copies, { mode: 0o700 });
    await reattached(vol, 90_000);
    await readsBackAndDetaches(host, vol, data);
    const log = await host.untilLog(/host principal resolved, volumes open/);
    expect(log.match(/host principal resolved, volumes open/g)).toHaveLength(1);
    expect(log).not.toContain('could not close after a failed open');
    expect(await host.stop()).toBe(0);
  });
});
