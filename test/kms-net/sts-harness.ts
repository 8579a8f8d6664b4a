/**
 * AssumeRole with real components, in process (the sts-*.test.ts files): an HSM (inline engine,
 * sealed domain in `dir`), identities, trust store, access keys and two StsServices, `sts` alone and
 * `judged`, whose callers' identity policies the policy evaluator judges as the daemon wires it.
 * Session callers come from real session credentials (StsService.credentials), as the listener hands
 * them over. Time is an input (`t0`). Given a KMS's own `hsm` and `ids` (`on`), the services are
 * wired on them as the daemon wires its listener's STS, and closing the harness leaves them open.
 */
import { startHsm, type Hsm } from '../../src/kms/hsm/hsm-client.js';
import { Identities } from '../../src/kms/authz/identities.js';
import { AccessKeyStore } from '../../src/kms/sts/access-keys.js';
import { TrustPolicies } from '../../src/kms/sts/trust-policies.js';
import { StsService } from '../../src/kms/sts/sts-service.js';
import type { AssumeRoleParams } from '../../src/kms/sts/assume-role-context.js';
import type { Caller } from '../../src/kms/types.js';
import { PolicyEvaluator } from '../../src/kms/authz/evaluate.js';
import { TEST_SCRYPT } from '../kms/helpers.js';

export interface StsHarness {
  hsm: Hsm;
  ids: Identities;
  trust: TrustPolicies;
  sts: StsService;
  judged: StsService;
  /** The trust policy of `role`: these statements. */
  put(role: string, ...Statement: Record<string, unknown>[]): Promise<void>;
  /** AssumeRole of `role` (session `job-1` unless `p` names one) by `caller` through `s`: 'ok' or the STS error name. */
  outcome(caller: Caller, role: string, p?: Partial<AssumeRoleParams>, s?: StsService): Promise<string>;
  /** A session (`ROLE-session`) of `role` assumed by `by` through `s` (with AssumeRole members `p`), as the verifier hands it over. */
  sessionOf(role: string, by: Caller, s?: StsService, p?: Partial<AssumeRoleParams>): Promise<Caller>;
  close(): Promise<void>;
}

export async function openStsHarness(dir: string, t0: number, on?: { hsm: Hsm; ids: Identities }): Promise<StsHarness> {
  const hsm = on?.hsm ?? await startHsm({ stateDir: dir, passphrase: 'test', scryptCost: TEST_SCRYPT }, 'inline');
  try {
    const ids = on?.ids ?? await Identities.open(dir, { region: 'us-east-1' });
    const trust = await TrustPolicies.open(dir, ids);
    const keys = await AccessKeyStore.open(dir, hsm, ids);
    const sts = new StsService(ids, keys, trust, hsm);
    const evaluator = new PolicyEvaluator({ identityPolicies: (c) => ids.identityPolicies(c) });
    const judged = new StsService(ids, keys, trust, hsm, (caller, action, resource, context) => evaluator.evaluate({ action, caller, resource, ...(context ? { context } : {}) }));
    return {
      hsm, ids, trust, sts, judged,
      put: (role, ...Statement) => trust.put(role, JSON.stringify({ Version: '2012-10-17', Statement })),
      outcome: (caller, role, p = {}, s = sts) =>
        s.assumeRole(caller, { RoleArn: ids.roleArn(role), RoleSessionName: 'job-1', ...p }, t0).then(() => 'ok', (e: { awsName?: string }) => e.awsName ?? String(e)),
      sessionOf: async (role, by, s = sts, p = {}) => {
        const r = await s.assumeRole(by, { RoleArn: ids.roleArn(role), RoleSessionName: `${role}-session`, ...p }, t0) as any;
        return { ...(s.credentials(r.Credentials.AccessKeyId, r.Credentials.SessionToken, t0 + 1000)).principal, sourceIp: '127.0.0.1' };
      },
      close: () => (on ? Promise.resolve() : hsm.close()),
    };
  } catch (e) {
    if (!on) await hsm.close();
    throw e;
  }
}
