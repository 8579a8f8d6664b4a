/**
 * A fleet on one KMS (README.md, "A fleet"): three network namespaces joined
 * by a bridge, addresses only inside them. `kms` runs `ebsd daemon --kms-only
 * --kms-listen` over HTTPS (a CA made here with openssl); host-a and host-b
 * each run a daemon with its own state dir, FUSE mount and role session
 * (`role_arn` + `source_profile`), keys from `--kms-endpoint`. A third host,
 * host-c, has a role the key policy does not name.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { seededBytes, printSeedOnFailure } from '../crypto/seeded.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureBuilt, sh } from '../e2e/helpers.js';
import { NetnsFleet, NsDaemon, until } from './netns.js';
/** Random payloads replay under EBSD_TEST_SEED (test/crypto/seeded.ts); a failure prints the seed. */
const randomBytes = seededBytes('fleet/fleet');
printSeedOnFailure();

const PORT = 4599;
/**
 * Each KMS call gets TTL/2: at 2 s a loaded machine timed calls out before the
 * outage began. Max-stale only has to outlast the KMS's restart; nothing here waits for it.
 */
const TTL = '4s';
const MAX_STALE = '90s';
const MiB = 1 << 20;

describe('a fleet on one KMS, in network namespaces', () => {
  const dir = mkdtempSync('/tmp/ebsd-fleet-');
  chmodSync(dir, 0o755);
  const net = new NetnsFleet(['kms', 'a', 'b']);
  const url = (): string => `https://${net.ip.kms}:${PORT}`;
  const kms = new NsDaemon(() => net.ns.kms!, join(dir, 'kms'), join(dir, 'kms.log'), ['--kms-only', '--kms-listen', `10.77.0.1:${PORT}`, '--tls-cert', join(dir, 'server.pem'), '--tls-key', join(dir, 'server.key')], cleanEnv());
  const hosts: Record<string, NsDaemon> = {};
  let accountId = '';
  let keyArn = '';
  const patterns = new Map<string, Buffer>();

  const hostDaemon = (name: string, ns: string, role: string): NsDaemon => {
    const home = join(dir, name);
    mkdirSync(join(home, 'mnt'), { recursive: true });
    writeFileSync(join(home, 'config'), [
      '[profile base]', 'region = us-east-1', `endpoint_url = ${url()}`, '',
      `[profile host]`, `role_arn = arn:aws:iam::${accountId}:role/${role}`, `role_session_name = ${name}`, 'source_profile = base', 'region = us-east-1', `endpoint_url = ${url()}`, '',
    ].join('\n'));
    const d = new NsDaemon(() => net.ns[ns]!, join(home, 'state'), join(home, 'daemon.log'),
      ['--mount', join(home, 'mnt'), '--kms-endpoint', url(), '--key-cache-ttl', TTL, '--key-cache-max-stale', MAX_STALE],
      cleanEnv({ AWS_CONFIG_FILE: join(home, 'config'), AWS_SHARED_CREDENTIALS_FILE: join(dir, 'credentials'), AWS_PROFILE: 'host', AWS_CA_BUNDLE: join(dir, 'ca.pem'), NODE_EXTRA_CA_CERTS: join(dir, 'ca.pem'), HOME: home }));
    hosts[name] = d;
    return d;
  };
  const file = (h: string, vol: string): string => join(dir, h, 'mnt', vol);
  const volumeOf = async (h: string, vol: string): Promise<any> => (await hosts[h]!.api('ebsd.Status')).Volumes.find((v: any) => v.VolumeId === vol);
  const keyPolicy = (roles: string[]): string => JSON.stringify({
    Version: '2012-10-17',
    Statement: [
      { Sid: 'Account', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${accountId}:root` }, Action: 'kms:*', Resource: '*' },
      { Sid: 'EbsdHosts', Effect: 'Allow', Principal: { AWS: roles.map((r) => `arn:aws:iam::${accountId}:role/${r}`) }, Action: ['kms:GenerateDataKeyWithoutPlaintext', 'kms:Decrypt', 'kms:CreateGrant', 'kms:DescribeKey'], Resource: '*' },
    ],
  });
  const kmsAudit = (): any[] => readFileSync(join(dir, 'kms', 'kms', 'audit', 'events.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));

  beforeAll(async () => {
    ensureBuilt();
    await sh('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'ca.key'), '-out', join(dir, 'ca.pem'), '-days', '1', '-subj', '/CN=ebsd fleet test CA']);
    await sh('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'server.key'), '-out', join(dir, 'server.csr'), '-subj', '/CN=kms']);
    writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:10.77.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
    await sh('openssl', ['x509', '-req', '-in', join(dir, 'server.csr'), '-CA', join(dir, 'ca.pem'), '-CAkey', join(dir, 'ca.key'), '-CAcreateserial', '-out', join(dir, 'server.pem'), '-days', '1', '-extfile', join(dir, 'ext.cnf')]);
    net.create();
    await kms.start();
    await kms.api('ebsd.IamCreateUser', { UserName: 'fleet' });
    const k = (await kms.api('ebsd.IamCreateAccessKey', { UserName: 'fleet' })).AccessKey;
    const users = (await kms.api('ebsd.IamListUsers')).Users;
    const userArn = users.find((u: any) => u.UserName === 'fleet').Arn as string;
    accountId = userArn.split(':')[4]!;
    writeFileSync(join(dir, 'credentials'), `[base]\naws_access_key_id = ${k.AccessKeyId}\naws_secret_access_key = ${k.SecretAccessKey}\n`, { mode: 0o600 });
    for (const role of ['host-a', 'host-b', 'host-c']) {
      await kms.api('ebsd.IamCreateRole', { RoleName: role });
      await kms.api('ebsd.IamUpdateAssumeRolePolicy', { RoleName: role, PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Principal: { AWS: userArn }, Action: 'sts:AssumeRole' }] }) });
      await kms.api('ebsd.IamPutPolicy', { Principal: `role/${role}`, PolicyName: 'housekeeping', PolicyDocument: JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:ListRetirableGrants', Resource: '*' }] }) });
    }
    keyArn = (await kms.api('TrentService.CreateKey', { Description: 'fleet volumes' })).KeyMetadata.Arn;
    await kms.api('TrentService.PutKeyPolicy', { KeyId: keyArn, PolicyName: 'default', Policy: keyPolicy(['host-a', 'host-b']) });
    await Promise.all([hostDaemon('host-a', 'a', 'host-a').start(), hostDaemon('host-b', 'b', 'host-b').start()]);
  }, 120_000);

  afterAll(async () => {
    for (const h of Object.values(hosts)) await h.stop().catch(() => {});
    await kms.stop().catch(() => {});
    for (const h of Object.keys(hosts)) spawnSync('fusermount', ['-uz', join(dir, h, 'mnt')]);
    net.destroy();
    expect(net.leftovers()).toEqual([]);
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8');
    expect(mounts).not.toContain(dir);
    rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('both hosts create, attach, write, detach and re-attach under one customer key; the KMS audit names each host role and address', async () => {
    for (const h of ['host-a', 'host-b']) {
      const vol = (await hosts[h]!.api('ebsd.CreateVolume', { Size: '32MiB', KmsKeyId: keyArn })).VolumeId as string;
      await hosts[h]!.api('ebsd.AttachVolume', { VolumeId: vol });
      const data = randomBytes(MiB);
      await writeDirect(file(h, vol), data);
      await hosts[h]!.untilClosed(vol); // dd's close reaches the daemon as FUSE RELEASE after dd exits
      await hosts[h]!.api('ebsd.DetachVolume', { VolumeId: vol, Force: false });
      await hosts[h]!.api('ebsd.AttachVolume', { VolumeId: vol });
      expect((await readDirect(file(h, vol), MiB)).equals(data)).toBe(true);
      patterns.set(h, data);
      // A loaded machine may time a refresh call out (TTL/2) between the attach and this status: the volume is
      // stale until the next round, then cached again (as host-b in the revoke-grant test). Polled, bounded.
      const st = await until(`${h} cached`, async () => { const v = await volumeOf(h, vol); return /cached|refreshing/.test(v.KeyCache.State) ? v : undefined; }, 15_000);
      expect(st).toMatchObject({ Attached: true, KmsKeyId: keyArn, KeyCache: { State: expect.stringMatching(/cached|refreshing/) }, Kms: { Endpoint: url(), HostPrincipal: `arn:aws:iam::${accountId}:role/${h}` } });
      expect(st.Kms.SecondsToMaxStale).toBeGreaterThan(0);
    }
    const events = kmsAudit();
    for (const [h, addr] of [['host-a', net.ip.a], ['host-b', net.ip.b]] as const) {
      const session = `arn:aws:sts::${accountId}:assumed-role/${h}/${h}`;
      const mine = events.filter((e) => e.userIdentity?.arn === session);
      expect(mine.every((e) => e.sourceIPAddress === addr)).toBe(true);
      const names = new Set(mine.filter((e) => !e.errorCode).map((e) => e.eventName));
      for (const op of ['GenerateDataKeyWithoutPlaintext', 'CreateGrant', 'Decrypt', 'RetireGrant']) expect(names, `${h} ${op}`).toContain(op);
      // Which volume: the grant's encryption-context constraint names it. On whose request: the local caller.
      const grants = mine.filter((e) => e.eventName === 'CreateGrant');
      expect(JSON.stringify(grants)).toMatch(/aws:ebs:id.{0,8}vol-[0-9a-f]{17}/);
      const localCaller = (await hosts[h]!.api('ebsd.Status')).Caller.Arn as string;
      expect(grants.map((e) => e.userAgent)).toEqual(grants.map(() => expect.stringContaining(`ebsd-on-behalf-of/${localCaller}`)));
      // Every Decrypt is the host's own, through a grant: create's through its short-lived op grant, whose
      // CreateGrant (above) carries the local caller; attach's and refresh's through the attach grant.
      const decrypts = mine.filter((e) => e.eventName === 'Decrypt');
      expect(decrypts.length).toBeGreaterThan(0);
      expect(decrypts.filter((e) => String(e.userAgent).includes('ebsd-on-behalf-of/'))).toEqual([]);
      expect(grants.some((e) => JSON.stringify(e).includes('ebsd-op-'))).toBe(true);
    }
  });

  it('KMS killed: both hosts keep serving until max-stale; restarted, refresh resumes without re-attach', async () => {
    const vols = await Promise.all(['host-a', 'host-b'].map(async (h) => [h, (await hosts[h]!.api('ebsd.Status')).Volumes.find((v: any) => v.Attached).VolumeId] as const));
    const grantsBefore = kmsAudit().filter((e) => e.eventName === 'CreateGrant').length;
    // A loaded machine may time out a call before the outage too: kill the KMS right after one pass that saw
    // both volumes cached (one host may flap while the other is asked), and judge the logs from the kill on.
    await until('both hosts cached in one pass', async () => {
      const states = await Promise.all(vols.map(async ([h, vol]) => (await volumeOf(h, vol)).KeyCache.State));
      return states.every((s) => s === 'cached') ? true : undefined;
    });
    const killedAt = Date.now();
    await kms.kill9();
    for (const [h, vol] of vols) {
      const st = await until(`${h} stale`, async () => { const v = await volumeOf(h, vol); return v.KeyCache.State === 'stale' ? v : undefined; });
      expect(st.Kms.LastError).toBeDefined();
      expect(st.Kms.SecondsToMaxStale).toBeGreaterThan(0);
      // Reads and writes while the KMS is gone.
      const more = randomBytes(64 * 1024);
      await writeDirect(file(h, vol), more, 4 * MiB);
      expect((await readDirect(file(h, vol), more.length, 4 * MiB)).equals(more)).toBe(true);
      expect((await readDirect(file(h, vol), MiB)).equals(patterns.get(h)!)).toBe(true);
      // Several refreshes fail (shared rounds every TTL/4, circuit probes) before the KMS comes back.
      await until(`${h}: several failed calls`, async () => ((await hosts[h]!.api('ebsd.Status')).Daemon.Kms.ConsecutiveFailures >= 4 ? true : undefined));
    }
    const restartedAt = Date.now();
    await kms.start();
    for (const [h, vol] of vols) {
      const st = await until(`${h} refreshed`, async () => { const v = await volumeOf(h, vol); return v.KeyCache.State !== 'stale' && Date.parse(v.Kms.LastRefreshTime) > restartedAt ? v : undefined; });
      expect(st.KeyCache.State).toMatch(/cached|refreshing/);
      expect(st.Kms.Circuit).toBe('closed');
      expect((await readDirect(file(h, vol), MiB)).equals(patterns.get(h)!)).toBe(true);
    }
    // Refresh went through the existing grants: no new CreateGrant, no re-attach.
    expect(kmsAudit().filter((e) => e.eventName === 'CreateGrant').length).toBe(grantsBefore);
    // The outage is logged as a transition, once, however many refreshes failed in it.
    for (const [h, vol] of vols) {
      // However many calls failed while the KMS was dead, each transition is one line, from the kill (by the
      // lines' own pino time, not by offsets into a log earlier tests wrote to) up to the volume's first answer.
      // The status answer above came after the 'stale -> cached' line was written, not after it reached the
      // log file (a pipe and a write stream between them): polled for, bounded.
      const isBack = (l: { time: number; msg: string; volumeId?: string }): boolean => l.time >= restartedAt && l.volumeId === vol && l.msg.includes('stale -> cached');
      const log = await hosts[h]!.untilLog((text) => logLines(text).some(isBack));
      const lines = logLines(log).filter((l) => l.time >= killedAt);
      const back = lines.findIndex(isBack);
      expect(back, h).toBeGreaterThan(0);
      const outage = lines.slice(0, back + 1);
      expect(outage.filter((l) => l.volumeId === vol && l.msg.includes('cached -> stale')), h).toHaveLength(1);
      expect(outage.filter((l) => l.msg.includes('shared key check: KMS unreachable')), h).toHaveLength(1);
      const opened = outage.filter((l) => l.msg.includes('circuit open, calls fail fast')).length;
      expect(opened, h).toBeLessThanOrEqual(1);
      expect(outage.filter((l) => l.msg.includes('circuit closed')).length, h).toBe(opened);
      expect(log, h).not.toContain('NodeVersionSupportWarning');
    }
  });

  it('disable-key on the KMS host: both hosts\' volumes fail with EIO within one TTL; enable-key and re-attach: the data verifies', async () => {
    const vols = await Promise.all(['host-a', 'host-b'].map(async (h) => [h, (await hosts[h]!.api('ebsd.Status')).Volumes.find((v: any) => v.Attached).VolumeId] as const));
    await kms.ok(['kms', 'disable-key', '--key-id', keyArn]); // through the CLI: the title names it
    for (const [h, vol] of vols) {
      const st = await until(`${h} impaired`, async () => { const v = await volumeOf(h, vol); return v.KeyCache.State === 'impaired' ? v : undefined; }, 15_000);
      expect(st.KeyCache.Impaired).toMatchObject({ Reason: 'kms-refused', AwsName: 'DisabledException' });
      await expect(readDirect(file(h, vol), 4096)).rejects.toThrow(/Input\/output error/);
    }
    await kms.ok(['kms', 'enable-key', '--key-id', keyArn]);
    for (const [h, vol] of vols) {
      await hosts[h]!.api('ebsd.DetachVolume', { VolumeId: vol, Force: true });
      await hosts[h]!.api('ebsd.AttachVolume', { VolumeId: vol });
      expect((await readDirect(file(h, vol), MiB)).equals(patterns.get(h)!)).toBe(true);
    }
  });

  it('revoke-grant under a key policy that still allows the host kms:Decrypt (the README\'s before op grants): that host\'s volume is impaired (grant-revoked), the other host\'s keeps serving; grant names carry each host\'s InstanceId', async () => {
    const vols = Object.fromEntries(await Promise.all(['host-a', 'host-b'].map(async (h) => [h, (await hosts[h]!.api('ebsd.Status')).Volumes.find((v: any) => v.Attached).VolumeId as string] as const)));
    const listed = (await kms.api('TrentService.ListGrants', { KeyId: keyArn })).Grants as { GrantId: string; Name?: string }[];
    const grantOf = (vol: string) => listed.find((g) => g.Name?.endsWith(`-${vol}`) && g.Name.startsWith('ebsd-attach-i-'));
    const [ga, gb] = [grantOf(vols['host-a']!), grantOf(vols['host-b']!)];
    expect(ga && gb).toBeTruthy();
    expect(ga!.Name!.split('-')[3]).not.toBe(gb!.Name!.split('-')[3]); // i-<hex> differs between the hosts
    // A shared round has listed the grant since the re-attach: the volume was confirmed after now.
    const since = Date.now();
    await until('host-a confirmed by a round', async () => { const v = await volumeOf('host-a', vols['host-a']!); return Date.parse(v.Kms.LastRefreshTime) > since ? v : undefined; }, 15_000);
    await kms.ok(['kms', 'revoke-grant', '--key-id', keyArn, '--grant-id', ga!.GrantId]);
    // Two rounds in a row must miss the grant (the list is eventually consistent): about 2 TTL.
    const st = await until('host-a impaired', async () => { const v = await volumeOf('host-a', vols['host-a']!); return v.KeyCache.State === 'impaired' ? v : undefined; }, 30_000);
    expect(st.KeyCache.Impaired).toMatchObject({ Reason: 'grant-revoked' });
    await expect(readDirect(file('host-a', vols['host-a']!), 4096)).rejects.toThrow(/Input\/output error/);
    // host-b may be between a timed-out call and the next round under load: it comes back to cached, not impaired.
    await until('host-b cached', async () => { const v = await volumeOf('host-b', vols['host-b']!); return /cached|refreshing/.test(v.KeyCache.State) ? v : undefined; }, 15_000);
    expect((await readDirect(file('host-b', vols['host-b']!), MiB)).equals(patterns.get('host-b')!)).toBe(true);
    await hosts['host-a']!.api('ebsd.DetachVolume', { VolumeId: vols['host-a']!, Force: true });
    await hosts['host-a']!.api('ebsd.AttachVolume', { VolumeId: vols['host-a']! });
    expect((await readDirect(file('host-a', vols['host-a']!), MiB)).equals(patterns.get('host-a')!)).toBe(true);
  });

  it('a host whose role is not in the key policy cannot create or attach, and the error names the permission', async () => {
    const c = hostDaemon('host-c', 'b', 'host-c');
    await c.start();
    const r = await c.cli(['volume', 'create', '--size', '32MiB', '--kms-key', keyArn]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(`kms:GenerateDataKeyWithoutPlaintext denied for arn:aws:iam::${accountId}:role/host-c on ${keyArn}`);
    expect((await c.api('ebsd.DescribeVolumes')).Volumes ?? []).toEqual([]);
    // host-b, once taken out of the key policy, cannot attach its own volume any more.
    const vol = (await hosts['host-b']!.api('ebsd.CreateVolume', { Size: '32MiB', KmsKeyId: keyArn })).VolumeId as string;
    await kms.api('TrentService.PutKeyPolicy', { KeyId: keyArn, PolicyName: 'default', Policy: keyPolicy(['host-a']) });

    const a = await hosts['host-b']!.cli(['attach', vol]);
    expect(a.code).not.toBe(0);
    expect(a.stderr).toContain(`kms:CreateGrant denied for arn:aws:iam::${accountId}:role/host-b on ${keyArn}`);
    expect((await volumeOf('host-b', vol)).Attached).toBe(false);
  });
});

/** A daemon's pino lines (time in ms); lines that are not JSON (a crash's stderr) are skipped. */
function logLines(log: string): { time: number; msg: string; volumeId?: string }[] {
  const out: { time: number; msg: string; volumeId?: string }[] = [];
  for (const l of log.split('\n')) {
    if (!l.startsWith('{')) continue;
    try {
      const j = JSON.parse(l) as { time?: string | number; msg?: string; volumeId?: string };
      const time = typeof j.time === 'number' ? j.time : Date.parse(String(j.time));
      if (Number.isFinite(time)) out.push({ time, msg: String(j.msg ?? ''), ...(typeof j.volumeId === 'string' ? { volumeId: j.volumeId } : {}) });
    } catch {
      // not a log line
    }
  }
  return out;
}

/** The environment without any AWS setting of the machine running the test. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AWS_')));
  return { ...env, AWS_EC2_METADATA_DISABLED: 'true', ...extra };
}

/** O_DIRECT through dd: the page cache must not answer for a volume whose key is gone. Sync: the daemon serving the mount is another process. */
async function writeDirect(path: string, data: Buffer, offset = 0): Promise<void> {
  const r = spawnSync('dd', ['of=' + path, 'bs=64k', `seek=${offset / 65536}`, 'oflag=direct', 'conv=notrunc,fsync', 'iflag=fullblock', 'status=none'], { input: data });
  if (r.status !== 0) throw new Error(`dd write ${path}: ${r.stderr}`);
}

async function readDirect(path: string, length: number, offset = 0): Promise<Buffer> {
  const r = spawnSync('dd', ['if=' + path, 'bs=64k', `skip=${offset / 65536}`, `count=${Math.ceil(length / 65536)}`, 'iflag=direct', 'status=none'], { maxBuffer: 64 * MiB });
  if (r.status !== 0) throw new Error(`dd read ${path}: ${r.stderr}`);
  return r.stdout.subarray(0, length);
}
