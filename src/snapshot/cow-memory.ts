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
export const COW_MEMORY_TRIM_MS = trimMs(process.env.EBSD_TEST_COW_TRIM_MS);

/** A whole number of milliseconds within what setTimeout takes; 60 s otherwise. */
function trimMs(v: string | undefined): number {
  return v !== undefined && /^\d+$/.test(v.trim()) ? Math.min(Number(v), 2 ** 31 - 1) : 60_000;
}
/** The default budget's ceiling, whatever the machine. */
const DEFAULT_MAX = 2 * GiB;

export interface CowMemoryOptions {
  /** How long the pool keeps its slabs once no session holds a slot; 0 drops them at once, Infinity never (the owner calls trim()). Default 60 s. */
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
    if (this.slabs.length === 0 || this.trimAfterMs === Infinity) return;
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
  /** Slabs the pool allocated for this session's slots (the rest it reused). */
  newSlabs = 0;

  constructor(private readonly pool: CowMemory, private readonly id: number, private capSlots: number) {}

  /** A slot, or -1 when this session's cap or the pool's budget is reached (the caller spills). */
  alloc(): number {
    if (this.used >= this.capSlots) return -1;
    const slabs = this.pool.slabsAllocated;
    const slot = this.pool._alloc(this.id);
    if (slot >= 0) this.used++;
    this.newSlabs += this.pool.slabsAllocated - slabs;
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
 * The default budget: min(2 GiB, MemTotal / 16, the cgroup memory limit / 8
 * when there is one). `meminfo` and `cgroupLimit` (bytes, or a text as the
 * cgroup files hold it: a number or "max") are parameters for the tests;
 * without them /proc/meminfo and the daemon's cgroups are read.
 */
export function defaultCowBudget(meminfo?: string, cgroupLimit?: number | string): CowBudget {
  meminfo ??= readText('/proc/meminfo') ?? '';
  const limit = cgroupLimit === undefined ? cgroupMemoryLimit() : typeof cgroupLimit === 'number' ? cgroupLimit : limitOf(cgroupLimit);
  let best: CowBudget = { bytes: DEFAULT_MAX, from: '2 GiB ceiling' };
  const kb = /^MemTotal:\s+(\d+)\s*kB/m.exec(meminfo);
  if (kb) {
    const b = Math.floor((Number(kb[1]) * 1024) / 16);
    if (b < best.bytes) best = { bytes: b, from: 'MemTotal/16' };
  }
  if (limit !== undefined) {
    const b = Math.floor(limit / 8);
    if (b < best.bytes) best = { bytes: b, from: 'cgroup memory limit/8' };
  }
  return { bytes: Math.floor(best.bytes / COW_SECTOR) * COW_SECTOR, from: best.from };
}

function readText(p: string): string | undefined {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return undefined;
  }
}

/** A cgroup limit file's value in bytes; undefined for "max", v1's "unlimited" (≥ 2^62) and anything else. */
function limitOf(text: string | undefined): number | undefined {
  if (text === undefined || !/^\s*\d+\s*$/.test(text)) return undefined;
  const n = Number(text);
  return n < 2 ** 62 ? n : undefined;
}

/**
 * The smallest memory limit on the daemon's cgroup and its ancestors (a
 * systemd slice's MemoryMax sits on a parent): cgroup v2 `memory.max`, or on
 * a v1 / hybrid host the memory controller's `memory.limit_in_bytes`.
 * `procSelfCgroup` and `root` are parameters for the tests.
 */
export function cgroupMemoryLimit(procSelfCgroup = readText('/proc/self/cgroup') ?? '', root = '/sys/fs/cgroup'): number | undefined {
  let best: number | undefined;
  const walk = (dir: string, path: string, file: string): void => {
    const parts = path.split('/').filter(Boolean);
    for (let n = parts.length; n >= 0; n--) {
      const v = limitOf(readText(`${dir}/${parts.slice(0, n).join('/')}${n > 0 ? '/' : ''}${file}`));
      if (v !== undefined && (best === undefined || v < best)) best = v;
    }
  };
  for (const line of procSelfCgroup.split('\n')) {
    const m = /^(\d+):([^:]*):(\/.*)$/.exec(line.trim());
    if (!m) continue;
    if (m[1] === '0' && m[2] === '') walk(root, m[3]!, 'memory.max'); // v2 (unified)
    else if (m[2]!.split(',').includes('memory')) walk(`${root}/memory`, m[3]!, 'memory.limit_in_bytes'); // v1
  }
  return best;
}

/**
 * The budget the daemon uses: `flagBytes` (--snapshot-cow-memory, rounded
 * down to whole 4 KiB slots) or the default, lowered by
 * EBSD_TEST_COW_MEMORY_BYTES (a byte count, for tests only: they reach the
 * spill file without writing megabytes).
 */
export function resolveCowBudget(flagBytes?: number, env = process.env.EBSD_TEST_COW_MEMORY_BYTES): CowBudget {
  let b = flagBytes !== undefined ? { bytes: Math.floor(flagBytes / COW_SECTOR) * COW_SECTOR, from: '--snapshot-cow-memory' } : defaultCowBudget();
  if (env !== undefined && /^\d+$/.test(env.trim()) && Number(env) < b.bytes) b = { bytes: Number(env), from: 'EBSD_TEST_COW_MEMORY_BYTES' };
  return b;
}
