/**
 * IAM wildcard patterns: `*` matches any run of characters (including none),
 * `?` exactly one. Everything else is literal. (IAM User Guide, "IAM JSON
 * policy elements: Condition operators", StringLike.) Patterns compile once
 * into an anchored RegExp.
 */
const _escape = (s) => s.replace(/[.+^${}()|[\]\\/]/g, '\\$&');
export function hasWildcard(pattern) {
    return pattern.includes('*') || pattern.includes('?');
}
export function globSource(pattern) {
    let out = '';
    for (const ch of pattern) {
        if (ch === '*')
            out += '.*';
        else if (ch === '?')
            out += '.';
        else
            out += _escape(ch);
    }
    return out;
}
/** One anchored RegExp matching any of `patterns`. */
export function compileGlobs(patterns, ignoreCase) {
    const body = patterns.map(globSource).join('|');
    return new RegExp(`^(?:${body})$`, ignoreCase ? 'is' : 's');
}
/** A matcher for a list of patterns; exact-only lists use a Set (faster than a RegExp). */
export function globMatcher(patterns, ignoreCase) {
    if (patterns.includes('*'))
        return () => true;
    if (!patterns.some(hasWildcard)) {
        const set = new Set(ignoreCase ? patterns.map((p) => p.toLowerCase()) : patterns);
        return ignoreCase ? (s) => set.has(s.toLowerCase()) : (s) => set.has(s);
    }
    const re = compileGlobs(patterns, ignoreCase);
    return (s) => re.test(s);
}
//# sourceMappingURL=wildcard.js.map