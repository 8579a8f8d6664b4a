import { randomUUID } from 'node:crypto';
import type { Caller } from '../kms/types.js';
import type { PolicyEvaluator } from '../kms/authz/index.js';
import type { ContextValue } from '../kms/authz/conditions.js';
import { buildEvent, truncateField } from '../kms/audit/event.js';
import type { Logger } from '../util/logger.js';
import { wipe } from '../util/wipe.js';
import { COMPLETION_REPEAT, EbsDirect } from '../snapshot/ebs-direct.js';
import { SnapshotThrottle, type ThrottledOperation } from '../snapshot/ebs-direct-throttle.js';
import type { SnapshotGc } from '../snapshot/gc.js';
import type { XtsEngine } from '../crypto/xts.js';
import type { KeyService } from '../volume/key-service.js';
import { accessDenied, EbsDirectError, internal, validation } from '../snapshot/ebs-direct-errors.js';
import {
  parseCompleteSnapshot, parseGetSnapshotBlock, parseListChangedBlocks, parseListSnapshotBlocks, parsePutSnapshotBlock, parseStartSnapshot,
  type CompleteSnapshotInput, type GetSnapshotBlockInput, type ListChangedBlocksInput, type ListSnapshotBlocksInput, type PutSnapshotBlockInput,
  type StartSnapshotInput,
} from '../snapshot/ebs-direct-input.js';
import type { SnapshotStore, SnapshotSummary } from '../snapshot/types.js';
import { refusedSnapshot } from '../snapshot/refused-snapshot.js';
import { deniedEvent, refusalKey, refusalParty } from './audit-events.js';
import type { RefusalParty } from '../kms/audit/refusal-aggregator.js';

/**
 * The EBS direct APIs on the control socket (docs/architecture.md, "EBS direct
 * APIs"): target `ebs.<Operation>`, AWS JSON body with the operation's
 * members (BlockData as base64). Each request is checked, authorized through
 * the identity-policy engine as `ebs:<Operation>` on
 * `arn:aws:ec2:<region>::snapshot/<id>` (Service Authorization Reference,
 * "Amazon Elastic Block Store"), run, and audited with eventSource
 * `ebs.amazonaws.com`; refusals are aggregated like the other control-API
 * refusals (audit-events.ts).
 */
export const EBS_OPERATIONS: ReadonlySet<string> = new Set([
  'ListSnapshotBlocks', 'ListChangedBlocks', 'GetSnapshotBlock', 'StartSnapshot', 'PutSnapshotBlock', 'CompleteSnapshot',
]);
const READ_ONLY = new Set(['ListSnapshotBlocks', 'ListChangedBlocks', 'GetSnapshotBlock']);
/** RFC 4648 §4 base64 with padding, nothing else. */
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const SOURCE = 'ebs.amazonaws.com';

/** A checked request, by operation. */
export type EbsRequest =
  | { op: 'ListSnapshotBlocks'; input: ListSnapshotBlocksInput }
  | { op: 'ListChangedBlocks'; input: ListChangedBlocksInput }
  | { op: 'GetSnapshotBlock'; input: GetSnapshotBlockInput }
  | { op: 'StartSnapshot'; input: StartSnapshotInput }
  | { op: 'PutSnapshotBlock'; input: PutSnapshotBlockInput }
  | { op: 'CompleteSnapshot'; input: CompleteSnapshotInput };

export interface EbsApiOptions {
  direct: EbsDirect;
  evaluator: PolicyEvaluator;
  accountId: string;
  region: string;
  /**
   * The daemon's hash-chained audit log; `health().State` 'failing' (its disk full and its reserve
   * used up) refuses the operations that change state before they start.
   */
  audit: {
    append(ev: Record<string, unknown>): Promise<void>;
    appendRefusal(key: string, ev: () => Record<string, unknown>, party?: RefusalParty): Promise<void>;
    health?(): { State: string; LastError?: string };
  };
  /** A snapshot's manifest (without blocks), for its tags in the authorization context (undefined when absent). */
  manifest: (snapshotId: string) => Promise<SnapshotSummary | undefined>;
  log: Logger;
  /** Per-snapshot request rates of GetSnapshotBlock / PutSnapshotBlock (EBS's quotas by default). */
  throttle?: SnapshotThrottle;
}

