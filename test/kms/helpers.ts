import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { KmsService, type KmsOptions } from '../../src/kms/kms-core.js';
import type { Caller } from '../../src/kms/types.js';
import { tempDir as makeTempDir, type TempDir } from '../helpers/temp-dir.js';

export const ACCOUNT = '111122223333';
export const REGION = 'us-east-1';
export const admin: Caller = { arn: `arn:aws:iam::${ACCOUNT}:root`, accountId: ACCOUNT, type: 'Root', principalId: ACCOUNT };
export const stranger: Caller = { arn: 'arn:aws:iam::444455556666:user/eve', accountId: '444455556666', type: 'IAMUser', userName: 'eve' };

/** test/helpers/temp-dir.ts, named for the KMS tests. */
export const tempDir = (prefix = 'ebsd-kms-'): TempDir => makeTempDir(prefix);

/** A simulated clock that tests can move forward. */
export class FakeClock {
  constructor(public t = Date.UTC(2025, 0, 1)) {}
  now = (): number => this.t;
  advanceDays(d: number): void { this.t += d * 86_400_000; }
}

/** scrypt cost for passphrase domains in tests (production: N=2^15); it changes nothing else. */
export const TEST_SCRYPT = { N: 2 ** 10, r: 8, p: 1 };

export async function openKms(dir: string, extra: Partial<KmsOptions> = {}): Promise<KmsService> {
  return KmsService.open({ stateDir: dir, accountId: ACCOUNT, region: REGION, scryptCost: TEST_SCRYPT, ...extra });
}

/**
 * An audit log to check: a KMS in `dir` opened with `extra`, one key created and described `n`
 * times by the account root (n + 1 events), then closed, which seals the log. Returns the key id,
 * for calls after a reopen.
 */
export async function sealedAuditLog(dir: string, n: number, extra: Partial<KmsOptions> = {}): Promise<string> {
  const kms = await openKms(dir, extra);
  const k = (await kms.call('CreateKey', {}, admin)).KeyMetadata as { KeyId: string };
  for (let i = 0; i < n; i++) {
    await kms.call('DescribeKey', { KeyId: k.KeyId }, admin);
    await kms.audit.sealsSettled(); // a digest due by count is signed beside later calls: here, before them
  }
  await kms.close();
  return k.KeyId;
}

/** The key policy as stored in the key's file (`<kms>/keys/<id>.json`, docs/kms-format.md). */
export function storedKeyPolicy(kmsDir: string, keyId: string): string {
  return (JSON.parse(readFileSync(join(kmsDir, 'keys', `${keyId}.json`), 'utf8')) as { policy: string }).policy;
}

/** Expect a rejected promise with the given AWS exception name. */
export async function awsError(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as { awsName?: string }).awsName ?? `non-KMS error: ${(e as Error).message}`;
  }
  return 'no error';
}
