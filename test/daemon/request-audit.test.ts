/**
 * RequestAudit (src/daemon/request-audit.ts, docs/architecture.md §5.8): an
 * operation that changes state is not started while the audit log is failing;
 * a read still is; an event written for the request is awaited by its answer,
 * and one emitted after the answer (work left running) is not.
 */
import { describe, expect, it } from 'vitest';
import { AuditUnavailable, EventNotWritten, RequestAudit } from '../../src/daemon/request-audit.js';
import type { Caller } from '../../src/kms/types.js';

const caller: Caller = { arn: 'arn:aws:iam::111122223333:root', accountId: '111122223333', type: 'Root' };

describe('RequestAudit', () => {
  it('refuses a changing operation while the log is failing, without running it; a read runs', async () => {
    const ra = new RequestAudit(() => 'ENOSPC');
    let ran = 0;
    const err = await ra.run('DeleteVolume', { requestId: 'r1', caller, changes: true }, async () => { ran++; }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AuditUnavailable);
    expect(err).toMatchObject({ awsName: 'ServiceUnavailable', httpStatus: 503 });
    expect((err as Error).message).toMatch(/ec2:DeleteVolume was not started: the audit log .* cannot be written \(ENOSPC\)/);
    expect(ran).toBe(0);
    await ra.run('DescribeVolumes', { requestId: 'r2', caller, changes: false }, async () => { ran++; });
    expect(ran).toBe(1);
  });

  it('the answer waits for the request\'s event and fails with InternalError if it is not written', async () => {
    const ra = new RequestAudit(() => undefined);
    const err = await ra.run('ModifyVolume', { requestId: 'r3', caller, changes: true }, async () => {
      expect(ra.requestOf(caller.arn)?.requestId).toBe('r3');
      expect(ra.requestOf('arn:aws:iam::111122223333:role/other')).toBeUndefined();
      const write = new Promise<void>((_, reject) => setTimeout(() => reject(new Error('EPERM')), 5));
      write.catch(() => {});
      ra.track(write);
      return 'done';
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EventNotWritten);
    expect(err).toMatchObject({ awsName: 'InternalError', httpStatus: 500 });
    expect((err as Error).message).toMatch(/ec2:ModifyVolume took effect but its event could not be written .*EPERM/);
  });

  it('work left running after the answer is not tracked', async () => {
    const ra = new RequestAudit(() => undefined);
    let later: Promise<void> = Promise.resolve();
    await ra.run('CreateSnapshot', { requestId: 'r4', caller, changes: true }, async () => {
      later = new Promise<void>((r) => setTimeout(r, 5)).then(() => {
        expect(ra.requestOf(caller.arn)).toBeUndefined();
        ra.track(Promise.reject(new Error('lost')).catch(() => {}) as Promise<void>);
      });
    });
    await later;
  });
});
