import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, openSync, readFileSync, readSync, writeFileSync, writeSync, closeSync, truncateSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { readLuks2, updateLuks2, encodeCopy } from '../../src/volume/luks2-header.js';
import { verifyVolumeKey, LUKS2_HDR_SIZE, LUKS2_DATA_OFFSET, LUKS2_KEYSLOTS_SIZE } from '../../src/volume/luks2-json.js';
import { Luks2Error } from '../../src/volume/errors.js';
import { tmpDir, volumeKey, VOL, freshImage } from './helpers/image.js';

const SIZE = 1 << 20;
let t: ReturnType<typeof tmpDir>;
let img: string;
let key: Buffer;
beforeEach(async () => {
  ({ t, img, key } = await freshImage(SIZE));
});
afterEach(() => t.cleanup());

const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
function patch(p: string, pos: number, bytes: Buffer): void {
  const fd = openSync(p, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, pos);
  } finally {
    closeSync(fd);
  }
}
function region(p: string, pos: number, len: number): Buffer {
  const fd = openSync(p, 'r');
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, pos);
    return b;
  } finally {
    closeSync(fd);
  }
}
const cs = (...args: string[]) => spawnSync('cryptsetup', args, { encoding: 'utf8' });

describe('LUKS2 image written by ebsd', () => {
  test('reads back: one crypt segment, sector 4096, token, digest of the key', async () => {
    const h = await readLuks2(img);
    expect(h.seqid).toBe(1);
    expect(h.repaired).toBeNull();
    expect(h.volume.size).toBe(SIZE);
    expect(h.volume.dataOffset).toBe(LUKS2_DATA_OFFSET);
    expect(h.volume.token.volume_id).toBe(VOL);
    expect(h.volume.token.encryption_context).toEqual({ 'aws:ebs:id': VOL });
    expect(() => verifyVolumeKey(h.volume, key)).not.toThrow();
    expect(statSync(img).size).toBe(LUKS2_DATA_OFFSET + SIZE);
    expect(statSync(img).blocks * 512).toBeLessThan(1 << 20); // sparse
  });

  test('cryptsetup luksDump reads it: segment, sector size, digest, token', () => {
    const out = execFileSync('cryptsetup', ['luksDump', img], { encoding: 'utf8' });
    expect(out).toMatch(/Version:\s+2/);
    expect(out).toMatch(/0: crypt\s+offset: 16777216 \[bytes\]\s+length: 1048576 \[bytes\]\s+cipher: aes-xts-plain64\s+sector: 4096 \[bytes\]/);
    expect(out).toMatch(/Tokens:\s+0: ebsd-kms/);
    expect(out).toMatch(/Digests:\s+0: pbkdf2\s+Hash:\s+sha256/);
    expect(out).toMatch(/Keyslots area:\s+16744448 \[bytes\]/);
    const json = JSON.parse(execFileSync('cryptsetup', ['luksDump', '--dump-json-metadata', img], { encoding: 'utf8' }));
    expect(json.segments['0']).toEqual({ type: 'crypt', offset: '16777216', size: '1048576', iv_tweak: '0', encryption: 'aes-xts-plain64', sector_size: 4096 });
    expect(json.tokens['0'].type).toBe('ebsd-kms');
    expect(json.tokens['0'].volume_id).toBe(VOL);
    expect(json.keyslots).toEqual({});
    expect(json.config).toEqual({ json_size: '12288', keyslots_size: String(LUKS2_KEYSLOTS_SIZE) });
  });

  test('cryptsetup accepts our volume key (open --test-passphrase --volume-key-file) and refuses another', () => {
    const kf = join(t.dir, 'key');
    writeFileSync(kf, key, { mode: 0o600 });
    expect(cs('open', '--test-passphrase', '--type', 'luks2', '--volume-key-file', kf, '--key-size', '512', img).status).toBe(0);
    writeFileSync(kf, volumeKey());
    expect(cs('open', '--test-passphrase', '--type', 'luks2', '--volume-key-file', kf, '--key-size', '512', img).status).not.toBe(0);
  });

  test('cryptsetup luksAddKey adds a recovery passphrase; ebsd still reads the image', async () => {
    const copy = join(t.dir, 'copy.img');
    copyFileSync(img, copy);
    const kf = join(t.dir, 'key');
    writeFileSync(kf, key, { mode: 0o600 });
    const add = spawnSync('cryptsetup', ['luksAddKey', '--batch-mode', '--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000', '--volume-key-file', kf, '--key-size', '512', copy, '-'], { input: 'recovery passphrase', encoding: 'utf8' });
    expect(add.status, add.stderr).toBe(0);
    const dump = spawnSync('cryptsetup', ['luksDump', '--dump-volume-key', '--batch-mode', '--key-file=-', copy], { input: 'recovery passphrase', encoding: 'utf8' });
    expect(dump.status, dump.stderr).toBe(0);
    const hex = [...dump.stdout.split('MK dump:')[1]!.matchAll(/[0-9a-f]{2}/g)].map((m) => m[0]).join('');
    expect(hex).toBe(key.toString('hex'));
    const h = await readLuks2(copy);
    expect(h.seqid).toBeGreaterThan(1);
    expect(Object.keys(h.volume.json.keyslots)).toEqual(['0']);
    expect(h.volume.token.volume_id).toBe(VOL);
    expect(() => verifyVolumeKey(h.volume, key)).not.toThrow();
  });

  test('a wrong key is LUKS2_DIGEST_MISMATCH', async () => {
    const h = await readLuks2(img);
    expect(() => verifyVolumeKey(h.volume, volumeKey())).toThrow(expect.objectContaining({ code: 'LUKS2_DIGEST_MISMATCH' }));
    expect(() => verifyVolumeKey(h.volume, key.subarray(0, 32))).toThrow(Luks2Error);
  });
});

