import fc from 'fast-check';
import { decodeKmsRequest } from '../../../src/daemon/aws-json.js';
import { InvalidCiphertextException, NotFoundException, ValidationException } from '../../../src/kms/errors.js';
import { loneSurrogate } from '../harness/json-mutate.js';
import { hasLoneSurrogate } from '../harness/oracles.js';
import type { FuzzTarget, Verdict } from '../harness/target.js';
import { closeKmsFixture, isTypedKmsError, openKmsFixture, type KmsFixture } from './kms-common.js';

/**
 * The binding of a ciphertext blob to its key and encryption context,
 * through the real core as the control socket delivers requests
 * (JSON.parse, then decodeKmsRequest, then KmsService.call): Encrypt under
 * a context with hostile keys (`__proto__`, `constructor`, lone surrogates,
 * empty), then Decrypt (1) unchanged: must round-trip; (2) with one byte of
 * the blob changed, or under a different context (a `__proto__` pair added,
 * a pair dropped or changed, lone surrogates replaced by U+FFFD): must fail
 * with InvalidCiphertextException. A context holding invalid UTF-16 must be
 * refused (it cannot be canonicalized without collisions).
 */
type Change =
  | { kind: 'byte'; at: number; xor: number }
  | { kind: 'addProto'; value: string }
  | { kind: 'drop'; i: number }
  | { kind: 'value'; i: number; value: string }
  | { kind: 'surrogates' };
interface Input { pairs: [string, string][]; change: Change }

const part = fc.oneof(
  { arbitrary: fc.constantFrom('aws:ebs:id', '__proto__', 'constructor', 'toString', 'a', 'b', '', 'vol-1', ' ', 'd', '\uFFFD'), weight: 4 },
  { arbitrary: fc.string({ maxLength: 6 }), weight: 2 },
  { arbitrary: fc.tuple(fc.constantFrom('', 'a', 'k'), loneSurrogate).map(([a, s]) => a + s), weight: 1 },
);
const change: fc.Arbitrary<Change> = fc.oneof(
  fc.record({ kind: fc.constant('byte' as const), at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('addProto' as const), value: fc.constantFrom('d', ' ', '', 'x') }),
  fc.record({ kind: fc.constant('drop' as const), i: fc.nat() }),
  fc.record({ kind: fc.constant('value' as const), i: fc.nat(), value: part }),
  fc.constant({ kind: 'surrogates' as const }),
);

const CHANGE_NAMES = { addProto: '__proto__ pair added', drop: 'a pair dropped', value: 'a value changed', surrogates: 'lone surrogates as U+FFFD' } as const;

