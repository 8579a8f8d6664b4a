import { afterAll, beforeAll, expect, test } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { readLuks2 } from '../../src/volume/luks2-header.js';
import { verifyVolumeKey } from '../../src/volume/luks2-json.js';
import { EncryptedBlockDevice } from '../../src/volume/encrypted-block-device.js';
import { openBackingFile } from '../../src/volume/backing-file.js';
import { fixturePlaintext } from './helpers/fixture.js';
import { testEngine } from './helpers/engine.js';
import { tmpDir } from './helpers/image.js';

const FIX = new URL('../fixtures/luks2-v1/', import.meta.url);
let t: ReturnType<typeof tmpDir>;
let img: string;
const key = Buffer.from(readFileSync(new URL('volume-key.hex', FIX), 'utf8').trim(), 'hex');
beforeAll(() => {
  t = tmpDir();
  img = join(t.dir, 'fixture.img');
  writeFileSync(img, gunzipSync(readFileSync(new URL('image.img.gz', FIX))));
});
afterAll(() => t.cleanup());

test('luks2-v1 fixture keeps opening and decrypting', async () => {
  const h = await readLuks2(img, { repair: false });
  expect(h.volume.token.volume_id).toBe('vol-0f1e2d3c4b5a69788');
  verifyVolumeKey(h.volume, key);
  const dev = new EncryptedBlockDevice({
    volumeId: h.volume.token.volume_id,
    size: h.volume.size,
    dataOffset: h.volume.dataOffset,
    backing: await openBackingFile(img),
    xts: (await testEngine()).createContext(key),
  });
  const model = Buffer.alloc(h.volume.size);
  for (const [off, data] of fixturePlaintext()) data.copy(model, off);
  const all = Buffer.alloc(h.volume.size);
  await dev.read(0, all.length, all);
  await dev.close();
  expect(all.equals(model)).toBe(true);
});

test('luks2-v1 fixture opens with stock cryptsetup and the volume key', () => {
  const kf = join(t.dir, 'key');
  writeFileSync(kf, key, { mode: 0o600 });
  const r = spawnSync('cryptsetup', ['open', '--test-passphrase', '--type', 'luks2', '--volume-key-file', kf, '--key-size', '512', img], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
});
