/** TagResource, UntagResource, ListResourceTags; Enable/DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand, ListKeyRotations. */
import { randomBytes } from 'node:crypto';
import type { Dispatcher, OperationContext } from '../dispatcher.js';
import { LimitExceededException, TagException, UnsupportedOperationException } from '../errors.js';
import type { KeyRecord } from '../key-record.js';
import { epochSeconds } from '../key-metadata.js';
import { page } from '../paging.js';
import { missing, optEnum, optInt, optStrList, reqStr } from '../validate.js';
import { DEFAULT_ROTATION_DAYS, parseTags, requireCustomerManaged } from './keys.js';

const DAY = 86_400_000;
/** AWS quota: on-demand rotations per key (docs/kms-format.md, "Quotas"). */
export const MAX_ON_DEMAND_ROTATIONS = 25;

/** New HBK version; the old ones stay so old ciphertexts still decrypt. */
export async function rotateKey(ctx: OperationContext, key: KeyRecord, type: 'AUTOMATIC' | 'ON_DEMAND', now: number): Promise<KeyRecord> {
  const hbkId = randomBytes(32);
  const g = await ctx.hsm.call({ op: 'generateKey', arn: key.arn, hbkId, spec: key.keySpec, usage: key.keyUsage });
  await ctx.keystore.update(key.keyId, (k) => {
    k.materials.push({ id: hbkId.toString('hex'), ekt: Buffer.from(g.ekt).toString('base64'), createdAt: now, origin: type });
    if (type === 'ON_DEMAND') k.rotation.onDemandCount++;
    // Only the automatic rotation moves the schedule; an on-demand one leaves it (AWS RotateKeyOnDemand).
    if (type === 'AUTOMATIC' && k.rotation.enabled) k.rotation.nextRotationDate = now + (k.rotation.periodDays ?? DEFAULT_ROTATION_DAYS) * DAY;
  });
  const after = ctx.keystore.get(key.keyId)!;
  if (after.rotation.nextRotationDate !== undefined && after.rotation.enabled) ctx.scheduleDue(after.rotation.nextRotationDate);
  return after;
}

function requireRotatable(k: KeyRecord): void {
  if (k.keySpec !== 'SYMMETRIC_DEFAULT') throw new UnsupportedOperationException(`${k.arn} does not support automatic rotation; only symmetric encryption KMS keys rotate.`);
}