/** The context as JSON text: JSON.parse makes `__proto__` an own member, as the control socket's parser does. */
const ctxText = (pairs: [string, string][]): string => `{${pairs.map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`).join(',')}}`;
const wellFormed = (s: string): string => s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\uFFFD');
const canon = (pairs: [string, string][]): string => JSON.stringify([...new Map(pairs)].sort());

async function call(f: KmsFixture, op: string, text: string): Promise<Record<string, any>> {
  return (await f.kms.call(op, decodeKmsRequest(JSON.parse(text) as Record<string, unknown>), f.root)) as Record<string, any>;
}

const target: FuzzTarget<Input, KmsFixture> = {
  name: 'kms-blob-context',
  about: 'Encrypt/Decrypt through KmsService.call: changed blobs and changed contexts must fail with InvalidCiphertextException',
  arbitrary: () => fc.record({ pairs: fc.uniqueArray(fc.tuple(part, part), { maxLength: 4, selector: (p) => p[0] }), change }),
  open: openKmsFixture,
  close: closeKmsFixture,
  resetEvery: 1500,
  async run(x, f): Promise<Verdict> {
    const v = await bound(x, f);
    // Checked after the binding, so that a collision (a surrogate read as U+FFFD) is reported as such.
    if (v === 'accepted' && x.pairs.some(([k, w]) => hasLoneSurrogate(k) || hasLoneSurrogate(w))) {
      return { invalid: 'encryption context with invalid UTF-16 refused', why: `Encrypt accepted context ${JSON.stringify(ctxText(x.pairs))}` };
    }
    return v;
  },
  isTyped: isTypedKmsError,
};
export default target;

/** Encrypt, then decrypt unchanged and changed: 'accepted' when the blob is bound as it must be. */
async function bound(x: Input, f: KmsFixture): Promise<Verdict> {
  const ctx = ctxText(x.pairs);
  const enc = await call(f, 'Encrypt', `{"KeyId":"alias/fuzz","Plaintext":"ZnV6eg==","EncryptionContext":${ctx}}`);
  const blob = Buffer.from(enc.CiphertextBlob as Uint8Array);
  const decrypt = (b: Buffer, c: string) => call(f, 'Decrypt', `{"CiphertextBlob":"${b.toString('base64')}","EncryptionContext":${c}}`);
  try {
    const dec = await decrypt(blob, ctx);
    if (Buffer.from(dec.Plaintext as Uint8Array).toString() !== 'fuzz') return { invalid: 'encrypt/decrypt round trip', why: 'plaintext differs' };
  } catch (e) {
    return { invalid: 'encrypt/decrypt round trip', why: `Decrypt under the same context failed: ${(e as Error).name}: ${(e as Error).message}` };
  }
  let b2 = blob;
  let pairs2 = x.pairs.map((p) => [...p] as [string, string]);
  const c = x.change;
  if (c.kind === 'byte') {
    b2 = Buffer.from(blob);
    b2[c.at % b2.length]! ^= c.xor;
  } else if (c.kind === 'addProto') {
    const have = pairs2.find((p) => p[0] === '__proto__');
    if (have) have[1] += c.value + '!';
    else pairs2.push(['__proto__', c.value]);
  } else if (c.kind === 'drop') {
    if (pairs2.length === 0) return 'accepted';
    pairs2.splice(c.i % pairs2.length, 1);
  } else if (c.kind === 'value') {
    if (pairs2.length === 0) return 'accepted';
    pairs2[c.i % pairs2.length]![1] = c.value;
  } else {
    pairs2 = pairs2.map(([k, v]) => [wellFormed(k), wellFormed(v)]);
  }
  if (c.kind !== 'byte' && canon(pairs2) === canon(x.pairs)) return 'accepted';
  const property = c.kind === 'byte' ? 'changed blob fails with InvalidCiphertextException' : `other context (${CHANGE_NAMES[c.kind]}) fails with InvalidCiphertextException`;
  const what = c.kind === 'byte' ? `blob byte ${c.at % blob.length} changed` : `context ${ctx} -> ${ctxText(pairs2)}`;
  try {
    await decrypt(b2, ctxText(pairs2));
  } catch (e) {
    if (e instanceof InvalidCiphertextException) return 'accepted';
    // A changed byte inside the key ARN (docs/kms-format.md: bytes 3..3+arnLen) names a key that
    // does not exist: refused before any key is touched, as NotFoundException, as AWS answers for
    // an unknown key. Still a refusal, never a decrypt.
    if (c.kind === 'byte' && e instanceof NotFoundException && inArn(blob, c.at % blob.length)) return 'accepted';
    // A context that is itself invalid UTF-16 may be refused as such, before any blob is looked at.
    if (e instanceof ValidationException && pairs2.some(([k, w]) => hasLoneSurrogate(k) || hasLoneSurrogate(w))) return 'accepted';
    if (!isTypedKmsError(e)) throw e;
    return { invalid: property, why: `${what}: ${(e as Error).name} (${(e as { awsName?: string }).awsName})` };
  }
  return { invalid: property, why: `${what}: Decrypt succeeded` };
}

/** Is byte `i` of a blob inside its key ARN? (version 1 byte, arnLen u16 big-endian, then the ARN; docs/kms-format.md) */
function inArn(blob: Uint8Array, i: number): boolean {
  if (blob.length < 3) return false;
  const arnLen = (blob[1]! << 8) | blob[2]!;
  return i >= 1 && i < 3 + arnLen;
}
