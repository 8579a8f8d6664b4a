#!/usr/bin/env node
// Attach latency (CreateGrant + Decrypt through the grant + LUKS2 digest check + FUSE entry) on a host
// daemon with the embedded KMS against one with --kms-endpoint (a `--kms-only` daemon on loopback HTTP,
// SigV4, keys as an IAM user from the environment), same run; KMS calls per attach from the remote
// host's own counters (ebsd status, Daemon.Kms.Calls); refresh traffic of N attached volumes over a
// few TTLs, counted at the KMS host (its audit log: every call it answered, by operation).
// Attach/detach go straight to the control socket (no CLI process per call).
// Build first:  npx tsc -p .   then:
//   node scripts/bench/fleet-attach.mjs [--volumes 100] [--ttl-s 4] [--ttls 3]
// Before timing it checks one volume of each host reads back what was written (docs/architecture.md §11.14).
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, createWriteStream, openSync, writeSync, readSync, closeSync, constants, readFileSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { callDaemon, socketPathFor } from '../../dist/cli/client.js';

const arg = (n, d) => { const i = process.argv.indexOf(`--${n}`); return i > 0 ? process.argv[i + 1] : d; };
const N = Number(arg('volumes', '100'));
const ttlS = Number(arg('ttl-s', '4'));
const ttls = Number(arg('ttls', '3'));
const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const dir = mkdtempSync(join(tmpdir(), 'ebsd-fleet-bench-'));
const procs = [];
const cli = (state, ...a) => JSON.parse(execFileSync(process.execPath, [CLI, ...a, '--output', 'json'], { env: { ...process.env, EBSD_STATE_DIR: state } }).toString() || '{}');

