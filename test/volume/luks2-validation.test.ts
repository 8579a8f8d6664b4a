import { afterEach, beforeEach, describe, expect, test } from 'vitest';
import { spawnSync } from 'node:child_process';
import fc from 'fast-check';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, symlinkSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { createLuks2, readLuks2, updateLuks2 } from '../../src/volume/luks2-header.js';
import { buildLuks2Json, LUKS2_DATA_OFFSET, LUKS2_HDR_SIZE, parseLuks2Json, type Luks2Json } from '../../src/volume/luks2-json.js';
import { Luks2Error, VolumeError } from '../../src/volume/errors.js';
import { createPlainImage, readPlainImage } from '../../src/volume/plain-image.js';
import { freshImage, testToken, tmpDir, volumeKey, VOL } from './helpers/image.js';
import { writeHeaders } from './helpers/raw-header.js';

/**
 * Issue 13, defect 9 and point 11: LUKS2 headers whose checksums are valid but
 * whose JSON is not an image ebsd may use. Each case writes both header copies
 * with a correct checksum (helpers/raw-header.ts, LUKS2 on-disk format §2,
 * independent of luks2-header.ts) and expects a Luks2Error that names the image
 * file and the field, with EC2's IncorrectState.
 */

const SIZE = 1 << 20;
const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'luks2-v1', 'image.img.gz');

let t: ReturnType<typeof tmpDir>;
let img: string;
let base: Luks2Json;
beforeEach(async () => {
  ({ t, img } = await freshImage(SIZE));
  base = (await readLuks2(img)).volume.json;
});
afterEach(() => t.cleanup());

/** The base JSON with `mutate` applied, written into both copies. */
function writeMutated(mutate: (j: any) => void): void {
  const j = structuredClone(base) as any;
  mutate(j);
  writeHeaders(img, JSON.stringify(j));
}

/** readLuks2 refuses: a Luks2Error with `code`, `field`, IncorrectState, the image and the field in the message; nothing written. */
async function expectRefused(code: string, field: string): Promise<Luks2Error> {
  const before = readFileSync(img).subarray(0, 2 * LUKS2_HDR_SIZE);
  const err = await readLuks2(img).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Luks2Error);
  const e = err as Luks2Error;
  expect({ code: e.code, field: e.field, awsName: e.awsName }).toEqual({ code, field, awsName: 'IncorrectState' });
  expect(e.message).toContain(img);
  expect(e.message).toContain(field);
  expect(readFileSync(img).subarray(0, 2 * LUKS2_HDR_SIZE).equals(before)).toBe(true);
  return e;
}

const cryptsetupDump = (p: string) => spawnSync('cryptsetup', ['luksDump', p], { encoding: 'utf8' });

describe('images ebsd writes still open', () => {
  test('a fresh image reads back, and cryptsetup luksDump accepts it', async () => {
    const h = await readLuks2(img);
    expect(h.volume.dataOffset).toBe(LUKS2_DATA_OFFSET);
    expect(h.volume.size).toBe(SIZE);
    const d = cryptsetupDump(img);
    expect(d.status, d.stderr).toBe(0);
    expect(d.stdout).toMatch(/Version:\s+2/);
  });

  test('an image after updateLuks2 (seqid 2) still passes ebsd and cryptsetup', async () => {
    truncateSync(img, LUKS2_DATA_OFFSET + 2 * SIZE); // as ModifyVolume: the file grows first
    await updateLuks2(img, (j) => {
      j.segments['0']!.size = String(2 * SIZE);
    });
    expect((await readLuks2(img)).seqid).toBe(2);
    expect(cryptsetupDump(img).status).toBe(0);
  });

  test('the frozen fixture luks2-v1 opens', async () => {
    const p = join(t.dir, 'fixture.img');
    writeFileSync(p, gunzipSync(readFileSync(FIXTURE)));
    const h = await readLuks2(p, { repair: false });
    expect(h.volume.token.volume_id).toBe('vol-0f1e2d3c4b5a69788');
  });

  test('the raw encoder of this file writes headers ebsd and cryptsetup accept (so every refusal below is the field\'s)', async () => {
    writeHeaders(img, JSON.stringify(base));
    expect((await readLuks2(img)).seqid).toBe(7);
    expect(cryptsetupDump(img).status).toBe(0);
  });
});

