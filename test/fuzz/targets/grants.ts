import fc from 'fast-check';
import { checkGrantTokens, parseConstraints } from '../../../src/kms/authz/grants.js';
import { hostileKey, hostileString, hostileValue, mutatedJson } from '../harness/json-mutate.js';
import { hasLoneSurrogate, ownKeys } from '../harness/oracles.js';
import type { FuzzTarget, Verdict } from '../harness/target.js';
import { isTypedKmsError } from './kms-common.js';

/**
 * CreateGrant's `Constraints` and every request's `GrantTokens`
 * (src/kms/authz/grants.ts parseConstraints, checkGrantTokens), as JSON.parse
 * delivers them. An accepted constraint must carry exactly the pairs it was
 * given (a `__proto__` pair silently dropped makes the grant match every
 * context) and no invalid UTF-16.
 */
interface Input { constraints: string; tokens: string }

const pairs = fc.array(fc.tuple(fc.oneof(fc.constantFrom('aws:ebs:id', '__proto__', 'constructor', 'a'), hostileKey), fc.oneof(fc.constantFrom('vol-1', ''), hostileString)), { maxLength: 10 })
  .map((kv) => Object.fromEntries(kv));
const base = fc.oneof(
  pairs.map((p) => ({ EncryptionContextSubset: p })),
  pairs.map((p) => ({ EncryptionContextEquals: p })),
  fc.tuple(pairs, pairs).map(([a, b]) => ({ EncryptionContextSubset: a, EncryptionContextEquals: b })),
);
const token = fc.oneof(
  fc.uint8Array({ minLength: 49, maxLength: 49 }).map((b) => { b[0] = 1; return Buffer.from(b).toString('base64url'); }),
  fc.string({ maxLength: 80 }),
  fc.integer({ min: 8000, max: 9000 }).map((n) => 'A'.repeat(n)),
);
const tokens = fc.array(token, { maxLength: 12 });

const target: FuzzTarget<Input, null> = {
  name: 'grants',
  about: 'parseConstraints(JSON) and checkGrantTokens(JSON): pairs carried faithfully',
  arbitrary: () => fc.record({
    constraints: mutatedJson(base, { paths: [['EncryptionContextSubset', '__proto__'], ['EncryptionContextEquals', '__proto__'], ['__proto__'], ['EncryptionContextSubset']], pathValue: hostileValue, text: false }),
    tokens: mutatedJson(tokens, { text: false }),
  }),
  open: async () => null,
  close: async () => {},
  run(x): Verdict {
    const input = JSON.parse(x.constraints) as unknown;
    const c = parseConstraints(input);
    checkGrantTokens(JSON.parse(x.tokens) as unknown);
    if (c === undefined) return 'accepted';
    const kind = 'EncryptionContextEquals' in c ? 'EncryptionContextEquals' : 'EncryptionContextSubset';
    const given = (input as Record<string, Record<string, string>>)[kind]!;
    const got = (c as Record<string, Record<string, string>>)[kind]!;
    const a = ownKeys(given).join('\u0000');
    const b = ownKeys(got).join('\u0000');
    if (a !== b || ownKeys(given).some((k) => got[k] !== given[k])) {
      return { invalid: 'grant constraint pairs carried faithfully', why: `${kind} ${JSON.stringify(ownKeys(given))} became ${JSON.stringify(ownKeys(got))}` };
    }
    if (ownKeys(got).some((k) => hasLoneSurrogate(k) || hasLoneSurrogate(got[k]!))) return { invalid: 'grant constraints with invalid UTF-16 refused', why: `${kind} ${JSON.stringify(got)}` };
    return 'accepted';
  },
  isTyped: isTypedKmsError,
};
export default target;
