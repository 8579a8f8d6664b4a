import fc from 'fast-check';
import { compileConditions } from '../../../src/kms/authz/conditions.js';
import { hostileKey, hostileValue, mutatedJson, str } from '../harness/json-mutate.js';
import { refWildcard } from '../harness/oracles.js';
import type { FuzzTarget, Verdict } from '../harness/target.js';
import { isMalformed, starQ } from './policy-common.js';

/**
 * Condition blocks (src/kms/authz/conditions.ts compileConditions), compiled
 * and evaluated against a request context: operator names (including
 * `__proto__`, `constructor`, set and IfExists forms), keys, values.
 * A single StringLike / StringNotLike key must agree with the reference
 * wildcard matcher.
 */
interface Input { block: string; ctxValue: string | string[] }

const OPS = ['StringEquals', 'StringNotEquals', 'StringEqualsIgnoreCase', 'StringLike', 'StringNotLike', 'NumericLessThan', 'NumericEquals', 'DateLessThan',
  'Bool', 'BinaryEquals', 'IpAddress', 'NotIpAddress', 'ArnLike', 'ArnNotEquals', 'Null', 'StringLikeIfExists', 'ForAnyValue:StringLike', 'ForAllValues:StringEquals',
  'NullIfExists', 'ForAnyValue:Null', '__proto__', 'constructor', 'toString', 'hasOwnProperty', 'ForAnyValue:__proto__', '__proto__IfExists', 'valueOf'];
const KEYS = ['aws:SourceIp', 'kms:EncryptionContext:aws:ebs:id', 'kms:ViaService', 'aws:CurrentTime', 'kms:EncryptionContextKeys', 'aws:PrincipalArn', '__proto__', 'kms:__proto__'];
const VALUES = ['vol-*', '*', '?', 'true', 'False', '10.0.0.0/8', '10.0.0.1/', '5', '1e400', 'NaN', '2020-01-01T00:00:00Z', 'arn:aws:iam::*:role/x', 'arn:*', ''];

const block = fc.array(fc.tuple(fc.oneof(fc.constantFrom(...OPS), hostileKey), fc.array(fc.tuple(fc.oneof(fc.constantFrom(...KEYS), hostileKey), fc.oneof(fc.constantFrom(...VALUES), starQ, fc.string({ maxLength: 8 }))), { minLength: 1, maxLength: 2 })), { minLength: 1, maxLength: 3 })
  .map((ops) => Object.fromEntries(ops.map(([op, kv]) => [op, Object.fromEntries(kv)])));

const target: FuzzTarget<Input, null> = {
  name: 'conditions',
  about: 'compileConditions(block) then each test(ctx); StringLike vs the reference matcher',
  arbitrary: () => fc.record({
    block: fc.oneof({ arbitrary: block.map((b) => JSON.stringify(b)), weight: 2 }, { arbitrary: mutatedJson(block, { paths: [['__proto__'], ['StringLike'], ['StringLike', 'kms:ViaService']], pathValue: fc.oneof(hostileValue, starQ.map(str)), text: false }), weight: 3 }),
    ctxValue: fc.oneof(fc.constantFrom('vol-1', '10.1.2.3', 'true', '3', 'arn:aws:iam::111122223333:role/x', ''), fc.string({ maxLength: 12 }), fc.integer({ min: 0, max: 64 }).map((n) => `arn:aws:kms:us${'a'.repeat(n)}`), fc.array(fc.string({ maxLength: 6 }), { maxLength: 3 })),
  }),
  open: async () => null,
  close: async () => {},
  run(x): Verdict {
    const parsed = JSON.parse(x.block) as unknown;
    const compiled = compileConditions(parsed, 'Statement[0]');
    const ctx = { get: () => x.ctxValue };
    const results = compiled.map((c) => c.test(ctx));
    const ops = parsed && typeof parsed === 'object' ? Object.entries(parsed as Record<string, unknown>) : [];
    if (compiled.length === 1 && ops.length === 1 && typeof x.ctxValue === 'string') {
      const [op, body] = ops[0]!;
      const vals = Object.values(body as Record<string, unknown>)[0];
      const list = (Array.isArray(vals) ? vals : [vals]).map(String);
      if (op === 'StringLike' || op === 'StringNotLike') {
        const want = list.some((p) => refWildcard(p, x.ctxValue as string)) !== (op === 'StringNotLike');
        if (results[0] !== want) return { invalid: 'StringLike agrees with the reference matcher', why: `${op} ${JSON.stringify(list)} on ${JSON.stringify(x.ctxValue)}: got ${results[0]}, want ${want}` };
      }
    }
    return 'accepted';
  },
  isTyped: isMalformed,
};
export default target;
