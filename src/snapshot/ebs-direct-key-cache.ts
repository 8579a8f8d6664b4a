import type { XtsContext, XtsEngine } from '../crypto/xts.js';
import { wipe } from '../util/wipe.js';

/**
 * The data keys GetSnapshotBlock and PutSnapshotBlock use, held as XTS
 * contexts (docs/architecture.md §15, "Keys"): one KMS Decrypt per caller and
 * snapshot, not one per block. An entry is the context made from the key KMS
 * unwrapped for that caller; the plaintext key itself is wiped as soon as the
 * context holds its schedule.
 *
 * Lifetime: an entry is dropped `ttlMs` after its Decrypt, used or not (a
 * timer), so KMS is asked again at least once per TTL: a disabled key, a
 * revoked grant or a removed kms:Decrypt permission stops block reads and
 * writes at most `ttlMs` later (the `ebs:*` policy is still judged on every
 * call). At most `max` entries; past it the one used least recently goes.
 * A dropped entry's context is destroyed once no call is using it; close()
 * drops them all.
 */
export const DEFAULT_SNAPSHOT_KEY_TTL_MS = 60_000;
export const DEFAULT_SNAPSHOT_KEY_MAX = 256;

export interface KeyCacheTimer {
  cancel(): void;
}

interface Entry {
  /** Resolves to the context once KMS answered; concurrent first calls share it (one Decrypt). */
  ready: Promise<XtsContext>;
  ctx?: XtsContext;
  users: number;
  dropped: boolean;
  timer?: KeyCacheTimer;
}

export interface SnapshotKeyCacheOptions {
  xts: XtsEngine;
  ttlMs?: number;
  max?: number;
  /** Runs `fn` once after `ms` unless cancelled; an unref'd setTimeout by default (tests inject theirs). */
  schedule?: (fn: () => void, ms: number) => KeyCacheTimer;
}

const unrefTimer = (fn: () => void, ms: number): KeyCacheTimer => {
  const t = setTimeout(fn, ms);
  t.unref();
  return { cancel: () => clearTimeout(t) };
};

export class SnapshotKeyCache {
  private readonly entries = new Map<string, Entry>();
  private readonly ttlMs: number;
  private readonly max: number;
  private readonly schedule: NonNullable<SnapshotKeyCacheOptions['schedule']>;
  private closed = false;

  constructor(private readonly o: SnapshotKeyCacheOptions) {
    this.ttlMs = o.ttlMs ?? DEFAULT_SNAPSHOT_KEY_TTL_MS;
    this.max = o.max ?? DEFAULT_SNAPSHOT_KEY_MAX;
    if (!Number.isFinite(this.ttlMs) || this.ttlMs < 0) throw new RangeError(`ttlMs: a duration >= 0, got ${this.ttlMs}`);
    if (!Number.isInteger(this.max) || this.max < 1) throw new RangeError(`max: an integer >= 1, got ${this.max}`);
    this.schedule = o.schedule ?? unrefTimer;
  }

  /** Entries held (loaded or loading). */
  get size(): number {
    return this.entries.size;
  }

  /**
   * Run `fn` with the context for `id` (caller and snapshot), unwrapping the
   * key with `unwrap` only when no live entry has it. A failed unwrap caches
   * nothing: the next call asks KMS again. With a TTL of 0 nothing is kept.
   */
  async use<T>(id: string, unwrap: () => Promise<Uint8Array>, fn: (x: XtsContext) => Promise<T> | T): Promise<T> {
    if (this.closed) throw new Error('the snapshot key cache is closed');
    let e = this.entries.get(id);
    if (e) {
      this.entries.delete(id); // re-inserted: most recently used last
      this.entries.set(id, e);
    } else {
      e = this._load(id, unwrap);
    }
    e.users++;
    try {
      return await fn(await e.ready);
    } finally {
      e.users--;
      this._destroyIfIdle(e);
    }
  }

  /** Drop every entry (daemon shutdown): contexts in use are destroyed when their call ends. */
  close(): void {
    this.closed = true;
    for (const id of [...this.entries.keys()]) this._drop(id);
  }

  private _load(id: string, unwrap: () => Promise<Uint8Array>): Entry {
    const e: Entry = { ready: undefined as unknown as Promise<XtsContext>, users: 0, dropped: false };
    e.ready = (async () => {
      let key: Uint8Array | undefined;
      try {
        key = await unwrap();
        const ctx = this.o.xts.createContext(key);
        e.ctx = ctx;
        return ctx;
      } finally {
        wipe(key); // the context holds its own schedule; best effort in JS (the GC may have copied it)
      }
    })();
    e.ready.then(
      () => {
        if (e.dropped || this.entries.get(id) !== e) return this._destroyIfIdle(e);
        if (this.ttlMs === 0) this._drop(id);
        else e.timer = this.schedule(() => { if (this.entries.get(id) === e) this._drop(id); }, this.ttlMs);
      },
      () => { if (this.entries.get(id) === e) { this.entries.delete(id); e.dropped = true; } },
    );
    this.entries.set(id, e);
    while (this.entries.size > this.max) this._drop(this.entries.keys().next().value!);
    return e;
  }

  private _drop(id: string): void {
    const e = this.entries.get(id);
    if (!e) return;
    this.entries.delete(id);
    e.dropped = true;
    e.timer?.cancel();
    this._destroyIfIdle(e);
  }

  private _destroyIfIdle(e: Entry): void {
    if (!e.dropped || e.users > 0 || !e.ctx) return;
    e.ctx.destroy();
    e.ctx = undefined;
  }
}
