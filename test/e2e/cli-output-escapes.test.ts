import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Env, ensureBuilt } from './helpers.js';

/**
 * A volume Name is anyone's text (whoever may create or tag a volume sets it),
 * and root lists it on a terminal: `ebsd volume ls` and `ebsd status` as tables
 * show its control characters as `\xNN`, never as the ESC/BEL bytes a terminal
 * would act on (OSC 52 writes the clipboard, CSI 2J clears the screen);
 * `--output json` keeps the value exact (src/cli/output.ts printableCell).
 */
describe('table output of a volume whose Name holds terminal control sequences', () => {
  const env = new Env('cli-escapes');
  const name = 'evil\u001b]52;c;ZWNobyBwd25lZA==\u0007\u001b[2J\u009b31m';
  const shown = 'evil\\x1b]52;c;ZWNobyBwd25lZA==\\x07\\x1b[2J\\x9b31m';
  /** Any C0 control but the line break, DEL, or a C1 control. */
  const RAW_CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/;
  let vol = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    vol = (await env.ok(['volume', 'create', '--size', '16MiB', '--name', name])).VolumeId;
  }, 90_000);
  afterAll(() => env.cleanup(), 60_000);

  it('volume ls and status as tables show the escapes; JSON has the exact Name', async () => {
    for (const args of [['volume', 'ls', '--output', 'table'], ['status', '--output', 'table']]) {
      const r = await env.cli(args);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain(vol);
      expect(r.stdout, args.join(' ')).not.toMatch(RAW_CONTROL);
      expect(r.stdout, args.join(' ')).toContain(shown);
    }
    const json = await env.ok(['volume', 'ls']);
    const v = json.Volumes.find((x: { VolumeId: string }) => x.VolumeId === vol);
    expect(v.Tags).toContainEqual({ Key: 'Name', Value: name });
  });
});