describe('defect 9: a data segment overlapping the headers or the keyslots area', () => {
  test('offset 0 is refused (writing sector 0 would destroy both headers and the wrapped key)', async () => {
    writeMutated((j) => { j.segments['0'].offset = '0'; });
    await expectRefused('LUKS2_BAD_JSON', 'segments.0.offset');
    // Stricter than cryptsetup, which reads offset 0 as a detached header (docs/format.md).
  });

  test('an offset inside the keyslots area is refused, as cryptsetup refuses it', async () => {
    writeMutated((j) => { j.segments['0'].offset = String(2 * LUKS2_HDR_SIZE); });
    await expectRefused('LUKS2_BAD_JSON', 'segments.0.offset');
    expect(cryptsetupDump(img).status).not.toBe(0);
  });

  test('an offset one sector before the end of the keyslots area is refused', async () => {
    writeMutated((j) => { j.segments['0'].offset = String(LUKS2_DATA_OFFSET - 4096); });
    await expectRefused('LUKS2_BAD_JSON', 'segments.0.offset');
    expect(cryptsetupDump(img).status).not.toBe(0);
  });

  test('a keyslot area outside the keyslots area is refused', async () => {
    writeMutated((j) => {
      j.keyslots['0'] = { type: 'luks2', key_size: 64, area: { type: 'raw', offset: '0', size: '4096', encryption: 'aes-xts-plain64', key_size: 64 } };
    });
    await expectRefused('LUKS2_BAD_JSON', 'keyslots.0.area');
  });
});

describe('point 11: JSON fields out of range', () => {
  test('digest iterations above 10^7', async () => {
    writeMutated((j) => { j.digests['0'].iterations = 10_000_001; });
    await expectRefused('LUKS2_UNSUPPORTED', 'digests.0.iterations');
  });

  test('digest iterations below 1000', async () => {
    writeMutated((j) => { j.digests['0'].iterations = 999; });
    await expectRefused('LUKS2_UNSUPPORTED', 'digests.0.iterations');
  });

  test('an unsupported digest hash', async () => {
    writeMutated((j) => { j.digests['0'].hash = 'whirlpool'; });
    await expectRefused('LUKS2_UNSUPPORTED', 'digests.0.hash');
  });

  test('a salt that is not base64', async () => {
    writeMutated((j) => { j.digests['0'].salt = 'not*base64!'; });
    await expectRefused('LUKS2_BAD_JSON', 'digests.0.salt');
  });

  test('a digest that is not base64', async () => {
    writeMutated((j) => { j.digests['0'].digest = 'AAAA AAAA'; });
    await expectRefused('LUKS2_BAD_JSON', 'digests.0.digest');
  });

  test('a token blob that is not base64', async () => {
    writeMutated((j) => { j.tokens['0'].ciphertext_blob = '%%%'; });
    await expectRefused('LUKS2_NO_TOKEN', 'tokens.0.ciphertext_blob');
  });

  test('config.requirements.mandatory naming a feature ebsd does not implement', async () => {
    writeMutated((j) => { j.config.requirements = { mandatory: ['online-reencrypt-v2'] }; });
    const e = await expectRefused('LUKS2_UNSUPPORTED', 'config.requirements.mandatory');
    expect(e.message).toContain('online-reencrypt-v2');
  });

  test('an empty config.requirements.mandatory is fine', async () => {
    writeMutated((j) => { j.config.requirements = { mandatory: [] }; });
    expect((await readLuks2(img)).volume.size).toBe(SIZE);
  });

  test('a u64 string above 2^64-1', async () => {
    writeMutated((j) => { j.segments['0'].size = '18446744073709551616'; });
    await expectRefused('LUKS2_BAD_JSON', 'segments.0.size');
  });

  test('an offset that is a valid u64 but not a safe integer', async () => {
    writeMutated((j) => { j.segments['0'].offset = '18446744073709547520'; }); // 2^64 - 4096
    await expectRefused('LUKS2_BAD_JSON', 'segments.0.offset');
  });

  test('keyslots_size that is not a u64 string', async () => {
    writeMutated((j) => { j.config.keyslots_size = 16744448; });
    await expectRefused('LUKS2_BAD_JSON', 'config.keyslots_size');
  });

  test('seqid above 2^53', async () => {
    writeHeaders(img, JSON.stringify(base), (1n << 53n) + 1n);
    await expectRefused('LUKS2_BAD_JSON', 'seqid');
  });

  test('duplicate member names (JSON.parse would keep the last)', async () => {
    const text = JSON.stringify(base);
    // A second "segments" member, offset 0: last-one-wins would read the overlapping one.
    const dup = text.replace(/}$/, `,"segments":${JSON.stringify({ 0: { ...base.segments['0'], offset: '0' } })}}`);
    writeHeaders(img, dup);
    const e = await expectRefused('LUKS2_BAD_JSON', '(json area)');
    expect(e.message).toMatch(/duplicate member name "segments"/);
  });

  test('deep nesting is refused, not a stack overflow', async () => {
    const deep = '['.repeat(5000) + ']'.repeat(5000);
    writeHeaders(img, JSON.stringify(base).replace('"config":{', `"config":{"x":${deep},`));
    const e = await expectRefused('LUKS2_BAD_JSON', '(json area)');
    expect(e.message).toMatch(/nested deeper than/);
  });

  test('non-numbered ids', async () => {
    writeMutated((j) => { j.digests = { d: j.digests['0'] }; });
    await expectRefused('LUKS2_BAD_JSON', 'digests.d');
  });
});

