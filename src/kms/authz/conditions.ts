import { BlockList, isIP } from 'node:net';
import { malformedPolicy } from './errors.js';
import { globMatcher } from './wildcard.js';
import { compileTemplate, hasVariables, type Resolved } from './policy-variables.js';

/**
 * IAM Condition element: operators, IfExists, ForAnyValue/ForAllValues.
 * (IAM User Guide, "IAM JSON policy elements: Condition operators" and
 * "Multivalued context keys".) A condition block compiles once into tests;
 * evaluation only looks up the keys a policy names.
 *
 * Semantics implemented:
 * - Keys are case-insensitive (looked up lower-cased); values keep their case
 *   except for *IgnoreCase and Bool.
 * - Several values for one key: OR. Several keys in one operator, or several
 *   operators: AND.
 * - Missing key: positive operators are false, negated operators (…Not…) true,
 *   `…IfExists` true, `Null: true` true.
 * - A multi-valued context key without a set operator: a positive operator is
 *   true if any value matches; a negated one is true if no value matches.
 * - `ForAnyValue:` true if at least one request value satisfies the operator
 *   (false when the key is missing or empty); `ForAllValues:` true if every
 *   request value does (true when the key is missing or empty).
 */

export type ContextValue = string | readonly string[];

/** The request context as the evaluator sees it; `key` is already lower-case. */
export interface ConditionContext {
  get(key: string): ContextValue | undefined;
}

export interface CompiledCondition {
  /** Operator as written, e.g. `ForAnyValue:StringEqualsIfExists`. */
  readonly operator: string;
  /** Condition key, lower-cased. */
  readonly key: string;
  readonly test: (ctx: ConditionContext) => boolean;
}

/** Context keys that carry a set of values (KMS Developer Guide, "AWS KMS condition keys"). */
export const MULTI_VALUED_KEYS: ReadonlySet<string> = new Set([
  'kms:encryptioncontextkeys',
  'kms:grantoperations',
  'kms:resourcealiases',
  'aws:tagkeys',
  'aws:calledvia',
]);

type Family = 'String' | 'Numeric' | 'Date' | 'Bool' | 'Binary' | 'Ip' | 'Arn' | 'Null';

interface OperatorSpec {
  family: Family;
  negated: boolean;
  /**
   * Build the positive single-value predicate from the policy's values. `lits[i]` marks the
   * characters of `values[i]` that a policy variable substituted (literal, never wildcards).
   */
  build(values: string[], where: string, lits?: readonly (Uint8Array | undefined)[]): (v: string) => boolean;
}

/**
 * A number as the policy or the request writes it. Read as JavaScript's `Number` reads text
 * (`1e3`, `.5` and `" 5"` too), as before: policies already stored with such values must keep
 * compiling (a stored key policy that no longer compiles would refuse every call on its key,
 * PutKeyPolicy included). An empty string is not a number.
 */
const _num = (s: string): number => (s.trim() === '' ? NaN : Number(s));

const ISO_8601 = /^(\d{4}-\d{2}-\d{2})(?:T(\d{2}:\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:?\d{2})?)?$/;

/**
 * A date as IAM reads one: epoch seconds (aws:EpochTime), or ISO 8601 (`2030-01-01`,
 * `2030-01-01T12:00:00Z`, with an offset or fraction; no zone is UTC). Not what else
 * `Date.parse` reads ("Tue Jan 01 2030", RFC 2822).
 */
function _date(s: string): number {
  if (/^-?\d+(\.\d+)?$/.test(s)) return Number(s) * 1000;
  const m = ISO_8601.exec(s);
  if (m) {
    const [, day, hm, sec, frac, zone] = m;
    if (!hm) return Date.parse(`${day}T00:00:00Z`);
    const z = zone === undefined || zone === 'Z' ? 'Z' : `${zone.slice(0, 3)}:${zone.slice(-2)}`;
    return Date.parse(`${day}T${hm}:${sec ?? '00'}${frac ? `.${frac.slice(0, 3).padEnd(3, '0')}` : ''}${z}`);
  }
  // Any other form Date.parse reads (lowercase ISO, RFC 2822), as before: stored policies with such
  // values must keep compiling (see _num).
  return Date.parse(s);
}

