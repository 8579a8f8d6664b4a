import type { Caller } from '../kms/types.js';
import type { PolicyEvaluator } from '../kms/authz/index.js';
import type { SnapshotManifest } from '../snapshot/types.js';
import { toEc2Snapshot } from '../snapshot/snapshot-view.js';
import { UnauthorizedOperation, type Ec2Authorizer } from './ec2-authz.js';

/**
 * What a volume from a snapshot, or a snapshot copy, needs of the caller on
 * the source snapshot (docs/architecture.md §14.3): EC2 authorizes
 * `ec2:CreateVolume` / `ec2:CopySnapshot` on the snapshot's ARN with its
 * tags and condition keys, besides the request's own resource. With a remote
 * KMS the restore's KMS calls are signed as this host, so the local identity
 * policy also decides the caller's use of the snapshot's key: `kms:Decrypt`
 * on it (another target key) or `kms:ReEncryptFrom` + `kms:ReEncryptTo` (the
 * same key), each with `kms:ViaService`, as for the target key (§5.5).
 */
export interface SourceSnapshotAuthzOptions {
  ec2: Ec2Authorizer;
  evaluator: PolicyEvaluator;
  region: string;
  /** The KMS is remote (`--kms-endpoint`): its calls cannot judge the local caller. */
  remoteKms: boolean;
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

export class SourceSnapshotAuthz {
  constructor(private readonly o: SourceSnapshotAuthzOptions) {}

  /** The refusal to raise, or undefined. A snapshot that does not exist is judged on its id alone; the operation then says NotFound. */
  async check(req: SourceSnapshotRequest, caller: Caller): Promise<UnauthorizedOperation | undefined> {
    let m: SnapshotManifest | undefined;
    try {
      m = await this.o.manifest(req.snapshotId);
    } catch {
      m = undefined; // unreadable: judged on its id; the operation reports what is wrong with it
    }
    const action = req.op === 'CreateVolume' ? 'ec2:CreateVolume' : 'ec2:CopySnapshot';
    const onSnapshot = this.o.ec2.checkSourceSnapshot(action, m ? toEc2Snapshot(m) : req.snapshotId, caller);
    if (onSnapshot || !m) return onSnapshot;
    return this.keyRefusal(req, m, caller);
  }

  /** With a remote KMS only: the caller's identity policy must allow what the host will do with the snapshot's key for it. */
  private keyRefusal(req: SourceSnapshotRequest, m: SnapshotManifest, caller: Caller): UnauthorizedOperation | undefined {
    if (!this.o.remoteKms || caller.type === 'Root') return undefined;
    const source = m.encrypted ? m.wrappedKey?.keyArn : undefined;
    if (source === undefined) {
      // A plaintext source: only a new data key under the target, unless a plaintext volume is asked for.
      if (req.plain) return undefined;
      return this.decide('kms:GenerateDataKeyWithoutPlaintext', req.kmsKeyId ?? 'alias/aws/ebs', caller);
    }
    // The same key (none given, or the snapshot's ARN): ReEncrypt from and to it. A key named
    // otherwise (alias, id) is judged as another key: Decrypt of the old, a data key under the new.
    if (req.kmsKeyId === undefined || req.kmsKeyId === source) {
      return this.decide('kms:ReEncryptFrom', source, caller) ?? this.decide('kms:ReEncryptTo', source, caller);
    }
    return this.decide('kms:Decrypt', source, caller) ?? this.decide('kms:GenerateDataKeyWithoutPlaintext', req.kmsKeyId, caller);
  }

  private decide(action: string, key: string, caller: Caller): UnauthorizedOperation | undefined {
    const d = this.o.evaluator.evaluate({
      action, caller, resource: key, context: new Map([['kms:ViaService', `ec2.${this.o.region}.amazonaws.com`]]),
    });
    if (d.allowed) return undefined;
    return new UnauthorizedOperation(`User: ${caller.arn} is not authorized to perform: ${action} on resource: ${key} because no identity-based policy allows the ${action} action (this host's KMS is remote: the local identity policy decides what a local caller may do with a key)`);
  }
}