export class EbsApi {
  private readonly throttle: SnapshotThrottle;

  constructor(private readonly o: EbsApiOptions) {
    this.throttle = o.throttle ?? new SnapshotThrottle();
  }

  /** Ends the CompleteSnapshot waits (EbsDirect.stopWaits), before the listeners close; keys stay until close(). */
  async stopWaits(): Promise<void> {
    await this.o.direct.stopWaits();
  }

  /** Wipe the block-token key and the cached data keys; resolves once the pending markers' retries have stopped. */
  async close(): Promise<void> {
    await this.o.direct.close();
  }

  static isOperation(op: string): boolean {
    return EBS_OPERATIONS.has(op);
  }

  snapshotArn(id: string): string {
    return `arn:aws:ec2:${this.o.region}::snapshot/${id}`;
  }

  /**
   * One call, checked, authorized, run and audited. PutSnapshotBlock's block (plaintext for an
   * encrypted snapshot) is zeroed once the call is over, answered or refused: EbsDirect encrypts a
   * copy, and the block given is this edge's (decoded here from base64, or the REST request's body,
   * which its listener zeroes again once answered). Best effort, as every wipe in JS.
   */
  async call(op: string, body: Record<string, unknown>, caller: Caller, peer: { requestId: string; uid?: number }): Promise<unknown> {
    const req = this._parse(op, body);
    try {
      return await this._call(op, req, caller, peer);
    } finally {
      if (req.op === 'PutSnapshotBlock') wipe(req.input.BlockData);
    }
  }

  private async _call(op: string, req: EbsRequest, caller: Caller, peer: { requestId: string; uid?: number }): Promise<unknown> {
    // A call that cannot be audited must not take effect (docs/architecture.md §5.8): while the log takes no event, a
    // block put, a snapshot begun or completed would be answered InternalServerException after it took effect, unrecorded.
    const health = READ_ONLY.has(op) ? undefined : this.o.audit.health?.();
    if (health?.State === 'failing') {
      throw internal(`${op} was not started: the audit log kms/audit/events.ndjson cannot be written (${health.LastError ?? 'disk full'}); nothing was changed`);
    }
    const input = req.input as unknown as Record<string, unknown>;
    const snaps = _snapshotsOf(op, input);
    await this._authorize(op, input, snaps, caller, peer);
    const d = this.o.direct;
    let out: Record<string, unknown> | undefined;
    try {
      // After authorization: only callers allowed on the snapshot spend its rate.
      if (req.op === 'GetSnapshotBlock' || req.op === 'PutSnapshotBlock') this.throttle.take(req.op as ThrottledOperation, req.input.SnapshotId);
      switch (req.op) {
        case 'ListSnapshotBlocks': out = await d.listSnapshotBlocks(req.input); break;
        case 'ListChangedBlocks': out = await d.listChangedBlocks(req.input); break;
        case 'GetSnapshotBlock': out = await d.getSnapshotBlock(req.input, caller); break;
        case 'StartSnapshot': out = await d.startSnapshot(req.input, caller); break;
        case 'PutSnapshotBlock': out = await d.putSnapshotBlock(req.input, caller); break;
        case 'CompleteSnapshot': out = await d.completeSnapshot(req.input, caller); break;
      }
    } catch (e) {
      // The store's and anything else's failures are EBS's InternalServerException, naming what failed.
      const error = e instanceof EbsDirectError ? e : internal(`${op} failed: ${(e as Error)?.message ?? String(e)}`, e);
      await this._audit(op, input, undefined, error, caller, peer.requestId)
        .catch((x) => this.o.log.error({ err: x, op }, 'could not audit a failed EBS direct API call'));
      throw error;
    }
    // A call that cannot be audited does not answer (docs/architecture.md §5.8): no block leaves unaudited.
    try {
      await this._audit(op, input, out, undefined, caller, peer.requestId);
    } catch (x) {
      if (out?.BlockData instanceof Uint8Array) wipe(out.BlockData); // GetSnapshotBlock's block, not given out
      this.o.log.error({ err: x, op }, 'could not audit an EBS direct API call');
      throw internal(`${op}: the call could not be audited, so it is not answered`, x);
    }
    return out;
  }

