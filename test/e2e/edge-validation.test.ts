import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, Env, ensureBuilt, pooled, rawControlCall, run, zip, type CliResult } from './helpers.js';

/**
 * Every request member is checked at the edge (issue 13, defects 7 and 10):
 * through the real daemon as a child process and the real CLI. Raw socket
 * calls send what the CLI never would (a null tag, a string filter).
 */

type Answer = { status: number; body: { __type?: string; message?: string; [k: string]: unknown } };

/** One control-API call with a raw JSON body, as any local program could send it. */
function raw(env: Env, target: string, body: string): Promise<Answer> {
  return rawControlCall(env.state, target, body);
}

const NO_STACK = /\n\s+at /;

// Each Env is made in its describe's beforeAll, not when the file is collected: a run filtered
// with -t collects every describe but runs the hooks of the selected ones only, and an Env made at
// collection left its /tmp/ebsd-e2e-* dir behind.

describe('edge validation through the real daemon', () => {
  let env: Env;

  beforeAll(async () => {
    ensureBuilt();
    env = new Env('edge');
    await env.start();
  });
  afterAll(() => env?.cleanup());

  it('refuses null, non-object and reserved tags, oversized names and 51 tags, naming the member; status and ls keep working', async () => {
    const before = await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'keep' });
    const bad: [string, RegExp][] = [
      ['{"Size":4194304,"TagSpecifications":[{"ResourceType":"volume","Tags":[null]}]}', /TagSpecifications\[0\]\.Tags\[0\] must be an object, got null/],
      ['{"Size":4194304,"TagSpecifications":[{"ResourceType":"volume","Tags":["x"]}]}', /TagSpecifications\[0\]\.Tags\[0\] must be an object/],
      ['{"Size":4194304,"TagSpecifications":[{"ResourceType":"volume","Tags":[{"Key":"k","Value":null}]}]}', /TagSpecifications\[0\]\.Tags\[0\]\.Value must be a string, got null/],
      ['{"Size":4194304,"TagSpecifications":[{"ResourceType":"instance","Tags":[]}]}', /TagSpecifications\[0\]\.ResourceType/],
      ['{"Size":4194304,"TagSpecifications":[{"ResourceType":"volume","Tags":[{"Key":"' + 'k'.repeat(129) + '","Value":""}]}]}', /Tags\[0\]\.Key must be 1 to 128 characters long, got 129/],
      ['{"Size":4194304,"TagSpecifications":"x"}', /TagSpecifications must be an array/],
    ];
    for (const [body, msg] of bad) {
      const r = await raw(env, 'ebsd.CreateVolume', body);
      expect(r.status, body).toBe(400);
      expect(r.body.__type, body).toBe('InvalidParameterValue');
      expect(r.body.message, body).toMatch(msg);
    }
    const unknown = await raw(env, 'ebsd.CreateVolume', '{"Size":4194304,"Sise":1}');
    expect(unknown.body).toMatchObject({ __type: 'UnknownParameter', message: expect.stringMatching(/'Sise'/) });

    // Independent CLI calls run at once (a CLI process is ~0.35 s of start-up each).
    const [longName, reserved, many] = await Promise.all([
      env.cli(['volume', 'create', '--size', '4MiB', '--name', 'n'.repeat(100_000)]), // one argv string stops at 128 KiB
      env.cli(['volume', 'create', '--size', '4MiB', '--tag', 'aws:owner=me']),
      env.cli(['volume', 'create', '--size', '4MiB', '--tag', ...Array.from({ length: 51 }, (_, i) => `k${i}=v`)]),
    ]);
    expect(longName.code).toBe(7);
    expect(longName.stderr).toMatch(/^ebsd: InvalidParameterValue: Name must be 0 to 256 characters long, got 100000/);
    expect(reserved.code).toBe(7);
    expect(reserved.stderr).toMatch(/InvalidParameterValue: .*'aws:owner'.*TagSpecifications\[0\]\.Tags\[0\]\.Key.*reserved/);
    expect(many.code).toBe(7);
    expect(many.stderr).toMatch(/^ebsd: TagLimitExceeded: .*50/);
    const fifty = await env.ok(['volume', 'create', '--size', '4MiB', '--tag', ...Array.from({ length: 49 }, (_, i) => `k${i}=v`), '--name', 'fifty']);
    expect(fifty.Tags).toHaveLength(50);

    // Nothing was created by a refused request, and everyone can still list.
    const [st, ls] = await Promise.all([env.cli(['status', '--output', 'table']), env.cli(['volume', 'ls', '--output', 'table'])]);
    expect(st.code).toBe(0);
    expect(ls.code).toBe(0);
    expect(ls.stdout).toContain(before.VolumeId);
    const all = await env.api('ebsd.DescribeVolumes');
    expect(all.Volumes.map((v: { VolumeId: string }) => v.VolumeId).sort()).toEqual([before.VolumeId, fifty.VolumeId].sort());
    expect(readFileSync(join(env.state, 'volumes', 'catalog.json')).length).toBeLessThan(64 * 1024);
  });

  it('refuses malformed Filters with InvalidFilter, unknown filter names with InvalidParameterValue, and malformed ids with InvalidVolumeID.Malformed, never a TypeError', async () => {
    const bodies: [string, RegExp][] = [
      ['{"Filters":"status"}', /^Filters must be an array/],
      ['{"Filters":[null]}', /^Filters\[0\] must be an object/],
      ['{"Filters":[{"Name":"status","Values":"available"}]}', /^Filters\[0\]\.Values must be an array of strings/],
      ['{"Filters":[{"Name":"status","Values":[1]}]}', /^Filters\[0\]\.Values\[0\] must be a string/],
      ['{"Filters":[{"Name":7,"Values":[]}]}', /^Filters\[0\]\.Name must be a string/],
    ];
    for (const [body, msg] of bodies) {
      const r = await raw(env, 'ebsd.DescribeVolumes', body);
      expect(r.status, body).toBe(400);
      expect(r.body.__type, body).toBe('InvalidFilter');
      expect(r.body.message, body).toMatch(msg);
    }
    // An unknown filter name is EC2's InvalidParameterValue, for volumes and snapshots alike.
    for (const op of ['ebsd.DescribeVolumes', 'ebsd.DescribeSnapshots']) {
      const r = await raw(env, op, '{"Filters":[{"Name":"nope","Values":["x"]}]}');
      expect(r.status, op).toBe(400);
      expect(r.body, op).toMatchObject({ __type: 'InvalidParameterValue', message: expect.stringMatching(/^The filter 'nope' is invalid/) });
    }
    const id = await raw(env, 'ebsd.DescribeVolumes', '{"VolumeIds":[{"x":1}]}');
    expect(id.body).toMatchObject({ __type: 'InvalidVolumeID.Malformed', message: expect.stringMatching(/VolumeIds\[0\]/) });
    const del = await raw(env, 'ebsd.DeleteVolume', '{"VolumeId":null}');
    expect(del.body.__type).toBe('InvalidVolumeID.Malformed');
    const force = await raw(env, 'ebsd.DetachVolume', '{"VolumeId":"vol-0123456789abcdef0","Force":"yes"}');
    expect(force.body).toMatchObject({ __type: 'InvalidParameterValue', message: expect.stringMatching(/^Force must be true or false/) });
    const page = await raw(env, 'ebsd.DescribeVolumes', '{"MaxResults":1}');
    expect(page.body).toMatchObject({ __type: 'InvalidParameterValue', message: expect.stringMatching(/MaxResults/) });
    const cli = await env.cli(['volume', 'describe', 'vol-nope']);
    expect(cli.code).toBe(5); // as for InvalidVolume.NotFound (ebsd --help)
    expect(cli.stderr).toMatch(/^ebsd: InvalidVolumeID\.Malformed: /);
  });

  it('pages DescribeVolumes with MaxResults and NextToken', async () => {
    for (let i = 0; i < 6; i++) await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: `page-${i}` });
    const all = (await env.api('ebsd.DescribeVolumes')).Volumes.map((v: { VolumeId: string }) => v.VolumeId).sort();
    expect(all.length).toBeGreaterThanOrEqual(6);
    const seen: string[] = [];
    let token: string | undefined;
    for (let n = 0; n < 10; n++) {
      const r = await raw(env, 'ebsd.DescribeVolumes', JSON.stringify({ MaxResults: 5, ...(token ? { NextToken: token } : {}) }));
      expect(r.status).toBe(200);
      const vols = r.body.Volumes as { VolumeId: string }[];
      expect(vols.length).toBeLessThanOrEqual(5);
      if (n === 0) expect(r.body.NextToken).toEqual(expect.any(String));
      seen.push(...vols.map((v) => v.VolumeId));
      token = r.body.NextToken as string | undefined;
      if (!token) break;
    }
    expect(seen).toEqual(all);
  });

  it('names the filesystem limit for a size the backing filesystem cannot hold', async () => {
    const fsType = spawnSync('stat', ['-f', '-c', '%T', env.state], { encoding: 'utf8' }).stdout.trim();
    const r = await env.cli(['volume', 'create', '--size', '64TiB']);
    if (/^ext[234]/.test(fsType)) {
      // ext4 with 4 KiB blocks: 16 TiB per file.
      expect(r.code).toBe(7);
      expect(r.stderr).toMatch(/^ebsd: InvalidParameterValue: Invalid value '64TiB' for Size: .*the filesystem holding .*volumes allows files of at most \d+ bytes \(EFBIG\); the largest volume it can hold is \d+ bytes/);
    } else {
      expect(r.stderr).not.toMatch(/InternalFailure|EFBIG: file too large/);
    }
    expect(r.stderr).not.toMatch(NO_STACK);
  });

  it('map-uid takes only uids 0..2^32-2, in the CLI and in the daemon', async () => {
    const uids = ['1e20', '-1', '4294967295', '1.5'];
    for (const [uid, r] of zip(uids, await pooled(uids, (uid) => env.cli(['iam', 'map-uid', uid, 'root'])))) {
      expect(r.code, uid).toBe(2);
      expect(r.stderr, uid).toMatch(/uid must be an integer from 0 to 4294967294/);
    }
    for (const uid of ['1e20', '4294967295', '-1', '"7"']) {
      const r = await raw(env, 'ebsd.IamMapUid', `{"Uid":${uid},"Principal":"root"}`);
      expect(r.status, uid).toBe(400);
      expect(r.body.__type, uid).toBe('InvalidInputException');
    }
    const maps = await env.ok(['iam', 'list-uids']);
    expect(maps.Mappings.map((m: { uid: number }) => m.uid)).toEqual([0]);
  });

  it('refuses unknown options with exit 2 and "Unknown options", per KMS operation too', async () => {
    const cases: [string[], RegExp][] = [
      [['kms', 'list-keys', '--kye-id', 'x'], /^ebsd: Unknown options: --kye-id, x/],
      [['kms', 'describe-key', '--key-id', 'k', '--plaintext', 'AA=='], /^ebsd: Unknown options: --plaintext, AA==/],
      [['kms', 'list-keys', '--alias', 'alias/x'], /^ebsd: Unknown options: --alias, alias\/x/],
      [['volume', 'ls', '--bogus'], /^ebsd: Unknown options: --bogus/],
      [['daemon', '--no-such-flag', '--state-dir', join(env.dir, 'never'), '--mount', join(env.dir, 'never-mnt')], /^ebsd: Unknown options: --such-flag/],
    ];
    for (const [[args, msg], r] of zip(cases, await pooled(cases, ([args]) => env.cli(args)))) {
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(msg);
    }
    // Known flags and positionals still work.
    expect((await env.ok(['kms', 'list-keys', '--limit', '5'])).Keys).toBeDefined();
    expect((await env.ok(['iam', 'create-user', 'edge-user'])).User.UserName).toBe('edge-user');
    expect(await env.ok(['iam', 'list-policies', 'user/edge-user'])).toEqual({ PolicyNames: [] });
  });

  it('a bad --query is a usage error naming the expression, before anything is sent', async () => {
    const keysBefore = (await env.api('TrentService.ListKeys')).Keys.length;
    const r = await env.cli(['kms', 'create-key', '--query', "KeyMetadata[?KeyId=='x']"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^ebsd: unsupported --query expression "KeyMetadata\[\?KeyId=='x'\]"/);
    expect(r.stderr).not.toMatch(NO_STACK);
    expect((await env.api('TrentService.ListKeys')).Keys.length).toBe(keysBefore);
    const ok = await env.cli(['status', '--query', 'Daemon.Pid', '--output', 'text']);
    expect(ok.stdout.trim()).toBe(String(env.pid));
  });

  it('fileb:// of a directory is a usage error naming the path', async () => {
    const dir = join(env.dir, 'a-dir');
    mkdirSync(dir, { recursive: true });
    const r = await env.cli(['kms', 'encrypt', '--key-id', 'alias/aws/ebs', '--plaintext', `fileb://${dir}`]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`ebsd: --plaintext fileb://${dir}: is a directory, not a file (see ebsd --help)\n`);
    const p = await env.cli(['iam', 'put-policy', 'user/x', '--policy-name', 'p', '--policy-document', `file://${dir}/missing.json`]);
    expect(p.code).toBe(2);
    expect(p.stderr).toMatch(/--policy-document file:\/\/.*missing\.json: no such file/);
  });

  it('create-key --alias: a bad, reserved, missing or taken alias is refused before the key is made (no orphan key)', async () => {
    const taken = (await env.api('TrentService.CreateKey')).KeyMetadata.KeyId as string;
    await env.api('TrentService.CreateAlias', { AliasName: 'alias/edge-taken', TargetKeyId: taken });
    const keys = async (): Promise<number> => (await env.api('TrentService.ListKeys')).Keys.length;
    const before = await keys();
    const cases: [string[], number, RegExp][] = [
      [['--alias', 'bad-name'], 2, /^ebsd: --alias "bad-name": an alias name is alias\/ then/],
      [['--alias'], 2, /^ebsd: --alias needs a value/],
      [['--alias='], 2, /^ebsd: --alias needs a value/],
      [['--alias', 'alias/aws/mine'], 2, /reserved for AWS managed keys/],
      [['--alias', 'alias/edge-taken'], 6, /^ebsd: AlreadyExistsException: An alias with the name alias\/edge-taken already exists \(key [0-9a-f-]{36}\); no key was created/],
    ];
    for (const [[args, code, msg], r] of zip(cases, await pooled(cases, ([args]) => env.cli(['kms', 'create-key', '--description', 'orphan?', ...args])))) {
      expect(r.code, args.join(' ')).toBe(code);
      expect(r.stderr, args.join(' ')).toMatch(msg);
      expect(r.stdout, args.join(' ')).toBe('');
    }
    expect(await keys()).toBe(before);
    const made = await env.ok(['kms', 'create-key', '--alias', 'alias/edge-new']);
    expect((await env.api('TrentService.DescribeKey', { KeyId: 'alias/edge-new' })).KeyMetadata.KeyId).toBe(made.KeyMetadata.KeyId);
  });

  it('a boolean flag takes no value, or true/false: --dry-run TRUE is a dry run, --dry-run yes a usage error', async () => {
    const values = ['yes', '1'];
    const [dry, bypass, ...refused] = await pooled([
      ['kms', 'encrypt', '--key-id', 'alias/edge-new', '--plaintext', 'AAAA', '--dry-run', 'TRUE'],
      ['kms', 'put-key-policy', '--key-id', 'alias/edge-new', '--policy', '{}', '--bypass-policy-lockout-safety-check', 'yes'],
      ...values.map((v) => ['kms', 'encrypt', '--key-id', 'alias/edge-new', '--plaintext', 'AAAA', '--dry-run', v]),
    ], (args) => env.cli(args));
    expect(dry!.stderr).toMatch(/^ebsd: DryRunOperationException: /);
    expect(dry!.stdout).toBe('');
    for (const [v, r] of zip(values, refused)) {
      expect(r.code, v).toBe(2);
      expect(r.stderr, v).toMatch(new RegExp(`^ebsd: --dry-run takes no value \\(or true or false\\), got "${v}"`));
      expect(r.stdout, v).toBe('');
    }
    expect(bypass!.code).toBe(2);
    expect(bypass!.stderr).toMatch(/--bypass-policy-lockout-safety-check takes no value/);
    const vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'bool' })).VolumeId as string;
    const flags = [['detach', vol, '--force=yes'], ['volume', 'create', '--size', '4MiB', '--wait=1']];
    for (const [args, r] of zip(flags, await pooled(flags, (args) => env.cli(args)))) {
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(/^ebsd: --(force|wait) takes no value, or true or false; got "(yes|1)"/);
    }
    await env.api('ebsd.DeleteVolume', { VolumeId: vol });
  });

  it('a missing argument is a usage error naming it, before anything is sent: KMS members as the AWS CLI names them, positionals with the usage line', async () => {
    const events = (): number => env.auditText().trim().split('\n').length;
    const before = events();
    const cases: [string[], string][] = [
      [['kms', 'describe-key'], 'the following arguments are required: --key-id (see ebsd --help)'],
      [['kms', 'encrypt', '--key-id', 'alias/aws/ebs'], 'the following arguments are required: --plaintext (see ebsd --help)'],
      [['kms', 'create-grant', '--key-id', 'alias/aws/ebs'], 'the following arguments are required: --grantee-principal, --operations (see ebsd --help)'],
      [['kms', 'enable-key'], 'the following arguments are required: --key-id (see ebsd --help)'],
      [['kms'], 'kms: the following arguments are required: <operation> (usage: ebsd kms <operation> [args..])'],
      [['attach'], 'attach: the following arguments are required: <volume-id> (usage: ebsd attach <volume-id>)'],
      [['volume', 'delete'], 'volume delete: the following arguments are required: <volume-id> (usage: ebsd volume delete <volume-id>)'],
      [['iam', 'map-uid', '5'], 'iam map-uid: the following arguments are required: <principal> (usage: ebsd iam map-uid <uid> <principal>)'],
      // yargs' "Missing required arguments: policy-name, policy-document", with the flags' dashes.
      [['iam', 'put-policy', 'user/x'], 'the following arguments are required: --policy-name, --policy-document (see ebsd --help)'],
      [['ebs', 'list-snapshot-blocks'], 'the following arguments are required: --snapshot-id (see ebsd --help)'],
      [['volume', 'modify', 'vol-0123456789abcdef0'], 'the following arguments are required: --size (see ebsd --help)'],
      // An empty value is refused as volume create's is, not sent (InvalidParameterValue naming the wire member).
      [['volume', 'modify', 'vol-0123456789abcdef0', '--size='], '--size: empty value (see ebsd --help)'],
      [['snapshot', 'copy', 'snap-0123456789abcdef0', '--kms-key-id='], '--kms-key-id: empty value (see ebsd --help)'],
      // --tag is Key=Value for the creates as for copy (volume create took `--tag team` as team="").
      [['volume', 'create', '--size', '4MiB', '--tag', 'team'], '--tag: expected Key=Value, got "team" (see ebsd --help)'],
      [['snapshot', 'create', 'vol-0123456789abcdef0', '--tag', '=v'], '--tag: expected Key=Value, got "=v" (see ebsd --help)'],
      [['snapshot', 'copy', 'snap-0123456789abcdef0', '--tag', 'x'], '--tag: expected Key=Value, got "x" (see ebsd --help)'],
      // One pointer to help, the one that lists operations.
      [['kms', 'bogus-op'], 'unknown KMS operation "bogus-op" (see `ebsd kms --help`)'],
    ];
    for (const [[args, msg], r] of zip(cases, await pooled(cases, ([args]) => env.cli(args)))) {
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toBe(`ebsd: ${msg}\n`);
      expect(r.stdout, args.join(' ')).toBe('');
    }
    // Nothing reached the daemon: no KMS event for the refused commands.
    expect(events()).toBe(before);
    // Members the operation does not require are not asked for (RetireGrant: a token, or key and grant ids).
    const rg = await env.cli(['kms', 'retire-grant']);
    expect(rg.stderr).not.toMatch(/arguments are required/);
  });

  it('a seconds option that is no number, or out of range, is a usage error quoting it (speed --seconds, top --interval)', async () => {
    const cases: [string[], string][] = [
      [['speed', '--seconds', 'abc'], '--seconds must be a number of seconds from 0.01 to 600, got "abc"'],
      [['speed', '--seconds', '0'], '--seconds must be a number of seconds from 0.01 to 600, got "0"'],
      [['top', '--once', '--interval', 'abc'], '--interval must be a number of seconds from 0.2 to 3600, got "abc"'],
      [['top', '--once', '--interval', '-1'], '--interval must be a number of seconds from 0.2 to 3600, got "-1"'],
      [['top', '--once', '--interval', '1e3'], '--interval must be a number of seconds from 0.2 to 3600, got "1e3"'],
    ];
    const [top, ...refused] = await pooled([['top', '--once', '--interval', '0.2', '--output', 'json'], ...cases.map(([args]) => args)], (args) => env.cli(args));
    for (const [[args, msg], r] of zip(cases, refused)) {
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr, args.join(' ')).toBe(`ebsd: ${msg} (see ebsd --help)\n`);
    }
    expect(top!.code, top!.stderr).toBe(0);
    expect(Array.isArray(JSON.parse(top!.stdout).volumes)).toBe(true); // a fraction is taken (no rates here: no --metrics-listen)
  });

  it('an empty response prints nothing in any format, as the AWS CLI does; --query on it prints null', async () => {
    const key = (await env.api('TrentService.CreateKey', { Description: 'quiet' })).KeyMetadata.KeyId as string;
    // The three formats at once, each one's calls in order (disable-key and enable-key succeed in either state).
    await Promise.all(['json', 'text', 'table'].map(async (output) => {
      for (const args of [['kms', 'create-alias', '--alias-name', `alias/quiet-${output}`, '--target-key-id', key], ['kms', 'disable-key', '--key-id', key], ['kms', 'enable-key', '--key-id', key]]) {
        const r = await env.cli([...args, '--output', output]);
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
        expect(r.stdout, `${args.join(' ')} --output ${output}`).toBe('');
      }
    }));
    const vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB' })).VolumeId as string;
    const del = await env.cli(['volume', 'delete', vol, '--output', 'json']);
    expect(del.code, del.stderr).toBe(0);
    expect(del.stdout).toBe('');
    const q = await env.cli(['kms', 'enable-key', '--key-id', key, '--query', 'KeyId', '--output', 'json']);
    expect(q.stdout).toBe('null\n');
  });

  it('volume ls --kms-key takes the key id or alias volume create takes; an alias that does not exist is refused, not an empty list', async () => {
    const key = (await env.api('TrentService.CreateKey', { Description: 'ls' })).KeyMetadata as { KeyId: string; Arn: string };
    await env.api('TrentService.CreateAlias', { AliasName: 'alias/edge-ls', TargetKeyId: key.KeyId });
    const vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB', KmsKeyId: 'alias/edge-ls' })).VolumeId as string;
    const names = ['alias/edge-ls', key.KeyId, key.Arn, `${key.Arn.slice(0, -4)}*`];
    const [nope, ...found] = await pooled([undefined, ...names], (k) => (k === undefined ? env.cli(['volume', 'ls', '--kms-key', 'alias/edge-ls-nope']) : env.ok(['volume', 'ls', '--kms-key', k, '--query', 'Volumes[].VolumeId'])));
    for (const [k, ids] of zip(names, found)) expect(ids, k).toEqual([vol]);
    expect(nope.code).toBe(5);
    expect(nope.stderr).toMatch(/^ebsd: NotFoundException: .*alias\/edge-ls-nope.*resolved to its key ARN with DescribeKey/);
    expect(nope.stdout).toBe('');
    await env.api('ebsd.DeleteVolume', { VolumeId: vol });
  });

  it('a refused size says what is wrong with it: a fraction, an unknown unit, out of range', async () => {
    const cases: [string, RegExp][] = [
      ['1.5GiB', /for Size: a whole number of bytes or of its unit \(1536MiB for 1\.5GiB\)/],
      ['8gb', /for Size: unknown unit 'gb' \(use KiB, MiB, GiB or TiB\)/],
      ['-1', /for Size: must be from 1 MiB to 64 TiB/],
      ['99999999999999999999999GiB', /for Size: must be from 1 MiB to 64 TiB/],
      ['0', /for Size: (a positive whole number of bytes|must be from 1 MiB to 64 TiB)/],
    ];
    for (const [[size, re], r] of zip(cases, await pooled(cases, ([size]) => env.cli(['volume', 'create', '--size', size])))) {
      expect(r.code, `${size}: ${r.stderr}`).toBe(7);
      expect(r.stderr, size).toMatch(new RegExp(`^ebsd: InvalidParameterValue: Invalid value '${size.replace(/[.*+?]/g, '\\$&')}' ${re.source}`));
      expect(r.stderr.trim().split('\n'), size).toHaveLength(1);
    }
  });

  it('an option given twice keeps its last value, as the AWS CLI does, before anything is sent', async () => {
    const r = await env.cli(['volume', 'create', '--size', '4MiB', '--size', '8MiB', '--name', 'twice', '--query', 'Size', '--query', 'VolumeId', '--output', 'json', '--output', 'text']);
    expect(r.code, r.stderr).toBe(0);
    const id = r.stdout.trim();
    expect(id).toMatch(/^vol-[0-9a-f]{17}$/);
    expect((await env.api('ebsd.DescribeVolumes', { VolumeIds: [id] })).Volumes[0].SizeBytes).toBe(8 * 1024 * 1024);
    const [st] = await Promise.all([
      env.cli(['status', '--state-dir', join(env.dir, 'nope'), '--state-dir', env.state, '--query', 'Daemon.Pid', '--output', 'text']),
      env.ok(['iam', 'put-policy', 'user/edge-user', '--policy-name', 'first', '--policy-name', 'last', '--policy-document', '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:ListKeys","Resource":"*"}]}']),
    ]);
    expect(st.code, st.stderr).toBe(0);
    expect(st.stdout.trim()).toBe(String(env.pid));
    expect(await env.api('ebsd.IamListPolicies', { Principal: 'user/edge-user' })).toEqual({ PolicyNames: ['last'] });
    await env.api('ebsd.DeleteVolume', { VolumeId: id });
  });

  it('an empty filter, key or name is a usage error naming the option, never dropped', async () => {
    const vols = async (): Promise<number> => (await env.api('ebsd.DescribeVolumes')).Volumes.length;
    const n = await vols();
    const cases: [string[], string][] = [
      [['volume', 'create', '--size', '4MiB', '--kms-key', ''], 'kms-key'],
      [['volume', 'create', '--size', '4MiB', '--name', ''], 'name'],
      [['volume', 'ls', '--name', ''], 'name'],
      [['volume', 'ls', '--state', ''], 'state'],
      [['volume', 'ls', '--kms-key='], 'kms-key'],
      [['snapshot', 'ls', '--volume-id', ''], 'volume-id'],
      [['snapshot', 'ls', '--state', ''], 'state'],
    ];
    for (const [[args, opt], r] of zip(cases, await pooled(cases, ([args]) => env.cli(args)))) {
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toBe(`ebsd: --${opt}: empty value (see ebsd --help)\n`);
      expect(r.stdout, args.join(' ')).toBe('');
    }
    expect(await vols()).toBe(n);
  });

  it('--query projections leave out missing values; a path to nothing is null (JSON) or None (text)', async () => {
    const vol = (await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'q' })).VolumeId as string;
    const [dev, nope, ids, none, text] = await pooled([
      ['volume', 'ls', '--query', 'Volumes[].Attachments[0].Device', '--output', 'text'],
      ['volume', 'ls', '--query', 'Volumes[].Nope', '--output', 'json'],
      ['volume', 'ls', '--query', 'Volumes[].VolumeId', '--output', 'json'],
      ['status', '--query', 'Nope', '--output', 'json'],
      ['status', '--query', 'Daemon.Nope', '--output', 'text'],
    ], (args) => env.cli(args));
    expect(dev!.code).toBe(0);
    expect(dev!.stdout).not.toMatch(/undefined|None|null/);
    expect(nope!.code, nope!.stderr).toBe(0);
    expect(nope!.json()).toEqual([]);
    expect(ids!.code, ids!.stderr).toBe(0);
    expect(ids!.json() as string[]).toContain(vol);
    expect(none!.stdout).toBe('null\n');
    expect(text!.stdout).toBe('None\n');
    await env.api('ebsd.DeleteVolume', { VolumeId: vol });
  });

  it('a number option takes decimal digits only; bad --tags JSON is a usage error; both before anything is sent', async () => {
    const cases: [string[], RegExp][] = [
      [['ebs', 'start-snapshot', '--volume-size', 'abc'], /^ebsd: --volume-size must be a whole number \(decimal digits\), got "abc"/],
      [['ebs', 'start-snapshot', '--volume-size', '0x10'], /^ebsd: --volume-size must be a whole number \(decimal digits\), got "0x10"/],
      [['ebs', 'list-snapshot-blocks', '--snapshot-id', 'snap-0123456789abcdef0', '--max-results', 'abc'], /^ebsd: --max-results must be a whole number .*"abc"/],
      [['ebs', 'get-snapshot-block', join(env.dir, 'b'), '--snapshot-id', 's', '--block-index', 'abc', '--block-token', 't'], /^ebsd: --block-index must be a whole number .*"abc"/],
      [['iam', 'create-role', 'edge-role', '--max-session-duration', 'abc'], /^ebsd: --max-session-duration must be a whole number .*"abc"/],
      [['snapshot', 'describe', '--max-results', '1.5'], /^ebsd: --max-results must be a whole number .*"1\.5"/],
      [['ebs', 'start-snapshot', '--volume-size', '1', '--tags', '[bad'], /^ebsd: --tags: not valid JSON: /],
      [['ebs', 'get-snapshot-block', env.dir, '--snapshot-id', 's', '--block-index', '0', '--block-token', 't'], /^ebsd: OUTFILE .*: is a directory, not a file/],
      [['ebs', 'get-snapshot-block', join(env.dir, 'no-dir', 'b'), '--snapshot-id', 's', '--block-index', '0', '--block-token', 't'], /^ebsd: OUTFILE .*: no such directory/],
    ];
    for (const [[args, msg], r] of zip(cases, await pooled(cases, ([args]) => env.cli(args)))) {
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(msg);
      expect(r.stderr, args.join(' ')).not.toMatch(NO_STACK);
    }
    expect((await env.api('ebsd.IamListRoles')).Roles.map((x: { RoleName: string }) => x.RoleName)).not.toContain('edge-role');
  });

  it('the state dir: EBSD_STATE_DIR= is unset, --state-dir= is refused, --state-dir=X is named in the hint, a file is not a daemon', async () => {
    const cli = (args: string[], env2: NodeJS.ProcessEnv = {}) => run(process.execPath, [CLI, ...args], { env: { EBSD_STATE_DIR: env.state, ...env2 } });
    const other = join(env.dir, 'other');
    const [unset, empty, eq, file] = await Promise.all([
      cli(['status'], { EBSD_STATE_DIR: '' }),
      cli(['status', '--state-dir=']),
      cli(['status', `--state-dir=${other}`]),
      cli(['status', '--state-dir', '/etc/passwd']),
    ]);
    expect(unset.stderr).not.toMatch(/ at ebsd\.sock|internal error/);
    if (unset.code === 3) expect(unset.stderr).toContain('/var/lib/ebsd/ebsd.sock');
    expect(empty.code).toBe(2);
    expect(empty.stderr).toMatch(/^ebsd: --state-dir: empty path/);
    expect(eq.code).toBe(3);
    expect(eq.stderr).toContain(`Start it with: ebsd daemon --state-dir ${other} `);
    expect(file.code).toBe(3);
    expect(file.stderr).toMatch(/^ebsd: cannot reach the ebsd daemon at \/etc\/passwd\/ebsd\.sock \(not a directory/);
  });

  it('carries an encryption-context key named __proto__ to the KMS', async () => {
    const key = (await env.api('TrentService.CreateKey', { Description: 'proto' })).KeyMetadata.KeyId as string;
    const pt = join(env.dir, 'pt');
    writeFileSync(pt, 'proto-bound');
    const enc = await env.ok(['kms', 'encrypt', '--key-id', key, '--plaintext', `fileb://${pt}`, '--encryption-context', '__proto__=x,app=y']);
    const ct = join(env.dir, 'proto.ct');
    writeFileSync(ct, Buffer.from(enc.CiphertextBlob, 'base64'));
    const ev = env.auditText().trim().split('\n').map((l) => JSON.parse(l)).filter((e) => e.eventName === 'Encrypt').pop();
    const ctx = ev.requestParameters.encryptionContext;
    expect(Object.hasOwn(ctx, '__proto__')).toBe(true);
    expect(Object.getOwnPropertyDescriptor(ctx, '__proto__')!.value).toBe('x');
    expect(ctx.app).toBe('y');
    // The key is bound into the ciphertext: decrypt needs it, with its value.
    const wrongs = ['app=y', '__proto__=z,app=y'];
    const [dec, ...refused] = await Promise.all([
      env.ok(['kms', 'decrypt', '--ciphertext-blob', `fileb://${ct}`, '--encryption-context', '__proto__=x,app=y']),
      ...wrongs.map((wrong) => env.cli(['kms', 'decrypt', '--ciphertext-blob', `fileb://${ct}`, '--encryption-context', wrong])),
    ]);
    expect(Buffer.from(dec.Plaintext, 'base64').toString()).toBe('proto-bound');
    for (const [wrong, r] of zip(wrongs, refused as CliResult[])) {
      expect(r.code, wrong).toBe(7);
      expect(r.stderr, wrong).toMatch(/^ebsd: InvalidCiphertextException: /);
    }
  });
});

