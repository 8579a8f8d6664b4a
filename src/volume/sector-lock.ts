/**
 * Write ordering over sector ranges. Every write holds its sector range
 * while it reads (partial sectors), merges, encrypts and pwrites; a later
 * write that overlaps waits for every earlier overlapping one. So two
 * overlapping writes never interleave inside a sector, and a
 * read-modify-write never resurrects bytes a concurrent full-sector write
 * replaced. This is a per-sector lock in effect (KeyedMutex semantics per
 * sector), held as one range so a 128 KiB write takes one entry, not 32.
 *
 * The holder list stays as short as the queue depth, so a linear scan is
 * cheaper than any tree; the uncontended path allocates one small object
 * and no promise.
 */
interface Entry {
  s0: number;
  s1: number;
  waiters: (() => void)[] | null;
}

export type Release = () => void;

export class SectorRangeLock {
  private readonly held: Entry[] = [];

  /** Returns the release function directly when uncontended, else a promise of it. */
  acquire(s0: number, s1: number): Release | Promise<Release> {
    let waits: Promise<void>[] | null = null;
    for (const e of this.held) {
      if (e.s0 < s1 && s0 < e.s1) {
        (waits ??= []).push(new Promise<void>((r) => (e.waiters ??= []).push(r)));
      }
    }
    const mine: Entry = { s0, s1, waiters: null };
    this.held.push(mine);
    const release: Release = () => {
      const i = this.held.indexOf(mine);
      if (i >= 0) this.held.splice(i, 1);
      if (mine.waiters) for (const w of mine.waiters) w();
    };
    if (waits === null) return release;
    return Promise.all(waits).then(() => release);
  }

  /** Whether any held range overlaps [s0, s1) (acquire would wait). */
  overlaps(s0: number, s1: number): boolean {
    for (const e of this.held) if (e.s0 < s1 && s0 < e.s1) return true;
    return false;
  }

  get size(): number {
    return this.held.length;
  }
}