describe('fields ebsd is asked to write', () => {
  const json = (): Luks2Json => buildLuks2Json({ size: SIZE, volumeKey: volumeKey(), token: testToken() });

  test.each([
    ['label', { label: 'x'.repeat(48) }],
    ['label', { label: 'vol-\u20ac' }],
    ['uuid', { uuid: 'u'.repeat(40) }],
  ] as const)('a %s that does not fit is a typed refusal, not a RangeError; no file is left', async (field, o) => {
    const p = join(t.dir, 'new.img');
    const err = await createLuks2(p, { json: json(), size: SIZE, dataOffset: LUKS2_DATA_OFFSET, ...o }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(Luks2Error);
    expect(err).toMatchObject({ code: 'LUKS2_BAD_FIELD', field, awsName: 'InvalidParameterValue' });
    expect(existsSync(p)).toBe(false);
  });
});

describe('image files: symlinks and non-regular files', () => {
  test('a LUKS2 image path that is a symlink to a valid image is refused', async () => {
    const link = join(t.dir, 'link.img');
    symlinkSync(img, link);
    const err = await readLuks2(link).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(Luks2Error);
    expect(err).toMatchObject({ code: 'LUKS2_NOT_A_FILE', field: '(file)', awsName: 'IncorrectState' });
    expect((err as Error).message).toContain(link);
    // updateLuks2 reads first, so it refuses before writing through the link.
    await expect(updateLuks2(link, () => {})).rejects.toMatchObject({ code: 'LUKS2_NOT_A_FILE' });
  });

  test('a directory is refused', async () => {
    const d = join(t.dir, 'dir.img');
    mkdirSync(d);
    await expect(readLuks2(d)).rejects.toMatchObject({ code: 'LUKS2_NOT_A_FILE', field: '(file)' });
  });

  test('a plaintext image path that is a symlink is refused; the target still reads', async () => {
    const p = join(t.dir, 'plain.img');
    await createPlainImage(p, { volumeId: VOL, size: SIZE });
    const link = join(t.dir, 'plain-link.img');
    symlinkSync(p, link);
    const err = await readPlainImage(link).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(VolumeError);
    expect(err).toMatchObject({ code: 'VOLUME_IMAGE_CORRUPT', awsName: 'IncorrectState' });
    expect((err as Error).message).toContain(link);
    expect((await readPlainImage(p)).size).toBe(SIZE);
  });

  test('a corrupt plaintext header is IncorrectState naming the file and the field', async () => {
    const p = join(t.dir, 'plain.img');
    await createPlainImage(p, { volumeId: VOL, size: SIZE });
    const fd = openSync(p, 'r+');
    try {
      const line = `EBSD-UNENCRYPTED-VOLUME\n{"format":"ebsd-plaintext","version":1,"volume_id":"${VOL}","size":"1048576","size":"4096","data_offset":"16777216"}\n`;
      writeSync(fd, Buffer.alloc(4096), 0, 4096, 0);
      writeSync(fd, Buffer.from(line), 0, line.length, 0);
    } finally {
      closeSync(fd);
    }
    const err = await readPlainImage(p).then(() => undefined, (e: unknown) => e);
    expect(err).toMatchObject({ code: 'VOLUME_IMAGE_CORRUPT', awsName: 'IncorrectState' });
    expect((err as Error).message).toContain(p);
    expect((err as Error).message).toMatch(/duplicate member name "size"/);
  });
});

describe('agreement with cryptsetup (luksDump refuses these too)', () => {
  test.each([
    ['segments.0.offset', 'LUKS2_BAD_JSON', (j: any) => { j.segments['0'].offset = String(LUKS2_DATA_OFFSET - 4096); }],
    ['segments.0.size', 'LUKS2_BAD_JSON', (j: any) => { j.segments['0'].size = '18446744073709551616'; }],
    ['keyslots.0.area', 'LUKS2_BAD_JSON', (j: any) => { j.keyslots['0'] = { type: 'luks2', key_size: 64, area: { type: 'raw', offset: '4096', size: '4096', encryption: 'aes-xts-plain64', key_size: 64 } }; }],
    ['digests.d', 'LUKS2_BAD_JSON', (j: any) => { j.digests = { d: j.digests['0'] }; }],
    ['config.keyslots_size', 'LUKS2_BAD_JSON', (j: any) => { j.config.keyslots_size = '1000'; }],
    ['config.json_size', 'LUKS2_BAD_JSON', (j: any) => { j.config.json_size = '8192'; }],
    ['tokens.0.keyslots', 'LUKS2_BAD_JSON', (j: any) => { delete j.tokens['0'].keyslots; }],
  ] as const)('%s', async (field, code, mutate) => {
    writeMutated(mutate);
    await expectRefused(code, field);
    const d = cryptsetupDump(img);
    expect(d.status).not.toBe(0);
    expect(d.stderr).toMatch(/not a valid LUKS device/);
  });

  test('with duplicate members cryptsetup takes the last one, so ebsd refuses rather than guess', async () => {
    const dup = JSON.stringify(base).replace(/}$/, `,"segments":${JSON.stringify({ 0: { ...base.segments['0'], offset: '0' } })}}`);
    writeHeaders(img, dup);
    await expectRefused('LUKS2_BAD_JSON', '(json area)');
    const d = cryptsetupDump(img);
    expect(d.status).toBe(0);
    expect(d.stdout).toMatch(/offset: 0 \[bytes\]/);
  });
});

