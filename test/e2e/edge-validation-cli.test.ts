import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, ensureBuilt, pooled, run, zip, type CliResult } from './helpers.js';

/**
 * The command line's own checks, which need no daemon (split from edge-validation.test.ts, whose
 * tests go through a running one, so the two files run side by side): every command's --help, usage
 * errors of the CLI, and `ebsd daemon`'s flag checks before it touches the state dir or the mount.
 * Each CLI call is a process of its own; independent ones run a few at a time (pooled).
 */

/** One CLI call, no state dir: none of these reaches a daemon. */
const cli = (args: string[]): Promise<CliResult> => run(process.execPath, [CLI, ...args], { timeoutMs: 30_000 });

/** The commands a --help lists (`  ebsd volume create ...`), as words. */
function subcommands(help: string): string[][] {
  const section = help.split('\n\n').find((p) => p.startsWith('Commands:')) ?? '';
  return [...section.matchAll(/^ {2}ebsd ((?:[a-z][\w-]* ?)+)/gm)].map((m) => m[1]!.trim().split(' '));
}

/**
 * The options and positionals of a --help with no description: the text after the name, once the
 * trailing `[string] [required] [default: []]` groups are taken off, is empty. An entry starts
 * with `  -` or `  name`; yargs puts what does not fit on following lines.
 */
function undescribed(help: string): string[] {
  const out: string[] = [];
  for (const section of help.split('\n\n').filter((p) => /^(Options|Positionals):/.test(p))) {
    const entries: string[] = [];
    for (const line of section.split('\n').slice(1)) {
      if (/^ {2}[-a-z]/.test(line)) entries.push(line);
      else if (entries.length) entries[entries.length - 1] += ` ${line.trim()}`;
    }
    for (const e of entries) {
      const m = /^ {2}((?:-{1,2}[\w-]+|[a-z][\w-]*)(?:, -{1,2}[\w-]+)*)(.*)$/.exec(e)!;
      let rest = m[2]!.trim();
      for (let prev = ''; prev !== rest;) {
        prev = rest;
        rest = rest.replace(/\s*\[(?:[^[\]]|\[[^\]]*\])*\]$/, '').trim();
      }
      if (!rest) out.push(m[1]!);
    }
  }
  return out;
}

