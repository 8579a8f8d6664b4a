import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { KmsService } from '../../src/kms/kms-core.js';
import { openAuthz, registerAuthzOperations, type AuthzHandles } from '../../src/kms/authz/index.js';
import { selectXtsEngine } from '../../src/crypto/xts-engine.js';
import { VolumeManager } from '../../src/volume/volume-manager.js';
import { KmsCoreKeyService } from '../../src/volume/key-service.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { SNAPSHOT_BLOCK_BYTES, type SnapshotManifest, type SnapshotStore } from '../../src/snapshot/types.js';
import type { Caller } from '../../src/kms/types.js';
import { makeSnapshot } from './make-snapshot.js';

export const ACCOUNT = '111122223333';
export const REGION = 'us-east-1';

/**
 * The parts of a daemon the snapshot engine works with, in this process
 * (as test/snapshot/restore-pipeline.test.ts wires them): the real KMS core
 * with its authorizer and audit, a VolumeManager, one KMS key and the
 * directory store at `<dir>/snapshots`.
 */
export interface InProcessHost {
  dir: string;
  kms: KmsService;
  authz: AuthzHandles;
  mgr: VolumeManager;
  keyService: KmsCoreKeyService;
  root: Caller;
  key: string;
  store: DirSnapshotStore;
  /** A detached volume of two 512 KiB blocks of random data (so its blocks are its own). */
  newVolume(): Promise<string>;
  /** A `completed` snapshot of a new volume (make-snapshot.ts): blocks and header named by no other manifest. */
  newSnapshot(): Promise<SnapshotManifest>;
  close(): Promise<void>;
}

export async function openInProcessHost(prefix: string): Promise<InProcessHost> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  try {
    const authz = await openAuthz({ stateDir: dir, kmsDir: join(dir, 'kms'), accountId: ACCOUNT, region: REGION });
    const kms = await KmsService.open({ stateDir: join(dir, 'kms'), accountId: ACCOUNT, region: REGION, authorizer: authz.authorizer });
    registerAuthzOperations(kms, authz.authorizer, { onKeyDeleted: kms.context.onKeyDeleted });
    const root = authz.identities.callerForUid(0);
    const keyService = new KmsCoreKeyService(kms);
    const mgr = await VolumeManager.open({ stateDir: dir, keyService, hostPrincipal: root, xtsEngine: selectXtsEngine('auto'), region: REGION });
    const key = (await kms.call('CreateKey', { Description: 'snapshot engine' }, root)).KeyMetadata.Arn as string;
    const store = await DirSnapshotStore.open(join(dir, 'snapshots'));
    const newVolume = async (): Promise<string> => {
      const vol = (await mgr.createVolume({ Size: 2 * SNAPSHOT_BLOCK_BYTES, KmsKeyId: key }, root)).VolumeId;
      await mgr.attachVolume({ VolumeId: vol }, root);
      await mgr.getBlockDevice(vol).write(0, randomBytes(2 * SNAPSHOT_BLOCK_BYTES));
      await mgr.getBlockDevice(vol).flush();
      await mgr.detachVolume({ VolumeId: vol }, root);
      return vol;
    };
    return {
      dir, kms, authz, mgr, keyService, root, key, store, newVolume,
      newSnapshot: async () => makeSnapshot(dir, await newVolume()),
      close: async () => {
        await mgr.close().catch(() => {});
        await kms.close().catch(() => {});
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** `store` with some of its methods replaced (a fault or a step injected); everything else is the store's own. */
export function storeWith<S extends SnapshotStore>(store: S, over: Partial<Pick<SnapshotStore, 'getManifest' | 'putManifest' | 'getBlock' | 'putBlock'>>): S {
  return new Proxy(store, {
    get(target, prop) {
      if (typeof prop === 'string' && prop in over) return over[prop as keyof typeof over];
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

/** Every hash a manifest names (header and blocks) that the store does not have. */
export async function missingBlocks(store: SnapshotStore, m: SnapshotManifest): Promise<string[]> {
  const out: string[] = [];
  for (const h of [...(m.header ? [m.header] : []), ...m.blocks.map(([, x]) => x)]) if (!(await store.hasBlock(h))) out.push(h);
  return out;
}
