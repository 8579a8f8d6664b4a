import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Caller } from '../../src/kms/types.js';
import { openKms, type Kms } from '../../src/kms/open-kms.js';
import { tempDir as makeTempDir, type TempDir } from '../helpers/temp-dir.js';

export const ACCT = '111122223333';
export const OTHER = '444455556666';
export const REGION = 'us-west-2';
export const KEY_ARN = `arn:aws:kms:${REGION}:${ACCT}:key/1234abcd-12ab-34cd-56ef-1234567890ab`;
export const EC2_VIA = `ec2.${REGION}.amazonaws.com`;

export const root: Caller = { arn: `arn:aws:iam::${ACCT}:root`, accountId: ACCT, type: 'Root', principalId: ACCT };
export const user = (name: string, acct = ACCT): Caller => ({
  arn: `arn:aws:iam::${acct}:user/${name}`, accountId: acct, type: 'IAMUser', principalId: `AIDA${name.toUpperCase()}`, userName: name,
});
export const session = (role: string, s: string, acct = ACCT): Caller => ({
  arn: `arn:aws:sts::${acct}:assumed-role/${role}/${s}`, accountId: acct, type: 'AssumedRole', principalId: `AROAX:${s}`,
});
export const unknown: Caller = { arn: `arn:aws:iam::${ACCT}:uid/4242`, accountId: ACCT, type: 'Unknown', uid: 4242 };

/** test/helpers/temp-dir.ts, named for the authorization tests. */
export const tempDir = (prefix = 'ebsd-authz-'): TempDir => makeTempDir(prefix);

export const doc = (...Statement: unknown[]): string => JSON.stringify({ Version: '2012-10-17', Statement });

/**
 * The KMS wired as the daemon wires it (src/kms/open-kms.ts), in `dir`: the
 * HSM inline and a cheap scrypt, as the core tests open it.
 */
export function openTestKms(dir: string): Promise<Kms> {
  return openKms({ stateDir: dir, accountId: ACCT, region: REGION, hsmMode: 'inline', passphrase: 'test-passphrase', scryptCost: { N: 2 ** 10, r: 8, p: 1 } });
}

/** The audit log of a KMS opened in `dir`, parsed. */
export function auditEventsIn(dir: string): Record<string, any>[] {
  return readFileSync(join(dir, 'kms', 'audit', 'events.ndjson'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
}

/** The AWS exception name a call failed with, or 'no error'. */
export async function awsName(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as { awsName?: string }).awsName ?? `non-KMS error: ${(e as Error).message}`;
  }
  return 'no error';
}
