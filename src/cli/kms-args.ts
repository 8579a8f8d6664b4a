import { readFileSync } from 'node:fs';
import { KMS_MEMBERS, KMS_REQUIRED } from './kms-members.js';

/**
 * AWS-CLI-style arguments for `ebsd kms <operation>`: kebab-case flags map to
 * the operation's PascalCase request members (`--key-id` -> KeyId), with the
 * AWS CLI's value conventions: `file://path` (text), `fileb://path` (bytes,
 * sent base64), JSON, and shorthand (`k=v,k2=v2` for maps, `TagKey=a,TagValue=b`
 * for tag lists). Blob members given without fileb:// are taken as base64, as
 * AWS CLI v2 does.
 */

/** Every KMS operation the daemon serves (AWS KMS API reference names). */
export const KMS_OPERATIONS = [
  'CreateKey', 'DescribeKey', 'ListKeys', 'UpdateKeyDescription', 'EnableKey', 'DisableKey', 'ScheduleKeyDeletion',
  'CancelKeyDeletion', 'EnableKeyRotation', 'DisableKeyRotation', 'GetKeyRotationStatus', 'RotateKeyOnDemand',
  'ListKeyRotations', 'CreateAlias', 'UpdateAlias', 'DeleteAlias', 'ListAliases', 'Encrypt', 'Decrypt', 'ReEncrypt',
  'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'GenerateDataKeyPair', 'GenerateDataKeyPairWithoutPlaintext',
  'GenerateRandom', 'Sign', 'Verify', 'GetPublicKey', 'GenerateMac', 'VerifyMac', 'TagResource', 'UntagResource',
  'ListResourceTags', 'PutKeyPolicy', 'GetKeyPolicy', 'ListKeyPolicies', 'CreateGrant', 'ListGrants',
  'ListRetirableGrants', 'RetireGrant', 'RevokeGrant', 'DescribeCustomKeyStores',
] as const;

const BLOBS = new Set(['Plaintext', 'CiphertextBlob', 'Message', 'Signature', 'Mac']);
const MAPS = new Set(['EncryptionContext', 'SourceEncryptionContext', 'DestinationEncryptionContext']);
const LISTS = new Set(['GrantTokens', 'Operations', 'TagKeys', 'Tags', 'DryRunModifiers']);
const NUMBERS = new Set(['NumberOfBytes', 'Limit', 'PendingWindowInDays', 'RotationPeriodInDays']);
const BOOLEANS = new Set(['BypassPolicyLockoutSafetyCheck', 'DryRun', 'MultiRegion', 'IncludeKeyMaterial']);

/** Options the CLI itself consumes; never sent to KMS. */
const GLOBAL = new Set(['output', 'query', 'state-dir', 'help', 'version']);
/** CLI-only options of one operation. */
const CLI_ONLY: Readonly<Record<string, readonly string[]>> = { CreateKey: ['alias'] };

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/**
 * Refuse an option given as the empty string (`--name "$UNSET"`): dropping it would widen a filter to
 * everything or fall back to a default key, so `''` is a usage error naming the option.
 */
export function refuseEmpty(a: Record<string, unknown>, ...options: string[]): void {
  for (const o of options) {
    const v = a[o.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())];
    if (v === '') throw new UsageError(`--${o}: empty value`);
  }
}

/**
 * `--tag Key=Value` (repeatable) of volume create, snapshot create and snapshot copy: the first `=`
 * splits; `Key=` is an empty value, and a tag with no `=` is refused rather than taken as an empty
 * value (snapshot copy refused it while the creates took `--tag team` as team="").
 */
export function tagArgs(values: readonly unknown[] | undefined): { Key: string; Value: string }[] {
  return (values ?? []).map((t) => {
    const s = String(t);
    const eq = s.indexOf('=');
    if (eq <= 0) throw new UsageError(`--tag: expected Key=Value, got "${s}"`);
    return { Key: s.slice(0, eq), Value: s.slice(eq + 1) };
  });
}

/**
 * A yargs `coerce` for a whole-number option: decimal digits only, up to 2^53-1. yargs' own
 * `type: 'number'` turns `abc` into NaN (sent as null: "Invalid value 'null'") and takes `0x10` as 16.
 * Given twice, the last value counts (as every option: main.ts normalizeArgs).
 */
export function wholeNumber(flag: string): (v: unknown) => number {
  return (v: unknown): number => {
    const last = Array.isArray(v) ? v[v.length - 1] : v;
    if (typeof last === 'number' && Number.isSafeInteger(last) && last >= 0) return last; // a default
    const s = String(last);
    const n = /^\d+$/.test(s) ? Number(s) : NaN;
    if (!Number.isSafeInteger(n)) throw new UsageError(`${flag} must be a whole number (decimal digits), got "${s}"`);
    return n;
  };
}

