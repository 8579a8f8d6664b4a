/** CreateKey, DescribeKey, ListKeys, UpdateKeyDescription, EnableKey, DisableKey, ScheduleKeyDeletion, CancelKeyDeletion. */
import { randomBytes, randomUUID } from 'node:crypto';
import type { Dispatcher, OperationContext } from '../dispatcher.js';
import {
  MalformedPolicyDocumentException, TagException, UnsupportedOperationException, ValidationException,
} from '../errors.js';
import { KEY_SPECS, UNSUPPORTED_KEY_SPECS, allowedUsages, unsupportedSpecReason, type KeySpec, type KeyUsage } from '../key-spec.js';
import type { KeyRecord } from '../key-record.js';
import { keyMetadata, epochSeconds } from '../key-metadata.js';
import { defaultKeyPolicy } from '../authorizer.js';
import { MAX_POLICY_DEPTH, checkKeyPolicySize, missing, optBool, optEnum, optInt, optStr, optStrList, reqStr } from '../validate.js';
import { parseStrictJson } from '../../util/strict-json.js';
import { charCount } from '../../util/char-count.js';
import { page } from '../paging.js';
import type { KmsRequest } from '../types.js';

const DAY = 86_400_000;
export const DEFAULT_ROTATION_DAYS = 365;

export function parseTags(req: KmsRequest, name = 'Tags'): { TagKey: string; TagValue: string }[] | undefined {
  const v = req[name];
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) throw new ValidationException(`1 validation error detected: Value at '${name.toLowerCase()}' failed to satisfy constraint: Member must be a list`);
  if (v.length > 50) throw new TagException('A KMS key can have at most 50 tags');
  const seen = new Set<string>();
  return v.map((t: unknown) => {
    const { TagKey, TagValue } = (t ?? {}) as Record<string, unknown>;
    // Characters, not UTF-16 units: a TagKey of 128 emoji is within bounds (src/util/char-count.ts).
    if (typeof TagKey !== 'string' || TagKey === '' || charCount(TagKey) > 128) throw new TagException('TagKey must be 1-128 characters');
    if (typeof TagValue !== 'string' || charCount(TagValue) > 256) throw new TagException('TagValue must be 0-256 characters');
    // Reserved in any case (AWS:, Aws:, …), as the EC2 tags of this daemon check it (src/daemon/ec2-requests.ts).
    if (TagKey.toLowerCase().startsWith('aws:')) throw new TagException(`Tag key ${JSON.stringify(TagKey)} is reserved: tag keys beginning with aws: (in any case) are for AWS use`);
    // A key has one value per tag key; one request naming a key twice is refused
    // (CreateKey and TagResource alike) rather than keeping one value silently.
    if (seen.has(TagKey)) throw new TagException(`Duplicate tag key in the request: ${JSON.stringify(TagKey)}; each TagKey may appear once`);
    seen.add(TagKey);
    return { TagKey, TagValue };
  });
}

export function checkPolicy(policy: string | undefined): void {
  if (policy === undefined) return;
  try {
    const p = parseStrictJson(policy, { what: 'key policy', maxDepth: MAX_POLICY_DEPTH, awsName: 'MalformedPolicyDocumentException' });
    if (typeof p !== 'object' || p === null || !Object.prototype.hasOwnProperty.call(p, 'Statement')) throw new Error('no Statement');
  } catch {
    throw new MalformedPolicyDocumentException('The key policy is not a valid JSON policy document.');
  }
}

/** Make a key: HSM material, then a durable record. Shared by CreateKey and AWS-managed keys. */
export async function createKeyRecord(ctx: OperationContext, p: {
  keySpec: KeySpec; keyUsage: KeyUsage; description: string; policy?: string; tags?: KeyRecord['tags'];
  keyManager: 'CUSTOMER' | 'AWS'; now: number; keyId?: string;
}): Promise<KeyRecord> {
  const keyId = p.keyId ?? randomUUID();
  const arn = `arn:aws:kms:${ctx.region}:${ctx.accountId}:key/${keyId}`;
  const hbkId = randomBytes(32);
  const g = await ctx.hsm.call({ op: 'generateKey', arn, hbkId, spec: p.keySpec, usage: p.keyUsage });
  const managed = p.keyManager === 'AWS';
  const policy = p.policy ?? defaultKeyPolicy(ctx.accountId);
  const bound = ctx.keyPolicyBinder?.(policy);
  const r: KeyRecord = {
    keyId, arn, accountId: ctx.accountId, region: ctx.region, creationDate: p.now, description: p.description,
    keySpec: p.keySpec, keyUsage: p.keyUsage, keyState: 'Enabled', keyManager: p.keyManager, origin: 'AWS_KMS',
    policy, ...(bound ? { policyPrincipals: bound } : {}), tags: p.tags ?? [],
    // AWS managed keys rotate every year and cannot opt out.
    rotation: managed ? { enabled: true, periodDays: DEFAULT_ROTATION_DAYS, nextRotationDate: p.now + DEFAULT_ROTATION_DAYS * DAY, onDemandCount: 0 }
      : { enabled: false, onDemandCount: 0 },
    materials: [{ id: hbkId.toString('hex'), ekt: Buffer.from(g.ekt).toString('base64'), createdAt: p.now, origin: 'CREATE' }],
    ...(g.publicKey ? { publicKey: Buffer.from(g.publicKey).toString('base64') } : {}),
  };
  await ctx.keystore.create(r);
  if (r.rotation.nextRotationDate) ctx.scheduleDue(r.rotation.nextRotationDate);
  return r;
}

