/**
 * Reference checks the targets judge accepted inputs by. Each is small
 * enough to be obviously right, and none shares code with the parser it
 * checks.
 */

/**
 * IAM wildcard match by dynamic programming over UTF-16 code units: `*` any
 * run (also empty), `?` one unit, everything else literal. O(|p|·|s|), no
 * backtracking. `ignoreCase` folds ASCII letters only (callers keep
 * case-insensitive inputs ASCII).
 */
export function refWildcard(pattern: string, s: string, ignoreCase = false): boolean {
  const fold = (c: string): string => (ignoreCase ? c.replace(/[A-Z]/g, (x) => x.toLowerCase()) : c);
  const p = fold(pattern);
  const t = fold(s);
  const n = t.length;
  let prev = new Uint8Array(n + 1);
  prev[0] = 1;
  for (let i = 0; i < p.length; i++) {
    const c = p[i]!;
    const cur = new Uint8Array(n + 1);
    if (c === '*') {
      cur[0] = prev[0]!;
      for (let j = 1; j <= n; j++) cur[j] = prev[j]! | cur[j - 1]!;
    } else {
      for (let j = 1; j <= n; j++) cur[j] = prev[j - 1]! & (c === '?' || c === t[j - 1] ? 1 : 0);
    }
    prev = cur;
  }
  return prev[n] === 1;
}

/**
 * RFC 4648 §4 base64: only the alphabet, `=` padding only at the end, length
 * a multiple of 4. Unused bits of the last quantum are not checked (neither
 * cryptsetup's decoder nor AWS's check them).
 */
export function isStrictBase64(s: string): boolean {
  return s.length % 4 === 0 && /^[A-Za-z0-9+/]*={0,2}$/.test(s);
}

/** Does a string hold a lone (unpaired) UTF-16 surrogate? */
export function hasLoneSurrogate(s: string): boolean {
  return /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
}

/**
 * The first member name that occurs twice in one JSON object of `text`, as a
 * path (`segments.0.offset`), or undefined. `text` must be valid JSON (call it
 * only after a parser accepted it). Iterative, so deep nesting is fine.
 */
export function duplicateMember(text: string): string | undefined {
  interface Frame { obj: boolean; keys: Set<string>; name: string; expectKey: boolean; idx: number }
  const stack: Frame[] = [];
  let pendingKey: string | undefined;
  let i = 0;
  const childName = (): string => {
    const top = stack[stack.length - 1];
    if (!top) return '';
    const k = top.obj ? (pendingKey ?? '?') : String(top.idx);
    return top.name ? `${top.name}.${k}` : k;
  };
  while (i < text.length) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      const str = JSON.parse(text.slice(i, j + 1)) as string;
      const top = stack[stack.length - 1];
      if (top?.obj && top.expectKey) {
        if (top.keys.has(str)) return top.name ? `${top.name}.${str}` : str;
        top.keys.add(str);
        top.expectKey = false;
        pendingKey = str;
      }
      i = j + 1;
      continue;
    }
    if (c === '{' || c === '[') {
      const name = childName();
      stack.push({ obj: c === '{', keys: new Set(), name, expectKey: c === '{', idx: 0 });
    } else if (c === '}' || c === ']') {
      stack.pop();
    } else if (c === ',') {
      const top = stack[stack.length - 1];
      if (top?.obj) top.expectKey = true;
      else if (top) top.idx++;
    }
    i++;
  }
  return undefined;
}

/** Deepest nesting of arrays/objects in valid JSON text. */
export function jsonDepth(text: string): number {
  let d = 0;
  let max = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      i++;
      while (text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    } else if (c === '{' || c === '[') max = Math.max(max, ++d);
    else if (c === '}' || c === ']') d--;
  }
  return max;
}

/** Own keys of a plain object (including `__proto__` as an own key), sorted. */
export const ownKeys = (o: object): string[] => Reflect.ownKeys(o).filter((k): k is string => typeof k === 'string').sort();