  private _parse(op: string, body: Record<string, unknown>): EbsRequest {
    switch (op) {
      case 'ListSnapshotBlocks': return { op, input: parseListSnapshotBlocks(body) };
      case 'ListChangedBlocks': return { op, input: parseListChangedBlocks(body) };
      case 'GetSnapshotBlock': return { op, input: parseGetSnapshotBlock(body) };
      case 'StartSnapshot': return { op, input: parseStartSnapshot(body) };
      case 'CompleteSnapshot': return { op, input: parseCompleteSnapshot(body) };
      case 'PutSnapshotBlock': {
        const data = body.BlockData;
        // From the REST binding: the request body's bytes (ebs-rest.ts). Over the socket the body is JSON,
        // so the block travels as base64; decoded strictly (a malformed one is not a shorter block).
        if (data instanceof Uint8Array) return { op, input: parsePutSnapshotBlock(body) };
        if (data !== undefined && (typeof data !== 'string' || !BASE64.test(data))) {
          throw validation('INVALID_CONTENT_ENCODING', 'BlockData must be base64 (RFC 4648, padded)');
        }
        if (data === undefined) return { op, input: parsePutSnapshotBlock(body) };
        const bytes = Buffer.from(data, 'base64');
        try {
          return { op, input: parsePutSnapshotBlock({ ...body, BlockData: bytes }) };
        } catch (e) {
          wipe(bytes); // refused: nobody else holds it
          throw e;
        }
      }
    }
    throw validation('INVALID_PARAMETER_VALUE', `unknown EBS direct operation ${op.slice(0, 64)}`);
  }

  /**
   * ebs:<Operation> on each snapshot the request names (StartSnapshot: on
   * snapshot/*, with the request's tags; tags given also need ec2:CreateTags
   * with ec2:CreateAction = StartSnapshot, as AWS authorizes StartSnapshot).
   */
  private async _authorize(op: string, input: Record<string, unknown>, snaps: string[], caller: Caller, peer: { requestId: string; uid?: number }): Promise<void> {
    const action = `ebs:${op}`;
    const targets: { action: string; resource: string; ctx: Map<string, ContextValue> }[] = [];
    if (op === 'StartSnapshot') {
      const ctx = this._common();
      const tags = (input.Tags as { Key: string; Value: string }[] | undefined) ?? [];
      for (const t of tags) ctx.set(`aws:RequestTag/${t.Key}`, t.Value);
      if (tags.length) ctx.set('aws:TagKeys', tags.map((t) => t.Key));
      if (typeof input.Description === 'string') ctx.set('ebs:Description', input.Description);
      if (typeof input.ParentSnapshotId === 'string') ctx.set('ebs:ParentSnapshot', this.snapshotArn(input.ParentSnapshotId));
      ctx.set('ebs:VolumeSize', String(input.VolumeSize));
      targets.push({ action, resource: this.snapshotArn('*'), ctx });
      if (tags.length) {
        const tagCtx = this._common();
        for (const t of tags) tagCtx.set(`aws:RequestTag/${t.Key}`, t.Value);
        tagCtx.set('aws:TagKeys', tags.map((t) => t.Key));
        tagCtx.set('ec2:CreateAction', 'StartSnapshot');
        targets.push({ action: 'ec2:CreateTags', resource: this.snapshotArn('*'), ctx: tagCtx });
      }
    }
    for (const id of snaps) {
      if (op === 'StartSnapshot') continue;
      const ctx = this._common();
      // A snapshot that does not exist is judged on its id alone: refused callers learn nothing of it. Tags that
      // cannot be read fail the call (fail closed): a policy that denies by tag must not be judged without them.
      // A manifest this daemon refuses to trust has no tags to wait for (they never become readable): judged on
      // its id alone too, as the EC2 operations judge it, and the operation answers that it is in state error.
      let summary: SnapshotSummary | undefined;
      try {
        summary = await this.o.manifest(id);
      } catch (e) {
        if (refusedSnapshot(id, e, this.o.accountId)) {
          targets.push({ action, resource: this.snapshotArn(id), ctx });
          continue;
        }
        this.o.log.error({ err: e, op, snapshotId: id }, 'EBS direct API: the snapshot\'s tags could not be read for authorization');
        throw internal(`${op}: the tags of ${id} could not be read for authorization: ${(e as Error)?.message ?? String(e)}`, e);
      }
      for (const t of summary?.tags ?? []) ctx.set(`aws:ResourceTag/${t.Key}`, t.Value);
      targets.push({ action, resource: this.snapshotArn(id), ctx });
    }
    for (const t of targets) {
      const d = this.o.evaluator.evaluate({ action: t.action, caller, resource: t.resource, context: t.ctx });
      if (d.allowed) continue;
      const snap = t.resource.slice(t.resource.lastIndexOf('/') + 1);
      await this.o.audit.appendRefusal(refusalKey(peer.uid, SOURCE, op, `ebs-policy:${snap}`), () => {
        const ev = deniedEvent(SOURCE, op, caller, d.message, { accountId: this.o.accountId, region: this.o.region, requestId: peer.requestId });
        ev.requestParameters = { snapshotId: snap };
        return ev;
      }, refusalParty(peer.uid, caller)).catch((err) => this.o.log.error({ err }, 'could not audit an EBS direct API refusal'));
      throw accessDenied('UNAUTHORIZED_ACCOUNT', d.message);
    }
  }

