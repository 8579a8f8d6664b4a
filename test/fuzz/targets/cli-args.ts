import fc from 'fast-check';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseKmsArgs, UsageError } from '../../../src/cli/kms-args.js';
import { EbsdError } from '../../../src/util/errors.js';
import { hostileString } from '../harness/json-mutate.js';
import { ownKeys } from '../harness/oracles.js';
import { scratchRoot, type FuzzTarget, type Verdict } from '../harness/target.js';

/**
 * `ebsd kms <operation>` arguments (src/cli/kms-args.ts parseKmsArgs):
 * flags and values in AWS CLI form: shorthand maps with `__proto__` keys,
 * JSON, `file://` / `fileb://` of a file, a directory, a missing path, a
 * path with a NUL byte. Refusals must be UsageError (exit 2) or a typed
 * ebsd error, never a raw Node error; an accepted shorthand map must carry
 * every key it was given.
 */
interface Ctx { dir: string }
type Input = string[];

const FLAGS = ['--encryption-context', '--plaintext', '--ciphertext-blob', '--constraints', '--grant-tokens', '--operations', '--tags', '--number-of-bytes',
  '--policy', '--key-id', '--dry-run', '--no-dry-run', '--description', '--limit', '--source-encryption-context', '--output', '--query', '--bypass-policy-lockout-safety-check'];
const VALUES = ['k=v', 'k=v,k2=v2', '__proto__=x', 'a=b,__proto__=c', 'constructor=1', '=v', 'k', 'k=', ',', '{"__proto__":"x"}', '{"a":', '[1,2', '["a","b"]',
  'fileb://$FILE', 'fileb://$DIR', 'fileb://$DIR/missing', 'fileb://$DIR/a\u0000b', 'file://$FILE', 'file://$DIR', 'file://$DIR/missing', 'file://a\u0000b',
  'EncryptionContextSubset={__proto__=x}', 'EncryptionContextEquals={a=b,c=d}', 'EncryptionContextSubset={}', '1e400', 'NaN', '-1', 'true', 'TagKey=a,TagValue=b', '{"TagKey":"a"}', 'aGVsbG8='];

const token = fc.oneof(
  { arbitrary: fc.constantFrom(...FLAGS), weight: 4 },
  { arbitrary: fc.constantFrom(...VALUES), weight: 4 },
  { arbitrary: fc.tuple(fc.constantFrom(...FLAGS), fc.constantFrom(...VALUES)).map(([f, v]) => `${f}=${v}`), weight: 2 },
  { arbitrary: hostileString.map((s) => s.slice(0, 200)), weight: 1 },
  { arbitrary: fc.string({ maxLength: 10 }).map((s) => `--${s}`), weight: 1 },
);

const target: FuzzTarget<Input, Ctx> = {
  name: 'cli-args',
  about: 'parseKmsArgs(tokens): shorthand, JSON, file:// and fileb:// values',
  arbitrary: () => fc.array(token, { minLength: 1, maxLength: 6 }),
  async open() {
    const dir = mkdtempSync(join(scratchRoot(), 'ebsd-fuzz-cli-'));
    writeFileSync(join(dir, 'f'), 'hello');
    mkdirSync(join(dir, 'd'));
    return { dir };
  },
  async close(c) {
    rmSync(c.dir, { recursive: true, force: true });
  },
  run(tokens, c): Verdict {
    const t = tokens.map((x) => x.replaceAll('$FILE', join(c.dir, 'f')).replaceAll('$DIR', join(c.dir, 'd')));
    const req = parseKmsArgs(t);
    // The last --encryption-context given as shorthand: its keys must all be there.
    for (let i = t.length - 1; i >= 0; i--) {
      const tok = t[i]!;
      let value: string | undefined;
      if (tok.startsWith('--encryption-context=')) value = tok.slice('--encryption-context='.length);
      else if (tok === '--encryption-context' && t[i + 1] !== undefined && !t[i + 1]!.startsWith('--') && (t[i + 2] === undefined || t[i + 2]!.startsWith('--'))) value = t[i + 1];
      else continue;
      if (value === undefined || value.trim().startsWith('{') || value.startsWith('file://')) break;
      const want = [...new Set(value.split(',').filter((p) => p !== '').map((p) => p.slice(0, p.indexOf('='))))].sort();
      const got = ownKeys(req.EncryptionContext as object);
      if (want.join('\u0000') !== got.join('\u0000')) return { invalid: 'CLI shorthand map carries every key', why: `--encryption-context ${JSON.stringify(value)} gave keys ${JSON.stringify(got)}` };
      break;
    }
    return 'accepted';
  },
  isTyped: (e) => e instanceof UsageError || (e instanceof EbsdError && typeof e.code === 'string'),
};
export default target;
