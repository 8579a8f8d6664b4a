import { readFileSync } from 'node:fs';
import { COW_SECTOR } from './cow-spill.js';

/** Sectors per slab: slabs are 1 MiB. */
const SLAB_SECTORS = 256;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/**
 * Slabs no session holds are dropped after this long (docs/architecture.md
 * §12.2). EBSD_TEST_COW_TRIM_MS changes it, for measurements only.
 */
export const COW_MEMORY_TRIM_MS = Number(process.env.EBSD_TEST_COW_TRIM_MS) || 60_000;
/** The default budget's ceiling, whatever the machine. */
const DEFAULT_MAX = 2 * GiB;

export interface CowMemoryOptions {
  /** How long the pool keeps its slabs once no session holds a slot; 0 drops them at once. Default 60 s. */
  trimAfterMs?: number;
}

/**
 * The daemon's memory for captured sectors, shared by every snapshot's
 * CowSession (docs/architecture.md §12.2): 4 KiB slots carved from 1 MiB
 * slabs, at most `maxBytes` in all. A slot is a number (slab × 256 + index),
 * so a capture allocates nothing; one buffer per captured sector would cost
 * an ArrayBuffer on every capturing write and leave tens of thousands of
 * objects for the garbage collector.
 *
 * Slabs are allocated on first need and kept when a session ends, so the
 * next snapshot reuses them: allocating (and page-faulting) up to the budget
 * again per snapshot, as external memory V8 counts toward a full collection,
 * cost more than the spill it avoids (docs/benchmarks.md, "Snapshots"). Once
 * no session has held a slot for `trimAfterMs`, the slabs are dropped (an
 * unref'd timer: it never keeps the daemon alive).
 *
 * Slots are not wiped between sessions: they hold the volumes' on-disk bytes,
 * which are ciphertext (a measurement-only `--cipher none` volume is
 * plaintext on disk anyway), and a slot is always written before it is read.
 */
export class CowMemory {
  readonly maxSlots: number;
  private readonly trimAfterMs: number;
  private slabs: Buffer[] = [];
  /** Per slab, per slot: the session holding it (0 = free). */
  private owners: Uint32Array[] = [];
  private free: number[] = [];
  private nextSession = 1;
  private idleTimer: NodeJS.Timeout | undefined;
  private idleSince = 0;
  /** Slots held by all sessions now. */
  used = 0;
  /** Slabs allocated since the pool was made (a slab reused is not counted again). */
  slabsAllocated = 0;

  constructor(maxBytes: number, o: CowMemoryOptions = {}) {
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 0) throw new RangeError(`maxBytes must be a non-negative integer, got ${maxBytes}`);
    this.maxSlots = Math.floor(maxBytes / COW_SECTOR);
    this.trimAfterMs = o.trimAfterMs ?? COW_MEMORY_TRIM_MS;
  }

  /** Bytes of slabs allocated now (held or free). */
  get slabBytes(): number {
    return this.slabs.reduce((n, s) => n + s.length, 0);
  }

  /**
   * Slots for one CowSession, never more than `capBytes` (the bytes of the
   * blocks it has to copy: it cannot need more) nor what the pool has left.
   */
  session(capBytes: number): SessionSlots {
    return new SessionSlots(this, this.nextSession++, Math.floor(Math.max(0, capBytes) / COW_SECTOR));
  }

  /** @internal A free slot for session `id`, or -1 when the budget is used up. */
  _alloc(id: number): number {
    let slot = this.free.pop();
    if (slot === undefined) {
      const n = this.slabs.length * SLAB_SECTORS;
      if (n >= this.maxSlots) return -1;
      const k = Math.min(SLAB_SECTORS, this.maxSlots - n);
      this.slabs.push(Buffer.allocUnsafeSlow(k * COW_SECTOR));
      this.owners.push(new Uint32Array(k));
      this.slabsAllocated++;
      for (let i = n + k - 1; i > n; i--) this.free.push(i);
      slot = n;
    }
    this.owners[Math.floor(slot / SLAB_SECTORS)]![slot % SLAB_SECTORS] = id;
    this.used++;
    return slot;
  }

  /** @internal */
  _release(slot: number): void {
    this.owners[Math.floor(slot / SLAB_SECTORS)]![slot % SLAB_SECTORS] = 0;
    this.free.push(slot);
    if (--this.used === 0) this.becameIdle();
  }

  /** @internal Returns every slot session `id` still holds; how many. */
  _releaseAll(id: number): number {
    let n = 0;
    for (let j = 0; j < this.owners.length; j++) {
      const o = this.owners[j]!;
      for (let i = 0; i < o.length; i++) {
        if (o[i] !== id) continue;
        o[i] = 0;
        this.free.push(j * SLAB_SECTORS + i);
        n++;
      }
    }
    this.used -= n;
    if (n > 0 && this.used === 0) this.becameIdle();
    return n;
  }

  /** @internal Copies src[off, off + 4096) into slot `slot`. */
  _put(slot: number, src: Buffer, off: number): void {
    src.copy(this.slabs[Math.floor(slot / SLAB_SECTORS)]!, (slot % SLAB_SECTORS) * COW_SECTOR, off, off + COW_SECTOR);
  }

  /** @internal Copies slot `slot` into into[off, off + 4096). */
  _get(slot: number, into: Buffer, off: number): void {
    const at = (slot % SLAB_SECTORS) * COW_SECTOR;
    this.slabs[Math.floor(slot / SLAB_SECTORS)]!.copy(into, off, at, at + COW_SECTOR);
  }

  /** Drops every slab now if no slot is held (the idle timer's work; also for shutdown). */
  trim(): boolean {
    if (this.used !== 0) return false;
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    this.slabs = [];
    this.owners = [];
    this.free = [];
    return true;
  }

  /**
   * No slot is held: the slabs go once that has lasted trimAfterMs. One timer
   * at a time, re-armed for the rest of the delay if slots were held
   * meanwhile, so a session whose count keeps touching zero does not start a
   * timer per capture.
   */
  private becameIdle(): void {
    if (this.slabs.length === 0) return;
    if (this.trimAfterMs <= 0) {
      this.trim();
      return;
    }
    this.idleSince = performance.now();
    if (this.idleTimer) return;
    const arm = (ms: number): void => {
      this.idleTimer = setTimeout(() => {
        this.idleTimer = undefined;
        if (this.used !== 0) return; // held again: the next release to zero re-arms
        const left = this.idleSince + this.trimAfterMs - performance.now();
        if (left > 0) arm(left);
        else this.trim();
      }, ms);
      this.idleTimer.unref();
    };
    arm(this.trimAfterMs);
  }
}

