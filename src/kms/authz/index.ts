/**
 * Authorization engine: key policies, identity policies, grants, identities.
 *
 * Wired to the core in one place, src/kms/open-kms.ts (`openKms`): identities
 * and grants (`openAuthz`), the core with the PolicyAuthorizer, the policy and
 * grant operations (`registerAuthzOperations`), and the grant store dropping a
 * deleted key's grants. Callers then come from
 * `identities.callerForUid(peerUid, ...)` (socket) or SigV4 (network).
 */
import { join } from 'node:path';
import { GrantStore } from './grants.js';
import { Identities, type IdentitiesInit } from './identities.js';
import { PolicyAuthorizer } from './policy-authorizer.js';

export { PolicyAuthorizer, authzRequestOf, keyInfo, mayRetireByGrant } from './policy-authorizer.js';
export { registerAuthzOperations, LOCKOUT_MESSAGE } from './operations.js';
export { Identities, IamError, IDENTITIES_FILE } from './identities.js';
export { GrantStore, grantListEntry, GRANT_OPERATIONS, LIMITS as GRANT_LIMITS, checkGrantTokens, parseConstraints, operationsForKey, serviceGrantsUnsupported } from './grants.js';
export { PolicyEvaluator, constraintsHold, grantNoBroader, denialMessage, denialReason } from './evaluate.js';
export type { Decision, DenyReason, GrantSource, GrantView } from './evaluate.js';
export { parsePolicy, PolicyCache, MAX_KEY_POLICY_BYTES } from './policy-document.js';
export type { CompiledPolicy, CompiledStatement } from './policy-document.js';
export type { AuthzRequest, KeyInfo, NewGrantInfo, GrantConstraints } from './request-context.js';
export { EBS_ALIAS, defaultKeyPolicy, ebsManagedKeyPolicy, managedKeyRefusal } from './managed-keys.js';

export const GRANTS_FILE = 'grants.json';

export interface AuthzHandles {
  identities: Identities;
  grants: GrantStore;
  authorizer: PolicyAuthorizer;
}

/** Open identities (`<stateDir>/identities.json`) and grants (`<kmsDir>/grants.json`) and build the authorizer. */
export async function openAuthz(opts: { stateDir: string; kmsDir: string } & IdentitiesInit): Promise<AuthzHandles> {
  const identities = await Identities.open(opts.stateDir, {
    ...(opts.accountId ? { accountId: opts.accountId } : {}),
    ...(opts.region ? { region: opts.region } : {}),
  });
  // Grantee and retiring principals bound to their principal ids (principal-bindings.ts, `grantPrincipalId`).
  const grants = await GrantStore.open(join(opts.kmsDir, GRANTS_FILE), { principalExists: identities.principalExists, principals: identities });
  return { identities, grants, authorizer: new PolicyAuthorizer({ identities, grants }) };
}