  private _common(): Map<string, ContextValue> {
    return new Map<string, ContextValue>([['aws:RequestedRegion', this.o.region], ['aws:ResourceAccount', this.o.accountId]]);
  }

  /** One CloudTrail-shaped event per call: ids, indexes and counts only, never block data, checksums' inputs or tokens. */
  private async _audit(op: string, input: Record<string, unknown>, out: Record<string, unknown> | undefined, error: unknown, caller: Caller, requestId: string): Promise<void> {
    const err = error as { awsName?: string; message?: string; wireMembers?: { Reason?: string } } | undefined;
    const e = buildEvent({
      eventName: op, caller, accountId: this.o.accountId, region: this.o.region, requestId, eventId: randomUUID(),
      resources: [], readOnly: READ_ONLY.has(op), time: Date.now(),
      ...(error !== undefined ? { errorCode: err?.awsName ?? 'InternalServerException', errorMessage: truncateField(String(err?.message ?? error), 1024) } : {}),
    });
    e.eventSource = SOURCE;
    const params: Record<string, unknown> = {};
    for (const k of ['SnapshotId', 'FirstSnapshotId', 'SecondSnapshotId', 'ParentSnapshotId', 'BlockIndex', 'VolumeSize', 'Encrypted', 'KmsKeyArn', 'ChangedBlocksCount', 'StartingBlockIndex', 'MaxResults', 'Timeout', 'Progress']) {
      if (input[k] !== undefined) params[k.charAt(0).toLowerCase() + k.slice(1)] = input[k];
    }
    e.requestParameters = params;
    if (out && op === 'StartSnapshot') e.responseElements = { snapshotId: out.SnapshotId, status: out.Status };
    else if (out && op === 'CompleteSnapshot') e.responseElements = { status: out.Status };
    else if (out && (op === 'ListSnapshotBlocks' || op === 'ListChangedBlocks')) e.responseElements = { blocks: ((out.Blocks ?? out.ChangedBlocks) as unknown[]).length };
    else e.responseElements = null;
    if (err?.wireMembers?.Reason) e.additionalEventData = { reason: err.wireMembers.Reason };
    // A CompleteSnapshot that repeated a completion (the SDK's retry of a lost answer) sealed nothing: said so, told from the completion.
    else if (out && op === 'CompleteSnapshot' && (out as Record<PropertyKey, unknown>)[COMPLETION_REPEAT] === true) e.additionalEventData = { repeat: true };
    const snaps = _snapshotsOf(op, input);
    if (op === 'StartSnapshot' && typeof out?.SnapshotId === 'string') snaps.push(out.SnapshotId);
    e.resources = snaps.map((id) => ({ accountId: this.o.accountId, type: 'AWS::EC2::Snapshot', ARN: this.snapshotArn(id) }));
    await this.o.audit.append(e);
  }
}

