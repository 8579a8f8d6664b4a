import type { Argv } from 'yargs';
import { callDaemon, socketPathFor } from './client.js';
import { EXIT } from './exit-codes.js';
import { DRY_RUN_OPTION, UsageError, dryRunMember, refuseEmpty, tagArgs, wholeNumber } from './kms-args.js';
import { snapshotCopyCommand } from './snapshot-copy-command.js';
import { applyQuery, defaultFormat, print, printableCell, table, type OutputFormat } from './output.js';

/**
 * `ebsd snapshot create|ls|describe|delete` (EC2 CreateSnapshot,
 * DescribeSnapshots, DeleteSnapshot). `create --wait` follows the snapshot
 * to its end: a progress bar on a terminal, a line per change otherwise;
 * exit 10 when the snapshot ends `error`.
 */

type R = Record<string, unknown>;
interface Globals {
  stateDir: string;
  output?: OutputFormat;
  query?: string;
}

const call = (g: Globals, target: string, body: R = {}): Promise<R> => callDaemon(socketPathFor(g.stateDir), target, body);
const fmt = (g: Globals): OutputFormat => g.output ?? defaultFormat();
function show(g: Globals, v: unknown, tableFn?: () => string): void {
  print(applyQuery(v, g.query), fmt(g), g.query ? undefined : tableFn);
}

const columns: Parameters<typeof table>[1] = [
  ['SNAPSHOT ID', (r) => r.SnapshotId],
  ['VOLUME ID', (r) => r.VolumeId],
  ['STATE', (r) => r.State],
  ['PROGRESS', (r) => r.Progress],
  ['SIZE (GiB)', (r) => r.VolumeSize],
  // Absent on a snapshot whose manifest is refused (State error): nothing of it is known.
  ['ENCRYPTED', (r) => (r.Encrypted === undefined ? undefined : r.Encrypted === false ? 'NO' : 'yes')],
  ['STARTED', (r) => r.StartTime],
  ['DESCRIPTION', (r) => r.Description],
];

/** `Key=Value` pairs separated by commas, as the AWS CLI's shorthand; values may not hold commas. */
function shorthandPairs(text: string, what: string): [string, string][] {
  return text.split(',').map((p) => {
    const eq = p.indexOf('=');
    if (eq <= 0) throw new UsageError(`${what}: expected Key=Value, got "${p}"`);
    return [p.slice(0, eq).trim(), p.slice(eq + 1).trim()];
  });
}

/**
 * --tag-specifications as JSON (`[{"ResourceType":"snapshot","Tags":[{"Key":"k","Value":"v"}]}]`)
 * or the AWS CLI shorthand `ResourceType=snapshot,Tags=[{Key=k,Value=v},{Key=k2,Value=v2}]`.
 */
export function parseTagSpecifications(text: string): R[] {
  const t = text.trim();
  if (t.startsWith('[') || t.startsWith('{')) {
    let v: unknown;
    try {
      v = JSON.parse(t);
    } catch (e) {
      throw new UsageError(`--tag-specifications: not valid JSON: ${(e as Error).message}`);
    }
    return (Array.isArray(v) ? v : [v]) as R[];
  }
  const m = /^ResourceType=([^,]+),Tags=\[(.*)\]$/.exec(t);
  if (!m) throw new UsageError('--tag-specifications: expected ResourceType=snapshot,Tags=[{Key=k,Value=v},...] or JSON');
  const tags = [...m[2]!.matchAll(/\{([^}]*)\}/g)].map((x) => {
    const o = Object.fromEntries(shorthandPairs(x[1]!, '--tag-specifications'));
    if (o.Key === undefined) throw new UsageError(`--tag-specifications: a tag without Key: {${x[1]}}`);
    return { Key: o.Key, Value: o.Value ?? '' };
  });
  return [{ ResourceType: m[1], Tags: tags }];
}

/** --filters as JSON or `Name=status,Values=completed,pending` (repeatable). */
export function parseFilters(items: string[]): R[] {
  return items.flatMap((text) => {
    const t = text.trim();
    if (t.startsWith('[') || t.startsWith('{')) {
      try {
        const v = JSON.parse(t) as unknown;
        return (Array.isArray(v) ? v : [v]) as R[];
      } catch (e) {
        throw new UsageError(`--filters: not valid JSON: ${(e as Error).message}`);
      }
    }
    const m = /^Name=([^,]+),Values=(.*)$/.exec(t);
    if (!m) throw new UsageError(`--filters: expected Name=NAME,Values=V1,V2 or JSON, got "${text}"`);
    return [{ Name: m[1], Values: m[2]!.split(',') }];
  });
}

/**
 * An EC2 Describe call's listing members from its CLI options (`--filters`, `--max-results`,
 * `--next-token`, `--dry-run`), each only when given: DescribeSnapshots, DescribeVolumesModifications.
 */