describe('two copies: seqid, repair, safe update', () => {
  test('update bumps seqid in both copies; cryptsetup sees the new size', async () => {
    truncateSync(img, LUKS2_DATA_OFFSET + 2 * SIZE);
    const u = await updateLuks2(img, (j) => void (j.segments['0']!.size = String(2 * SIZE)));
    expect(u.seqid).toBe(2);
    const h = await readLuks2(img, { repair: false });
    expect(h.seqid).toBe(2);
    expect(h.repaired).toBeNull();
    expect(h.volume.size).toBe(2 * SIZE);
    expect(execFileSync('cryptsetup', ['luksDump', img], { encoding: 'utf8' })).toMatch(/length: 2097152 \[bytes\]/);
  });

  test('corrupted primary: secondary is used and the primary repaired', async () => {
    patch(img, 5000, Buffer.from('garbage'));
    const h = await readLuks2(img);
    expect(h.repaired).toBe('primary');
    expect(h.volume.token.volume_id).toBe(VOL);
    const again = await readLuks2(img, { repair: false });
    expect(again.repaired).toBeNull();
    expect(cs('luksDump', img).status).toBe(0);
  });

  test('corrupted secondary (wrong magic): primary used, secondary repaired', async () => {
    patch(img, LUKS2_HDR_SIZE, Buffer.from('XXXXXX'));
    const h = await readLuks2(img);
    expect(h.repaired).toBe('secondary');
    expect(region(img, LUKS2_HDR_SIZE, 6).toString('latin1')).toBe('SKUL\xba\xbe');
  });

  test('crash between the two writes of an update: the newer copy wins', async () => {
    const before = region(img, 0, LUKS2_HDR_SIZE); // old primary (seqid 1)
    await updateLuks2(img, (j) => void ((j.tokens['0'] as { key_arn: string }).key_arn = 'arn:aws:kms:us-east-1:111122223333:key/new'));
    patch(img, 0, before); // as if the primary write never happened
    const h = await readLuks2(img);
    expect(h.seqid).toBe(2);
    expect(h.volume.token.key_arn).toMatch(/key\/new$/);
    expect(h.repaired).toBe('primary');
  });

  test('an older-seqid secondary is brought up to date', async () => {
    const h1 = await readLuks2(img);
    const newer = encodeCopy('primary', { seqid: 7, hdrSize: LUKS2_HDR_SIZE, label: VOL, uuid: h1.uuid, subsystem: 'ebsd' }, h1.volume.json);
    patch(img, 0, newer);
    const h = await readLuks2(img);
    expect(h.seqid).toBe(7);
    expect(h.repaired).toBe('secondary');
    expect(region(img, LUKS2_HDR_SIZE + 16, 8).readBigUInt64BE()).toBe(7n);
  });
});

