import { loopBackings, loopFileOf, stillMounted, type LoopBacking, type RecordedMount } from '../fuse/index.js';
import { SharedRead } from '../util/shared-read.js';

/**
 * What still holds a volume file that is no longer served (README "State directory"), every request
 * on it failing with EIO while the volume itself looks healthy: loop devices bound to a previous
 * daemon's file (src/fuse/stale-loops.ts), and handles this daemon cut off while open
 * (BlockFileSystem.cutOffHandles). `ebsd status`, /metrics and the start log say it from here.
 */

/** How long one read of sysfs answers every caller: `ebsd top` asks Status every second, and each scrape asks again. */
export const STALE_SCAN_REUSE_MS = 1_000;

/** A loop device over a file a previous daemon served; `mount`: where, when its dead mount is still attached there. */
export interface StaleLoop { device: string; mount?: string }

export interface VolumeStaleUsers {
  /** Loop devices over a previous daemon's file of the volume. */
  loops: StaleLoop[];
  /** Handles of this daemon's file of the volume removed while open (a loop device among them is in cutOffLoops). */
  cutOff: number;
  /** The loop devices among those handles (of a volume no longer in the catalog only: sysfs names them `<mount>/<vol>`). */
  cutOffLoops: string[];
}

export interface StaleUsersSeen {
  /** Volumes of the catalog with any (absent: none). */
  volumes: Map<string, VolumeStaleUsers>;
  /**
   * Volumes no longer in the catalog (deleted after a forced detach, or since a previous daemon
   * served them) whose file something still holds. A file of a mount no longer attached anywhere
   * (`/<vol>`) of a volume not in the catalog is not among them: nothing says which daemon's it is.
   */
  deleted: Map<string, VolumeStaleUsers>;
}

export interface StaleUsersSources {
  /** Where this daemon's mount is (symlinks resolved), once mounted. */
  mountedAt(): string | undefined;
  /** The mount was unmounted from outside (FuseMount.lost). */
  lost(): boolean;
  cutOffHandles(volumeId: string): number;
  cutOffVolumeIds(): string[];
  /** Dead mounts of earlier daemons of this state dir still attached (mount-record.ts earlierDeadMounts). */
  earlier: readonly RecordedMount[];
  sysBlock?: string;
  now?: () => number;
}

export class StaleUsers {
  private earlier: readonly RecordedMount[];
  private readonly scan: SharedRead<{ backings: LoopBacking[]; earlier: string[] }>;

  constructor(private readonly s: StaleUsersSources) {
    this.earlier = s.earlier;
    this.scan = new SharedRead(async () => {
      // An earlier mount removed since (fusermount -u -z) names its files `/<vol>` from then on, and its
      // path may be mounted again by someone else: it is looked under only while it is still there.
      this.earlier = await stillMounted(this.earlier);
      return { backings: await loopBackings(s.sysBlock), earlier: this.earlier.map((m) => m.MountDir) };
    }, STALE_SCAN_REUSE_MS, s.now);
  }

  /**
   * What holds stale files of the catalog's volumes `catalog`, and of volumes not in it. sysfs is read
   * at most once per STALE_SCAN_REUSE_MS (callers meanwhile share that read); the cut-off handles are
   * counted now.
   */
  async seen(catalog: readonly string[]): Promise<StaleUsersSeen> {
    const known = new Set(catalog);
    const volumes = new Map<string, VolumeStaleUsers>();
    const deleted = new Map<string, VolumeStaleUsers>();
    const entry = (m: Map<string, VolumeStaleUsers>, id: string): VolumeStaleUsers => {
      let e = m.get(id);
      if (!e) m.set(id, (e = { loops: [], cutOff: 0, cutOffLoops: [] }));
      return e;
    };
    const at = this.s.mountedAt();
    if (at === undefined) return { volumes, deleted };
    const { backings, earlier } = await this.scan.get();
    // While this daemon's own mount is lost (unmounted from outside), a loop device over `/<vol>` may be one it
    // still serves (a lazy unmount leaves open files working): not called stale; the mount-lost Problem says
    // what a restart will do to such devices.
    const lost = this.s.lost();
    for (const { device, backing } of backings) {
      const f = loopFileOf(backing, at, earlier);
      if (!f) continue;
      if (f.kind === 'detached') {
        if (!lost && known.has(f.volumeId)) entry(volumes, f.volumeId).loops.push({ device });
      } else if (f.kind === 'earlier') {
        entry(known.has(f.volumeId) ? volumes : deleted, f.volumeId).loops.push({ device, mount: f.mount });
      } else if (!known.has(f.volumeId)) {
        // A file of this daemon's mount whose volume is no longer in the catalog: cut off (a volume is in the catalog
        // while its file is served). One of a volume in the catalog is served, or counted as a cut-off handle.
        entry(deleted, f.volumeId).cutOffLoops.push(device);
      }
    }
    for (const id of catalog) {
      const n = this.s.cutOffHandles(id);
      if (n) entry(volumes, id).cutOff = n;
    }
    for (const id of this.s.cutOffVolumeIds()) {
      if (!known.has(id)) entry(deleted, id).cutOff = this.s.cutOffHandles(id);
    }
    // The loop devices over this daemon's files come from a read of sysfs up to STALE_SCAN_REUSE_MS old, the
    // cut-off handles are counted now: after a `losetup -d` meanwhile, a loop device may still be listed whose handle
    // is closed. Such a loop device is no longer anything (it is in cutOffLoops only while its handle is counted),
    // and a volume left with nothing to report is no row, rather than a row with an empty Problem.
    for (const [id, e] of deleted) {
      if (e.cutOff === 0) e.cutOffLoops = [];
      if (e.loops.length === 0 && e.cutOff === 0) deleted.delete(id);
    }
    return { volumes, deleted };
  }
}