export function describeListing(a: { filters?: string[]; maxResults?: number; nextToken?: string; dryRun?: boolean }): R {
  const filters = parseFilters(a.filters ?? []);
  return {
    ...(filters.length ? { Filters: filters } : {}),
    ...(a.maxResults !== undefined ? { MaxResults: a.maxResults } : {}),
    ...(a.nextToken !== undefined ? { NextToken: a.nextToken } : {}),
    ...dryRunMember(a),
  };
}

/** A bar for a terminal: `[##########..........]  50%`. */
export function progressBar(percent: number, width = 30): string {
  const p = Math.max(0, Math.min(100, percent));
  const full = Math.round((p / 100) * width);
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${String(p).padStart(3)}%`;
}

/** Polls DescribeSnapshots until the snapshot leaves `pending`; returns its last description. */
async function waitFor(g: Globals, snapshotId: string, pollMs: number): Promise<R> {
  const tty = process.stderr.isTTY === true;
  let last = '';
  for (;;) {
    const res = await call(g, 'ebsd.DescribeSnapshots', { SnapshotIds: [snapshotId] });
    const s = ((res.Snapshots as R[]) ?? [])[0] ?? {};
    const pct = Number.parseInt(String(s.Progress ?? '0'), 10) || 0;
    const line = `${snapshotId} ${String(s.State)} ${tty ? progressBar(pct) : `${pct}%`}`;
    if (tty) process.stderr.write(`\r${line}`);
    else if (line !== last) process.stderr.write(`${line}\n`);
    last = line;
    if (s.State !== 'pending') {
      if (tty) process.stderr.write('\n');
      return s;
    }
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

export function snapshotCommands(y: Argv, setExitCode: (code: number) => void): Argv {
  return y.command('snapshot', 'Create, list, describe and delete snapshots of volumes', (v) =>
    v
      .command(
        'create <volume-id>',
        'Snapshot a volume (EC2 CreateSnapshot): point in time, incremental; prints the snapshot id',
        (b) =>
          b
            .positional('volume-id', { type: 'string', demandOption: true, describe: 'The ID of the volume (vol-…)' })
            .option('description', { type: 'string', describe: 'up to 255 characters' })
            .option('tag-specifications', { type: 'string', describe: 'ResourceType=snapshot,Tags=[{Key=k,Value=v}] or JSON' })
            .option('tag', { type: 'array', string: true, describe: 'tags, Key=Value (shortcut for --tag-specifications)' })
            .option('wait', { type: 'boolean', default: false, describe: 'wait until completed (progress on stderr); exit 10 if it ends in error' })
            .option('poll-interval', { type: 'string', coerce: wholeNumber('--poll-interval'), default: 500, hidden: true })
            .option('dry-run', DRY_RUN_OPTION),
        async (a) => {
          const g = a as unknown as Globals;
          const specs = a.tagSpecifications ? parseTagSpecifications(a.tagSpecifications) : [];
          const tags = tagArgs(a.tag);
          if (tags.length) specs.push({ ResourceType: 'snapshot', Tags: tags });
          let res = await call(g, 'ebsd.CreateSnapshot', {
            VolumeId: a.volumeId,
            ...(a.description !== undefined ? { Description: a.description } : {}),
            ...(specs.length ? { TagSpecifications: specs } : {}),
            ...dryRunMember(a),
          });
          if (a.wait) {
            res = await waitFor(g, String(res.SnapshotId), Math.max(50, a.pollInterval));
            if (res.State === 'error') {
              // The answer still goes to stdout (it names the snapshot); stderr says why the exit code is not 0.
              process.stderr.write(`ebsd: ${String(res.SnapshotId)} ended in state 'error'${res.StateMessage ? `: ${printableCell(String(res.StateMessage))}` : ''}\n`);
              setExitCode(EXIT.SERVICE);
            }
          }
          if (fmt(g) === 'text' && !g.query) {
            process.stdout.write(`${res.SnapshotId}\n`);
            return;
          }
          show(g, res, () => [`${res.SnapshotId}`, '', table([res], columns), ...(res.StateMessage ? ['', String(res.StateMessage)] : [])].join('\n'));
        },
      )
      .command(
        ['ls', 'list'],
        'List snapshots (EC2 DescribeSnapshots)',
        (b) =>
          b
            .option('volume-id', { type: 'string', describe: 'filter: the source volume' })
            .option('state', { type: 'string', describe: 'filter: pending | completed | error' })
            .option('dry-run', DRY_RUN_OPTION),
        async (a) => {
          const g = a as unknown as Globals;
          refuseEmpty(a, 'volume-id', 'state');
          const Filters: R[] = [];
          if (a.volumeId !== undefined) Filters.push({ Name: 'volume-id', Values: [a.volumeId] });
          if (a.state !== undefined) Filters.push({ Name: 'status', Values: [a.state] });
          const res = await call(g, 'ebsd.DescribeSnapshots', { ...(Filters.length ? { Filters } : {}), ...dryRunMember(a) });
          show(g, res, () => table(res.Snapshots as R[], columns));
        },
      )
      .command(
        'describe [snapshot-ids..]',
        'Describe snapshots (EC2 DescribeSnapshots)',
        (b) =>
          b
            .positional('snapshot-ids', { type: 'string', array: true, describe: 'The snapshot IDs (default: every snapshot)' })
            .option('filters', { type: 'array', string: true, describe: 'Name=status,Values=completed or JSON; repeatable' })
            .option('owner-ids', { type: 'array', string: true, describe: 'account ids or self' })
            .option('max-results', { type: 'string', coerce: wholeNumber('--max-results'), describe: 'at least 5 (over 1000 returns 1000)' })
            .option('next-token', { type: 'string', describe: 'The token returned by a previous paginated request' })
            .option('dry-run', DRY_RUN_OPTION),
        async (a) => {
          const g = a as unknown as Globals;
          const res = await call(g, 'ebsd.DescribeSnapshots', {
            ...(a.snapshotIds?.length ? { SnapshotIds: a.snapshotIds } : {}),
            ...(a.ownerIds?.length ? { OwnerIds: a.ownerIds } : {}),
            ...describeListing(a),
          });
          show(g, res);
        },
      )
      .command('delete <snapshot-id>', 'Delete a snapshot (EC2 DeleteSnapshot); frees the blocks no other snapshot references', (b) => b.positional('snapshot-id', { type: 'string', demandOption: true, describe: 'The ID of the snapshot (snap-…)' }).option('dry-run', DRY_RUN_OPTION), async (a) => {
        const g = a as unknown as Globals;
        await call(g, 'ebsd.DeleteSnapshot', { SnapshotId: a.snapshotId, ...dryRunMember(a) });
        if (fmt(g) === 'table') process.stdout.write(`deleted ${a.snapshotId}\n`);
        else show(g, {});
      })
      .command(snapshotCopyCommand)
      .command(
        'sign-manifests',
        'Sign the store\'s snapshot manifests that have no MAC, after starting the daemon with --snapshot-manifest-key (account root only). Without --confirm a dry run: lists them and prints the plan digest; signing trusts whatever they hold, so review the list',
        (b) => b.option('confirm', { type: 'string', requiresArg: true, describe: 'PLAN_DIGEST printed by the dry run: sign exactly the manifests it listed (refused if any changed)' }),
        async (a) => {
          const g = a as unknown as Globals;
          if (a.confirm !== undefined && !/^[0-9a-f]{64}$/.test(a.confirm)) throw new UsageError(`--confirm ${JSON.stringify(a.confirm.slice(0, 80))}: not a plan digest (64 lower-case hex digits, as the dry run prints)`);
          const res = await call(g, 'ebsd.SignManifests', a.confirm !== undefined ? { ConfirmPlanDigest: a.confirm } : {});
          const refused = (res.Refused as { SnapshotId: string; Message: string }[] | undefined) ?? [];
          if (fmt(g) === 'table') {
            if (res.DryRun) {
              const unsigned = res.Unsigned as R[];
              process.stdout.write(`dry run: ${unsigned.length} manifest(s) without a MAC; signing them trusts what they hold now, whoever wrote it (docs/architecture.md §13.5)\n`);
              if (unsigned.length) process.stdout.write(`${table(unsigned, (['SnapshotId', 'VolumeId', 'StartTime', 'BlockCount', 'Digest'] as const).map((k): [string, (r: R) => unknown] => [k, (r) => r[k]]))}\n`);
              process.stdout.write(`already signed ${String(res.AlreadySigned)}, refused ${refused.length}\n`);
              for (const r of refused) process.stdout.write(`refused ${r.SnapshotId}: ${r.Message}\n`);
              process.stdout.write(`plan digest ${String(res.PlanDigest)}\nto sign exactly these: ebsd snapshot sign-manifests --confirm ${String(res.PlanDigest)}\n`);
            } else {
              process.stdout.write(`signed ${(res.Signed as string[]).length}, already signed ${String(res.AlreadySigned)}, refused ${refused.length}\n`);
              for (const r of refused) process.stdout.write(`refused ${r.SnapshotId}: ${r.Message}\n`);
            }
          } else {
            show(g, res);
          }
          // A manifest whose MAC does not verify stays refused (or one changed since the survey was not signed): say so in the exit status.
          if (refused.length) setExitCode(EXIT.CONFLICT);
        },
      )
      .demandCommand(1, 'name a snapshot subcommand: create, ls, describe, delete, copy, sign-manifests'),
  );
}