export function requireCustomerManaged(k: KeyRecord, op: string): void {
  if (k.keyManager === 'AWS') throw new UnsupportedOperationException(`${op} is not supported on AWS managed key ${k.arn}`);
}

/**
 * A key spec member: a value outside the API's enum is ValidationException; an API value this
 * KMS cannot create (`unsupported`) is UnsupportedOperationException naming the member.
 */
function _spec(r: KmsRequest, name: string, unsupported: readonly string[]): KeySpec | undefined {
  const v = optEnum<string>(r, name, [...KEY_SPECS, ...unsupported]);
  if (v !== undefined && unsupported.includes(v)) {
    throw new UnsupportedOperationException(`${name} ${v} is not supported by this KMS: ${unsupportedSpecReason(v)}`, { code: 'KMS_KEY_SPEC_UNSUPPORTED' });
  }
  return v as KeySpec | undefined;
}

export function registerKeyOperations(d: Dispatcher): void {
  d.registerOperation('CreateKey', async (ctx, call) => {
    const r = call.request;
    // CustomerMasterKeySpec is the deprecated name of KeySpec ("they work the same way; only
    // the names differ"): one request gives one or the other, never both.
    const keySpec = _spec(r, 'KeySpec', UNSUPPORTED_KEY_SPECS);
    const cmkSpec = _spec(r, 'CustomerMasterKeySpec', ['SM2']);
    if (keySpec !== undefined && cmkSpec !== undefined) {
      throw new ValidationException('You cannot specify both KeySpec and CustomerMasterKeySpec in the same request. CustomerMasterKeySpec is deprecated; use KeySpec.');
    }
    const spec = (keySpec ?? cmkSpec ?? 'SYMMETRIC_DEFAULT') as KeySpec;
    // KEY_AGREEMENT and ENCAPSULATE_DECAPSULATE are API values: refused below as unsupported or as incompatible with the spec.
    const usage = optEnum<KeyUsage>(r, 'KeyUsage', ['ENCRYPT_DECRYPT', 'SIGN_VERIFY', 'GENERATE_VERIFY_MAC', 'KEY_AGREEMENT', 'ENCAPSULATE_DECAPSULATE'] as KeyUsage[]);
    const allowed = allowedUsages(spec);
    // AWS accepts KEY_AGREEMENT for the NIST curves (DeriveSharedSecret); ebsd has no
    // DeriveSharedSecret, so such a key is a valid request ebsd does not support.
    if ((usage as string) === 'KEY_AGREEMENT' && spec.startsWith('ECC_NIST_')) {
      throw new UnsupportedOperationException(`KeyUsage KEY_AGREEMENT is not supported by this KMS: ebsd does not implement DeriveSharedSecret, so it cannot create key agreement keys (KeySpec ${spec})`);
    }
    if (usage !== undefined && !allowed.includes(usage)) {
      throw new ValidationException(`KeyUsage ${usage} is not compatible with KeySpec ${spec}`);
    }
    // AWS CreateKey: KeyUsage defaults to ENCRYPT_DECRYPT and is required unless that default fits
    // (symmetric keys; RSA accepts it too). ECC and HMAC keys must name theirs: no silent guess.
    if (usage === undefined && !allowed.includes('ENCRYPT_DECRYPT')) {
      throw new ValidationException(`KeyUsage is required for KeySpec ${spec}: the default ENCRYPT_DECRYPT is not compatible with it; specify one of ${allowed.join(', ')}`);
    }
    const origin = optStr(r, 'Origin') ?? 'AWS_KMS';
    if (!['AWS_KMS', 'EXTERNAL', 'AWS_CLOUDHSM', 'EXTERNAL_KEY_STORE'].includes(origin)) {
      throw new ValidationException(`1 validation error detected: Value at 'origin' failed to satisfy constraint: Member must satisfy enum value set`);
    }
    // KMS API reference, CreateKey: XksKeyId "is not valid for KMS keys with any other Origin value" than EXTERNAL_KEY_STORE.
    if (r.XksKeyId !== undefined && r.XksKeyId !== null && origin !== 'EXTERNAL_KEY_STORE') {
      throw new ValidationException(`XksKeyId is valid only for a KMS key with Origin EXTERNAL_KEY_STORE, not ${origin}`);
    }
    if (origin !== 'AWS_KMS') throw new UnsupportedOperationException(`Origin ${origin} is not supported by this KMS`);
    if (optBool(r, 'MultiRegion')) throw new UnsupportedOperationException('Multi-Region keys are not supported by this KMS');
    if (r.CustomKeyStoreId !== undefined) throw new UnsupportedOperationException('Custom key stores are not supported by this KMS');
    const description = optStr(r, 'Description', 0, 8192) ?? '';
    const policy = optStr(r, 'Policy', 1, 131_072);
    if (policy !== undefined) checkKeyPolicySize(policy);
    const validator = ctx.keyPolicyValidator;
    if (!validator) checkPolicy(policy);
    const bypass = optBool(r, 'BypassPolicyLockoutSafetyCheck') ?? false;
    const tags = parseTags(r);
    const keyUsage: KeyUsage = usage ?? 'ENCRYPT_DECRYPT';
    await call.authorize({});
    const keyId = randomUUID();
    if (policy !== undefined && validator) {
      // KMS API reference, CreateKey: the policy must be valid, and (unless
      // BypassPolicyLockoutSafetyCheck) must let the caller call PutKeyPolicy.
      validator({
        policy, keyArn: `arn:aws:kms:${ctx.region}:${ctx.accountId}:key/${keyId}`, keySpec: spec, keyUsage,
        ...(tags ? { tags } : {}), caller: call.caller, request: r, now: call.now, bypassLockoutCheck: bypass,
      });
    }
    const key = await createKeyRecord(ctx, {
      keySpec: spec, keyUsage, description, ...(policy ? { policy } : {}), ...(tags ? { tags } : {}),
      keyManager: 'CUSTOMER', now: call.now, keyId,
    });
    call.resources.push(key.arn);
    return { KeyMetadata: keyMetadata(key) };
  });

  d.registerOperation('DescribeKey', async (ctx, call) => {
    const { key, requestAlias } = await ctx.resolveKey(reqStr(call.request, 'KeyId'));
    await call.authorize({ key, ...(requestAlias ? { requestAlias } : {}), grantTokens: optStrList(call.request, 'GrantTokens', 10) ?? [], stateCheck: false });
    return { KeyMetadata: keyMetadata(key) };
  });

  d.registerOperation('ListKeys', async (ctx, call) => {
    await call.authorize({});
    const ids = ctx.keystore.allIds();
    const p = page(call.request, ids, 100, 1000, (id) => id);
    const base = `arn:aws:kms:${ctx.region}:${ctx.accountId}:key/`;
    return { Keys: p.items.map((id) => ({ KeyId: id, KeyArn: base + id })), Truncated: p.Truncated, ...(p.NextMarker ? { NextMarker: p.NextMarker } : {}) };
  });

  d.registerOperation('UpdateKeyDescription', async (ctx, call) => {
    const { key } = await ctx.resolveKey(reqStr(call.request, 'KeyId'), { aliases: false });
    const description = optStr(call.request, 'Description', 0, 8192);
    if (description === undefined) throw missing('Description');
    await call.authorize({ key });
    requireCustomerManaged(key, 'UpdateKeyDescription');
    await ctx.keystore.update(key.keyId, (k) => { k.description = description; });
    return {};
  });

  for (const op of ['EnableKey', 'DisableKey'] as const) {
    d.registerOperation(op, async (ctx, call) => {
      const { key } = await ctx.resolveKey(reqStr(call.request, 'KeyId'), { aliases: false });
      await call.authorize({ key });
      requireCustomerManaged(key, op);
      await ctx.keystore.update(key.keyId, (k) => { k.keyState = op === 'EnableKey' ? 'Enabled' : 'Disabled'; });
      // A rotation that fell due while the key was disabled happens on re-enable.
      if (op === 'EnableKey' && key.rotation.nextRotationDate !== undefined) ctx.scheduleDue(key.rotation.nextRotationDate);
      return {};
    });
  }

  d.registerOperation('ScheduleKeyDeletion', async (ctx, call) => {
    const { key } = await ctx.resolveKey(reqStr(call.request, 'KeyId'), { aliases: false });
    const days = optInt(call.request, 'PendingWindowInDays', 7, 30) ?? 30;
    await call.authorize({ key, pendingWindowInDays: days });
    requireCustomerManaged(key, 'ScheduleKeyDeletion');
    const when = call.now + days * DAY;
    await ctx.keystore.update(key.keyId, (k) => {
      k.keyState = 'PendingDeletion';
      k.deletionDate = when;
      k.pendingWindowInDays = days;
    });
    ctx.scheduleDue(when);
    return { KeyId: key.arn, DeletionDate: epochSeconds(when), KeyState: 'PendingDeletion', PendingWindowInDays: days };
  });

  d.registerOperation('CancelKeyDeletion', async (ctx, call) => {
    const { key } = await ctx.resolveKey(reqStr(call.request, 'KeyId'), { aliases: false });
    await call.authorize({ key });
    await ctx.keystore.update(key.keyId, (k) => {
      k.keyState = 'Disabled'; // AWS: a canceled deletion leaves the key Disabled
      delete k.deletionDate;
      delete k.pendingWindowInDays;
    });
    return { KeyId: key.arn };
  });
}
