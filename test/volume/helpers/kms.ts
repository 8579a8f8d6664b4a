import type { Caller } from '../../../src/kms/types.js';
import type { KeyService } from '../../../src/volume/key-service.js';
import { FakeKms } from './fake-kms.js';

/** What the volume tests need from a KMS: the KeyService plus the operator's levers. */
export interface KmsHarness {
  kind: 'real-core' | 'fake';
  keyService: KeyService;
  host: Caller;
  user: Caller;
  createKey(alias?: string): Promise<string>;
  disableKey(arn: string): Promise<void>;
  revokeGrant(keyArn: string, grantId: string): Promise<void>;
  /** Make KMS stop answering (unreachable), if the harness can. */
  setUnreachable(down: boolean): void;
  close(): Promise<void>;
}

export const USER: Caller = { arn: 'arn:aws:iam::111122223333:user/alice', accountId: '111122223333', type: 'IAMUser', userName: 'alice', uid: 1000 };
export const HOST: Caller = { arn: 'arn:aws:iam::111122223333:role/ebsd-host', accountId: '111122223333', type: 'Role' };

export async function kmsHarness(_stateDir: string): Promise<KmsHarness> {
  const fake = new FakeKms();
  return {
    kind: 'fake',
    keyService: fake,
    host: HOST,
    user: USER,
    createKey: async (alias) => fake.createKey(alias),
    disableKey: async (arn) => fake.setEnabled(arn, false),
    revokeGrant: async (_arn, id) => fake.revokeGrant(id),
    setUnreachable: (d) => void (fake.down = d),
    close: async () => {},
  };
}