/**
 * One CowSession's slots from the shared CowMemory: at most `capSlots`, all
 * returned by close() whatever the session's state (completed, aborted, failed).
 */
export class SessionSlots {
  /** Slots this session holds now. */
  used = 0;

  constructor(private readonly pool: CowMemory, private readonly id: number, private capSlots: number) {}

  /** A slot, or -1 when this session's cap or the pool's budget is reached (the caller spills). */
  alloc(): number {
    if (this.used >= this.capSlots) return -1;
    const slot = this.pool._alloc(this.id);
    if (slot >= 0) this.used++;
    return slot;
  }

  put(slot: number, src: Buffer, off: number): void {
    this.pool._put(slot, src, off);
  }

  get(slot: number, into: Buffer, off: number): void {
    this.pool._get(slot, into, off);
  }

  release(slot: number): void {
    this.used--;
    this.pool._release(slot);
  }

  /** Returns every slot still held to the pool; no slot is handed out afterwards. */
  close(): void {
    this.capSlots = 0;
    if (this.used > 0) this.pool._releaseAll(this.id);
    this.used = 0;
  }
}

/** Where the budget came from, for the start-up log. */
export interface CowBudget {
  bytes: number;
  from: string;
}

/**
 * The default budget: min(2 GiB, MemTotal / 16, the cgroup v2 memory.max / 8
 * when it is a number). The texts are parameters for the tests; without them
 * /proc/meminfo and the daemon's cgroup are read.
 */
export function defaultCowBudget(meminfo?: string, cgroupMax?: string): CowBudget {
  const read = (p: string): string | undefined => {
    try {
      return readFileSync(p, 'utf8');
    } catch {
      return undefined;
    }
  };
  meminfo ??= read('/proc/meminfo') ?? '';
  cgroupMax ??= ownCgroupMax(read);
  let best: CowBudget = { bytes: DEFAULT_MAX, from: '2 GiB ceiling' };
  const kb = /^MemTotal:\s+(\d+)\s*kB/m.exec(meminfo);
  if (kb) {
    const b = Math.floor((Number(kb[1]) * 1024) / 16);
    if (b < best.bytes) best = { bytes: b, from: 'MemTotal/16' };
  }
  if (cgroupMax !== undefined && /^\s*\d+\s*$/.test(cgroupMax)) {
    const b = Math.floor(Number(cgroupMax) / 8);
    if (b < best.bytes) best = { bytes: b, from: 'cgroup memory.max/8' };
  }
  return { bytes: Math.floor(best.bytes / COW_SECTOR) * COW_SECTOR, from: best.from };
}

/** memory.max of the daemon's cgroup (v2), else of /sys/fs/cgroup; undefined when neither exists ("max" is returned as is). */
function ownCgroupMax(read: (p: string) => string | undefined): string | undefined {
  const path = /^0::(\/.*)$/m.exec(read('/proc/self/cgroup') ?? '')?.[1];
  return (path && path !== '/' ? read(`/sys/fs/cgroup${path}/memory.max`) : undefined) ?? read('/sys/fs/cgroup/memory.max');
}

/**
 * The budget the daemon uses: `flagBytes` (--snapshot-cow-memory) or the
 * default, lowered by EBSD_TEST_COW_MEMORY_BYTES (for tests only: they reach
 * the spill file without writing megabytes).
 */
export function resolveCowBudget(flagBytes?: number, env = process.env.EBSD_TEST_COW_MEMORY_BYTES): CowBudget {
  let b = flagBytes !== undefined ? { bytes: flagBytes, from: '--snapshot-cow-memory' } : defaultCowBudget();
  const t = Number(env);
  if (env !== undefined && env !== '' && Number.isSafeInteger(t) && t >= 0 && t < b.bytes) b = { bytes: t, from: 'EBSD_TEST_COW_MEMORY_BYTES' };
  return b;
}
