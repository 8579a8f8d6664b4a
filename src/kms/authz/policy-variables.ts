import type { ConditionContext } from './conditions.js';

/**
 * IAM policy variables (IAM User Guide, "IAM policy elements: Variables and tags"), in
 * Condition values and Resource / NotResource of a policy whose Version is 2012-10-17 (an
 * older Version or none: written text, compared as is).
 *
 * - `${key}` is replaced by the request context's value of `key` (any context key:
 *   aws:username, aws:userid, aws:PrincipalTag/…, looked up case-insensitively);
 * - `${key, 'default'}` uses `default` (`''` inside it is one quote) when the key has no value;
 * - `${*}`, `${?}`, `${$}` are a literal `*`, `?`, `$`;
 * - a substituted value is literal: its `*` and `?` are not wildcards;
 * - a variable with no value (absent, or a multi-valued key without a default), and a
 *   malformed `${…`, make that value null: it matches nothing, so a negated operator holds
 *   against it as IAM's do, and a Resource / NotResource pattern holding one matches no
 *   resource (conditions.ts, policy-document.ts).
 * One pass: a substituted value's own `${…}` is not replaced again.
 */

type Part = { t: 'text'; s: string } | { t: 'lit'; s: string } | { t: 'var'; key: string; dflt?: string } | { t: 'bad' };

/** A resolved value: the text and, where some characters are literal, a mask (1 = literal, never a wildcard). */
export interface Resolved {
  readonly s: string;
  readonly lit?: Uint8Array;
}

export interface Template {
  /** The value for this request, or undefined when a variable has no value. */
  resolve(ctx: ConditionContext | undefined): Resolved | undefined;
}

const VAR_RE = /^\s*([A-Za-z0-9-]+:[^\s,'}]+)\s*(?:,\s*'((?:[^']|'')*)'\s*)?$/;

export function hasVariables(s: string): boolean {
  return s.includes('${');
}

function _parse(s: string): Part[] {
  const parts: Part[] = [];
  let i = 0;
  while (i < s.length) {
    const j = s.indexOf('${', i);
    if (j < 0) { parts.push({ t: 'text', s: s.slice(i) }); break; }
    if (j > i) parts.push({ t: 'text', s: s.slice(i, j) });
    // The closing brace: the first `}` outside a quoted default.
    let k = j + 2;
    let quoted = false;
    for (; k < s.length; k++) {
      const c = s[k];
      if (c === "'") quoted = !quoted;
      else if (c === '}' && !quoted) break;
    }
    if (k >= s.length) return [{ t: 'bad' }];
    const body = s.slice(j + 2, k);
    if (body === '*' || body === '?' || body === '$') parts.push({ t: 'lit', s: body });
    else {
      const m = VAR_RE.exec(body);
      if (!m) return [{ t: 'bad' }];
      parts.push({ t: 'var', key: m[1]!.toLowerCase(), ...(m[2] !== undefined ? { dflt: m[2].replace(/''/g, "'") } : {}) });
    }
    i = k + 1;
  }
  return parts;
}

export function compileTemplate(s: string): Template {
  const parts = _parse(s);
  return {
    resolve(ctx) {
      let out = '';
      const lit: number[] = [];
      for (const p of parts) {
        if (p.t === 'bad') return undefined;
        if (p.t === 'text') { out += p.s; continue; }
        let v: string | undefined;
        if (p.t === 'lit') v = p.s;
        else {
          const cv = ctx?.get(p.key);
          v = typeof cv === 'string' ? cv : p.dflt;
          if (v === undefined) return undefined;
        }
        for (let n = 0; n < v.length; n++) lit.push(out.length + n);
        out += v;
      }
      if (lit.length === 0) return { s: out };
      const mask = new Uint8Array(out.length);
      for (const x of lit) mask[x] = 1;
      return { s: out, lit: mask };
    },
  };
}