function numericOp(cmp: (a: number, b: number) => boolean, parse: (s: string) => number, kind: string) {
  return (values: string[], where: string): ((v: string) => boolean) => {
    const ps = values.map((x) => {
      const n = parse(x);
      if (Number.isNaN(n)) throw malformedPolicy(`${where}: "${x}" is not a valid ${kind} value`);
      return n;
    });
    return (v) => {
      const n = parse(v);
      if (Number.isNaN(n)) return false;
      for (const p of ps) if (cmp(n, p)) return true;
      return false;
    };
  };
}

function _splitArn(s: string): string[] | undefined {
  const parts: string[] = [];
  let start = 0;
  for (let i = 0; i < 5; i++) {
    const j = s.indexOf(':', start);
    if (j < 0) return undefined;
    parts.push(s.slice(start, j));
    start = j + 1;
  }
  parts.push(s.slice(start));
  return parts;
}

function arnOp(values: string[], where: string, lits?: readonly (Uint8Array | undefined)[]): (v: string) => boolean {
  // IAM: ArnEquals and ArnLike both match component by component, with wildcards in each.
  const pats = values.map((x, i) => {
    const lit = lits?.[i];
    if (x === '*' && !lit) return undefined;
    const parts = _splitArn(x);
    if (!parts || parts[0] !== 'arn') throw malformedPolicy(`${where}: "${x}" is not a valid ARN pattern`);
    let at = 0;
    return parts.map((p) => {
      const m = lit?.subarray(at, at + p.length);
      at += p.length + 1;
      return globMatcher([p], false, m ? [m] : undefined);
    });
  });
  return (v) => {
    const parts = _splitArn(v);
    for (const p of pats) {
      if (p === undefined) return true;
      if (parts && p.every((m, i) => m(parts[i]!))) return true;
    }
    return false;
  };
}

function ipOp(values: string[], where: string): (v: string) => boolean {
  const bl = new BlockList();
  for (const x of values) {
    const [addr, bits, extra] = x.split('/');
    const fam = isIP(addr ?? '');
    const max = fam === 4 ? 32 : 128;
    // RFC 4632 §3.1: the prefix length is a decimal number, written without leading zeros
    // ("/08" is refused, as an octal-looking length is ambiguous). `Number("")` is 0, so
    // "10.0.0.1/" would otherwise read as /0, every address.
    if (bits !== undefined && !/^(?:0|[1-9]\d{0,2})$/.test(bits)) throw malformedPolicy(`${where}: "${x}" is not a valid IP address or CIDR block`);
    const prefix = bits === undefined ? max : Number(bits);
    if (!fam || extra !== undefined || prefix > max) {
      throw malformedPolicy(`${where}: "${x}" is not a valid IP address or CIDR block`);
    }
    bl.addSubnet(addr!, prefix, fam === 4 ? 'ipv4' : 'ipv6');
  }
  return (v) => {
    const fam = isIP(v);
    return fam !== 0 && bl.check(v, fam === 4 ? 'ipv4' : 'ipv6');
  };
}