describe('an intact copy ebsd cannot use is never repaired over', () => {
  // Review finding 1: cryptsetup takes the intact copy with the higher seqid (here a secondary
  // written first by cryptsetup reencrypt, luksAddKey, or a crash between its two writes); ebsd
  // must refuse rather than open with the older primary and rewrite the newer secondary from it.
  async function newerUnusable(which: 'primary' | 'secondary', seqid: number, mutate: (j: any) => void) {
    const h1 = await readLuks2(img, { repair: false });
    const j = structuredClone(h1.volume.json) as any;
    mutate(j);
    const copy = encodeCopy(which, { seqid, hdrSize: LUKS2_HDR_SIZE, label: VOL, uuid: h1.uuid, subsystem: 'ebsd' }, j);
    patch(img, which === 'primary' ? 0 : LUKS2_HDR_SIZE, copy);
    const before = region(img, 0, 2 * LUKS2_HDR_SIZE);
    const err = await readLuks2(img).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(Luks2Error);
    expect(region(img, 0, 2 * LUKS2_HDR_SIZE).equals(before)).toBe(true);
    return err as Luks2Error;
  }

  test('secondary at seqid 2 with requirements.mandatory online-reencrypt-v2: refused, both copies untouched', async () => {
    const e = await newerUnusable('secondary', 2, (j) => void (j.config.requirements = { mandatory: ['online-reencrypt-v2'] }));
    expect(e.code).toBe('LUKS2_UNSUPPORTED');
    expect(e.field).toBe('config.requirements.mandatory');
    expect(e.message).toContain(img);
    expect(e.message).toContain('online-reencrypt-v2');
    expect(e.message).toContain('nothing was written');
    expect(e.awsName).toBe('IncorrectState');
  });

  test('primary at seqid 3 with a second segment: refused, both copies untouched', async () => {
    const e = await newerUnusable('primary', 3, (j) => void (j.segments['1'] = { ...j.segments['0'], offset: String(LUKS2_DATA_OFFSET + SIZE) }));
    expect(e.message).toContain('nothing was written');
  });

  test('an older intact unusable copy is still brought up to date (as cryptsetup does)', async () => {
    const h1 = await readLuks2(img, { repair: false });
    const j = structuredClone(h1.volume.json) as any;
    j.config.requirements = { mandatory: ['online-reencrypt-v2'] };
    patch(img, LUKS2_HDR_SIZE, encodeCopy('secondary', { seqid: 1, hdrSize: LUKS2_HDR_SIZE, label: VOL, uuid: h1.uuid, subsystem: 'ebsd' }, j));
    patch(img, 0, encodeCopy('primary', { seqid: 2, hdrSize: LUKS2_HDR_SIZE, label: VOL, uuid: h1.uuid, subsystem: 'ebsd' }, h1.volume.json));
    const h = await readLuks2(img);
    expect(h.seqid).toBe(2);
    expect(h.repaired).toBe('secondary');
    expect((await readLuks2(img, { repair: false })).repaired).toBeNull();
  });
});

describe('refused images are left untouched', () => {
  async function refused(code: string, mutate: () => void): Promise<void> {
    mutate();
    const before = sha(img);
    await expect(readLuks2(img)).rejects.toMatchObject({ name: 'Luks2Error', code });
    expect(sha(img)).toBe(before);
  }

  test('both checksums bad', () =>
    refused('LUKS2_BAD_CHECKSUM', () => {
      patch(img, 6000, Buffer.from('x'));
      patch(img, LUKS2_HDR_SIZE + 6000, Buffer.from('y'));
    }));

  test('wrong magic in both copies (not a LUKS device)', () =>
    refused('LUKS2_BAD_MAGIC', () => {
      patch(img, 0, Buffer.from('NOTLUKS'));
      patch(img, LUKS2_HDR_SIZE, Buffer.from('NOTLUKS'));
    }));

  test('unknown version', () =>
    refused('LUKS2_BAD_VERSION', () => {
      patch(img, 6, Buffer.from([0, 3]));
      patch(img, LUKS2_HDR_SIZE + 6, Buffer.from([0, 3]));
    }));

  test('truncated inside the header', () => refused('LUKS2_TRUNCATED', () => truncateSync(img, 2000)));
  test('truncated after the primary header', () =>
    refused('LUKS2_BAD_CHECKSUM', () => {
      patch(img, 6000, Buffer.from('x'));
      truncateSync(img, LUKS2_HDR_SIZE + 100);
    }));
  test('data segment truncated', () => refused('LUKS2_TRUNCATED', () => truncateSync(img, LUKS2_DATA_OFFSET + SIZE - 4096)));
  test('empty file', () => refused('LUKS2_TRUNCATED', () => truncateSync(img, 0)));
});
