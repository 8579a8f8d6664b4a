import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';

/**
 * `ebsd status --output table` (the default on a terminal) left out every volume's Problem: a volume
 * recorded attached whose re-attach the KMS refused read "in-use" with nothing else, while the JSON
 * said "recorded attached but not served: the re-attach failed (...); detach it". Now the table is
 * followed by a PROBLEMS section naming each such volume and its Problem. A real daemon restarted
 * with a volume whose key was disabled meanwhile.
 */
describe('ebsd status as a table shows the volumes\' Problems (real daemon)', () => {
  const env = new Env('status-table');
  let vol = '';
  let healthy = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    const key = (await env.api('TrentService.CreateKey', { Description: 'status-table' })).KeyMetadata.KeyId as string;
    vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB', KmsKeyId: key })).VolumeId;
    healthy = (await env.api('ebsd.CreateVolume', { Size: '4MiB' })).VolumeId;
    await env.api('ebsd.AttachVolume', { VolumeId: vol });
    await env.api('ebsd.AttachVolume', { VolumeId: healthy });
    await env.api('TrentService.DisableKey', { KeyId: key });
    expect(await env.stop()).toBe(0);
    await env.start();
  }, 90_000);
  afterAll(() => env.cleanup(), 60_000);

  it('names the volume whose re-attach was refused and its Problem, under the table; the healthy one has no line', async () => {
    const json = await env.ok(['status']);
    const problem = json.Volumes.find((v: { VolumeId: string }) => v.VolumeId === vol).Problem as string;
    expect(problem).toContain('recorded attached but not served: the re-attach failed');
    expect(json.Volumes.find((v: { VolumeId: string }) => v.VolumeId === healthy).Problem).toBeUndefined();

    const t = await env.cli(['status', '--output', 'table']);
    expect(t.code, t.stderr).toBe(0);
    const lines = t.stdout.split('\n');
    const at = lines.indexOf('PROBLEMS');
    expect(at, t.stdout).toBeGreaterThan(0);
    expect(lines.slice(at + 1).filter((l) => l.length > 0)).toEqual([`${vol}: ${problem}`]);
    // The table itself is as before.
    expect(lines.some((l) => l.startsWith('VOLUME ID '))).toBe(true);
    expect(lines.some((l) => l.startsWith(healthy) && l.includes('cached'))).toBe(true);
  });
});
