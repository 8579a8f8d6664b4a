/**
 * EC2 filter values (README, the DescribeVolumes filters paragraph): `*`
 * matches any run of characters (none included), `?` exactly one, and a
 * backslash makes the next character literal (`\*`, `\?`, `\\`). Matching is
 * case-sensitive and whole-string. The values of one filter are ORed;
 * Describe calls AND their filters.
 *
 * Matching is the two-pointer glob walk, not a RegExp: the backtracking regex
 * this replaced held the event loop, which the data path shares, for over a
 * minute on the 25-character value `*a` x 12 + `b` against 40 `a`s. The walk
 * remembers only the last `*`; each resumption moves its start on, so the
 * steps are bounded by (|subject| + 1) · (|pattern| + 1). That bound is per
 * value and string: a request within EC2's limits (50 filters of 200 values
 * of 255 characters, against 50 tags) could still hold the loop ~1 s per
 * resource, so a Describe call counts its steps in one FilterBudget and is
 * refused past it (FilterTooCostlyError).
 */

/** One element of a parsed pattern: a literal UTF-16 code unit, or a wildcard. */
type Token = number | typeof STAR | typeof ONE;
const STAR = -1;
const ONE = -2;

function tokens(value: string): Token[] {
  const out: Token[] = [];
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c === 0x5c /* \ */ && i + 1 < value.length) out.push(value.charCodeAt(++i));
    else if (c === 0x2a /* * */) out.push(STAR);
    else if (c === 0x3f /* ? */) out.push(ONE);
    else out.push(c); // a trailing lone backslash is literal
  }
  return out;
}

/**
 * Matching steps one Describe call may spend on its filters: about 35 ms of
 * the event loop on a 2-core machine (20 million took
 * 170 ms there). Ordinary filters (short values, few wildcards) take tens of
 * steps per resource: a thousand volumes stay far inside it.
 */
export const FILTER_STEPS_PER_REQUEST = 4_000_000;

/** The steps a request has left; one per request, shared by all its filters and resources. */
export class FilterBudget {
  left = FILTER_STEPS_PER_REQUEST;
}

/** A request's filters took more than FILTER_STEPS_PER_REQUEST steps. */
export class FilterTooCostlyError extends Error {
  constructor() {
    super(`the filters' wildcard values take more than ${FILTER_STEPS_PER_REQUEST} matching steps for this request: use fewer values, fewer '*', or shorter values`);
  }
}

function walk(p: readonly Token[], subject: string, budget: FilterBudget | undefined): boolean {
  const pl = p.length;
  const sl = subject.length;
  let i = 0;
  let s = 0;
  let star = -1; // index of the last STAR, -1 before the first
  let resume = 0; // subject index that star's match ends at
  while (s < sl) {
    if (budget && --budget.left < 0) throw new FilterTooCostlyError();
    const t = i < pl ? p[i]! : null;
    if (t === ONE || (t !== null && t >= 0 && t === subject.charCodeAt(s))) {
      i++;
      s++;
    } else if (t === STAR) {
      star = i++;
      resume = s;
    } else if (star >= 0) {
      i = star + 1;
      s = ++resume;
    } else {
      return false;
    }
  }
  while (i < pl && p[i] === STAR) i++;
  return i === pl;
}

/** A predicate: does a string match any of `values`, with EC2's wildcards and escapes; steps counted in `budget`. */
export function filterMatcher(values: readonly string[], budget?: FilterBudget): (s: string) => boolean {
  const parsed = values.map(tokens);
  return (s) => parsed.some((p) => walk(p, s, budget));
}
