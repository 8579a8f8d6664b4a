/** CreateAlias, UpdateAlias, DeleteAlias, ListAliases (AWS alias naming rules). */
import type { CallContext, Dispatcher, OperationContext } from '../dispatcher.js';
import { AlreadyExistsException, InvalidAliasNameException, LimitExceededException, NotFoundException, ValidationException } from '../errors.js';
import type { AliasRecord } from '../keystore.js';
import { epochSeconds } from '../key-metadata.js';
import { page } from '../paging.js';
import { optStr, reqStr } from '../validate.js';

/** AWS: `alias/` then letters, digits, `/ _ -`; 1-256 characters in all. */
const ALIAS_RE = /^alias\/[a-zA-Z0-9/_-]+$/;

/** AWS KMS quota: customer-created aliases per KMS key (docs/kms-format.md, "Quotas"). */
export const MAX_ALIASES_PER_KEY = 50;

/**
 * Refuse a 51st alias on one key, as AWS does (LimitExceededException). Counted in the alias
 * table being changed, so two calls at once cannot both pass; `alias/aws/` aliases are AWS's own
 * and do not count.
 */
function checkAliasQuota(m: ReadonlyMap<string, AliasRecord>, keyId: string, keyArn: string): void {
  let n = 0;
  for (const a of m.values()) if (a.TargetKeyId === keyId && !a.AliasName.startsWith('alias/aws/')) n++;
  if (n >= MAX_ALIASES_PER_KEY) {
    throw new LimitExceededException(`The KMS key ${keyArn} already has ${n} aliases; a KMS key can have at most ${MAX_ALIASES_PER_KEY} aliases.`);
  }
}

function checkAliasName(name: string): void {
  if (!ALIAS_RE.test(name)) throw new InvalidAliasNameException(`Alias ${name} must begin with alias/ and contain only alphanumeric characters, forward slashes (/), underscores (_), and dashes (-).`);
  if (name.startsWith('alias/aws/')) throw new InvalidAliasNameException('Alias names beginning with alias/aws/ are reserved for AWS managed keys.');
}

/**
 * The alias operations need their permission on the alias, from an identity policy, and on
 * the key(s), from the key policy (docs/architecture.md §5.4): the first check is judged on
 * the alias ARN by identity policies alone.
 */
const authorizeOnAlias = (ctx: OperationContext, call: CallContext, name: string): Promise<void> =>
  call.authorize({ resource: `arn:aws:kms:${ctx.region}:${ctx.accountId}:${name}`, stateCheck: false });

export function registerAliasOperations(d: Dispatcher): void {
  d.registerOperation('CreateAlias', async (ctx, call) => {
    const name = reqStr(call.request, 'AliasName', 1, 256);
    checkAliasName(name);
    const { key } = await ctx.resolveKey(reqStr(call.request, 'TargetKeyId'), { aliases: false });
    await authorizeOnAlias(ctx, call, name);
    await call.authorize({ key });
    await ctx.keystore.updateAliases((m) => {
      if (m.has(name)) throw new AlreadyExistsException(`An alias with the name arn:aws:kms:${ctx.region}:${ctx.accountId}:${name} already exists`);
      checkAliasQuota(m, key.keyId, key.arn);
      m.set(name, { AliasName: name, TargetKeyId: key.keyId, CreationDate: call.now, LastUpdatedDate: call.now });
    });
    return {};
  });

  d.registerOperation('UpdateAlias', async (ctx, call) => {
    const name = reqStr(call.request, 'AliasName', 1, 256);
    checkAliasName(name);
    const cur = ctx.keystore.alias(name);
    if (!cur) throw new NotFoundException(`Alias arn:aws:kms:${ctx.region}:${ctx.accountId}:${name} is not found.`);
    const { key } = await ctx.resolveKey(reqStr(call.request, 'TargetKeyId'), { aliases: false });
    const old = ctx.keystore.get(cur.TargetKeyId);
    await authorizeOnAlias(ctx, call, name);
    await call.authorize({ key });
    if (old) {
      await call.authorize({ key: old, stateCheck: false });
      const kind = (s: string) => (s === 'SYMMETRIC_DEFAULT' ? 'sym' : s.startsWith('HMAC') ? 'hmac' : 'asym');
      if (old.keyUsage !== key.keyUsage || kind(old.keySpec) !== kind(key.keySpec)) {
        throw new ValidationException('The new target key must have the same key type and key usage as the current target key.');
      }
    }
    await ctx.keystore.updateAliases((m) => {
      if (m.get(name)?.TargetKeyId !== key.keyId) checkAliasQuota(m, key.keyId, key.arn);
      m.set(name, { ...cur, TargetKeyId: key.keyId, LastUpdatedDate: call.now });
    });
    return {};
  });

  d.registerOperation('DeleteAlias', async (ctx, call) => {
    const name = reqStr(call.request, 'AliasName', 1, 256);
    checkAliasName(name);
    const cur = ctx.keystore.alias(name);
    if (!cur) throw new NotFoundException(`Alias arn:aws:kms:${ctx.region}:${ctx.accountId}:${name} is not found.`);
    const key = ctx.keystore.get(cur.TargetKeyId);
    await authorizeOnAlias(ctx, call, name);
    if (key) await call.authorize({ key, stateCheck: false });
    await ctx.keystore.updateAliases((m) => { m.delete(name); });
    return {};
  });

  d.registerOperation('ListAliases', async (ctx, call) => {
    const keyId = optStr(call.request, 'KeyId');
    const key = keyId === undefined ? undefined : (await ctx.resolveKey(keyId, { aliases: false })).key;
    // kms:ListAliases is an identity-policy permission on `*`, KeyId or not: the key's policy has no say (docs/architecture.md §5.4).
    await call.authorize({});
    let aliases = ctx.keystore.allAliases();
    if (key) aliases = aliases.filter((a) => a.TargetKeyId === key.keyId);
    const p = page(call.request, aliases, 50, 100, (a) => a.AliasName);
    return {
      Aliases: p.items.map((a) => ({
        AliasName: a.AliasName, AliasArn: `arn:aws:kms:${ctx.region}:${ctx.accountId}:${a.AliasName}`, TargetKeyId: a.TargetKeyId,
        CreationDate: epochSeconds(a.CreationDate), LastUpdatedDate: epochSeconds(a.LastUpdatedDate),
      })),
      Truncated: p.Truncated, ...(p.NextMarker ? { NextMarker: p.NextMarker } : {}),
    };
  });
}
