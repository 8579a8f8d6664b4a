import { statSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Argv } from 'yargs';
import { callDaemon, socketPathFor } from './client.js';
import { UsageError, readLocalFile, wholeNumber } from './kms-args.js';
import { applyQuery, defaultFormat, print, type OutputFormat } from './output.js';

/**
 * `ebsd ebs <operation>`: the EBS direct APIs in the AWS CLI's words
 * (`aws ebs list-changed-blocks --first-snapshot-id A --second-snapshot-id B`).
 * Output is the operation's response as JSON; get-snapshot-block writes the
 * block to OUTFILE and prints the rest, as `aws ebs get-snapshot-block` does.
 * The list operations follow NextToken to the end unless --no-paginate,
 * as the AWS CLI paginates them.
 */
interface Globals { stateDir: string; output?: OutputFormat; query?: string }
type R = Record<string, unknown>;

async function call(g: Globals, op: string, body: R): Promise<R> {
  return callDaemon(socketPathFor(g.stateDir), `ebs.${op}`, body);
}

function show(g: Globals, v: unknown): void {
  print(applyQuery(v, g.query), g.output ?? defaultFormat());
}

/** `Key=k,Value=v` (AWS CLI shorthand) or a JSON list. */
function parseTags(values: string[]): { Key: string; Value: string }[] {
  return values.flatMap((v) => {
    if (v.trim().startsWith('[')) {
      let list: unknown;
      try {
        list = JSON.parse(v);
      } catch (e) {
        throw new UsageError(`--tags: not valid JSON: ${(e as Error).message}`);
      }
      if (!Array.isArray(list)) throw new UsageError('--tags: a JSON value must be a list of {"Key": k, "Value": v}');
      return list as { Key: string; Value: string }[];
    }
    const m = /^Key=([^,]*),Value=(.*)$/.exec(v);
    if (!m) throw new UsageError(`--tags: expected Key=k,Value=v, got "${v}"`);
    return [{ Key: m[1]!, Value: m[2]! }];
  });
}

