import { closeSync, openSync, readFileSync, readSync, writeSync, fsyncSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';

/** Measurement-only plaintext volumes next to encrypted ones, in ONE daemon started with --allow-unencrypted. */
describe('plaintext (--cipher none) and encrypted volumes served by the same daemon', () => {
  const env = new Env('plain');
  let enc = '';
  let plain = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start(['--allow-unencrypted', '--key-cache-ttl', '60s']);
  });
  afterAll(() => env.cleanup());

  it('volume create prints the id first; a plaintext volume is marked UNENCRYPTED with a warning', async () => {
    const t = await env.cli(['volume', 'create', '--size', '16MiB', '--name', 'enc', '--output', 'table']);
    expect(t.code).toBe(0);
    expect(t.stdout.split('\n')[0]).toMatch(/^vol-[0-9a-f]{17}$/);
    enc = t.stdout.split('\n')[0]!;
    const txt = await env.cli(['volume', 'create', '--size', '16MiB', '--cipher', 'none', '--name', 'plain', '--output', 'text']);
    expect(txt.code).toBe(0);
    expect(txt.stdout).toMatch(/^vol-[0-9a-f]{17}\n$/);
    expect(txt.stderr).toMatch(/WARNING: UNENCRYPTED volume/);
    plain = txt.stdout.trim();
    const d = await env.ok(['volume', 'describe', plain]);
    expect(d.Volumes[0]).toMatchObject({ VolumeId: plain, Encrypted: false });
    expect(d.Volumes[0]).not.toHaveProperty('KmsKeyId');
    const ls = await env.cli(['volume', 'ls', '--output', 'table']);
    expect(ls.stdout).toMatch(new RegExp(`${plain} +plain +16MiB +available +NO +UNENCRYPTED`));
    expect(ls.stdout).toMatch(new RegExp(`${enc} +enc +16MiB +available +yes +arn:aws:kms:`));
  });

  it('attaches both; I/O works; the plaintext image holds the data in the clear, the encrypted one does not', async () => {
    const a = await env.ok(['attach', plain]);
    expect(a).toMatchObject({ Encrypted: false, Unencrypted: true });
    expect(await env.ok(['attach', enc])).toMatchObject({ Encrypted: true });
    const marker = Buffer.from('ebsd-e2e-plaintext-marker-'.repeat(100));
    for (const id of [enc, plain]) {
      const fd = openSync(env.file(id), 'r+');
      try {
        writeSync(fd, marker, 0, marker.length, 1 << 20);
        fsyncSync(fd);
        const back = Buffer.alloc(marker.length);
        readSync(fd, back, 0, back.length, 1 << 20);
        expect(back.equals(marker)).toBe(true);
      } finally {
        closeSync(fd);
      }
    }
    expect(readFileSync(join(env.state, 'volumes', `${plain}.img`)).includes(marker)).toBe(true);
    expect(readFileSync(join(env.state, 'volumes', `${enc}.img`)).includes(marker)).toBe(false);
  });

  it('status shows encryption and key-cache state per volume (json and table)', async () => {
    const st = await env.ok(['status']);
    expect(st.Daemon.AllowUnencrypted).toBe(true);
    const by = Object.fromEntries(st.Volumes.map((v: { VolumeId: string }) => [v.VolumeId, v]));
    expect(by[plain]).toMatchObject({ Encrypted: false, Attached: true, KeyCache: { State: 'unencrypted' } });
    expect(by[enc]).toMatchObject({ Encrypted: true, Attached: true, KeyCache: { State: 'cached', TtlSeconds: 60 } });
    expect(by[enc].KeyCache.NextRefreshTime).toBeTruthy();
    const t = await env.cli(['status', '--output', 'table']);
    expect(t.stdout).toMatch(new RegExp(`${plain} .* NO .*UNENCRYPTED \\(no key\\)`));
    expect(t.stdout).toMatch(new RegExp(`${enc} .* yes .*cached`));
  });

  it('warns in the log and audits create and attach of the plaintext volume; detach and delete work the same', async () => {
    await env.untilClosed(plain, enc);
    await env.ok(['detach', plain]);
    await env.ok(['volume', 'delete', plain]);
    await env.ok(['detach', enc]);
    await env.untilLog(/UNENCRYPTED volume attached/);
    const log = env.daemonLog().split('\n').filter((l) => l.includes(plain) && /"level":40/.test(l));
    expect(log.some((l) => /UNENCRYPTED volume created/.test(l))).toBe(true);
    expect(log.some((l) => /UNENCRYPTED volume attached/.test(l))).toBe(true);
    const events = env.auditText().trim().split('\n').map((l) => JSON.parse(l));
    const mine = events.filter((e) => e.requestParameters?.volumeId === plain);
    expect(mine.map((e) => e.eventName)).toEqual(['CreateVolume', 'AttachVolume', 'DetachVolume', 'DeleteVolume']);
    expect(mine[0].additionalEventData).toMatchObject({ encrypted: false, cipher: 'none' });
    expect(mine[1].additionalEventData).toMatchObject({ encrypted: false });
    // No KMS call ever named the plaintext volume.
    expect(events.some((e) => e.eventSource === 'kms.amazonaws.com' && JSON.stringify(e).includes(plain))).toBe(false);
    expect((await env.ok(['audit', 'verify'])).ok).toBe(true);
  });
});
