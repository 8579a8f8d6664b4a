import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Kms } from '../../src/kms/open-kms.js';
import type { Caller } from '../../src/kms/types.js';
import { ACCT, REGION, auditEventsIn, awsName, openTestKms, tempDir } from './helpers.js';

/**
 * AWS managed keys are created on first use only for the service aliases
 * ebsd uses (`alias/aws/ebs`); any other `alias/aws/...` names nothing, for
 * any caller (docs/architecture.md §5.4). Through the real core, wired as the
 * daemon wires it.
 */
let t: ReturnType<typeof tempDir>;
let kms: Kms;
let root: Caller;
let nobody: Caller;

const keyCount = async (): Promise<number> => ((await kms.core.call('ListKeys', {}, root)) as { Keys: unknown[] }).Keys.length;
const aliasNames = async (): Promise<string[]> => ((await kms.core.call('ListAliases', {}, root)) as { Aliases: { AliasName: string }[] }).Aliases.map((a) => a.AliasName);
const managedCreations = (): Record<string, any>[] => auditEventsIn(t.dir).filter((e) => e.eventType === 'AwsServiceEvent' && e.eventName === 'CreateKey');

beforeAll(async () => {
  t = tempDir('ebsd-managed-keys-');
  kms = await openTestKms(t.dir);
  root = kms.identities.callerForUid(0);
  await kms.identities.createUser('nobody');
  await kms.identities.mapUid(1001, 'user/nobody');
  nobody = kms.identities.callerForUid(1001);
}, 60_000);

afterAll(async () => {
  await kms?.close();
  t?.cleanup();
});

describe('alias/aws/...: only the service aliases ebsd uses are created on first use', () => {
  it('alias/aws/<not a service of ebsd> is NotFoundException, for a caller without permissions and for the root; nothing is created', async () => {
    const aliasArn = (name: string): string => `arn:aws:kms:${REGION}:${ACCT}:${name}`;
    for (const [caller, id] of [[nobody, 'alias/aws/s3'], [root, 'alias/aws/anything-at-all'], [root, aliasArn('alias/aws/rds')]] as const) {
      const e = await kms.core.call('DescribeKey', { KeyId: id }, caller).then(() => undefined, (x: { awsName?: string; message: string }) => x);
      const name = id.startsWith('arn:') ? id : aliasArn(id);
      expect(e).toMatchObject({ awsName: 'NotFoundException', message: `Alias ${name} is not found.` });
    }
    expect(await awsName(kms.core.call('Encrypt', { KeyId: 'alias/aws/s3', Plaintext: Buffer.from('x') }, root))).toBe('NotFoundException');
    expect(await keyCount()).toBe(0);
    expect(await aliasNames()).toEqual([]);
    expect(managedCreations()).toEqual([]);
  });

  it('alias/aws/ebs is created once, on first use, with its service event', async () => {
    const d = await kms.core.call('DescribeKey', { KeyId: 'alias/aws/ebs' }, root) as { KeyMetadata: { KeyManager: string; Arn: string } };
    expect(d.KeyMetadata.KeyManager).toBe('AWS');
    await kms.core.call('DescribeKey', { KeyId: `arn:aws:kms:${REGION}:${ACCT}:alias/aws/ebs` }, root);
    expect(await keyCount()).toBe(1);
    expect(await aliasNames()).toEqual(['alias/aws/ebs']);
    expect(managedCreations().map((e) => e.resources[0].ARN)).toEqual([d.KeyMetadata.Arn]);
  });
});