export function registerTagAndRotationOperations(d: Dispatcher): void {
  d.registerOperation('TagResource', async (ctx, call) => {
    const { key } = await ctx.resolveKey(reqStr(call.request, 'KeyId'), { aliases: false });
    const tags = parseTags(call.request);
    if (!tags) throw missing('Tags');
    await call.authorize({ key });
    requireCustomerManaged(key, 'TagResource');
    await ctx.keystore.update(key.keyId, (k) => {
      for (const t of tags) {
        const i = k.tags.findIndex((x) => x.TagKey === t.TagKey);
        if (i >= 0) k.tags[i] = t; else k.tags.push(t);
      }
      if (k.tags.length > 50) throw new TagException('A KMS key can have at most 50 tags');
    });
    return {};
  });

  d.registerOperation('UntagResource', async (ctx, call) => {
    const { key } = await ctx.resolveKey(reqStr(call.request, 'KeyId'), { aliases: false });
    const keys = optStrList(call.request, 'TagKeys', 50, 128);
    if (!keys) throw missing('TagKeys');
    // The aws: prefix is AWS's in any case: such a tag cannot be removed (nor added, keys.ts parseTags), except
    // one the key holds already: tags like `AWS:x`, which earlier versions let callers add, can still go.
    const reserved = keys.find((t) => t.toLowerCase().startsWith('aws:') && !key.tags.some((x) => x.TagKey === t));
    if (reserved !== undefined) throw new TagException(`Tag key ${JSON.stringify(reserved)} is reserved: tag keys beginning with aws: (in any case) are for AWS use`);
    await call.authorize({ key });
    requireCustomerManaged(key, 'UntagResource');
    await ctx.keystore.update(key.keyId, (k) => { k.tags = k.tags.filter((t) => !keys.includes(t.TagKey)); });
    return {};
  });

  d.registerOperation('ListResourceTags', async (ctx, call) => {
    const { key } = await ctx.resolveKey(reqStr(call.request, 'KeyId'), { aliases: false });
    await call.authorize({ key, stateCheck: false });
    // By TagKey, the marker naming the last one returned: a tag removed between two pages skips none (docs/kms-format.md, "List markers").
    const tags = [...key.tags].sort((a, b) => (a.TagKey < b.TagKey ? -1 : a.TagKey > b.TagKey ? 1 : 0));
    const p = page(call.request, tags, 50, 50, (t) => t.TagKey);
    return { Tags: p.items, Truncated: p.Truncated, ...(p.NextMarker ? { NextMarker: p.NextMarker } : {}) };
  });

  d.registerOperation('EnableKeyRotation', async (ctx, call) => {
    const { key } = await ctx.resolveKey(reqStr(call.request, 'KeyId'), { aliases: false });
    const days = optInt(call.request, 'RotationPeriodInDays', 90, 2560) ?? DEFAULT_ROTATION_DAYS;
    await call.authorize({ key, rotationPeriodInDays: days });
    requireCustomerManaged(key, 'EnableKeyRotation');
    requireRotatable(key);
    const next = call.now + days * DAY;
    await ctx.keystore.update(key.keyId, (k) => { k.rotation.enabled = true; k.rotation.periodDays = days; k.rotation.nextRotationDate = next; });
    ctx.scheduleDue(next);
    return {};
  });

  d.registerOperation('DisableKeyRotation', async (ctx, call) => {
    const { key } = await ctx.resolveKey(reqStr(call.request, 'KeyId'), { aliases: false });
    await call.authorize({ key });
    requireCustomerManaged(key, 'DisableKeyRotation');
    requireRotatable(key);
    await ctx.keystore.update(key.keyId, (k) => { k.rotation.enabled = false; delete k.rotation.nextRotationDate; });
    return {};
  });

  d.registerOperation('GetKeyRotationStatus', async (ctx, call) => {
    const { key } = await ctx.resolveKey(reqStr(call.request, 'KeyId'), { aliases: false });
    await call.authorize({ key, stateCheck: false });
    requireRotatable(key);
    const r = key.rotation;
    // AWS GetKeyRotationStatus: while a key is pending deletion its rotation status is false
    // (the stored flag is kept, so CancelKeyDeletion brings it back). A disabled key keeps
    // its status; it is just not rotated until re-enabled.
    const enabled = r.enabled && key.keyState !== 'PendingDeletion';
    return {
      KeyId: key.arn, KeyRotationEnabled: enabled,
      ...(enabled ? { RotationPeriodInDays: r.periodDays ?? DEFAULT_ROTATION_DAYS } : {}),
      ...(enabled && r.nextRotationDate !== undefined ? { NextRotationDate: epochSeconds(r.nextRotationDate) } : {}),
    };
  });

  d.registerOperation('RotateKeyOnDemand', async (ctx, call) => {
    const { key } = await ctx.resolveKey(reqStr(call.request, 'KeyId'), { aliases: false });
    await call.authorize({ key });
    requireCustomerManaged(key, 'RotateKeyOnDemand');
    requireRotatable(key);
    if (key.rotation.onDemandCount >= MAX_ON_DEMAND_ROTATIONS) {
      throw new LimitExceededException(`${key.arn} has reached the limit of ${MAX_ON_DEMAND_ROTATIONS} on-demand rotations.`);
    }
    await rotateKey(ctx, key, 'ON_DEMAND', call.now);
    return { KeyId: key.arn };
  });

  d.registerOperation('ListKeyRotations', async (ctx, call) => {
    const { key } = await ctx.resolveKey(reqStr(call.request, 'KeyId'), { aliases: false });
    // KMS API reference, ListKeyRotations: ROTATIONS_ONLY (the default) lists the materials rotations
    // made; ALL_KEY_MATERIAL adds the first one (no imported material here), which has no
    // RotationDate nor RotationType. The last material is CURRENT, the others NON_CURRENT.
    const include = optEnum(call.request, 'IncludeKeyMaterial', ['ALL_KEY_MATERIAL', 'ROTATIONS_ONLY'] as const) ?? 'ROTATIONS_ONLY';
    await call.authorize({ key, stateCheck: false });
    requireRotatable(key);
    const current = key.materials[key.materials.length - 1];
    const listed = include === 'ALL_KEY_MATERIAL' ? key.materials : key.materials.filter((m) => m.origin !== 'CREATE');
    const p = page(call.request, listed, 100, 1000);
    return {
      Rotations: p.items.map((m) => ({
        KeyId: key.arn, KeyMaterialId: m.id, KeyMaterialState: m === current ? 'CURRENT' : 'NON_CURRENT',
        ...(m.origin === 'CREATE' ? {} : { RotationDate: epochSeconds(m.createdAt), RotationType: m.origin }),
      })),
      Truncated: p.Truncated, ...(p.NextMarker ? { NextMarker: p.NextMarker } : {}),
    };
  });
}
