import type { CommandModule } from 'yargs';
import { callDaemon, socketPathFor } from './client.js';
import { DRY_RUN_OPTION, dryRunMember, refuseEmpty, tagArgs } from './kms-args.js';
import { applyQuery, defaultFormat, print, type OutputFormat } from './output.js';
import { waitWithProgress } from './wait-progress.js';

type R = Record<string, unknown>;
interface Globals {
  stateDir: string;
  output?: OutputFormat;
  query?: string;
}

/**
 * `ebsd snapshot copy SNAP [--kms-key-id K] [--description D] [--wait]`:
 * EC2 CopySnapshot in this region. Another KMS key re-encrypts every block
 * under a new data key; `--wait` follows the copy to `completed` (progress on
 * stderr) and fails with IncorrectState if it ends `error`.
 */
export const snapshotCopyCommand: CommandModule<object, any> = {
  command: 'copy <snapshot-id>',
  describe: 'Copy a snapshot (EC2 CopySnapshot); another --kms-key-id re-encrypts every block; prints the new snapshot id',
  builder: (b) =>
    b
      .positional('snapshot-id', { type: 'string', demandOption: true, describe: 'The ID of the snapshot to copy (snap-…)' })
      .option('kms-key-id', { type: 'string', describe: 'key id, ARN or alias for the copy (default: the source\'s key, else alias/aws/ebs); for an unencrypted source on a daemon with --allow-unencrypted, only with --encrypted' })
      .option('encrypted', { type: 'boolean', describe: 'encrypt the copy of an unencrypted snapshot; needed only on a daemon with --allow-unencrypted (otherwise such a copy is encrypted anyway: EBS encryption by default)' })
      .option('description', { type: 'string', describe: 'up to 255 characters' })
      .option('source-region', { type: 'string', describe: 'the source snapshot\'s region (default: the daemon\'s)' })
      .option('tag', { type: 'array', string: true, describe: 'tags of the copy, Key=Value' })
      .option('wait', { type: 'boolean', default: false, describe: 'wait until completed (progress on stderr)' })
      .option('dry-run', DRY_RUN_OPTION),
  handler: async (a) => {
    const g = a as unknown as Globals;
    const call = (target: string, body: R = {}): Promise<R> => callDaemon(socketPathFor(g.stateDir), target, body);
    refuseEmpty(a, 'kms-key-id', 'source-region');
    const tags = tagArgs(a.tag as string[] | undefined);
    const region = (a.sourceRegion as string | undefined) ?? (((await call('ebsd.Status')).Daemon as R).Region as string);
    let res = await call('ebsd.CopySnapshot', {
      SourceSnapshotId: a.snapshotId,
      SourceRegion: region,
      ...(a.kmsKeyId !== undefined ? { KmsKeyId: a.kmsKeyId } : {}),
      ...(a.encrypted !== undefined ? { Encrypted: a.encrypted } : {}),
      ...(a.description !== undefined ? { Description: a.description } : {}),
      ...(tags.length ? { TagSpecifications: [{ ResourceType: 'snapshot', Tags: tags }] } : {}),
      ...dryRunMember({ dryRun: a.dryRun }),
    });
    if (a.wait) {
      const id = String(res.SnapshotId);
      await waitWithProgress(async () => {
        res = ((await call('ebsd.DescribeSnapshots', { SnapshotIds: [id] })).Snapshots as R[])[0]!;
        return { state: String(res.State), progress: parseInt(String(res.Progress ?? '0'), 10) || 0, ...(res.StateMessage ? { message: String(res.StateMessage) } : {}) };
      }, { label: `${id} from ${a.snapshotId}`, done: ['completed'], failed: ['error'] });
    }
    const fmt = g.output ?? defaultFormat();
    if (fmt === 'text' && !g.query) {
      process.stdout.write(`${res.SnapshotId}\n`);
      return;
    }
    print(applyQuery(res, g.query), fmt);
  },
};