const them = (n: number): string => (n === 1 ? 'it' : 'them');
const plural = (n: number, word: string): string => `${word}${n === 1 ? '' : 's'}`;

/** Where a previous daemon served the files of `loops`, when a dead mount of it is still there: ` at /old` (or several). */
function servedAt(loops: readonly StaleLoop[]): string {
  const mounts = [...new Set(loops.map((l) => l.mount).filter((m): m is string => m !== undefined))];
  return mounts.length ? ` at ${mounts.join(', ')}` : '';
}

/**
 * The Problem of a volume of the catalog with stale users; `path`: its file under this daemon's mount; `volume`:
 * how it is named (a log line names its id, a volume's row of `ebsd status` says "this volume").
 */
export function volumeStaleProblem(st: VolumeStaleUsers, path: string, volume = 'this volume'): string {
  const parts: string[] = [];
  const n = st.loops.length;
  if (n) {
    const devs = st.loops.map((l) => l.device);
    parts.push(`${plural(n, 'loop device')} ${devs.join(', ')} still bound to a file of ${volume} that a previous daemon served${servedAt(st.loops)} `
      + `(it stopped or was killed under ${them(n)}): every request on ${them(n)} fails with EIO; `
      + `unmount what is on ${them(n)}, losetup -d ${devs.join(' ')}, and set up a new one over ${path}`);
  }
  if (st.cutOff) {
    parts.push(`${st.cutOff} ${plural(st.cutOff, 'handle')} of a file of ${volume} removed while open (a forced detach) still open `
      + `(a loop device or a program): every request on ${them(st.cutOff)} fails with EIO; close ${them(st.cutOff)} (losetup -l lists loop devices over ${path})`);
  }
  return parts.join('; ');
}

/** The Problem of a volume no longer in the catalog whose file is still held. */
export function deletedVolumeProblem(volumeId: string, st: VolumeStaleUsers): string {
  const parts: string[] = [];
  const n = st.loops.length;
  if (n) {
    const devs = st.loops.map((l) => l.device);
    parts.push(`${plural(n, 'loop device')} ${devs.join(', ')} still bound to a file of ${volumeId}, a volume no longer in the catalog (deleted), that a previous daemon served${servedAt(st.loops)}: `
      + `every request on ${them(n)} fails with EIO; unmount what is on ${them(n)} and losetup -d ${devs.join(' ')}`);
  }
  if (st.cutOff) {
    const loops = st.cutOffLoops.length ? ` (${plural(st.cutOffLoops.length, 'loop device')} ${st.cutOffLoops.join(', ')}: unmount what is on ${them(st.cutOffLoops.length)} and losetup -d ${st.cutOffLoops.join(' ')})` : '';
    parts.push(`${st.cutOff} ${plural(st.cutOff, 'handle')} of the file of ${volumeId}, a volume no longer in the catalog (deleted), removed while open (a forced detach) still open${loops}: `
      + `every request on ${them(st.cutOff)} fails with EIO; close ${them(st.cutOff)}`);
  }
  return parts.join('; ');
}