describe('state files and catalog records that are damaged', () => {
  let env: Env;

  beforeAll(() => {
    ensureBuilt();
    env = new Env('edge-state');
  });
  afterAll(() => env?.cleanup());

  it('a catalog record with malformed tags does not break status or ls; a corrupt catalog.json stops the start naming the file', async () => {
    await env.start();
    const a = (await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'a' })).VolumeId as string;
    const b = (await env.api('ebsd.CreateVolume', { Size: '4MiB', Name: 'b' })).VolumeId as string;
    expect(await env.stop()).toBe(0);

    // As a daemon before this change could have written it.
    const file = join(env.state, 'volumes', 'catalog.json');
    const cat = JSON.parse(readFileSync(file, 'utf8'));
    cat.volumes.find((v: { volumeId: string }) => v.volumeId === a).tags = [null, 'x', 7, { Key: 'Name', Value: 'a' }];
    cat.volumes.find((v: { volumeId: string }) => v.volumeId === b).tags = null;
    writeFileSync(file, JSON.stringify(cat));
    await env.start();
    const st = await env.cli(['status', '--output', 'table']);
    expect(st.code).toBe(0);
    const ls = await env.cli(['volume', 'ls', '--output', 'table']);
    expect(ls.code).toBe(0);
    expect(ls.stdout).toMatch(new RegExp(`${a}\\s+a\\s`));
    const vols = (await env.api('ebsd.DescribeVolumes')).Volumes as { VolumeId: string; Tags: unknown }[];
    expect(vols.find((v) => v.VolumeId === a)!.Tags).toEqual([{ Key: 'Name', Value: 'a' }]);
    expect(vols.find((v) => v.VolumeId === b)!.Tags).toEqual([]);
    expect(await env.untilLog('catalog record had malformed tags')).toContain('catalog record had malformed tags');
    expect(await env.stop()).toBe(0);

    writeFileSync(file, '{"formatVersion":1,\n"volumes":[{"volumeId":"vol-1');
    const r = await env.cli(['daemon', '--state-dir', env.state, '--mount', env.mnt]);
    expect(r.code).toBe(9);
    expect(r.stderr).toContain(`ebsd daemon: ${file} is corrupt: not valid JSON (line 2, column 30): Unterminated string in JSON at position 49`);
  });

  it('a corrupt identities.json stops the start naming the file and the line', async () => {
    writeFileSync(join(env.state, 'identities.json'), '{"version":1,\n  oops');
    const r = await env.cli(['daemon', '--state-dir', env.state, '--mount', env.mnt]);
    expect(r.code).toBe(9);
    expect(r.stderr).toMatch(new RegExp(`ebsd daemon: ${join(env.state, 'identities.json')} is corrupt: not valid JSON \\(line 2, column 3\\)`));
  });
});

