import type { CallContext, KeyPolicyValidator, NewKeyPolicyCheck, OperationContext, OperationHandler } from '../dispatcher.js';
import { InvalidGrantIdException, InvalidMarkerException, MalformedPolicyDocumentException, NotFoundException, ValidationException } from '../errors.js';
import type { KeyRecord } from '../key-record.js';
import type { KmsResponse } from '../types.js';
import { checkGrantTokens, grantListEntry, serviceGrantsUnsupported, type CreateGrantInput, type Grant, type KeyFacts, type PreparedGrant } from './grants.js';
import { keyInfo, type PolicyAuthorizer } from './policy-authorizer.js';
import { parsePolicy } from './policy-document.js';
import { bindPrincipals, shownPolicy } from './principal-bindings.js';
import { dataMap } from '../data-map.js';
import { checkKeyPolicySize } from '../validate.js';

/**
 * KMS operations owned by the authorization layer, with AWS's request and
 * response shapes and exception names (KMS API reference): PutKeyPolicy,
 * GetKeyPolicy, ListKeyPolicies, CreateGrant, ListGrants,
 * ListRetirableGrants, RetireGrant, RevokeGrant. Registered into the core's
 * dispatcher with `registerAuthzOperations`.
 */

export interface OperationRegistry {
  registerOperation(name: string, handler: OperationHandler): void;
  /** Account and region of the core (KmsService and Dispatcher have them). */
  readonly accountId?: string;
  readonly region?: string;
  /** Install CreateKey's key-policy validator in the core (KmsService and Dispatcher have it). */
  setKeyPolicyValidator?(v: KeyPolicyValidator): void;
}

const POLICY_NAME = 'default';
/** KMS API reference, PutKeyPolicy: "The new key policy will not allow you to update the key policy in the future." */
export const LOCKOUT_MESSAGE = 'The new key policy will not allow you to update the key policy in the future.';

function _keyId(v: unknown, name = 'KeyId'): string {
  if (typeof v !== 'string' || v.length < 1 || v.length > 2048) throw new ValidationException(`${name} must be a string of 1 to 2048 characters`);
  return v;
}

function _optString(r: Record<string, unknown>, name: string, max: number): string | undefined {
  const v = r[name];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || v.length < 1 || v.length > max) throw new ValidationException(`${name} must be a string of 1 to ${max} characters`);
  return v;
}

/** Grant ids this KMS issues: 64 lowercase hex characters, as AWS's (grants.ts). */
const GRANT_ID_RE = /^[0-9a-f]{64}$/;

/**
 * KMS API reference, RetireGrant / RevokeGrant / ListGrants: GrantId is 1-128
 * characters (ValidationException otherwise); one that cannot be a grant id is
 * InvalidGrantIdException; a well-formed id of no grant is NotFoundException.
 */
function _grantId(v: unknown): string {
  if (typeof v !== 'string' || v.length < 1 || v.length > 128) {
    throw new ValidationException("1 validation error detected: Value at 'grantId' failed to satisfy constraint: Member must have length between 1 and 128");
  }
  if (!GRANT_ID_RE.test(v)) throw new InvalidGrantIdException(`Invalid grant ID ${v}: a grant ID is 64 hexadecimal characters.`);
  return v;
}

function _policyName(v: unknown): void {
  if (v === undefined || v === null) return;
  if (typeof v !== 'string' || !/^[\w]{1,128}$/.test(v)) throw new ValidationException('PolicyName must be 1 to 128 characters of [a-zA-Z0-9_]');
  if (v !== POLICY_NAME) throw new NotFoundException(`No such policy: ${v}. The only valid policy name is "default".`);
}

/** A service-principal member of a grant request, refused if present (grants.ts, `serviceGrantsUnsupported`). */
function _noServicePrincipal(r: Record<string, unknown>, ...members: string[]): void {
  for (const m of members) if (r[m] !== undefined && r[m] !== null) throw serviceGrantsUnsupported(m);
}

