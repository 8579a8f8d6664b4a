import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StaleUsers, STALE_SCAN_REUSE_MS, type StaleUsersSources } from '../../src/daemon/stale-users.js';

/**
 * StaleUsers (src/daemon/stale-users.ts) over a sysfs tree of its own (`loopN/loop/backing_file`, as
 * the kernel lays it out) and an injected clock: what the shared read of sysfs and the live count of
 * cut-off handles make of each other, with no sleep. The e2e tests (stale-users-elsewhere,
 * stale-volume-users) drive the same code with real loop devices.
 */

const MNT = '/srv/ebsd-unit/mnt';
const GONE = 'vol-0123456789abcdef0';
const KEPT = 'vol-00000000000000001';

describe('StaleUsers', () => {
  let sys = '';
  let t = 0;
  const cutOff = new Map<string, number>();

  const bind = (n: number, backing: string): void => {
    mkdirSync(join(sys, `loop${n}`, 'loop'), { recursive: true });
    writeFileSync(join(sys, `loop${n}`, 'loop', 'backing_file'), `${backing}\n`);
  };
  const unbind = (n: number): void => rmSync(join(sys, `loop${n}`, 'loop'), { recursive: true, force: true });
  const users = (): StaleUsers => {
    const s: StaleUsersSources = {
      mountedAt: () => MNT, lost: () => false,
      cutOffHandles: (id) => cutOff.get(id) ?? 0,
      cutOffVolumeIds: () => [...cutOff].filter(([, n]) => n > 0).map(([id]) => id),
      earlier: [], sysBlock: sys, now: () => t,
    };
    return new StaleUsers(s);
  };

  beforeEach(() => {
    sys = mkdtempSync(join(tmpdir(), 'ebsd-stale-users-'));
    t = 10_000;
    cutOff.clear();
  });
  afterEach(() => rmSync(sys, { recursive: true, force: true }));

  it('a deleted volume whose cut-off handle was closed after the last sysfs read (losetup -d) is no entry, not one with nothing to say', async () => {
    const u = users();
    // detach --force with a loop device over the file, then DeleteVolume: the handle is cut off, the loop device listed.
    bind(0, `${MNT}/${GONE} (deleted)`);
    cutOff.set(GONE, 1);
    const before = await u.seen([KEPT]);
    expect([...before.deleted]).toEqual([[GONE, { loops: [], cutOff: 1, cutOffLoops: ['/dev/loop0'] }]]);

    // losetup -d: the kernel releases the handle at once (counted live), sysfs is read again only STALE_SCAN_REUSE_MS later.
    unbind(0);
    cutOff.set(GONE, 0);
    t += STALE_SCAN_REUSE_MS - 1;
    const meanwhile = await u.seen([KEPT]);
    expect(meanwhile.deleted.size).toBe(0);
    expect(meanwhile.volumes.size).toBe(0);
  });

  it('callers within STALE_SCAN_REUSE_MS share one read of sysfs; the first one after it reads again', async () => {
    const u = users();
    bind(3, `/${KEPT}`); // a loop device over a file of a mount no longer attached: stale
    const [a, b] = await Promise.all([u.seen([KEPT]), u.seen([KEPT])]);
    expect(a.volumes.get(KEPT)?.loops).toEqual([{ device: '/dev/loop3' }]);
    expect(b.volumes.get(KEPT)?.loops).toEqual([{ device: '/dev/loop3' }]);

    // A second loop device bound meanwhile: not seen until the read is STALE_SCAN_REUSE_MS old (sysfs not read again).
    bind(7, `/${KEPT}`);
    t += STALE_SCAN_REUSE_MS - 1;
    expect((await u.seen([KEPT])).volumes.get(KEPT)?.loops).toEqual([{ device: '/dev/loop3' }]);
    t += 1;
    expect((await u.seen([KEPT])).volumes.get(KEPT)?.loops).toEqual([{ device: '/dev/loop3' }, { device: '/dev/loop7' }]);
  });
});