function _snapshotsOf(op: string, input: Record<string, unknown>): string[] {
  const ids: string[] = [];
  for (const k of op === 'ListChangedBlocks' ? ['FirstSnapshotId', 'SecondSnapshotId'] : op === 'StartSnapshot' ? ['ParentSnapshotId'] : ['SnapshotId']) {
    if (typeof input[k] === 'string') ids.push(input[k] as string);
  }
  return ids;
}

/**
 * The EBS direct APIs over the daemon's snapshot store (--snapshot-store),
 * pinning what they write against its collector: snapshots a previous run
 * left pending are marked `error` first.
 */
export async function openEbsApi(o: {
  store: SnapshotStore; gc?: SnapshotGc; pendingDir: string; keys: KeyService; xts: XtsEngine; evaluator: PolicyEvaluator; accountId: string; region: string;
  audit: EbsApiOptions['audit']; log: Logger;
  /** EBS encryption by default is off (the daemon's --allow-unencrypted): StartSnapshot may make unencrypted snapshots. */
  allowUnencrypted?: boolean;
  /** Where the hidden tuning variables are read (process.env by default). */
  env?: NodeJS.ProcessEnv;
}): Promise<EbsApi> {
  const { store, gc } = o;
  const tuning = ebsDirectTuning(o.env ?? process.env);
  const direct = new EbsDirect({
    store, pendingDir: o.pendingDir, keys: o.keys, xts: o.xts, accountId: o.accountId, region: o.region, log: o.log, ...(gc ? { pin: (h: Iterable<string>) => gc.pin(h) } : {}),
    ...(tuning.keyTtlMs !== undefined ? { keyTtlMs: tuning.keyTtlMs } : {}),
    ...(o.allowUnencrypted ? { allowUnencrypted: true } : {}),
  });
  // A deleted snapshot's cached manifest goes with it (ebs-direct-manifests.ts).
  const unsubscribe = gc?.onManifestDeleted((id) => direct.forgetSnapshot(id));
  let marked: string[];
  try {
    marked = await direct.recover();
  } catch (e) {
    unsubscribe?.();
    throw e;
  }
  if (marked.length) o.log.warn({ snapshots: marked }, 'snapshots begun with StartSnapshot and never completed before the restart are now error');
  return new EbsApi({
    direct, evaluator: o.evaluator, accountId: o.accountId, region: o.region, audit: o.audit, manifest: (id) => direct.snapshotSummary(id), log: o.log,
    ...(tuning.perSnapshotRate !== undefined ? { throttle: new SnapshotThrottle(tuning.perSnapshotRate) } : {}),
  });
}

/**
 * Hidden knobs, for tests that cannot wait on AWS's figures (docs/architecture.md §15):
 * `EBSD_EBS_SNAPSHOT_RPS` (GetSnapshotBlock / PutSnapshotBlock requests per second per
 * snapshot, default 1000) and `EBSD_EBS_KEY_TTL_MS` (how long a data key unwrapped for a
 * caller is kept, default 60000; 0 keeps none). A malformed value is refused at start.
 */
export function ebsDirectTuning(env: NodeJS.ProcessEnv): { perSnapshotRate?: number; keyTtlMs?: number } {
  const num = (name: string, min: number): number | undefined => {
    const v = env[name];
    if (v === undefined || v === '') return undefined;
    if (!/^[0-9]{1,9}$/.test(v) || Number(v) < min) throw new RangeError(`${name}: an integer >= ${min}, got ${JSON.stringify(v.slice(0, 32))}`);
    return Number(v);
  };
  const perSnapshotRate = num('EBSD_EBS_SNAPSHOT_RPS', 1);
  const keyTtlMs = num('EBSD_EBS_KEY_TTL_MS', 0);
  return { ...(perSnapshotRate !== undefined ? { perSnapshotRate } : {}), ...(keyTtlMs !== undefined ? { keyTtlMs } : {}) };
}
