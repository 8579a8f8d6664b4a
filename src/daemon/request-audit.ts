import { AsyncLocalStorage } from 'node:async_hooks';
import type { Caller } from '../kms/types.js';
import { EbsdError } from '../util/errors.js';

/** EC2's server error for a temporary failure: the audit log cannot take events, so nothing is started. */
export class AuditUnavailable extends EbsdError {
  readonly httpStatus = 503;
  constructor(message: string) {
    super('AUDIT_UNAVAILABLE', message, { awsName: 'ServiceUnavailable' });
  }
}

/** EC2's internal error: the operation ran, or failed, but its event could not be written. */
export class EventNotWritten extends EbsdError {
  readonly httpStatus = 500;
  constructor(message: string, cause: unknown) {
    super('EC2_NOT_AUDITED', message, { awsName: 'InternalError', cause });
  }
}

/** One control request while its answer is pending: who asked, and the event writes the answer waits for. */
interface Pending {
  readonly requestId: string;
  readonly caller: Caller;
  readonly writes: Promise<void>[];
  open: boolean;
}

/**
 * The EC2 volume and snapshot operations' side of "a call that cannot be
 * audited does not take effect" (docs/architecture.md §5.8). Their events are
 * written by the volume and snapshot managers from inside the operation, after
 * its effect (a deleted image cannot be written first and undone later), so the
 * rule is the least-bad one that holds for all of them: an operation that
 * changes state is not started while the audit log is failing, and its answer
 * waits for the events it wrote and fails (InternalError, naming the event) if
 * one could not be written.
 *
 * The managers know nothing of requests: the request travels in an
 * AsyncLocalStorage, so an event emitted while a request runs is found to be
 * that request's (its request id and caller, docs/architecture.md §5.8). Work
 * the operation leaves running after its answer (a snapshot's upload) is no
 * longer tracked.
 */
export class RequestAudit {
  private readonly als = new AsyncLocalStorage<Pending>();

  /** `failing`: the audit log's reason for taking no events now (disk-reserve.ts `failing`), or undefined. */
  constructor(private readonly failing: () => string | undefined) {}

  /** The request the current code runs for, if `principal` is its caller and its answer is still pending. */
  requestOf(principal: string | undefined): { requestId: string; caller: Caller } | undefined {
    const p = this.als.getStore();
    return p?.open && principal !== undefined && p.caller.arn === principal ? p : undefined;
  }

  /** An event write for that request (requestOf): the answer waits for it and fails if it fails. */
  track(write: Promise<void>): void {
    const p = this.als.getStore();
    if (p?.open) p.writes.push(write);
  }

  /**
   * Run `fn` for a request. `changes`: it may change state, so it is refused
   * (ServiceUnavailable) while the audit log is failing.
   */
  async run<T>(operation: string, r: { requestId: string; caller: Caller; changes: boolean }, fn: () => Promise<T>): Promise<T> {
    const why = r.changes ? this.failing() : undefined;
    if (why !== undefined) {
      throw new AuditUnavailable(`ec2:${operation} was not started: the audit log kms/audit/events.ndjson cannot be written (${why})`);
    }
    const p: Pending = { requestId: r.requestId, caller: r.caller, writes: [], open: true };
    let out: T | undefined;
    let error: unknown;
    let failed = false;
    try {
      out = await this.als.run(p, fn);
    } catch (e) {
      failed = true;
      error = e;
    } finally {
      p.open = false;
    }
    for (const s of await Promise.allSettled(p.writes)) {
      if (s.status === 'fulfilled') continue;
      const msg = (s.reason as Error | undefined)?.message ?? String(s.reason);
      throw new EventNotWritten(`ec2:${operation} ${failed ? 'failed and its' : 'took effect but its'} event could not be written to the audit log kms/audit/events.ndjson: ${msg}`, s.reason);
    }
    if (failed) throw error;
    return out as T;
  }
}
