import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, Env, ensureBuilt, run } from '../e2e/helpers.js';

/**
 * `ebsd completion bash|zsh`: the scripts, and what they ask for
 * (`ebsd --get-yargs-completions <words>`) answered with commands, flags and
 * live values from a real daemon: volume ids, key ids, aliases, file paths.
 */
describe('shell completion', () => {
  const env = new Env('completion');
  let vol = '';
  let keyId = '';

  beforeAll(async () => {
    ensureBuilt();
    await env.start();
    vol = (await env.ok(['volume', 'create', '--size', '16MiB'])).VolumeId;
    keyId = (await env.ok(['kms', 'create-key', '--description', 'completion'])).KeyMetadata.KeyId;
    await env.ok(['kms', 'create-alias', '--alias-name', 'alias/app-data', '--target-key-id', keyId]);
  }, 90_000);
  afterAll(() => env.cleanup(), 60_000);

  /** What the shell would offer for the words typed so far (the last one is being completed). */
  async function complete(...words: string[]): Promise<string[]> {
    const r = await run(process.execPath, [CLI, '--get-yargs-completions', 'ebsd', ...words], { env: { EBSD_STATE_DIR: env.state, SHELL: '/bin/bash' } });
    expect(r.code, r.stderr).toBe(0);
    return r.stdout.split('\n').filter(Boolean);
  }

  it('prints a bash and a zsh script that call back into ebsd', async () => {
    const bash = await env.cli(['completion', 'bash']);
    expect(bash.code).toBe(0);
    expect(bash.stdout).toMatch(/complete -o bashdefault -o default -F _ebsd_yargs_completions ebsd/);
    expect(bash.stdout).toMatch(/ebsd --get-yargs-completions/);
    const zsh = await env.cli(['completion', 'zsh']);
    expect(zsh.code).toBe(0);
    expect(zsh.stdout).toMatch(/^#compdef ebsd/);
    expect(zsh.stdout).toMatch(/compdef _ebsd_yargs_completions ebsd/);
    const fish = await env.cli(['completion', 'fish']);
    expect(fish.code).toBe(2);
  });

  it('the bash script parses (bash -n) and completes through a real bash', async () => {
    const script = (await env.cli(['completion', 'bash'])).stdout.replaceAll('ebsd --get-yargs-completions', `${process.execPath} ${CLI} --get-yargs-completions`);
    const file = join(env.dir, 'ebsd-completion.bash');
    writeFileSync(file, script);
    expect((await run('bash', ['-n', file])).code).toBe(0);
    // Drive the completion function as bash would on `ebsd att<TAB>`.
    const r = await run('bash', ['-c', `source ${file}; COMP_WORDS=(ebsd att); COMP_CWORD=1; _ebsd_yargs_completions; printf '%s\\n' "\${COMPREPLY[@]}"`], { env: { EBSD_STATE_DIR: env.state } });
    expect(r.stdout.trim()).toBe('attach');
  });

  it('commands and flags', async () => {
    expect(await complete('')).toEqual(expect.arrayContaining(['daemon', 'kms', 'volume', 'attach', 'detach', 'status', 'completion', 'install-units']));
    expect(await complete('daemon', '--')).toEqual(expect.arrayContaining(['--metrics-listen', '--log-format', '--mount']));
  });

  it('live volume ids after attach/detach/describe and for a vol- prefix', async () => {
    expect(await complete('attach', '')).toEqual([vol]);
    expect(await complete('volume', 'describe', '')).toEqual([vol]);
    expect(await complete('detach', vol.slice(0, 6))).toEqual([vol]);
  });

  it('live key ids and aliases after --key-id / --kms-key', async () => {
    const keys = await complete('kms', 'encrypt', '--key-id', '');
    expect(keys).toEqual(expect.arrayContaining([keyId, 'alias/app-data']));
    expect(await complete('volume', 'create', '--kms-key', 'alias/app')).toEqual(['alias/app-data']);
  });

  it('file paths after fileb:// and file://', async () => {
    const d = join(env.dir, 'blobs');
    mkdirSync(join(d, 'sub'), { recursive: true });
    writeFileSync(join(d, 'plain.bin'), 'x');
    expect((await complete('kms', 'encrypt', '--plaintext', `fileb://${d}/pl`))).toEqual([`fileb://${d}/plain.bin`]);
    expect((await complete('kms', 'put-key-policy', '--policy', `file://${d}/`)).sort()).toEqual([`file://${d}/plain.bin`, `file://${d}/sub/`]);
  });

  it('without a daemon: commands still complete, no live values, no error', async () => {
    const r = await run(process.execPath, [CLI, '--get-yargs-completions', 'ebsd', 'attach', ''], { env: { EBSD_STATE_DIR: join(env.dir, 'nowhere') } });
    expect(r.code).toBe(0);
    expect(r.stdout).not.toMatch(/vol-/);
    expect(r.stderr).toBe('');
  });
});
