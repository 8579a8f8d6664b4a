/**
 * IAM wildcard patterns: `*` matches any run of characters (including none),
 * `?` exactly one. Everything else is literal. (IAM User Guide, "IAM JSON
 * policy elements: Condition operators", StringLike.)
 *
 * Matching is the two-pointer glob walk, not a RegExp: a backtracking regex
 * engine takes exponential time on patterns like `a*?*?*?…*?b` (each `*?`
 * pair multiplies the ways to split the subject), and the data path shares
 * this event loop. The walk remembers only the last `*` seen; on a mismatch
 * it moves that star's match one character on. Each resumption advances the
 * star's start, so the steps are bounded by (|subject| + 1) · (|pattern| + 1)
 * whatever the pattern, and a pattern of any length compiles (there is no
 * regex to overflow).
 */

export function hasWildcard(pattern: string): boolean {
  return pattern.includes('*') || pattern.includes('?');
}

/** Counts the walk's steps (tests: matching is bounded by the product of the lengths). */
export interface MatchStats {
  steps: number;
}

/**
 * Does `subject` match `pattern` as a whole? Characters are UTF-16 code
 * units, as the RegExp this replaced matched them. `stats`, when given,
 * receives the number of steps taken.
 */
export function globMatch(pattern: string, subject: string, stats?: MatchStats, lit?: Uint8Array): boolean {
  const pl = pattern.length;
  const sl = subject.length;
  let p = 0;
  let s = 0;
  let star = -1; // index of the last `*` in the pattern, -1 before the first
  let resume = 0; // subject index that star's match ends at
  let steps = 0;
  while (s < sl) {
    steps++;
    const c = p < pl ? pattern.charCodeAt(p) : -1;
    const literal = lit !== undefined && p < pl && lit[p] === 1; // a substituted policy variable's `*` / `?`
    if ((c === 0x3f /* ? */ && !literal) || ((c !== 0x2a /* * */ || literal) && c === subject.charCodeAt(s))) {
      p++;
      s++;
    } else if (c === 0x2a && !literal) {
      star = p++;
      resume = s;
    } else if (star >= 0) {
      p = star + 1;
      s = ++resume;
    } else {
      if (stats) stats.steps = steps;
      return false;
    }
  }
  while (p < pl && pattern.charCodeAt(p) === 0x2a && !(lit !== undefined && lit[p] === 1)) { p++; steps++; }
  if (stats) stats.steps = steps;
  return p === pl;
}

/**
 * A matcher for a list of patterns (any one may match); exact-only lists use a Set. `lits[i]`,
 * when given, marks the characters of `patterns[i]` that are literal (substituted policy
 * variables, `${*}`): their `*` and `?` are not wildcards. Not with `ignoreCase`.
 */
export function globMatcher(patterns: readonly string[], ignoreCase: boolean, lits?: readonly (Uint8Array | undefined)[]): (s: string) => boolean {
  if (lits && lits.some((m) => m !== undefined)) {
    const masked = patterns.map((p, i) => ({ p, m: lits[i] }));
    return (subject) => masked.some(({ p, m }) => globMatch(p, subject, undefined, m));
  }
  if (patterns.includes('*')) return () => true;
  const norm = ignoreCase ? patterns.map((p) => p.toLowerCase()) : [...patterns];
  const exact = new Set(norm.filter((p) => !hasWildcard(p)));
  const globs = norm.filter(hasWildcard);
  if (globs.length === 0) return ignoreCase ? (s) => exact.has(s.toLowerCase()) : (s) => exact.has(s);
  return (subject) => {
    const s = ignoreCase ? subject.toLowerCase() : subject;
    if (exact.has(s)) return true;
    for (const g of globs) if (globMatch(g, s)) return true;
    return false;
  };
}