/**
 * A yargs `coerce` for a number of seconds that may have a fraction (`0.5`, `2`): decimal digits with
 * an optional `.digits`, from `min` to `max`. yargs' `type: 'number'` made `abc` NaN, which reached
 * `ebsd speed` as an internal error with a stack and `ebsd top` as "got NaN".
 */
export function decimalSeconds(flag: string, min: number, max: number): (v: unknown) => number {
  return (v: unknown): number => {
    const last = Array.isArray(v) ? v[v.length - 1] : v;
    if (typeof last === 'number' && last >= min && last <= max) return last; // a default
    const s = String(last);
    const n = /^\d+(\.\d+)?$/.test(s) ? Number(s) : NaN;
    if (!(n >= min && n <= max)) throw new UsageError(`${flag} must be a number of seconds from ${min} to ${max}, got "${s}"`);
    return n;
  };
}

export const kebabToPascal = (s: string): string => s.split('-').map((w) => (w ? w[0]!.toUpperCase() + w.slice(1) : '')).join('');
export const pascalToKebab = (s: string): string => s.replace(/([a-z0-9])([A-Z])/g, '$1-$2').toLowerCase();

export function operationFromKebab(op: string): string {
  const name = kebabToPascal(op);
  const known = KMS_OPERATIONS.find((o) => o === name);
  if (!known) throw new UsageError(`unknown KMS operation "${op}" (see \`ebsd kms --help\`)`);
  return known;
}

/**
 * Parse the tokens after `ebsd kms <operation>` into a request object: a
 * null-prototype object, so a member or map key named `__proto__` is carried
 * as data. A flag that is no member of `operation` is refused with the AWS
 * CLI's wording, `Unknown options: --kye-id, x`.
 */
export function parseKmsArgs(tokens: string[], operation?: string): Record<string, unknown> {
  const req: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
  const members = operation === undefined ? undefined : new Set(KMS_MEMBERS[operation] ?? []);
  const cliOnly = operation === undefined ? [] : CLI_ONLY[operation] ?? [];
  const unknown: string[] = [];
  for (let i = 0; i < tokens.length; ) {
    const tok = tokens[i++]!;
    if (!tok.startsWith('--')) throw new UsageError(`unexpected argument "${tok}"`);
    let flag = tok.slice(2);
    let inline: string | undefined;
    const eq = flag.indexOf('=');
    if (eq > 0) { inline = flag.slice(eq + 1); flag = flag.slice(0, eq); }
    const values: string[] = inline !== undefined ? [inline] : [];
    if (inline === undefined) while (i < tokens.length && !tokens[i]!.startsWith('--')) values.push(tokens[i++]!);
    if (GLOBAL.has(flag) || cliOnly.includes(flag)) continue;
    let negate = false;
    if (flag.startsWith('no-') && BOOLEANS.has(kebabToPascal(flag.slice(3)))) { negate = true; flag = flag.slice(3); }
    const member = kebabToPascal(flag);
    if (members && (!members.has(member) || pascalToKebab(member) !== flag)) {
      unknown.push(tok.split('=')[0]!, ...values);
      continue;
    }
    req[member] = convert(member, values, negate);
  }
  if (unknown.length) throw new UsageError(`Unknown options: ${unknown.join(', ')}`);
  return req;
}

/**
 * Refuse a request that leaves out a member `operation` requires, naming the flags to add in the
 * AWS CLI's words (`the following arguments are required: --key-id, --plaintext`), before it is sent.
 */
export function checkRequiredMembers(req: Record<string, unknown>, operation: string): void {
  const missing = (KMS_REQUIRED[operation] ?? []).filter((m) => !Object.hasOwn(req, m));
  if (missing.length) throw new UsageError(`the following arguments are required: ${missing.map((m) => `--${pascalToKebab(m)}`).join(', ')}`);
}

/**
 * `ebsd kms <operation> --help`: the flags that operation takes, its required ones marked, as the
 * AWS CLI's `aws kms <operation> help` lists its parameters (the general help named none of them).
 */
export function kmsFlagsHelp(operation: string): string {
  const required = new Set(KMS_REQUIRED[operation] ?? []);
  const flags = (KMS_MEMBERS[operation] ?? []).map((m) => `--${pascalToKebab(m)}${required.has(m) ? ' (required)' : ''}`);
  for (const f of CLI_ONLY[operation] ?? []) flags.push(`--${f}`);
  return `${pascalToKebab(operation)} takes: ${flags.length ? flags.join(', ') : 'no flags'}`;
}