const _facts = (k: KeyRecord): KeyFacts => ({ arn: k.arn, accountId: k.accountId, keySpec: k.keySpec, keyUsage: k.keyUsage });

export function registerAuthzOperations(
  registry: OperationRegistry,
  authz: PolicyAuthorizer,
  hooks: { onKeyDeleted?: OperationContext['onKeyDeleted'] } = {},
): void {
  const { grants, identities, evaluator } = authz;

  const putKeyPolicy = async (ctx: OperationContext, call: CallContext): Promise<KmsResponse> => {
    const r = call.request;
    const keyId = _keyId(r.KeyId);
    _policyName(r.PolicyName);
    if (typeof r.Policy !== 'string') throw new ValidationException('Policy is required and must be a string');
    checkKeyPolicySize(r.Policy);
    if (r.BypassPolicyLockoutSafetyCheck !== undefined && typeof r.BypassPolicyLockoutSafetyCheck !== 'boolean') {
      throw new ValidationException('BypassPolicyLockoutSafetyCheck must be a boolean');
    }
    const { key } = await ctx.resolveKey(keyId, { aliases: false });
    await call.authorize({ key });
    // Validated (every principal of the account exists), then compiled bound to the principals' unique ids.
    const named = parsePolicy(r.Policy, { kind: 'key', accountId: ctx.accountId, principalExists: identities.principalExists }).principalArns;
    const bound = bindPrincipals(named, identities);
    const compiled = parsePolicy(r.Policy, { kind: 'key', ...(bound ? { bindings: bound } : {}) });
    if (r.BypassPolicyLockoutSafetyCheck !== true) {
      // KMS API reference, PutKeyPolicy: the caller must still be allowed to call PutKeyPolicy under the new policy.
      const view = ctx.view(key);
      const areq = authz.toAuthzRequest({
        action: 'kms:PutKeyPolicy', operation: 'PutKeyPolicy', caller: call.caller, accountId: ctx.accountId, region: ctx.region,
        key: view, resource: key.arn, request: r, now: call.now,
      });
      areq.key = { ...keyInfo(view), policy: compiled };
      const d = evaluator.evaluate(areq, { useGrants: false });
      if (!d.allowed) throw new MalformedPolicyDocumentException(LOCKOUT_MESSAGE);
    }
    const text = r.Policy;
    await ctx.keystore.update(key.keyId, (rec) => {
      rec.policy = text;
      if (bound) rec.policyPrincipals = bound;
      else delete rec.policyPrincipals;
    });
    return {};
  };

  const getKeyPolicy = async (ctx: OperationContext, call: CallContext): Promise<KmsResponse> => {
    const r = call.request;
    const keyId = _keyId(r.KeyId);
    _policyName(r.PolicyName);
    const { key } = await ctx.resolveKey(keyId, { aliases: false });
    await call.authorize({ key, stateCheck: false });
    // As saved, or with a deleted principal's ARN shown as the unique id it was bound to (principal-bindings.ts).
    return { Policy: shownPolicy(key.policy, key.policyPrincipals, identities), PolicyName: POLICY_NAME };
  };

  const listKeyPolicies = async (ctx: OperationContext, call: CallContext): Promise<KmsResponse> => {
    const r = call.request;
    const keyId = _keyId(r.KeyId);
    if (r.Limit !== undefined && (typeof r.Limit !== 'number' || !Number.isInteger(r.Limit) || r.Limit < 1 || r.Limit > 1000)) {
      throw new ValidationException('Limit must be an integer from 1 to 1000');
    }
    if (r.Marker !== undefined) throw new InvalidMarkerException('The marker is not valid.'); // one page only, so no marker is ever issued
    const { key } = await ctx.resolveKey(keyId, { aliases: false });
    await call.authorize({ key, stateCheck: false });
    return { PolicyNames: [POLICY_NAME], Truncated: false };
  };

  const createGrant = async (ctx: OperationContext, call: CallContext): Promise<KmsResponse> => {
    const r = call.request;
    const keyId = _keyId(r.KeyId);
    _noServicePrincipal(r, 'GranteeServicePrincipal', 'RetiringServicePrincipal');
    const tokens = checkGrantTokens(r.GrantTokens);
    const { key } = await ctx.resolveKey(keyId, { aliases: false });
    const facts = _facts(key);
    // Validated (its principals looked up among the account's users and roles) before authorization, but its
    // refusal answered after: a caller the policies refuse gets AccessDeniedException whatever the grantee,
    // never a ValidationException telling it whether a user or role of that name exists.
    let prepared: PreparedGrant | undefined;
    let invalid: unknown;
    try { prepared = grants.prepare(facts, r as unknown as CreateGrantInput); } catch (e) { invalid = e; }
    // Every condition key of the grant (kms:GrantOperations, kms:GranteePrincipal, kms:GrantConstraintType,
    // kms:EncryptionContext:<key>, ...) is read from the request by the authorizer, never from `prepared`, so the
    // decision is the same whether or not the principals exist (PolicyAuthorizer.toAuthzRequest).
    await call.authorize({ key, ...(tokens ? { grantTokens: tokens } : {}) });
    if (prepared === undefined) throw invalid;
    grants.checkCreate(facts, prepared);
    call.stopIfDryRun();
    const out = await grants.create(facts, prepared, call.now);
    (call.additionalEventData ??= {}).grantId = out.GrantId;
    return { GrantToken: out.GrantToken, GrantId: out.GrantId };
  };

  const listGrants = async (ctx: OperationContext, call: CallContext): Promise<KmsResponse> => {
    const r = call.request;
    const keyId = _keyId(r.KeyId);
    const grantId = r.GrantId === undefined ? undefined : _grantId(r.GrantId);
    const grantee = _optString(r, 'GranteePrincipal', 256);
    _noServicePrincipal(r, 'GranteeServicePrincipal');
    const { key } = await ctx.resolveKey(keyId, { aliases: false });
    await call.authorize({ key, stateCheck: false });
    const page = grants.list(key.arn, {
      ...(r.Limit !== undefined ? { Limit: r.Limit } : {}),
      ...(r.Marker !== undefined ? { Marker: r.Marker } : {}),
      ...(grantId !== undefined ? { GrantId: grantId } : {}),
      ...(grantee !== undefined ? { GranteePrincipal: grantee } : {}),
    });
    return { Grants: page.Grants.map(grantListEntry), ...(page.NextMarker ? { NextMarker: page.NextMarker } : {}), Truncated: page.Truncated };
  };

  const listRetirableGrants = async (_ctx: OperationContext, call: CallContext): Promise<KmsResponse> => {
    const r = call.request;
    _noServicePrincipal(r, 'RetiringServicePrincipal');
    const principal = _optString(r, 'RetiringPrincipal', 256);
    if (principal === undefined) throw new ValidationException('RetiringPrincipal is required');
    await call.authorize({});
    const page = grants.listRetirable(principal, {
      ...(r.Limit !== undefined ? { Limit: r.Limit } : {}),
      ...(r.Marker !== undefined ? { Marker: r.Marker } : {}),
    });
    return { Grants: page.Grants.map(grantListEntry), ...(page.NextMarker ? { NextMarker: page.NextMarker } : {}), Truncated: page.Truncated };
  };

  const retireGrant = async (ctx: OperationContext, call: CallContext): Promise<KmsResponse> => {
    const r = call.request;
    let key: KeyRecord;
    let grant: Grant | undefined;
    if (r.GrantToken !== undefined) {
      if (typeof r.GrantToken !== 'string') throw new ValidationException('GrantToken must be a string');
      checkGrantTokens([r.GrantToken]);
      grant = grants.byGrantToken(r.GrantToken);
      if (!grant) throw new NotFoundException('The grant for this grant token was not found: it was retired or revoked.');
      ({ key } = await ctx.resolveKey(grant.KeyId, { aliases: false }));
    } else {
      if (r.KeyId === undefined || r.GrantId === undefined) throw new ValidationException('Specify either GrantToken, or both KeyId and GrantId');
      const keyId = _keyId(r.KeyId);
      const grantId = _grantId(r.GrantId);
      ({ key } = await ctx.resolveKey(keyId, { aliases: false }));
      grant = grants.get(key.arn, grantId);
      if (!grant) {
        await call.authorize({ key, stateCheck: false });
        throw new NotFoundException(`Grant ID ${grantId} not found for key ${key.arn}`);
      }
    }
    await call.authorize({ key, stateCheck: false });
    call.stopIfDryRun();
    await grants.remove(key.arn, grant.GrantId);
    (call.additionalEventData ??= {}).grantId = grant.GrantId;
    return {};
  };

  const revokeGrant = async (ctx: OperationContext, call: CallContext): Promise<KmsResponse> => {
    const r = call.request;
    const keyId = _keyId(r.KeyId);
    const grantId = _grantId(r.GrantId);
    const { key } = await ctx.resolveKey(keyId, { aliases: false });
    await call.authorize({ key, stateCheck: false });
    if (!grants.get(key.arn, grantId)) throw new NotFoundException(`Grant ID ${grantId} not found for key ${key.arn}`);
    call.stopIfDryRun();
    await grants.remove(key.arn, grantId);
    (call.additionalEventData ??= {}).grantId = grantId;
    return {};
  };

  /**
   * CreateKey with a Policy (KMS API reference, CreateKey): the same
   * validation as PutKeyPolicy, and the lockout safety check against the key
   * about to be created, unless BypassPolicyLockoutSafetyCheck.
   */
  const validateNewKeyPolicy = (c: NewKeyPolicyCheck): void => {
    const accountId = registry.accountId ?? c.caller.accountId;
    const named = parsePolicy(c.policy, { kind: 'key', accountId, principalExists: identities.principalExists }).principalArns;
    if (c.bypassLockoutCheck) return;
    // Judged as it will be stored: bound to the principals' unique ids (the core binds it again when it stores it).
    const bound = bindPrincipals(named, identities);
    const compiled = parsePolicy(c.policy, { kind: 'key', ...(bound ? { bindings: bound } : {}) });
    const tags = dataMap<string>();
    for (const t of c.tags ?? []) tags[t.TagKey] = t.TagValue;
    const d = evaluator.evaluate({
      action: 'kms:PutKeyPolicy', caller: c.caller, resource: c.keyArn, now: c.now,
      key: {
        arn: c.keyArn, accountId, ...(registry.region ? { region: registry.region } : {}), policy: compiled,
        keySpec: c.keySpec, keyUsage: c.keyUsage, keyOrigin: 'AWS_KMS', keyManager: 'CUSTOMER', aliases: [],
        ...(c.tags?.length ? { tags } : {}),
      },
    }, { useGrants: false });
    if (!d.allowed) throw new MalformedPolicyDocumentException(LOCKOUT_MESSAGE);
  };
  registry.setKeyPolicyValidator?.(validateNewKeyPolicy);

  registry.registerOperation('PutKeyPolicy', putKeyPolicy);
  registry.registerOperation('GetKeyPolicy', getKeyPolicy);
  registry.registerOperation('ListKeyPolicies', listKeyPolicies);
  registry.registerOperation('CreateGrant', createGrant);
  registry.registerOperation('ListGrants', listGrants);
  registry.registerOperation('ListRetirableGrants', listRetirableGrants);
  registry.registerOperation('RetireGrant', retireGrant);
  registry.registerOperation('RevokeGrant', revokeGrant);
  hooks.onKeyDeleted?.(async (keyId) => { await grants.removeKey(keyId); });
}
