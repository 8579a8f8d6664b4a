import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { KmsService } from '../../src/kms/kms-core.js';
import { openKms } from '../../src/kms/open-kms.js';
import type { AuthzHandles } from '../../src/kms/authz/index.js';
import type { Caller } from '../../src/kms/types.js';
import { tempDir } from './helpers.js';

/**
 * Through the real core (HSM, keystore, dispatcher, audit log): a mapped
 * principal with no policies looping a refused Decrypt costs bounded audit
 * bytes (the refusals are aggregated per principal, operation and reason,
 * src/kms/audit/refusal-aggregator.ts), while allowed calls stay one event each.
 */
const ACCOUNT = '111122223333';
const REGION = 'us-east-1';
const DENIALS = 400;
const ALLOWED = 25;

let t: ReturnType<typeof tempDir>;
let kms: KmsService;
let authz: AuthzHandles;
let root: Caller;
let alice: Caller;
const auditFile = (): string => join(t.dir, 'kms', 'audit', 'events.ndjson');
const events = (): Record<string, any>[] => readFileSync(auditFile(), 'utf8').trim().split('\n').map((l) => JSON.parse(l));

beforeAll(async () => {
  t = tempDir('ebsd-core-refusals-');
  // Wired as the daemon wires it (src/kms/open-kms.ts).
  const opened = await openKms({ stateDir: t.dir, accountId: ACCOUNT, region: REGION, hsmMode: 'inline', passphrase: 'test-passphrase', scryptCost: { N: 2 ** 10, r: 8, p: 1 } });
  authz = opened;
  kms = opened.core;
  root = authz.identities.callerForUid(0);
  await authz.identities.createUser('alice');
  await authz.identities.mapUid(1000, 'user/alice');
  alice = authz.identities.callerForUid(1000);
}, 60_000);

afterAll(async () => {
  await kms?.close().catch(() => {});
  t?.cleanup();
});

describe('KMS core: refused calls of a mapped principal', () => {
  it(`${DENIALS} denied Decrypts cost bounded audit bytes; ${ALLOWED} allowed ones are audited one to one`, async () => {
    const { KeyMetadata } = await kms.call('CreateKey', {}, root) as { KeyMetadata: { KeyId: string } };
    const { CiphertextBlob } = await kms.call('Encrypt', { KeyId: KeyMetadata.KeyId, Plaintext: Buffer.from('secret') }, root) as { CiphertextBlob: Uint8Array };
    const before = statSync(auditFile()).size;
    const seqBefore = events().length;

    for (let i = 0; i < DENIALS; i++) {
      await expect(kms.call('Decrypt', { CiphertextBlob }, alice)).rejects.toMatchObject({ awsName: 'AccessDeniedException' });
    }
    for (let i = 0; i < ALLOWED; i++) await kms.call('Decrypt', { CiphertextBlob }, root);
    await kms.close(); // flushes the aggregated summary

    const grown = statSync(auditFile()).size - before;
    const added = events().slice(seqBefore);
    const denied = added.filter((e) => e.errorCode === 'AccessDeniedException');
    // Every denial is accounted for: the first few written as they happened, the rest counted in a summary.
    const accounted = denied.reduce((n, e) => n + (e.additionalEventData?.aggregated?.count ?? 1), 0);
    expect(accounted).toBe(DENIALS);
    expect(denied.every((e) => e.eventName === 'Decrypt' && e.userIdentity.arn === alice.arn)).toBe(true);
    expect(denied.some((e) => e.additionalEventData?.aggregated)).toBe(true);
    // Bounded: (burst + 1) events per 10 s window; one event per denial would be DENIALS lines.
    expect(denied.length).toBeLessThanOrEqual(DENIALS / 10);
    const perEvent = Math.max(...added.map((e) => JSON.stringify(e).length)) + 1;
    expect(grown).toBeLessThanOrEqual((DENIALS / 10 + ALLOWED) * perEvent);
    // Allowed calls are not aggregated.
    const allowed = added.filter((e) => e.eventName === 'Decrypt' && !e.errorCode);
    expect(allowed).toHaveLength(ALLOWED);
    expect(allowed.every((e) => e.userIdentity.type === 'Root' && !e.additionalEventData?.aggregated)).toBe(true);
  }, 120_000);
});
