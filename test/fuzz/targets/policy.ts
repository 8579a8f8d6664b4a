import fc from 'fast-check';
import { parsePolicy } from '../../../src/kms/authz/policy-document.js';
import { mutatedJson } from '../harness/json-mutate.js';
import { duplicateMember } from '../harness/oracles.js';
import type { FuzzTarget, Verdict } from '../harness/target.js';
import { ipValues, isMalformed, POLICY_BASES, POLICY_PATHS, POLICY_VALUES, strictCidr } from './policy-common.js';

/**
 * Key and identity policy documents (src/kms/authz/policy-document.ts
 * parsePolicy): realistic policies mutated (Effect, principals, actions,
 * resources with many `*?`, condition blocks with `__proto__` operators and
 * keys, CIDRs, duplicate members, deep nesting). An accepted policy is then
 * exercised: each statement matched against an action and a resource and
 * its conditions evaluated, so a compiled pattern that backtracks shows as
 * a hang. Refusals must be MalformedPolicyDocumentException; accepted text
 * must not hold duplicate member names (IAM refuses them) nor an IpAddress
 * value that is not a strict address or CIDR block.
 */
interface Input { kind: 'key' | 'identity'; text: string }

const RES = 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const ctx = { get: (k: string) => (k === 'aws:sourceip' ? '10.1.2.3' : k === 'kms:encryptioncontextkeys' ? ['aws:ebs:id'] : `${'a'.repeat(40)}:${k}`) };

const target: FuzzTarget<Input, null> = {
  name: 'policy',
  about: 'parsePolicy(text, {kind}) then every statement matched and its conditions evaluated',
  arbitrary: () => fc.record({
    kind: fc.constantFrom('key' as const, 'key' as const, 'identity' as const),
    text: fc.oneof({ arbitrary: mutatedJson(fc.constantFrom(...POLICY_BASES), { paths: POLICY_PATHS, pathValue: POLICY_VALUES }), weight: 9 }, { arbitrary: fc.string({ unit: 'binary', maxLength: 64 }), weight: 1 }),
  }),
  open: async () => null,
  close: async () => {},
  run(x): Verdict {
    const p = parsePolicy(x.text, { kind: x.kind, maxBytes: 64 * 1024 });
    for (const st of p.statements) {
      st.matchesAction('kms:Decrypt');
      st.matchesResource(RES);
      st.matchesResource(`arn:aws:kms:us-${'a'.repeat(60)}-east-1:111122223333:key/y`);
      for (const c of st.conditions) c.test(ctx);
    }
    const dup = duplicateMember(x.text);
    if (dup !== undefined) return { invalid: 'policy with duplicate member names refused', why: `"${dup}" occurs twice` };
    const ip = ipValues(JSON.parse(x.text)).find((v) => !strictCidr(v));
    if (ip !== undefined) return { invalid: 'IpAddress values are strict addresses or CIDR blocks', why: `accepted ${JSON.stringify(ip)}` };
    return 'accepted';
  },
  isTyped: isMalformed,
};
export default target;