async function daemon(name, args, env = process.env) {
  const state = join(dir, name, 'state');
  mkdirSync(join(dir, name), { recursive: true });
  const out = createWriteStream(join(dir, `${name}.log`));
  const p = spawn(process.execPath, [CLI, 'daemon', '--state-dir', state, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  procs.push(p);
  let buf = '';
  await new Promise((ok, fail) => {
    const on = (c) => { out.write(c); buf += c; if (buf.includes('"ebsd daemon ready"')) ok(); };
    p.stdout.on('data', on); p.stderr.on('data', on);
    p.on('exit', (c) => fail(new Error(`${name} exited ${c}:\n${buf}`)));
  });
  p.removeAllListeners('exit');
  return { state, socket: socketPathFor(state), url: /"kmsUrl":"([^"]+)"/.exec(buf)?.[1], mnt: join(dir, name, 'mnt') };
}

const ms = (a) => a.reduce((s, x) => s + x, 0) / a.length;
const pct = (a, p) => [...a].sort((x, y) => x - y)[Math.min(a.length - 1, Math.floor(p * a.length))];

try {
  const kms = await daemon('kms', ['--kms-only', '--kms-listen', '127.0.0.1:0']);
  cli(kms.state, 'iam', 'create-user', 'host');
  cli(kms.state, 'iam', 'put-policy', 'user/host', '--policy-name', 'kms', '--policy-document', JSON.stringify({ Statement: [{ Effect: 'Allow', Action: 'kms:*', Resource: '*' }] }));
  const k = cli(kms.state, 'iam', 'create-access-key', '--user-name', 'host').AccessKey;
  const remoteKey = cli(kms.state, 'kms', 'create-key').KeyMetadata.Arn;
  const awsEnv = Object.fromEntries(Object.entries(process.env).filter(([n]) => !n.startsWith('AWS_')));
  Object.assign(awsEnv, { AWS_ACCESS_KEY_ID: k.AccessKeyId, AWS_SECRET_ACCESS_KEY: k.SecretAccessKey, AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL: kms.url, AWS_EC2_METADATA_DISABLED: 'true' });
  const ttlArgs = ['--key-cache-ttl', `${ttlS}s`, '--key-cache-max-stale', '1h'];
  const embedded = await daemon('embedded', ['--mount', join(dir, 'embedded', 'mnt'), ...ttlArgs]);
  const remote = await daemon('remote', ['--mount', join(dir, 'remote', 'mnt'), '--kms-endpoint', kms.url, ...ttlArgs], awsEnv);
  const embeddedKey = cli(embedded.state, 'kms', 'create-key').KeyMetadata.Arn;

  const results = {};
  for (const [name, h, key] of [['embedded', embedded, embeddedKey], ['remote', remote, remoteKey]]) {
    const call = (op, body) => callDaemon(h.socket, `ebsd.${op}`, body);
    const vols = [];
    for (let i = 0; i < N; i++) vols.push((await call('CreateVolume', { Size: '8MiB', KmsKeyId: key })).VolumeId);
    // Correctness first: one volume round-trips a block through the mount.
    await call('AttachVolume', { VolumeId: vols[0] });
    const data = randomBytes(4096);
    const f = join(h.mnt, vols[0]);
    let fd = openSync(f, constants.O_RDWR | constants.O_DIRECT); writeSync(fd, data, 0, 4096, 0); closeSync(fd);
    const back = Buffer.alloc(4096);
    fd = openSync(f, constants.O_RDONLY | constants.O_DIRECT); readSync(fd, back, 0, 4096, 0); closeSync(fd);
    if (!back.equals(data)) throw new Error(`${name}: read-back mismatch`);
    // FUSE RELEASE arrives after close() returns: wait until the daemon counts no open handle.
    for (let i = 0; i < 1000 && (await call('Status', {})).Volumes.find((v) => v.VolumeId === vols[0])?.OpenHandles; i++) await new Promise((r) => setTimeout(r, 20));
    await call('DetachVolume', { VolumeId: vols[0] });
    const callsBefore = name === 'remote' ? (await call('Status', {})).Daemon.Kms.Calls : {};
    const lat = [];
    const t0 = performance.now();
    for (const v of vols) {
      const t = performance.now();
      await call('AttachVolume', { VolumeId: v });
      lat.push(performance.now() - t);
    }
    const wall = performance.now() - t0;
    const st = await call('Status', {});
    const calls = name === 'remote' ? st.Daemon.Kms.Calls : {};
    const during = Object.fromEntries(Object.entries(calls).map(([op, n]) => [op, n - (callsBefore[op] ?? 0)]));
    // Refresh traffic: KMS calls of the N attached volumes over `ttls` TTLs, no attach or detach meanwhile.
    let refresh;
    let refreshByOp;
    if (name === 'remote') {
      // Counted where the calls land: the KMS host's audit log (one event per call it answered).
      const auditFile = join(kms.state, 'kms', 'audit', 'events.ndjson');
      const lines = () => readFileSync(auditFile, 'utf8').split('\n').filter(Boolean);
      const a = lines().length;
      await new Promise((r) => setTimeout(r, ttls * ttlS * 1000));
      const window = lines().slice(a).map((l) => JSON.parse(l)).filter((e) => e.userIdentity?.arn?.endsWith(':user/host'));
      refreshByOp = {};
      for (const e of window) refreshByOp[e.eventName] = (refreshByOp[e.eventName] ?? 0) + 1;
      refresh = window.length / N / ttls;
      refreshByOp = Object.fromEntries(Object.entries(refreshByOp).map(([op, n]) => [op, +(n / N / ttls).toFixed(3)]));
    }
    for (const v of vols) await call('DetachVolume', { VolumeId: v });
    results[name] = { attachMsMean: ms(lat), attachMsP50: pct(lat, 0.5), attachMsP99: pct(lat, 0.99), wallS: wall / 1000, callsPerAttach: Object.fromEntries(Object.entries(during).map(([op, n]) => [op, n / N])), refreshCallsPerVolumePerTtl: refresh, refreshPerVolumePerTtlByOp: refreshByOp };
  }
  const e = results.embedded, r = results.remote;
  console.log(JSON.stringify({ volumes: N, ttlS, loadavg: loadavg().map((x) => x.toFixed(2)), results }, null, 2));
  console.log(`attach mean: embedded ${e.attachMsMean.toFixed(1)} ms, remote ${r.attachMsMean.toFixed(1)} ms (${(r.attachMsMean / e.attachMsMean).toFixed(2)}x; goal <= 2x)`);
  console.log(`remote KMS calls per attach: ${JSON.stringify(r.callsPerAttach)}; refresh: ${r.refreshCallsPerVolumePerTtl.toFixed(3)} KMS calls per volume per TTL at the KMS host ${JSON.stringify(r.refreshPerVolumePerTtlByOp)} (goal < 1; before the shared key check: 2.0 Decrypt)`);
} finally {
  for (const p of procs.reverse()) { p.kill('SIGTERM'); await new Promise((r) => (p.exitCode !== null ? r() : p.once('exit', r))); }
  for (const n of ['embedded', 'remote']) try { execFileSync('fusermount', ['-uz', join(dir, n, 'mnt')], { stdio: 'ignore' }); } catch { /* not mounted */ }
  rmSync(dir, { recursive: true, force: true });
}