describe('the command line by itself', () => {
  beforeAll(() => ensureBuilt());

  it('ebsd kms <operation> --help lists the flags that operation takes, the required ones marked; every command\'s --help describes every option and positional', async () => {
    const enc = await cli(['kms', 'encrypt', '--help']);
    expect(enc.code).toBe(0);
    expect(enc.stdout.replace(/\s+/g, ' ')).toContain('encrypt takes: --key-id (required), --plaintext (required), --encryption-context, --grant-tokens, --encryption-algorithm, --dry-run');
    expect((await cli(['kms', 'create-key', '--help'])).stdout.replace(/\s+/g, ' ')).toMatch(/create-key takes: --policy, --description, .*--alias/);
    expect((await cli(['kms', '--help'])).stdout).not.toMatch(/ takes: /);
    // Options that had no description at all.
    expect((await cli(['volume', 'modify', '--help'])).stdout).toMatch(/--size\s+the new size, larger than the current one/);
    expect((await cli(['audit', 'tail', '--help'])).stdout).toMatch(/-n, --limit\s+how many of the latest events/);

    // Every command's --help, walked from `ebsd --help`: no option or positional without a description.
    const bare: string[] = [];
    let commands = 0;
    const seen = new Set<string>();
    let level: string[][] = [[]];
    while (level.length) {
      const helps = await pooled(level, (words) => run(process.execPath, [CLI, ...words, '--help'], { timeoutMs: 30_000 }));
      const next: string[][] = [];
      helps.forEach((h, i) => {
        const words = level[i]!;
        expect(h.code, `ebsd ${words.join(' ')} --help: ${h.stderr}`).toBe(0);
        commands++;
        for (const name of undescribed(h.stdout)) bare.push(`ebsd ${words.join(' ')} ${name}`);
        for (const sub of subcommands(h.stdout)) {
          if (sub.length > words.length && !seen.has(sub.join(' '))) {
            seen.add(sub.join(' '));
            next.push(sub);
          }
        }
      });
      level = next;
    }
    expect(commands).toBeGreaterThan(40); // the walk reached the subcommands (52 when written)
    expect(bare, 'options and positionals whose --help line has no description').toEqual([]);
  }, 120_000);

  it('an unknown subcommand is a usage error, not a silent exit 0', async () => {
    const cases = [['snapshot', 'restore', 'x'], ['iam', 'bogus'], ['ebs', 'bogus-op'], ['audit', 'bogus'], ['volume', 'bogus']];
    for (const [args, r] of zip(cases, await pooled(cases, cli))) {
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(/^ebsd: Unknown commands?: (restore, x|bogus|bogus-op) \(see ebsd --help\)/);
    }
  });

  it('ebs put-snapshot-block: a --block-data that cannot be read is named as given, path or fileb://, before any daemon is asked', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ebsd-e2e-block-data-'));
    try {
      const missing = join(dir, 'missing.bin');
      const put = (data: string): string[] => ['ebs', 'put-snapshot-block', '--state-dir', join(dir, 'no-daemon'), '--snapshot-id', 'snap-0123456789abcdef0',
        '--block-index', '0', '--block-data', data, '--data-length', '524288', '--checksum', 'AAAA', '--checksum-algorithm', 'SHA256'];
      const cases: [string, string][] = [
        [missing, `--block-data ${missing}: no such file`],
        [`fileb://${missing}`, `--block-data fileb://${missing}: no such file`],
        [`file://${dir}`, `--block-data file://${dir}: is a directory, not a file`],
      ];
      for (const [[data, message], r] of zip(cases, await pooled(cases.map(([d]) => put(d)), cli))) {
        expect(r.code, data).toBe(2);
        expect(r.stderr, data).toBe(`ebsd: ${message} (see ebsd --help)\n`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('ebsd daemon: size and duration flags', () => {
  let dir: string;
  beforeAll(() => {
    ensureBuilt();
    dir = mkdtempSync(join(tmpdir(), 'ebsd-e2e-daemon-flags-'));
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // A fraction of the unit a flag is kept in (a byte, a millisecond) used to round: `1.5` became a
  // 1-byte budget (0 once rounded to 4 KiB slots, so every capture spilled) and `0.0001s` became 0,
  // which --key-cache-ttl reads as "until detach" and --kms-probe-interval as "never".
  const refused: [string, string, RegExp][] = [
    ['--snapshot-cow-memory', '1.5', /not a whole number of bytes \(a number without a unit is bytes\)/],
    ['--snapshot-cow-memory', '1.0001KiB', /not a whole number of bytes/],
    ['--snapshot-cow-memory', '0', /too small: at least 4096 bytes/],
    ['--snapshot-cow-memory', '4095', /too small: at least 4096 bytes/],
    ['--snapshot-cow-memory', '1000TiB', /too large: at most \d+ bytes \(this host's memory\)/],
    ['--snapshot-cow-memory', '99999999999999999999TiB', /too large/],
    ['--snapshot-cow-memory', 'NaN', /"NaN" is not a size/],
    ['--snapshot-cow-memory', '-1', /"-1" is not a size/],
    ['--key-cache-ttl', '0.0001s', /not a whole number of milliseconds/],
    ['--key-cache-ttl', '-5', /"-5" is not a duration/],
    ['--key-cache-max-stale', '1.5ms', /not a whole number of milliseconds/],
    ['--key-cache-max-stale', 'NaN', /"NaN" is not a duration/],
    ['--kms-probe-interval', '0.5ms', /not a whole number of milliseconds/],
    ['--kms-request-timeout', '50ms', /too short: at least 100 ms/],
    ['--kms-request-timeout', '11m', /too long: at most/],
    ['--refusal-window', '0.5s', /too short: at least 1s/],
    ['--refusal-window', '1e3', /"1e3" is not a duration/],
    ['--volume-modification-window', '0.0000001h', /not a whole number of milliseconds/],
    ['--volume-modification-window', '99999999999999999999h', /too long/],
    ['--stop-timeout', '0', /too short: at least 1 ms/],
    ['--stop-timeout', '0.1ms', /not a whole number of milliseconds/],
    ['--stop-timeout', '597h', /too long: at most 2147483647 ms/],
    ['--metrics-listen', '127.0.0.1:99999', /port 99999 is out of range \(0 to 65535, at most 5 digits\)/],
  ];

  it('a fraction of a byte or millisecond, 0 where it means nothing, a negative, NaN or huge value: exit 2 naming the flag and the value, nothing touched', async () => {
    const state = join(dir, 'state');
    const mnt = join(dir, 'mnt');
    // `--flag=value`: a value starting with `-` is the flag's, not an option of its own.
    const answers = await pooled(refused, ([flag, value]) => run(process.execPath, [CLI, 'daemon', '--state-dir', state, '--mount', mnt, `${flag}=${value}`], { timeoutMs: 30_000 }));
    for (const [[flag, value, why], r] of zip(refused, answers)) {
      expect(r.code, `${flag} ${value}: ${r.stderr}`).toBe(2);
      expect(r.stderr, `${flag} ${value}`).toContain(flag);
      expect(r.stderr, `${flag} ${value}`).toContain(value);
      expect(r.stderr, `${flag} ${value}`).toMatch(why);
      expect(existsSync(state), `${flag} ${value}`).toBe(false);
      expect(existsSync(mnt), `${flag} ${value}`).toBe(false);
    }
  }, 120_000);
});

describe('ebsd daemon: a bad flag value is a usage error, a refused configuration is not', () => {
  let dir: string;
  beforeAll(() => {
    ensureBuilt();
    dir = mkdtempSync(join(tmpdir(), 'ebsd-e2e-daemon-usage-'));
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // --metrics-listen and --region were checked by the daemon after it had prepared the state dir
  // (exit 9, "could not start"), while other bad flag values exited 2 (src/cli/exit-codes.ts).
  const usage: [string[], string][] = [
    [['--metrics-listen', 'nope'], '--metrics-listen must be HOST:PORT with an IP address (127.0.0.1:9464, [::1]:9464), got "nope"'],
    [['--metrics-listen', '127.0.0.1:70000'], '--metrics-listen "127.0.0.1:70000": port 70000 is out of range (0 to 65535'],
    // Six digits and more were told only "must be HOST:PORT with an IP address".
    [['--metrics-listen', '127.0.0.1:123456'], '--metrics-listen "127.0.0.1:123456": port 123456 is out of range (0 to 65535'],
    [['--metrics-listen', '[::1]:99999999999999999999'], '--metrics-listen "[::1]:99999999999999999999": port 99999999999999999999 is out of range (0 to 65535'],
    [['--kms-listen', '127.0.0.1:123456'], '--kms-listen "127.0.0.1:123456": port 123456 is out of range (0 to 65535'],
    // Any run of digits was read as a number: twelve of them, leading zeros, listened on port 80.
    [['--metrics-listen', '127.0.0.1:000000000080'], '--metrics-listen "127.0.0.1:000000000080": port 000000000080 is out of range (0 to 65535, at most 5 digits)'],
    [['--kms-listen', '127.0.0.1:000000000080'], '--kms-listen "127.0.0.1:000000000080": port 000000000080 is out of range (0 to 65535, at most 5 digits)'],
    [['--region', 'Mars'], '--region "Mars" is not a region name'],
    [['--region', 'us-east-1 '], '--region "us-east-1 " is not a region name'],
    [['--kms-endpoint', 'https://x', '--kms-region', 'moon'], '--kms-region "moon" is not a region name'],
    [['--kms-endpoint', 'not a url'], '--kms-endpoint "not a url" is not a URL'],
    [['--kms-endpoint', 'ftp://10.0.0.1'], '--kms-endpoint "ftp://10.0.0.1": only http(s) URLs'],
    [['--kms-endpoint', 'https://x', '--host-principal-arn', 'role/host-a'], '--host-principal-arn "role/host-a" is not an IAM role or user ARN'],
    [['--snapshot-store', 'ftp://host/snaps'], '--snapshot-store "ftp://host/snaps" is not a snapshot store'],
    [['--kms-listen', '127.0.0.1:0', '--kms-front-threads', '2'], '--kms-front-threads must be 0 or 1, got 2'],
    [['--kms-listen', 'nohost'], '--kms-listen "nohost" is not HOST:PORT'],
    [['--kms-only'], '--kms-only needs --kms-listen'],
    [['--kms-region', 'eu-west-1'], '--kms-region needs --kms-endpoint'],
    [['--kms-request-timeout', '1s'], '--kms-request-timeout needs --kms-endpoint'],
    [['--tls-cert', '/nonexistent/c.pem', '--tls-key', '/nonexistent/k.pem'], '--tls-cert needs --kms-listen'],
  ];

  it('exit 2 naming the flag and the value, before the state dir or the mount is touched', async () => {
    const state = join(dir, 'state');
    const mnt = join(dir, 'mnt');
    const answers = await pooled(usage, ([flags]) => run(process.execPath, [CLI, 'daemon', '--state-dir', state, '--mount', mnt, ...flags], { timeoutMs: 30_000 }));
    for (const [[flags, message], r] of zip(usage, answers)) {
      expect(r.code, `${flags.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr, flags.join(' ')).toContain(message);
      expect(existsSync(state), flags.join(' ')).toBe(false);
      expect(existsSync(mnt), flags.join(' ')).toBe(false);
    }
  }, 120_000);

  it('a well-formed command line the daemon refuses to run with stays exit 9 (refused configuration), and does not echo a password', async () => {
    const state = join(dir, 'state9');
    const [plain, secret] = await Promise.all([
      run(process.execPath, [CLI, 'daemon', '--state-dir', state, '--kms-only', '--kms-listen', '0.0.0.0:0'], { timeoutMs: 30_000 }),
      run(process.execPath, [CLI, 'daemon', '--state-dir', state, '--mount', join(dir, 'mnt9'), '--kms-endpoint', 'https://u:hunter2@10.0.0.1:99999'], { timeoutMs: 30_000 }),
    ]);
    expect(plain.code, plain.stderr).toBe(9);
    expect(plain.stderr).toMatch(/plain HTTP is allowed only on a loopback address/);
    expect(secret.code, secret.stderr).toBe(2); // port 99999: not a URL, said without the password
    expect(secret.stderr).toContain('--kms-endpoint "https://10.0.0.1:99999" is not a URL');
    expect(secret.stderr).not.toContain('hunter2');
    expect(existsSync(state)).toBe(false);
  }, 60_000);
});