describe('parseLuks2Json under random input (fast-check, fixed seed)', () => {
  const JSON_SIZE = LUKS2_HDR_SIZE - 4096;
  const area = (text: string): Buffer => {
    const b = Buffer.alloc(JSON_SIZE);
    b.write(text.slice(0, JSON_SIZE - 1), 'utf8'); // may cut a character: that is random input too
    return b;
  };
  /** Either a volume whose layout invariants hold, or a Luks2Error naming a field; never anything else. */
  const check = (buf: Buffer): void => {
    let v;
    try {
      v = parseLuks2Json(buf, JSON_SIZE);
    } catch (e) {
      expect(e).toBeInstanceOf(Luks2Error);
      expect(typeof (e as Luks2Error).field).toBe('string');
      return;
    }
    const keyslotsSize = Number(v.json.config.keyslots_size);
    expect(v.dataOffset).toBeGreaterThanOrEqual(2 * LUKS2_HDR_SIZE + keyslotsSize);
    expect(Number.isSafeInteger(v.dataOffset + v.size)).toBe(true);
    const d = v.json.digests[v.digestId]!;
    expect(d.iterations).toBeGreaterThanOrEqual(1000);
    expect(d.iterations).toBeLessThanOrEqual(10_000_000);
    expect(['sha1', 'sha256', 'sha512']).toContain(d.hash);
  };
  const PATHS = [
    ['segments', '0', 'offset'], ['segments', '0', 'size'], ['segments', '0'], ['segments'], ['config', 'keyslots_size'], ['config', 'json_size'],
    ['config', 'requirements'], ['digests', '0', 'iterations'], ['digests', '0', 'hash'], ['digests', '0', 'salt'], ['digests', '0', 'segments'],
    ['tokens', '0', 'ciphertext_blob'], ['tokens', '0', 'encryption_context'], ['tokens', '0', 'keyslots'], ['keyslots', '0'], ['keyslots'], [],
  ];
  const SEED = 1302;

  test('a random JSON value at a meaningful member', () => {
    fc.assert(
      fc.property(fc.constantFrom(...PATHS), fc.oneof(fc.jsonValue({ maxDepth: 3 }), fc.bigInt({ min: 0n, max: 1n << 70n }).map(String), fc.nat().map(String)), (path, value) => {
        const j = structuredClone(base) as any;
        if (path.length === 0) return check(area(JSON.stringify(value)));
        let o = j;
        for (const k of path.slice(0, -1)) o = o[k];
        o[path[path.length - 1]!] = value;
        check(area(JSON.stringify(j)));
      }),
      { seed: SEED, numRuns: 1000 },
    );
  });

  test('random byte edits of a valid area', () => {
    const text = JSON.stringify(base);
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat({ max: text.length - 1 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }), (edits) => {
        const b = area(text);
        for (const [at, byte] of edits) b[at] = byte;
        check(b);
      }),
      { seed: SEED, numRuns: 3000 },
    );
  });
});
