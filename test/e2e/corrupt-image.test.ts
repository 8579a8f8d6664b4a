import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';
import { writeHeaders } from '../volume/helpers/raw-header.js';
import { LUKS2_HDR_SIZE } from '../../src/volume/luks2-json.js';

/**
 * Issue 13, defects 9 and 10: a volume whose image header has a valid checksum
 * but a data segment at offset 0 (over both headers and the wrapped key) is
 * refused by the running daemon with IncorrectState (exit 6) naming the image
 * file and the field, not InternalFailure (exit 10), and nothing is written.
 */
describe('daemon: a corrupt LUKS2 image', () => {
  let env: Env;
  let vol: string;
  let img: string;

  beforeAll(async () => {
    ensureBuilt();
    env = new Env('corrupt');
    await env.start();
    vol = (await env.ok(['volume', 'create', '--size', '4MiB'])).VolumeId;
    img = join(env.state, 'volumes', `${vol}.img`);
    // The daemon's own header, with segment 0 moved to offset 0, under a valid checksum.
    const area = readFileSync(img).subarray(4096, LUKS2_HDR_SIZE);
    const json = JSON.parse(area.subarray(0, area.indexOf(0)).toString('utf8'));
    json.segments['0'].offset = '0';
    writeHeaders(img, JSON.stringify(json));
  }, 90_000);

  afterAll(async () => {
    await env?.cleanup();
  }, 60_000);

  it('attach is refused: exit 6, IncorrectState, the image and segments.0.offset named; the header is untouched', async () => {
    const before = readFileSync(img).subarray(0, 2 * LUKS2_HDR_SIZE);
    const r = await env.cli(['attach', vol]);
    expect(r.code).toBe(6);
    expect(r.stderr).toContain('IncorrectState');
    expect(r.stderr).toContain(img);
    expect(r.stderr).toContain('segments.0.offset');
    expect(readFileSync(img).subarray(0, 2 * LUKS2_HDR_SIZE).equals(before)).toBe(true);
  }, 60_000);

  it('modify is refused the same way and the image keeps its size', async () => {
    const size = readFileSync(img).length;
    const r = await env.cli(['volume', 'modify', vol, '--size', '8MiB']);
    expect(r.code).toBe(6);
    expect(r.stderr).toContain('segments.0.offset');
    expect(readFileSync(img).length).toBe(size);
  }, 60_000);
});
