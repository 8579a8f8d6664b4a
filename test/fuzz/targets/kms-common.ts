import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { scratchRoot } from '../harness/target.js';
import { join } from 'node:path';
import type { KmsService } from '../../../src/kms/kms-core.js';
import type { AuthzHandles } from '../../../src/kms/authz/index.js';
import { openKms } from '../../../src/kms/open-kms.js';
import { EVENTS_FILE } from '../../../src/kms/audit/audit-log.js';
import { KmsError } from '../../../src/kms/errors.js';
import { EbsdError } from '../../../src/util/errors.js';
import type { Caller } from '../../../src/kms/types.js';

/**
 * A real KMS core for the targets that go through it: HSM (inline, so the
 * fuzz worker needs no second thread), keystore, authorization engine,
 * grants and audit log, on a scratch state dir (tmpfs where there is one).
 * Opened with a key and alias `alias/fuzz`, a second key for the calls that
 * disable or delete, a grant, and a ciphertext blob, which request templates
 * name as $KEY_ARN, $KEY2, $GRANT_ID, $GRANT_TOKEN, $BLOB.
 */
export interface KmsFixture {
  dir: string;
  kms: KmsService;
  authz: AuthzHandles;
  root: Caller;
  vars: Record<string, string>;
  auditFile: string;
}

export const ACCOUNT = '111122223333';
export const REGION = 'us-east-1';
export const CONTEXT = { 'aws:ebs:id': 'vol-0123456789abcdef0' };

export async function openKmsFixture(): Promise<KmsFixture> {
  const dir = mkdtempSync(join(scratchRoot(), 'ebsd-fuzz-kms-'));
  try {
    const kmsDir = join(dir, 'kms');
    // Wired as the daemon wires it; the KEK in a 0600 file (no passphrase): no scrypt per reset, and no test-only cost outside vitest.
    const authz = await openKms({ stateDir: dir, kmsDir, accountId: ACCOUNT, region: REGION, hsmMode: 'inline' });
    const kms = authz.core;
    const root = authz.identities.callerForUid(0);
    const k1 = (await kms.call('CreateKey', { Description: 'fuzz' }, root)) as { KeyMetadata: { Arn: string; KeyId: string } };
    const k2 = (await kms.call('CreateKey', { Description: 'fuzz 2' }, root)) as { KeyMetadata: { Arn: string; KeyId: string } };
    await kms.call('CreateAlias', { AliasName: 'alias/fuzz', TargetKeyId: k1.KeyMetadata.KeyId }, root);
    const g = (await kms.call('CreateGrant', { KeyId: k1.KeyMetadata.Arn, GranteePrincipal: root.arn, Operations: ['Decrypt'] }, root)) as { GrantId: string; GrantToken: string };
    const enc = (await kms.call('Encrypt', { KeyId: 'alias/fuzz', Plaintext: Buffer.from('fuzz plaintext'), EncryptionContext: CONTEXT }, root)) as { CiphertextBlob: Uint8Array };
    return {
      dir, kms, authz, root, auditFile: join(kmsDir, 'audit', EVENTS_FILE),
      vars: {
        $KEY_ARN: k1.KeyMetadata.Arn, $KEY2: k2.KeyMetadata.KeyId, $GRANT_ID: g.GrantId, $GRANT_TOKEN: g.GrantToken,
        $BLOB: Buffer.from(enc.CiphertextBlob).toString('base64'),
      },
    };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

export async function closeKmsFixture(f: KmsFixture): Promise<void> {
  try {
    await f.kms.close();
    await f.authz.identities.flush();
  } finally {
    rmSync(f.dir, { recursive: true, force: true });
  }
}

export const auditSize = (f: KmsFixture): number => statSync(f.auditFile).size;

/**
 * A typed KMS refusal: a KmsError with an AWS name, except the core's
 * "An internal error occurred" wrapper around a non-ebsd error, which is an
 * untyped throw in disguise (the dispatcher catches it and hides it).
 */
export function isTypedKmsError(e: unknown): boolean {
  if (!(e instanceof KmsError) || !e.awsName) return false;
  const cause = (e as { cause?: unknown }).cause;
  return !(e.awsName === 'KMSInternalException' && cause !== undefined && !(cause instanceof EbsdError));
}

/** Replace $NAMES in a request template's text. */
export const fill = (text: string, vars: Record<string, string>): string => text.replace(/\$[A-Z_0-9]+/g, (m) => vars[m] ?? m);
