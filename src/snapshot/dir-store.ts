import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { atomicWrite, fsyncDir } from '../util/atomic-write.js';
import { readTextIfExists } from '../util/read-if-exists.js';
import { parseStateJson } from '../util/state-json.js';
import { SnapshotError } from './errors.js';
import type { BlockHash, SnapshotManifest, SnapshotStore } from './types.js';

const HASH = /^[0-9a-f]{64}$/;
const SNAP_ID = /^snap-[0-9a-f]{17}$/;

/**
 * The default SnapshotStore: a directory (`<state>/snapshots`) holding
 * `blocks/<2 hex>/<sha256>` and `manifests/<snap-id>.json`. Every object is
 * written with atomicWrite (temp, fsync, rename, fsync dir), so a crash leaves
 * an object whole or absent, and a block is durable before any manifest that
 * names it is written.
 */
export class DirSnapshotStore implements SnapshotStore {
  readonly location: string;
  private readonly blocksDir: string;
  private readonly manifestsDir: string;

  private constructor(readonly dir: string) {
    this.location = `dir:${dir}`;
    this.blocksDir = join(dir, 'blocks');
    this.manifestsDir = join(dir, 'manifests');
  }

  static async open(dir: string): Promise<DirSnapshotStore> {
    const s = new DirSnapshotStore(dir);
    await fsp.mkdir(s.blocksDir, { recursive: true, mode: 0o700 });
    await fsp.mkdir(s.manifestsDir, { recursive: true, mode: 0o700 });
    return s;
  }

  private blockPath(hash: BlockHash): string {
    if (!HASH.test(hash)) throw new SnapshotError('SNAPSHOT_INVALID_PARAMETER', `not a block hash: ${JSON.stringify(hash)}`);
    return join(this.blocksDir, hash.slice(0, 2), hash);
  }

  private manifestPath(id: string): string {
    if (!SNAP_ID.test(id)) throw new SnapshotError('SNAPSHOT_INVALID_PARAMETER', `not a snapshot id: ${JSON.stringify(id)}`, { awsName: 'InvalidSnapshotID.Malformed' });
    return join(this.manifestsDir, `${id}.json`);
  }

  async putBlock(hash: BlockHash, data: Uint8Array): Promise<void> {
    const p = this.blockPath(hash);
    if (await this.hasBlock(hash)) return;
    const sub = join(this.blocksDir, hash.slice(0, 2));
    try {
      await fsp.mkdir(sub, { mode: 0o700 });
      await fsyncDir(this.blocksDir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    await atomicWrite(p, data);
  }

  async getBlock(hash: BlockHash): Promise<Buffer> {
    try {
      return await fsp.readFile(this.blockPath(hash));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new SnapshotError('SNAPSHOT_BLOCK_NOT_FOUND', `block ${hash} is missing from the snapshot store ${this.location}`);
      }
      throw e;
    }
  }

  async hasBlock(hash: BlockHash): Promise<boolean> {
    try {
      await fsp.access(this.blockPath(hash));
      return true;
    } catch {
      return false;
    }
  }

  async deleteBlock(hash: BlockHash): Promise<void> {
    await fsp.rm(this.blockPath(hash), { force: true });
  }

  async *listBlocks(): AsyncIterable<BlockHash> {
    for (const sub of await fsp.readdir(this.blocksDir)) {
      if (!/^[0-9a-f]{2}$/.test(sub)) continue;
      for (const name of await fsp.readdir(join(this.blocksDir, sub))) if (HASH.test(name)) yield name;
    }
  }

  async putManifest(m: SnapshotManifest): Promise<void> {
    await atomicWrite(this.manifestPath(m.snapshotId), `${JSON.stringify(m)}\n`);
  }

  async getManifest(snapshotId: string): Promise<SnapshotManifest | undefined> {
    const p = this.manifestPath(snapshotId);
    const text = await readTextIfExists(p);
    if (text === undefined) return undefined;
    return parseStateJson('SNAPSHOT_CORRUPT', p, text) as SnapshotManifest;
  }

  async listManifests(): Promise<SnapshotManifest[]> {
    const out: SnapshotManifest[] = [];
    for (const name of (await fsp.readdir(this.manifestsDir)).sort()) {
      const id = name.endsWith('.json') ? name.slice(0, -5) : '';
      if (!SNAP_ID.test(id)) continue;
      const m = await this.getManifest(id);
      if (m) out.push(m);
    }
    return out;
  }

  async deleteManifest(snapshotId: string): Promise<void> {
    await fsp.rm(this.manifestPath(snapshotId), { force: true });
    await fsyncDir(this.manifestsDir);
  }
}