describe('a full disk under the KMS state', () => {
  let env: Env;
  let mounted = false;

  beforeAll(async () => {
    ensureBuilt();
    env = new Env('edge-enospc');
    // The state dir on a small tmpfs of its own, so filling it touches nothing else.
    mkdirSync(env.state, { recursive: true });
    const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=32m,mode=0711', 'tmpfs', env.state], { encoding: 'utf8' });
    if (m.status !== 0) throw new Error(`mount tmpfs: ${m.stderr}`);
    mounted = true;
    await env.start();
  });
  afterAll(async () => {
    if (!env) return;
    await env.stop().catch(() => {});
    if (mounted) spawnSync('umount', ['-l', env.state]);
    await env.cleanup();
  });

  it('says "no space left on device" and names the file, exit 10', async () => {
    await env.api('TrentService.CreateKey', { Description: 'before' });

    // Fill the filesystem: dd stops at ENOSPC.
    spawnSync('dd', ['if=/dev/zero', `of=${join(env.state, 'fill')}`, 'bs=1M'], { encoding: 'utf8' });
    const r = await env.cli(['kms', 'create-key', '--description', 'after']);
    expect(r.code).toBe(10);
    expect(r.stderr).toMatch(/^ebsd: KMSInternalException: An internal error occurred: no space left on device \(ENOSPC\) writing (\/\S+\/kms\/\S+|the audit log kms\/audit\/events\.ndjson)\n$/);
  });
});
