import type { Caller } from '../kms/types.js';
import type { PolicyEvaluator } from '../kms/authz/index.js';
import type { SnapshotManifest } from '../snapshot/types.js';
import { toEc2Snapshot } from '../snapshot/snapshot-view.js';
import type { UnauthorizedOperation, Ec2Authorizer } from './ec2-authz.js';
import { judgeRemoteKeyUse, type RemoteKeyNames, type ResolvedKeyName } from './remote-key-names.js';

/**
 * What a volume from a snapshot, or a snapshot copy, needs of the caller on
 * the source snapshot (docs/architecture.md §14.4): EC2 authorizes
 * `ec2:CreateVolume` / `ec2:CopySnapshot` on the snapshot's ARN with its
 * tags and condition keys, besides the request's own resource. With a remote
 * KMS the restore's KMS calls are signed as this host, so the local identity
 * policy also decides the caller's use of the snapshot's key: `kms:Decrypt`
 * on it (another target key) or `kms:ReEncryptFrom` + `kms:ReEncryptTo` (the
 * same key), each with `kms:ViaService`, as for the target key (§5.5). Keys are
 * judged on their ARNs, a target named by alias or id resolved first
 * (remote-key-names.ts), as the restore itself resolves it to tell the same
 * key from another (src/snapshot/restore.ts, copy.ts).
 *
 * The target key's ARN judged here is the one the operation must use: the
 * daemon passes it as the request's KmsKeyId, so an alias moved between this
 * check and the restore's own resolution cannot send the data to a key the
 * check never saw (docs/architecture.md §5.5).
 */
export interface SourceSnapshotAuthzOptions {
  ec2: Ec2Authorizer;
  evaluator: PolicyEvaluator;
  region: string;
  /** Present when the KMS is remote (`--kms-endpoint`): its calls cannot judge the local caller, so key names are resolved here and judged locally. */
  remoteKeys?: RemoteKeyNames;
  /** The snapshot's manifest, undefined when it does not exist (or cannot be read). */
  manifest: (snapshotId: string) => Promise<SnapshotManifest | undefined>;
}

export interface SourceSnapshotRequest {
  op: 'CreateVolume' | 'CopySnapshot';
  snapshotId: string;
  /** The target key as the request names it (id, ARN or alias); undefined: the snapshot's key (or the default key for a copy to a plaintext source). */
  kmsKeyId?: string;
  /** A restore asked for a plaintext volume (Cipher none / Encrypted false). */
  plain?: boolean;
}

/** The outcome of a check: a refusal, or the target key's ARN the check judged (when it resolved a name). */
export interface SourceSnapshotDecision {
  refusal?: UnauthorizedOperation;
  /** Set when a named (or default) target key was resolved and judged: the operation's KmsKeyId must be this ARN. */
  targetKeyArn?: string;
  /** The snapshot's VolumeSize (GiB), when it exists: a restore without Size makes a volume of this size. */
  volumeSize?: number;
}

export class SourceSnapshotAuthz {
  constructor(private readonly o: SourceSnapshotAuthzOptions) {}

  /** The refusal to raise, if any, and the target key's ARN judged. A snapshot that does not exist is judged on its id alone; the operation then says NotFound. */
  async check(req: SourceSnapshotRequest, caller: Caller): Promise<SourceSnapshotDecision> {
    let m: SnapshotManifest | undefined;
    try {
      m = await this.o.manifest(req.snapshotId);
    } catch {
      m = undefined; // unreadable: judged on its id; the operation reports what is wrong with it
    }
    const action = req.op === 'CreateVolume' ? 'ec2:CreateVolume' : 'ec2:CopySnapshot';
    const onSnapshot = this.o.ec2.checkSourceSnapshot(action, m ? toEc2Snapshot(m) : req.snapshotId, caller);
    if (onSnapshot) return { refusal: onSnapshot };
    if (!m) return {};
    const keys = await this.keyRefusal(req, m, caller);
    return keys.refusal ? keys : { ...keys, volumeSize: m.volumeSize };
  }

  /** With a remote KMS only: the caller's identity policy must allow what the host will do with the snapshot's key for it. */
  private async keyRefusal(req: SourceSnapshotRequest, m: SnapshotManifest, caller: Caller): Promise<SourceSnapshotDecision> {
    const keys = this.o.remoteKeys;
    if (!keys || caller.type === 'Root') return {};
    const decide = (action: string, name: string, key: ResolvedKeyName, sameKey?: boolean): UnauthorizedOperation | undefined =>
      judgeRemoteKeyUse(this.o.evaluator, this.o.region, action, name, key, caller, sameKey === undefined ? {} : { reEncryptOnSameKey: sameKey });
    const outcome = (refusal: UnauthorizedOperation | undefined, to: ResolvedKeyName): SourceSnapshotDecision =>
      (refusal ? { refusal } : { targetKeyArn: to.arn });
    const source = m.encrypted ? m.wrappedKey?.keyArn : undefined;
    if (source === undefined) {
      // A plaintext source: only a new data key under the target, unless a plaintext volume is asked for.
      if (req.plain) return {};
      const name = req.kmsKeyId ?? 'alias/aws/ebs';
      const to = await keys.resolve(name);
      return outcome(decide('kms:GenerateDataKeyWithoutPlaintext', name, to), to);
    }
    // The same key (none given, or a name for the snapshot's key): ReEncrypt from and to it.
    // Another key: Decrypt of the old, a data key under the new.
    const from = await keys.resolve(source);
    const to = req.kmsKeyId === undefined ? from : await keys.resolve(req.kmsKeyId);
    if (to.arn === from.arn) {
      return outcome(decide('kms:ReEncryptFrom', source, from, true) ?? decide('kms:ReEncryptTo', req.kmsKeyId ?? source, to, true), to);
    }
    return outcome(decide('kms:Decrypt', source, from) ?? decide('kms:GenerateDataKeyWithoutPlaintext', req.kmsKeyId!, to), to);
  }
}
