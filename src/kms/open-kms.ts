/**
 * The one place the KMS is wired (docs/architecture.md §2.5): identities and
 * grants (`openAuthz`), the core with the policy authorizer, and the
 * operations of the authorization engine (policies, grants), whose grant
 * store forgets a key's grants when the core deletes the key. The daemon,
 * the test helpers and the benchmarks all open the KMS here, so what a test
 * exercises is what the daemon runs.
 */
import { join } from 'node:path';
import { EbsdError } from '../util/errors.js';
import { KmsService, type KmsOptions } from './kms-core.js';
import { openAuthz, registerAuthzOperations } from './authz/index.js';
import { keyPolicyBinder } from './authz/principal-bindings.js';
import type { Identities } from './authz/identities.js';
import type { GrantStore } from './authz/grants.js';
import type { PolicyAuthorizer } from './authz/policy-authorizer.js';

export interface OpenKmsOptions extends Omit<KmsOptions, 'stateDir' | 'accountId' | 'region' | 'authorizer'> {
  /** The state dir: `identities.json` here, the core under `kmsDir`. */
  stateDir: string;
  /** The core's directory (keys, grants, audit, HSM); default `<stateDir>/kms`. */
  kmsDir?: string;
  /** Account and region of a new state dir; an existing one keeps its own. */
  accountId?: string;
  /** For an existing state dir, a different region is refused (REGION_MISMATCH). */
  region?: string;
}

/** An open KMS: the core and the authorization engine it consults. */
export interface Kms {
  readonly core: KmsService;
  readonly identities: Identities;
  readonly grants: GrantStore;
  readonly authorizer: PolicyAuthorizer;
  readonly accountId: string;
  readonly region: string;
  /** Seal and close the audit log, stop the HSM, wait for identity and grant writes. */
  close(): Promise<void>;
}

export async function openKms(o: OpenKmsOptions): Promise<Kms> {
  const { stateDir, kmsDir = join(stateDir, 'kms'), accountId, region, ...core } = o;
  const authz = await openAuthz({ stateDir, kmsDir, ...(accountId ? { accountId } : {}), ...(region ? { region } : {}) });
  const ids = authz.identities;
  if (region && region !== ids.region) {
    throw new EbsdError('REGION_MISMATCH', `state dir ${stateDir} belongs to region ${ids.region}, not ${region}`);
  }
  const kms = await KmsService.open({ ...core, stateDir: kmsDir, accountId: ids.accountId, region: ids.region, authorizer: authz.authorizer });
  registerAuthzOperations(kms, authz.authorizer, { onKeyDeleted: (fn) => kms.onKeyDeleted(fn) });
  try {
    // Key policies are stored bound to their principals' unique ids; one stored before that is bound now.
    await kms.bindKeyPolicies(keyPolicyBinder(ids));
  } catch (e) {
    await kms.close();
    throw e;
  }
  let closed: Promise<void> | undefined;
  return {
    core: kms,
    identities: ids,
    grants: authz.grants,
    authorizer: authz.authorizer,
    accountId: ids.accountId,
    region: ids.region,
    close: () => (closed ??= (async () => {
      try { await kms.close(); } finally { await ids.flush(); await authz.grants.flush(); }
    })()),
  };
}
