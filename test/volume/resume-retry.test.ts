/**
 * src/volume/resume-retry.ts on a manual clock: a re-attach the KMS did not
 * answer (a non-authoritative KeyServiceError, however wrapped) is retried
 * with back-off until it succeeds; a refusal is never retried, nor is a
 * volume no longer recorded attached (detached meanwhile).
 */
import { describe, expect, it } from 'vitest';
import { KeyServiceError, VolumeError } from '../../src/volume/errors.js';
import { isTransientResumeFailure, resumeFailureKind, ResumeRetry, type ResumeOutcome } from '../../src/volume/resume-retry.js';
import { ManualClock, seededRandom } from './helpers/manual-clock.js';

const unreachable = () => new KeyServiceError('Decrypt', undefined, false, 'connect ECONNREFUSED 127.0.0.1:1');
const throttled = () => new KeyServiceError('Decrypt', 'ThrottlingException', false, 'Rate exceeded');
const denied = () => new KeyServiceError('Decrypt', 'AccessDeniedException', true, 'denied');

describe('ResumeRetry', () => {
  it('tells "KMS did not answer" from "KMS said no", through a wrapping error', () => {
    expect(isTransientResumeFailure(unreachable())).toBe(true);
    expect(isTransientResumeFailure(throttled())).toBe(true);
    expect(isTransientResumeFailure(new VolumeError('VOLUME_IMPAIRED', 'x', { cause: unreachable() }))).toBe(true);
    expect(isTransientResumeFailure(denied())).toBe(false);
    expect(isTransientResumeFailure(new Error('EACCES'))).toBe(false);
  });

  it('tells "the state dir\'s disk is full" (retried: space comes back) from other file errors', () => {
    const enospc = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    expect(resumeFailureKind(new VolumeError('VOLUME_NO_SPACE', 'lock', { cause: enospc }))).toBe('disk');
    expect(resumeFailureKind(new VolumeError('VOLUME_IO', 'x', { cause: enospc }))).toBe('disk');
    expect(resumeFailureKind(Object.assign(new Error('quota'), { code: 'EDQUOT' }))).toBe('disk');
    expect(resumeFailureKind(unreachable())).toBe('kms');
    expect(resumeFailureKind(Object.assign(new Error('EACCES'), { code: 'EACCES' }))).toBeUndefined();
    expect(resumeFailureKind(new VolumeError('VOLUME_IO', 'x'))).toBeUndefined();
  });

  it('retries the unanswered ones with back-off until they come back; a refusal and a detached volume drop out', async () => {
    const clock = new ManualClock();
    const rounds: string[][] = [];
    const answers: ((ids: string[]) => ResumeOutcome)[] = [
      // Round 1: still unreachable (a) and throttled (b); c is refused now; d was detached meanwhile.
      () => ({ resumed: [], failed: [{ volumeId: 'a', error: unreachable() }, { volumeId: 'b', error: throttled() }, { volumeId: 'c', error: denied() }] }),
      () => ({ resumed: ['b'], failed: [{ volumeId: 'a', error: unreachable() }] }),
      () => ({ resumed: ['a'], failed: [] }),
    ];
    const r = new ResumeRetry({ clock, random: seededRandom(7), resume: async (ids) => { rounds.push([...ids].sort()); return answers[rounds.length - 1]!([...ids]); } });
    expect(r.add([
      { volumeId: 'a', error: unreachable() }, { volumeId: 'b', error: throttled() }, { volumeId: 'c', error: unreachable() },
      { volumeId: 'd', error: unreachable() }, { volumeId: 'e', error: denied() },
    ])).toEqual(['a', 'b', 'c', 'd']);
    expect(r.state('e')).toBeUndefined();
    expect(r.state('b')).toMatchObject({ Attempts: 1, AwsName: 'ThrottlingException', NextTryTime: expect.any(String) });
    await clock.advance(1_000); // first retry within [0.5, 1) s
    expect(rounds).toEqual([['a', 'b', 'c', 'd']]);
    expect([r.state('c'), r.state('d')]).toEqual([undefined, undefined]);
    expect(r.state('a')).toMatchObject({ Attempts: 2 });
    // The second round waits 1-2 s after the first (which ran in [0.5, 1) s).
    const next = Date.parse(r.state('a')!.NextTryTime!) - clock.now();
    expect(next).toBeGreaterThanOrEqual(500);
    await clock.advance(next - 1);
    expect(rounds).toHaveLength(1);
    await clock.advance(1);
    expect(rounds[1]).toEqual(['a', 'b']);
    await clock.advance(4_000);
    expect(rounds[2]).toEqual(['a']);
    expect(r.size).toBe(0);
    expect(clock.pending).toBe(0);
    await r.stop();
  });
});