function convert(member: string, values: string[], negate: boolean): unknown {
  if (BOOLEANS.has(member)) {
    // As the AWS CLI: a boolean flag stands alone (`--dry-run`, `--no-dry-run`); an explicit
    // true/false (any case) is taken, anything else refused: `--dry-run TRUE` once ran the real operation.
    if (values.length === 0) return !negate;
    const flag = `--${negate ? 'no-' : ''}${pascalToKebab(member)}`;
    if (negate || values.length > 1 || !/^(true|false)$/i.test(values[0]!)) {
      throw new UsageError(`${flag} takes no value${negate ? '' : ' (or true or false)'}, got ${values.map((v) => `"${v}"`).join(' ')}`);
    }
    return values[0]!.toLowerCase() === 'true';
  }
  if (values.length === 0) throw new UsageError(`--${pascalToKebab(member)} needs a value`);
  if (LISTS.has(member)) {
    if (values.length === 1 && values[0]!.trim().startsWith('[')) return json(values[0]!, member);
    if (member === 'Tags') return values.map((v) => (v.trim().startsWith('{') ? json(v, member) : shorthandMap(v, member)));
    return values.flatMap((v) => v.split(',')).filter((v) => v !== '');
  }
  if (values.length > 1) throw new UsageError(`--${pascalToKebab(member)} takes one value`);
  const raw = values[0]!;
  if (BLOBS.has(member)) {
    if (raw.startsWith('fileb://')) return readLocalFile(raw.slice(8), `--${pascalToKebab(member)} fileb://`).toString('base64');
    if (raw.startsWith('file://')) return readLocalFile(raw.slice(7), `--${pascalToKebab(member)} file://`).toString('base64');
    return raw; // base64, as AWS CLI v2 takes blobs by default
  }
  const text = raw.startsWith('file://') ? readLocalFile(raw.slice(7), `--${pascalToKebab(member)} file://`).toString('utf8') : raw;
  if (NUMBERS.has(member)) {
    const n = Number(text);
    if (!Number.isFinite(n)) throw new UsageError(`--${pascalToKebab(member)} must be a number, got "${text}"`);
    return n;
  }
  if (MAPS.has(member)) return text.trim().startsWith('{') ? json(text, member) : shorthandMap(text, member);
  if (member === 'Constraints') return text.trim().startsWith('{') ? json(text, member) : shorthandConstraints(text);
  if (member === 'Policy') return text; // a policy is a JSON *string* member
  return text.trim().startsWith('{') && member !== 'Description' ? json(text, member) : text;
}

/**
 * The bytes of a `file://` / `fileb://` argument. A path that cannot be a
 * file (a NUL byte), a directory, or a file that cannot be read is a usage
 * error naming the flag and the path, never a raw Node error.
 */
export function readLocalFile(path: string, what: string): Buffer {
  const shown = /[\u0000-\u001f]/.test(path) ? JSON.stringify(path) : path;
  if (path === '') throw new UsageError(`${what}: no path given`);
  if (path.includes('\0')) throw new UsageError(`${what}${shown}: a path cannot contain a NUL byte`);
  try {
    return readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'EISDIR' ? 'is a directory, not a file'
      : code === 'ENOENT' ? 'no such file'
      : code === 'EACCES' ? 'permission denied'
      : `cannot be read (${code ?? (e as Error).message})`;
    throw new UsageError(`${what}${shown}: ${why}`);
  }
}

function json(text: string, member: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new UsageError(`--${pascalToKebab(member)}: invalid JSON`);
  }
}

/** `k=v,k2=v2` -> {k: v, k2: v2}. Values may not contain commas (use JSON for those). */
export function shorthandMap(text: string, member: string): Record<string, string> {
  // Null prototype: a key named `__proto__` is a key like any other (AWS takes any UTF-8 key).
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  for (const pair of text.split(',')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new UsageError(`--${pascalToKebab(member)}: expected key=value pairs, got "${pair}"`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

/** `EncryptionContextSubset={k=v,k2=v2}` (AWS CLI shorthand) -> {EncryptionContextSubset: {...}}. */
function shorthandConstraints(text: string): Record<string, unknown> {
  const m = /^(EncryptionContextSubset|EncryptionContextEquals)=\{(.*)\}$/.exec(text.trim());
  if (!m) throw new UsageError('--constraints: use JSON or EncryptionContextSubset={k=v,...}');
  return { [m[1]!]: shorthandMap(m[2]!, 'constraints') };
}

/** `--dry-run` of the EC2 volume and snapshot commands (EC2's DryRun member). */
export const DRY_RUN_OPTION = {
  type: 'boolean',
  describe: 'check the request and your permissions only (EC2 DryRun): DryRunOperation if it would succeed, UnauthorizedOperation if not; nothing changes',
} as const;

/** `{DryRun: true}` when `--dry-run` was given, else nothing. */
export function dryRunMember(a: { dryRun?: unknown }): { DryRun?: true } {
  return a.dryRun === true ? { DryRun: true } : {};
}
