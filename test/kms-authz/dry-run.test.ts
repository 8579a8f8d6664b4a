import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Kms } from '../../src/kms/open-kms.js';
import type { Caller } from '../../src/kms/types.js';
import { awsName, openTestKms, tempDir } from './helpers.js';

/**
 * DryRun (docs/architecture.md §5.4), through the real core wired as the
 * daemon wires it: honoured only by the operations whose request has the
 * member, ignored by the others.
 */
let t: ReturnType<typeof tempDir>;
let kms: Kms;
let root: Caller;

const call = (op: string, req: Record<string, unknown>, caller: Caller = root): Promise<Record<string, any>> => kms.core.call(op, req, caller);
const keyIds = async (): Promise<string[]> => (await call('ListKeys', {})).Keys.map((k: { KeyId: string }) => k.KeyId);

beforeAll(async () => {
  t = tempDir('ebsd-dry-run-');
  kms = await openTestKms(t.dir);
  root = kms.identities.callerForUid(0);
}, 60_000);

afterAll(async () => {
  await kms?.close();
  t?.cleanup();
});

describe('DryRun on an operation without the member is ignored', () => {
  it('CreateKey with DryRun creates the key; ScheduleKeyDeletion and TagResource with DryRun take effect', async () => {
    const before = await keyIds();
    const created = await call('CreateKey', { Description: 'dry', DryRun: true });
    expect(created.KeyMetadata.Description).toBe('dry');
    expect(await keyIds()).toEqual([...before, created.KeyMetadata.KeyId].sort());
    const keyId = created.KeyMetadata.KeyId as string;
    await call('TagResource', { KeyId: keyId, Tags: [{ TagKey: 'k', TagValue: 'v' }], DryRun: true });
    expect((await call('ListResourceTags', { KeyId: keyId })).Tags).toEqual([{ TagKey: 'k', TagValue: 'v' }]);
    await call('ScheduleKeyDeletion', { KeyId: keyId, PendingWindowInDays: 7, DryRun: true });
    expect((await call('DescribeKey', { KeyId: keyId })).KeyMetadata.KeyState).toBe('PendingDeletion');
    expect((await call('GenerateRandom', { NumberOfBytes: 8, DryRun: true })).Plaintext).toHaveLength(8);
  });

  it('its type is still checked, as every member\'s is: DryRun "yes" on CreateKey is a ValidationException and creates nothing', async () => {
    const before = await keyIds();
    expect(await awsName(call('CreateKey', { DryRun: 'yes' }))).toBe('ValidationException');
    expect(await keyIds()).toEqual(before);
  });
});
