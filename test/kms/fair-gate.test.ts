/**
 * Callers take turns in the KMS core (src/kms/fair-gate.ts): the gate's own
 * rotation, then the real KMS core (HSM worker, audit log) with one caller
 * flooding Decrypt while another makes a single call.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FairGate } from '../../src/kms/fair-gate.js';
import type { KmsService } from '../../src/kms/kms-core.js';
import type { Caller } from '../../src/kms/types.js';
import { ACCOUNT, admin, openKms, tempDir } from './helpers.js';

const deferred = (): { promise: Promise<void>; resolve: () => void } => {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => { resolve = r; });
  return { promise, resolve };
};

describe('FairGate', () => {
  it('below the limit calls pass straight through; past it, a freed turn goes to each waiting caller in rotation', async () => {
    const gate = new FairGate(2);
    const started: string[] = [];
    const finish = new Map<string, () => void>();
    const call = (caller: string, name: string): Promise<void> => gate.run(caller, async () => {
      started.push(name);
      const d = deferred();
      finish.set(name, d.resolve);
      await d.promise;
    });
    const runs = [call('a', 'a1'), call('a', 'a2')];
    await Promise.resolve();
    expect(started).toEqual(['a1', 'a2']); // under the limit: no waiting
    runs.push(call('a', 'a3'), call('a', 'a4'), call('a', 'a5'), call('b', 'b1'), call('c', 'c1'), call('b', 'b2'));
    await new Promise((r) => setImmediate(r));
    expect(started).toEqual(['a1', 'a2']);
    expect(gate.load).toEqual({ active: 2, waiting: 6, callers: 3 });
    // Each finished call hands its turn on; a single FIFO would run a3, a4, a5 before b1.
    for (const name of ['a1', 'a2', 'a3', 'b1', 'c1', 'a4', 'b2', 'a5']) {
      finish.get(name)!();
      await new Promise((r) => setImmediate(r));
    }
    await Promise.all(runs);
    expect(started).toEqual(['a1', 'a2', 'a3', 'b1', 'c1', 'a4', 'b2', 'a5']);
    expect(gate.load).toEqual({ active: 0, waiting: 0, callers: 0 });
  });

  it('a call that throws passes its turn on too', async () => {
    const gate = new FairGate(1);
    const order: string[] = [];
    const bad = gate.run('a', async () => { order.push('bad'); throw new Error('refused'); });
    const next = gate.run('b', async () => { order.push('b'); return 7; });
    await expect(bad).rejects.toThrow('refused');
    await expect(next).resolves.toBe(7);
    expect(order).toEqual(['bad', 'b']);
    expect(gate.load.active).toBe(0);
  });

  it('takes only a positive whole number of turns', () => {
    expect(() => new FairGate(0)).toThrow(/maxActive must be a positive integer, not 0/);
    expect(() => new FairGate(1.5)).toThrow(/not 1.5/);
  });
});

describe('the KMS core shares its turns between callers', () => {
  const dir = tempDir();
  let kms: KmsService;
  const user = (name: string): Caller => ({ arn: `arn:aws:iam::${ACCOUNT}:user/${name}`, accountId: ACCOUNT, type: 'IAMUser', userName: name, principalId: `AIDA${name.toUpperCase()}` });
  let blob: Uint8Array;

  beforeAll(async () => {
    kms = await openKms(dir.dir, { maxActiveCalls: 4 });
    const { KeyMetadata } = await kms.call('CreateKey', {}, admin) as { KeyMetadata: { KeyId: string } };
    blob = (await kms.call('Encrypt', { KeyId: KeyMetadata.KeyId, Plaintext: new Uint8Array(64).fill(7) }, admin) as { CiphertextBlob: Uint8Array }).CiphertextBlob;
  });
  afterAll(async () => {
    await kms.close();
    dir.cleanup();
  });

  it('one caller with 400 Decrypts queued: another caller\'s single Decrypt is answered among the first few, and every call succeeds', async () => {
    const flooder = user('flooder');
    const other = user('other');
    const done: string[] = [];
    const calls: Promise<unknown>[] = [];
    for (let i = 0; i < 400; i++) calls.push(kms.call('Decrypt', { CiphertextBlob: blob }, flooder).then(() => { done.push(`f${i}`); }));
    expect(kms.callLoad).toMatchObject({ active: 4, waiting: 396, callers: 1 });
    calls.push(kms.call('Decrypt', { CiphertextBlob: blob }, other).then(() => { done.push('other'); }));
    await Promise.all(calls);
    expect(done).toHaveLength(401);
    // Four in the core, then the rotation: the flooder's next call, then the other caller's. Without turns it is last.
    expect(done.indexOf('other')).toBeLessThanOrEqual(6);
    expect(kms.callLoad).toEqual({ active: 0, waiting: 0, callers: 0 });
  });
});