// A Map, not an object: operator names come from policies, and `OPERATORS["__proto__"]`
// or `OPERATORS["constructor"]` of an object would be a prototype member, not undefined.
const OPERATORS: ReadonlyMap<string, OperatorSpec> = (() => {
  const o = new Map<string, OperatorSpec>();
  const add = (name: string, family: Family, negated: boolean, build: OperatorSpec['build']): void => {
    o.set(name.toLowerCase(), { family, negated, build });
  };
  const strEq = (vals: string[]) => { const s = new Set(vals); return (v: string) => s.has(v); };
  const strEqIc = (vals: string[]) => { const s = new Set(vals.map((x) => x.toLowerCase())); return (v: string) => s.has(v.toLowerCase()); };
  const strLike = (vals: string[], _w: string, lits?: readonly (Uint8Array | undefined)[]) => globMatcher(vals, false, lits);
  add('StringEquals', 'String', false, strEq);
  add('StringNotEquals', 'String', true, strEq);
  add('StringEqualsIgnoreCase', 'String', false, strEqIc);
  add('StringNotEqualsIgnoreCase', 'String', true, strEqIc);
  add('StringLike', 'String', false, strLike);
  add('StringNotLike', 'String', true, strLike);
  add('NumericEquals', 'Numeric', false, numericOp((a, b) => a === b, _num, 'numeric'));
  add('NumericNotEquals', 'Numeric', true, numericOp((a, b) => a === b, _num, 'numeric'));
  add('NumericLessThan', 'Numeric', false, numericOp((a, b) => a < b, _num, 'numeric'));
  add('NumericLessThanEquals', 'Numeric', false, numericOp((a, b) => a <= b, _num, 'numeric'));
  add('NumericGreaterThan', 'Numeric', false, numericOp((a, b) => a > b, _num, 'numeric'));
  add('NumericGreaterThanEquals', 'Numeric', false, numericOp((a, b) => a >= b, _num, 'numeric'));
  add('DateEquals', 'Date', false, numericOp((a, b) => a === b, _date, 'date'));
  add('DateNotEquals', 'Date', true, numericOp((a, b) => a === b, _date, 'date'));
  add('DateLessThan', 'Date', false, numericOp((a, b) => a < b, _date, 'date'));
  add('DateLessThanEquals', 'Date', false, numericOp((a, b) => a <= b, _date, 'date'));
  add('DateGreaterThan', 'Date', false, numericOp((a, b) => a > b, _date, 'date'));
  add('DateGreaterThanEquals', 'Date', false, numericOp((a, b) => a >= b, _date, 'date'));
  add('Bool', 'Bool', false, (vals, where) => {
    const s = new Set<string>(vals.map((x) => {
      const l = x.toLowerCase();
      if (l !== 'true' && l !== 'false') throw malformedPolicy(`${where}: Bool value "${x}" must be true or false`);
      return l;
    }));
    return (v) => s.has(v.toLowerCase());
  });
  add('BinaryEquals', 'Binary', false, strEq);
  add('IpAddress', 'Ip', false, ipOp);
  add('NotIpAddress', 'Ip', true, ipOp);
  add('ArnEquals', 'Arn', false, arnOp);
  add('ArnLike', 'Arn', false, arnOp);
  add('ArnNotEquals', 'Arn', true, arnOp);
  add('ArnNotLike', 'Arn', true, arnOp);
  add('Null', 'Null', false, (vals, where) => {
    for (const x of vals) {
      const l = x.toLowerCase();
      if (l !== 'true' && l !== 'false') throw malformedPolicy(`${where}: Null value "${x}" must be true or false`);
    }
    return () => false; // handled specially
  });
  return o;
})();

export type SetOperator = 'ForAnyValue' | 'ForAllValues' | undefined;

export interface ParsedOperator {
  setOp: SetOperator;
  base: string;
  ifExists: boolean;
  spec: OperatorSpec;
}

/** Parse `ForAllValues:StringLikeIfExists` and friends; undefined if unknown. */
export function parseOperator(name: string): ParsedOperator | undefined {
  let rest = name;
  let setOp: SetOperator;
  const colon = rest.indexOf(':');
  if (colon >= 0) {
    const q = rest.slice(0, colon).toLowerCase();
    if (q === 'foranyvalue') setOp = 'ForAnyValue';
    else if (q === 'forallvalues') setOp = 'ForAllValues';
    else return undefined;
    rest = rest.slice(colon + 1);
  }
  let ifExists = false;
  let spec = OPERATORS.get(rest.toLowerCase());
  if (!spec && /ifexists$/i.test(rest)) {
    ifExists = true;
    rest = rest.slice(0, -'IfExists'.length);
    spec = OPERATORS.get(rest.toLowerCase());
    if (spec?.family === 'Null') return undefined; // NullIfExists does not exist
  }
  if (!spec) return undefined;
  if (setOp && spec.family === 'Null') return undefined;
  return { setOp, base: rest, ifExists, spec };
}

function _scalar(v: unknown, where: string): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  throw malformedPolicy(`${where}: condition values must be strings, numbers or booleans`);
}

/** Compile one `Condition` object. Throws MalformedPolicyDocumentException naming the problem. */
export interface CompileOptions {
  /** Substitute IAM policy variables (`${aws:username}`) in values: Version 2012-10-17 only. */
  variables?: boolean;
}