/** OUTFILE must be writable as a file: checked before the block is fetched, a usage error naming the path. */
function checkOutfile(path: string): void {
  if (path === '') throw new UsageError('OUTFILE: no path given');
  let st;
  try {
    st = statSync(path, { throwIfNoEntry: false });
  } catch (e) {
    throw new UsageError(`OUTFILE ${path}: cannot be written (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (st?.isDirectory()) throw new UsageError(`OUTFILE ${path}: is a directory, not a file`);
  if (st) return;
  const dir = statSync(dirname(resolve(path)), { throwIfNoEntry: false });
  if (!dir) throw new UsageError(`OUTFILE ${path}: no such directory: ${dirname(resolve(path))}`);
  if (!dir.isDirectory()) throw new UsageError(`OUTFILE ${path}: ${dirname(resolve(path))} is not a directory`);
}

/** Every page of a list operation, concatenated as the AWS CLI does (the other members from the first page). */
async function paginate(g: Globals, op: string, body: R, key: string, all: boolean): Promise<R> {
  let res = await call(g, op, body);
  if (!all) return res;
  const items = [...((res[key] as unknown[]) ?? [])];
  const first = res;
  while (typeof res.NextToken === 'string') {
    res = await call(g, op, { ...body, NextToken: res.NextToken });
    items.push(...((res[key] as unknown[]) ?? []));
  }
  const { NextToken: _n, ...rest } = first;
  return { ...rest, [key]: items };
}

const pageOptions = (b: Argv): Argv => b
  .option('max-results', { type: 'string', coerce: wholeNumber('--max-results'), describe: 'blocks per page, at most 10000 (under 100 is taken as 100)' })
  .option('next-token', { type: 'string', describe: 'continue a listing (implies --no-paginate)' })
  .option('starting-block-index', { type: 'string', coerce: wholeNumber('--starting-block-index'), describe: 'list from this block index' })
  .option('paginate', { type: 'boolean', default: true, describe: 'follow NextToken to the end (--no-paginate: one page)' });

function pageMembers(a: R): R {
  return {
    ...(a.maxResults !== undefined ? { MaxResults: a.maxResults } : {}),
    ...(a.nextToken !== undefined ? { NextToken: a.nextToken } : {}),
    ...(a.startingBlockIndex !== undefined ? { StartingBlockIndex: a.startingBlockIndex } : {}),
  };
}

export function ebsCommands(y: Argv): Argv {
  return y.command('ebs', 'EBS direct APIs: read and write snapshots block by block (AWS CLI style)', (e) =>
    e
      .command('list-snapshot-blocks', 'Blocks of a snapshot, with block tokens (ListSnapshotBlocks)', (b) =>
        pageOptions(b).option('snapshot-id', { type: 'string', demandOption: true, describe: 'The ID of the snapshot from which to get block indexes and block tokens' }),
      async (a) => {
        const g = a as unknown as Globals;
        show(g, await paginate(g, 'ListSnapshotBlocks', { SnapshotId: a.snapshotId, ...pageMembers(a) }, 'Blocks', a.paginate !== false && a.nextToken === undefined));
      })
      .command('list-changed-blocks', 'Blocks that differ between two snapshots of one lineage (ListChangedBlocks)', (b) =>
        pageOptions(b)
          .option('first-snapshot-id', { type: 'string', describe: 'The ID of the first snapshot to use for the comparison (omitted: every block written to the second)' })
          .option('second-snapshot-id', { type: 'string', demandOption: true, describe: 'The ID of the second snapshot to use for the comparison' }),
      async (a) => {
        const g = a as unknown as Globals;
        const body = { ...(a.firstSnapshotId !== undefined ? { FirstSnapshotId: a.firstSnapshotId } : {}), SecondSnapshotId: a.secondSnapshotId, ...pageMembers(a) };
        show(g, await paginate(g, 'ListChangedBlocks', body, 'ChangedBlocks', a.paginate !== false && a.nextToken === undefined));
      })
      .command('get-snapshot-block <outfile>', 'Write one block\'s plaintext to OUTFILE; print its checksum (GetSnapshotBlock)', (b) =>
        b
          .positional('outfile', { type: 'string', describe: 'where the 512 KiB block is written' })
          .option('snapshot-id', { type: 'string', demandOption: true, describe: 'The ID of the snapshot containing the block from which to get data' })
          .option('block-index', { type: 'string', coerce: wholeNumber('--block-index'), demandOption: true, describe: 'The block index of the block from which to get data (logical offset / 524288)' })
          .option('block-token', { type: 'string', demandOption: true, describe: 'The block token of the block from which to get data (from list-snapshot-blocks or list-changed-blocks)' }),
      async (a) => {
        const g = a as unknown as Globals;
        checkOutfile(String(a.outfile));
        const res = await call(g, 'GetSnapshotBlock', { SnapshotId: a.snapshotId, BlockIndex: a.blockIndex, BlockToken: a.blockToken });
        const { BlockData, ...rest } = res;
        writeFileSync(String(a.outfile), Buffer.from(String(BlockData), 'base64'), { mode: 0o600 });
        show(g, rest);
      })
      .command('start-snapshot', 'Begin a snapshot to write with put-snapshot-block (StartSnapshot)', (b) =>
        b
          .option('volume-size', { type: 'string', coerce: wholeNumber('--volume-size'), demandOption: true, describe: 'GiB, 1–65536' })
          .option('parent-snapshot-id', { type: 'string', describe: 'The ID of the parent snapshot; omit it for the first snapshot of a volume' })
          .option('description', { type: 'string', describe: 'A description for the snapshot' })
          .option('tags', { type: 'array', string: true, describe: 'Key=k,Value=v ...' })
          .option('client-token', { type: 'string', describe: 'A unique, case-sensitive identifier that you provide to ensure the idempotency of the request' })
          .option('encrypted', { type: 'boolean', describe: 'omitted: encrypted unless the daemon runs with --allow-unencrypted (EBS encryption by default); --no-encrypted (Encrypted false) only there' })
          .option('kms-key-arn', { type: 'string', describe: 'The ARN of the KMS key to be used to encrypt the snapshot (default: the account\'s default key for EBS)' })
          .option('timeout', { type: 'string', coerce: wholeNumber('--timeout'), describe: 'minutes to CompleteSnapshot, 10–4320 (default 60)' }),
      async (a) => {
        const g = a as unknown as Globals;
        show(g, await call(g, 'StartSnapshot', {
          VolumeSize: a.volumeSize,
          ...(a.parentSnapshotId !== undefined ? { ParentSnapshotId: a.parentSnapshotId } : {}),
          ...(a.description !== undefined ? { Description: a.description } : {}),
          ...(a.tags !== undefined ? { Tags: parseTags(a.tags) } : {}),
          ...(a.clientToken !== undefined ? { ClientToken: a.clientToken } : {}),
          ...(a.encrypted !== undefined ? { Encrypted: a.encrypted } : {}),
          ...(a.kmsKeyArn !== undefined ? { KmsKeyArn: a.kmsKeyArn } : {}),
          ...(a.timeout !== undefined ? { Timeout: a.timeout } : {}),
        }));
      })
      .command('put-snapshot-block', 'Write one 512 KiB block to a pending snapshot (PutSnapshotBlock)', (b) =>
        b
          .option('snapshot-id', { type: 'string', demandOption: true, describe: 'The ID of the snapshot' })
          .option('block-index', { type: 'string', coerce: wholeNumber('--block-index'), demandOption: true, describe: 'The block index of the block in which to write the data (logical offset / 524288)' })
          .option('block-data', { type: 'string', demandOption: true, describe: 'file holding the block (path or fileb://path)' })
          .option('data-length', { type: 'string', coerce: wholeNumber('--data-length'), demandOption: true, describe: 'The size of the data to write to the block, in bytes; only 524288 is supported' })
          .option('checksum', { type: 'string', demandOption: true, describe: 'SHA256 of the block, base64' })
          .option('checksum-algorithm', { type: 'string', demandOption: true, choices: ['SHA256'], describe: 'The algorithm used to generate the checksum' })
          .option('progress', { type: 'string', coerce: wholeNumber('--progress'), describe: 'The progress of the write process, as a percentage' }),
      async (a) => {
        const g = a as unknown as Globals;
        // A path or fileb://path; an error names it as given (`--block-data fileb://b5: no such file`).
        const given = String(a.blockData);
        const scheme = /^fileb?:\/\//.exec(given)?.[0] ?? '';
        const data = readLocalFile(given.slice(scheme.length), `--block-data ${scheme}`);
        show(g, await call(g, 'PutSnapshotBlock', {
          SnapshotId: a.snapshotId, BlockIndex: a.blockIndex, BlockData: data.toString('base64'),
          DataLength: a.dataLength, Checksum: a.checksum, ChecksumAlgorithm: a.checksumAlgorithm,
          ...(a.progress !== undefined ? { Progress: a.progress } : {}),
        }));
      })
      .command('complete-snapshot', 'Seal a pending snapshot (CompleteSnapshot)', (b) =>
        b
          .option('snapshot-id', { type: 'string', demandOption: true, describe: 'The ID of the snapshot' })
          .option('changed-blocks-count', { type: 'string', coerce: wholeNumber('--changed-blocks-count'), demandOption: true, describe: 'The number of blocks that were written to the snapshot' })
          .option('checksum', { type: 'string', describe: 'SHA256 over the written blocks\' SHA256 digests in index order, base64' })
          .option('checksum-algorithm', { type: 'string', choices: ['SHA256'], describe: 'The algorithm used to generate the checksum' })
          .option('checksum-aggregation-method', { type: 'string', choices: ['LINEAR'], describe: 'The aggregation method used to generate the checksum' }),
      async (a) => {
        const g = a as unknown as Globals;
        show(g, await call(g, 'CompleteSnapshot', {
          SnapshotId: a.snapshotId, ChangedBlocksCount: a.changedBlocksCount,
          ...(a.checksum !== undefined ? { Checksum: a.checksum } : {}),
          ...(a.checksumAlgorithm !== undefined ? { ChecksumAlgorithm: a.checksumAlgorithm } : {}),
          ...(a.checksumAggregationMethod !== undefined ? { ChecksumAggregationMethod: a.checksumAggregationMethod } : {}),
        }));
      })
      .demandCommand(1, 'name an operation: list-snapshot-blocks, list-changed-blocks, get-snapshot-block, start-snapshot, put-snapshot-block, complete-snapshot'),
  );
}
