/**
 * Durable keystore: one JSON file per key in `<kms>/keys/<keyId>.json` and
 * one alias table `<kms>/aliases.json`, each replaced atomically (temp file,
 * fsync, rename, fsync dir), so SIGKILL mid-update leaves the old or the new
 * version of each file. Per-key files also confine damage: a corrupt or
 * tampered key file makes that key unusable, the others load.
 */
import { promises as fsp, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { atomicWrite, fsyncDir } from '../util/atomic-write.js';
import { KeyedMutex } from '../util/lock.js';
import type { Logger } from '../util/logger.js';
import { KMSInternalException } from './errors.js';
import type { KeyRecord } from './key-record.js';

export interface AliasRecord {
  AliasName: string;
  TargetKeyId: string;
  CreationDate: number;
  LastUpdatedDate: number;
}

const KEY_FILE = /^[0-9a-f-]{36}\.json$/;

export class Keystore {
  private readonly keys = new Map<string, KeyRecord>();
  /** keyId -> reason, for key files that failed to load. */
  readonly broken = new Map<string, string>();
  private aliases = new Map<string, AliasRecord>();
  private readonly mutex = new KeyedMutex();
  private readonly keyDir: string;
  private readonly aliasPath: string;

  constructor(readonly dir: string, private readonly log: Logger) {
    this.keyDir = join(dir, 'keys');
    this.aliasPath = join(dir, 'aliases.json');
  }

  load(): void {
    mkdirSync(this.keyDir, { recursive: true, mode: 0o700 });
    for (const f of readdirSync(this.keyDir)) {
      if (!KEY_FILE.test(f)) continue; // leftover temp files of an interrupted write are ignored
      const id = f.slice(0, -5);
      try {
        const r = JSON.parse(readFileSync(join(this.keyDir, f), 'utf8')) as KeyRecord;
        if (r.keyId !== id || !Array.isArray(r.materials) || r.materials.length === 0) throw new Error('inconsistent record');
        this.keys.set(id, r);
      } catch (e) {
        this.broken.set(id, (e as Error).message);
        this.log.error({ keyId: id, file: f }, 'KMS key file is unreadable; this key is unusable');
      }
    }
    try {
      const a = JSON.parse(readFileSync(this.aliasPath, 'utf8')) as { aliases: AliasRecord[] };
      for (const r of a.aliases) this.aliases.set(r.AliasName, r);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.log.error({ file: this.aliasPath }, 'KMS alias table is unreadable; starting with no aliases');
      }
    }
    // An alias may outlive its key if a crash fell between deleting the key and its aliases.
    for (const [n, a] of this.aliases) if (!this.keys.has(a.TargetKeyId) && !this.broken.has(a.TargetKeyId)) this.aliases.delete(n);
  }

  get(keyId: string): KeyRecord | undefined {
    const r = this.keys.get(keyId);
    if (r === undefined && this.broken.has(keyId)) {
      throw new KMSInternalException(`The stored record of KMS key ${keyId} is corrupt; this key is unusable`, { code: 'KMS_KEY_RECORD_CORRUPT' });
    }
    return r;
  }

  all(): KeyRecord[] {
    return [...this.keys.values()];
  }

  /** Key ids including broken ones, sorted for stable ListKeys paging. */
  allIds(): string[] {
    return [...new Set([...this.keys.keys(), ...this.broken.keys()])].sort();
  }

  /** Write a new key. */
  async create(r: KeyRecord): Promise<void> {
    await this.mutex.run(r.keyId, async () => {
      await atomicWrite(join(this.keyDir, `${r.keyId}.json`), JSON.stringify(r));
      this.keys.set(r.keyId, r);
    });
  }

  /**
   * Apply `mutate` to a copy of the record, persist it, then publish it.
   * The in-memory record changes only after the file is durable.
   */
  async update<T>(keyId: string, mutate: (r: KeyRecord) => T): Promise<T> {
    return this.mutex.run(keyId, async () => {
      const cur = this.get(keyId);
      if (!cur) throw new KMSInternalException(`key ${keyId} vanished during update`);
      const next = structuredClone(cur);
      const out = mutate(next);
      await atomicWrite(join(this.keyDir, `${keyId}.json`), JSON.stringify(next));
      this.keys.set(keyId, next);
      return out;
    });
  }

  /**
   * As `update`, but the record is written (and replaced) only when `mutate` returns true, i.e.
   * only when it changed something. Answers whether it wrote.
   */
  async updateIfChanged(keyId: string, mutate: (r: KeyRecord) => boolean): Promise<boolean> {
    return this.mutex.run(keyId, async () => {
      const cur = this.get(keyId);
      if (!cur) throw new KMSInternalException(`key ${keyId} vanished during update`);
      const next = structuredClone(cur);
      if (!mutate(next)) return false;
      await atomicWrite(join(this.keyDir, `${keyId}.json`), JSON.stringify(next));
      this.keys.set(keyId, next);
      return true;
    });
  }

  async remove(keyId: string): Promise<void> {
    await this.mutex.run(keyId, async () => {
      // Aliases first: a crash in between leaves a key without aliases, never dangling aliases.
      const names = [...this.aliases.values()].filter((a) => a.TargetKeyId === keyId).map((a) => a.AliasName);
      if (names.length) await this.updateAliases((m) => { for (const n of names) m.delete(n); });
      await fsp.rm(join(this.keyDir, `${keyId}.json`), { force: true });
      await fsyncDir(this.keyDir);
      this.keys.delete(keyId);
      this.broken.delete(keyId);
    });
  }

  // ---- aliases -------------------------------------------------------------

  alias(name: string): AliasRecord | undefined {
    return this.aliases.get(name);
  }

  allAliases(): AliasRecord[] {
    return [...this.aliases.values()].sort((a, b) => (a.AliasName < b.AliasName ? -1 : 1));
  }

  /** Changes (by identity) whenever the alias table changes; lets callers cache what they derive from it. */
  get aliasVersion(): object {
    return this.aliases;
  }

  aliasesOf(keyId: string): string[] {
    const out: string[] = [];
    for (const a of this.aliases.values()) if (a.TargetKeyId === keyId) out.push(a.AliasName);
    return out.sort();
  }

  async updateAliases<T>(mutate: (m: Map<string, AliasRecord>) => T): Promise<T> {
    return this.mutex.run('\0aliases', async () => {
      const next = new Map(this.aliases);
      const out = mutate(next);
      await atomicWrite(this.aliasPath, JSON.stringify({ aliases: [...next.values()] }));
      this.aliases = next;
      return out;
    });
  }
}
