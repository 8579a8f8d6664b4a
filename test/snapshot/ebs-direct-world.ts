import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import { KmsService } from '../../src/kms/kms-core.js';
import { openAuthz, registerAuthzOperations } from '../../src/kms/authz/index.js';
import type { Caller } from '../../src/kms/types.js';
import { DirSnapshotStore } from '../../src/snapshot/dir-store.js';
import { parsePutSnapshotBlock } from '../../src/snapshot/ebs-direct-input.js';

/**
 * What the in-process EBS direct tests (ebs-direct-clock, ebs-direct-bounds) stand on: a real
 * KMS core with its authorizer (inline HSM, a cheap scrypt), the account root, and a directory
 * store, in a temp dir removed after the file; and the requests and refusal checks they share.
 */
export const ACCOUNT = '111122223333';
export const REGION = 'us-east-1';
export const BLOCK = 512 * 1024;
export const T0 = Date.parse('2026-11-30T09:00:00Z');

export interface EbsDirectWorld {
  dir: string;
  authz: Awaited<ReturnType<typeof openAuthz>>;
  kms: KmsService;
  root: Caller;
  store: DirSnapshotStore;
}

/** The world, filled in by a beforeAll this registers (call it at the top of a test file, before its own hooks). */
export function ebsDirectWorld(prefix: string): EbsDirectWorld {
  const w = {} as EbsDirectWorld;
  beforeAll(async () => {
    w.dir = mkdtempSync(join(tmpdir(), prefix));
    w.authz = await openAuthz({ stateDir: w.dir, kmsDir: join(w.dir, 'kms'), accountId: ACCOUNT, region: REGION });
    w.kms = await KmsService.open({ stateDir: join(w.dir, 'kms'), accountId: ACCOUNT, region: REGION, authorizer: w.authz.authorizer, hsmMode: 'inline', passphrase: 'test-passphrase', scryptCost: { N: 2 ** 10, r: 8, p: 1 } });
    registerAuthzOperations(w.kms, w.authz.authorizer, { onKeyDeleted: w.kms.context.onKeyDeleted });
    w.root = w.authz.identities.callerForUid(0);
    w.store = await DirSnapshotStore.open(join(w.dir, 'snapshots'));
  }, 30_000);
  afterAll(async () => {
    await w.kms?.close();
    if (w.dir) rmSync(w.dir, { recursive: true, force: true });
  });
  return w;
}

/** PutSnapshotBlock of `data` (512 KiB) at `index`, with its SHA256 checksum. */
export const putReq = (snap: string, index: number, data: Buffer) => parsePutSnapshotBlock({
  SnapshotId: snap, BlockIndex: index, BlockData: data, DataLength: BLOCK, Checksum: createHash('sha256').update(data).digest('base64'), ChecksumAlgorithm: 'SHA256',
});

/** `p` fails with the EBS error `awsName` (and `reason`, if given). */
export async function refused(p: Promise<unknown>, awsName: string, reason?: string): Promise<void> {
  const e = (await p.then(() => undefined, (x: unknown) => x)) as { awsName?: string; reason?: string; message?: string } | undefined;
  expect(e, `expected ${awsName}`).toBeDefined();
  expect(e!.awsName, e!.message).toBe(awsName);
  if (reason) expect(e!.reason, e!.message).toBe(reason);
}
