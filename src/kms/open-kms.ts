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
import { silentLogger, type Logger } from '../util/logger.js';
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
    _logGrantMigration(authz.grants, (core.logger ?? silentLogger).child({ component: 'kms' }));
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

/**
 * Grants stored before bindings were bound when the grant store opened (grants.ts,
 * `GrantStore.open`); said here, as the key-policy migration says its own (kms-core.ts
 * `bindKeyPolicies`): how many, and how many now serve nobody, which an operator may want to
 * make again for the principal meant.
 */
function _logGrantMigration(grants: GrantStore, log: Logger): void {
  const { bound, nobody } = grants.migration;
  if (bound === 0) return;
  log.info({ grants: bound }, 'bound the principals of stored grants to their unique ids');
  if (nobody > 0) {
    log.warn({ grants: nobody }, 'stored grants name users, roles or sessions that do not exist (or are of another partition): they are bound to nobody and give nothing in that role (ListGrants shows them; create them again once the principal exists)');
  }
}