export function compileConditions(block: unknown, where: string, opts: CompileOptions = {}): CompiledCondition[] {
  if (block === null || typeof block !== 'object' || Array.isArray(block)) {
    throw malformedPolicy(`${where}: Condition must be an object`);
  }
  const out: CompiledCondition[] = [];
  for (const [opName, body] of Object.entries(block as Record<string, unknown>)) {
    const op = parseOperator(opName);
    if (!op) throw malformedPolicy(`${where}: unknown condition operator "${opName}"`);
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      throw malformedPolicy(`${where}: condition operator "${opName}" must map condition keys to values`);
    }
    const entries = Object.entries(body as Record<string, unknown>);
    if (entries.length === 0) throw malformedPolicy(`${where}: condition operator "${opName}" has no condition keys`);
    for (const [rawKey, rawVals] of entries) {
      const w = `${where}: ${opName} ${rawKey}`;
      if (!/^[A-Za-z0-9-]+:\S+$/.test(rawKey)) throw malformedPolicy(`${w}: "${rawKey}" is not a valid condition key`);
      const list = Array.isArray(rawVals) ? rawVals : [rawVals];
      if (list.length === 0) throw malformedPolicy(`${w}: condition key has no values`);
      const values = list.map((v) => _scalar(v, w));
      out.push({ operator: opName, key: rawKey.toLowerCase(), test: _compileOne(op, rawKey.toLowerCase(), values, w, opts.variables === true) });
    }
  }
  return out;
}

function _isMissing(v: ContextValue | undefined): boolean {
  return v === undefined || (typeof v !== 'string' && v.length === 0);
}

/**
 * The positive predicate of values holding policy variables, for this request: each value
 * resolved. A value whose variable has no value in the request, or that resolves to something
 * the operator cannot read, is null, as IAM treats it: it matches nothing, so with the
 * condition's other values ORed, a positive operator holds only if another value matches and
 * a negated one holds unless another matches (AWS: negated operators "match against a null
 * value"). A Deny with StringNotEquals ${aws:username} thus still denies a role session.
 */
function _variablePredicate(spec: OperatorSpec, values: string[], where: string): (ctx: ConditionContext) => (v: string) => boolean {
  const templates = values.map((v) => (hasVariables(v) ? compileTemplate(v) : undefined));
  // The values without variables are checked now, as any policy's are.
  const fixed = values.filter((_, i) => !templates[i]);
  if (fixed.length) spec.build(fixed, where);
  return (ctx) => {
    const preds: ((v: string) => boolean)[] = [];
    for (let i = 0; i < values.length; i++) {
      const t = templates[i];
      const r: Resolved | undefined = t ? t.resolve(ctx) : { s: values[i]! };
      if (!r) continue; // no value: null, matches nothing
      try { preds.push(spec.build([r.s], where, [r.lit])); } catch { /* unreadable: null too */ }
    }
    return (v) => preds.some((p) => p(v));
  };
}

function _compileOne(op: ParsedOperator, key: string, values: string[], where: string, variables: boolean): (ctx: ConditionContext) => boolean {
  const { spec, setOp, ifExists } = op;
  if (spec.family === 'Null') {
    const wantAbsent = values.map((v) => v.toLowerCase() === 'true');
    return (ctx) => {
      const absent = _isMissing(ctx.get(key));
      return wantAbsent.some((w) => w === absent);
    };
  }
  if (variables && values.some(hasVariables)) {
    const perRequest = _variablePredicate(spec, values, where);
    return (ctx) => _test(perRequest(ctx), spec.negated, setOp, ifExists, ctx.get(key));
  }
  const pos = spec.build(values, where);
  return (ctx) => _test(pos, spec.negated, setOp, ifExists, ctx.get(key));
}

function _test(pos: (v: string) => boolean, neg: boolean, setOp: SetOperator, ifExists: boolean, cv: ContextValue | undefined): boolean {
  if (_isMissing(cv)) {
    if (ifExists) return true;
    if (setOp === 'ForAllValues') return true;
    if (setOp === 'ForAnyValue') return false;
    return neg;
  }
  if (typeof cv === 'string') return pos(cv) !== neg;
  const vals = cv as readonly string[];
  if (setOp === 'ForAllValues') {
    for (const v of vals) if (pos(v) === neg) return false;
    return true;
  }
  if (setOp === 'ForAnyValue') {
    for (const v of vals) if (pos(v) !== neg) return true;
    return false;
  }
  // No set operator on a multi-valued key: any value matching the positive form.
  let any = false;
  for (const v of vals) if (pos(v)) { any = true; break; }
  return neg ? !any : any;
}
