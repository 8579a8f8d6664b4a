/**
 * String-keyed maps whose keys come from outside: encryption contexts, grant
 * constraints, tags, identity names. AWS accepts any UTF-8 key, `__proto__`
 * and `constructor` included, so these objects have no prototype: assigning
 * `m["__proto__"] = v` stores a member instead of replacing the prototype,
 * and `m["toString"]` is undefined unless someone put it there.
 */
export function dataMap<V>(): Record<string, V> {
  return Object.create(null) as Record<string, V>;
}

/** A null-prototype copy of `src`'s own enumerable members (`__proto__` kept as a member). */
export function toDataMap<V>(src: Readonly<Record<string, V>>): Record<string, V> {
  const out = dataMap<V>();
  for (const k of Object.keys(src)) out[k] = src[k]!;
  return out;
}

/** Is `k` an own member of `o`? (Never an inherited one.) */
export function hasMember(o: object, k: string): boolean {
  return Object.prototype.hasOwnProperty.call(o, k);
}
