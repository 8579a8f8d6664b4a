import fc from 'fast-check';

/**
 * Structured generators: a valid document, then mutated as JSON *text*
 * (members inserted, removed, duplicated; values swapped for hostile ones;
 * deep nesting; `__proto__` / `constructor` keys; lone surrogates; huge
 * numbers; very long strings), then optionally as characters (flips,
 * truncation, extension). A JS object cannot hold a duplicate member, so
 * documents are mutated as a small syntax tree and rendered at the end.
 */
export type JNode = { t: 'o'; m: [string, JNode][] } | { t: 'a'; v: JNode[] } | { t: 'raw'; text: string };

export const raw = (text: string): JNode => ({ t: 'raw', text });
export const str = (s: string): JNode => raw(JSON.stringify(s));

export function toNode(v: unknown): JNode {
  if (Array.isArray(v)) return { t: 'a', v: v.map(toNode) };
  if (v !== null && typeof v === 'object') return { t: 'o', m: Object.entries(v).map(([k, x]) => [k, toNode(x)]) };
  return raw(JSON.stringify(v) ?? 'null');
}

export function render(n: JNode): string {
  if (n.t === 'raw') return n.text;
  if (n.t === 'a') return `[${n.v.map(render).join(',')}]`;
  return `{${n.m.map(([k, x]) => `${JSON.stringify(k)}:${render(x)}`).join(',')}}`;
}

const clone = (n: JNode): JNode => (n.t === 'raw' ? n : n.t === 'a' ? { t: 'a', v: n.v.map(clone) } : { t: 'o', m: n.m.map(([k, x]) => [k, clone(x)]) });

/** Every node with a way to replace it, pre-order; the root has no parent. */
function slots(root: JNode): { node: JNode; set: (x: JNode) => void }[] {
  const out: { node: JNode; set: (x: JNode) => void }[] = [];
  const walk = (n: JNode, set: (x: JNode) => void): void => {
    out.push({ node: n, set });
    if (n.t === 'a') n.v.forEach((c, i) => walk(c, (x) => { n.v[i] = x; }));
    else if (n.t === 'o') n.m.forEach((e) => walk(e[1], (x) => { e[1] = x; }));
  };
  walk(root, () => {});
  return out;
}

export type StructMutation =
  | { op: 'set'; at: number; value: JNode }
  | { op: 'remove'; at: number; i: number }
  | { op: 'insert'; at: number; key: string; value: JNode }
  | { op: 'dup'; at: number; i: number; value?: JNode }
  | { op: 'wrap'; at: number; depth: number; obj: boolean }
  | { op: 'path'; path: string[]; value: JNode | undefined };

export function applyStruct(base: JNode, muts: readonly StructMutation[]): JNode {
  const root = clone(base);
  for (const m of muts) {
    if (m.op === 'path') {
      let n: JNode = root;
      for (let i = 0; i < m.path.length; i++) {
        const k = m.path[i]!;
        if (n.t === 'a') {
          const j = Number(k);
          if (!Number.isInteger(j) || j >= n.v.length) break;
          if (i === m.path.length - 1) {
            if (m.value === undefined) n.v.splice(j, 1);
            else n.v[j] = m.value;
          } else n = n.v[j]!;
          continue;
        }
        if (n.t !== 'o') break;
        const e = n.m.find((x) => x[0] === k);
        if (i === m.path.length - 1) {
          if (m.value === undefined) n.m = n.m.filter((x) => x[0] !== k);
          else if (e) e[1] = m.value;
          else n.m.push([k, m.value]);
        } else if (e) n = e[1];
        else {
          const fresh: JNode = { t: 'o', m: [] };
          n.m.push([k, fresh]);
          n = fresh;
        }
      }
      continue;
    }
    const all = slots(root);
    if (m.op === 'set' || m.op === 'wrap') {
      const s = all[m.at % all.length]!;
      if (s.node === root) continue;
      if (m.op === 'set') s.set(m.value);
      else {
        // Rendered at once: a syntax tree thousands deep would overflow the recursion here.
        const inner = render(s.node);
        s.set(raw(m.obj ? '{"a":'.repeat(m.depth) + inner + '}'.repeat(m.depth) : '['.repeat(m.depth) + inner + ']'.repeat(m.depth)));
      }
      continue;
    }
    const containers = all.filter((s) => s.node.t !== 'raw').map((s) => s.node as Exclude<JNode, { t: 'raw' }>);
    const c = containers[m.at % containers.length]!;
    if (m.op === 'insert') {
      if (c.t === 'o') c.m.splice(m.at % (c.m.length + 1), 0, [m.key, m.value]);
      else c.v.push(m.value);
    } else if (m.op === 'remove') {
      if (c.t === 'o' && c.m.length) c.m.splice(m.i % c.m.length, 1);
      else if (c.t === 'a' && c.v.length) c.v.splice(m.i % c.v.length, 1);
    } else if (m.op === 'dup') {
      if (c.t === 'o' && c.m.length) {
        const e = c.m[m.i % c.m.length]!;
        c.m.push([e[0], m.value ?? clone(e[1])]);
      } else if (c.t === 'a' && c.v.length) c.v.push(clone(c.v[m.i % c.v.length]!));
    }
  }
  return root;
}

export type TextMutation =
  | { op: 'flip'; at: number; ch: string }
  | { op: 'truncate'; at: number }
  | { op: 'extend'; text: string }
  | { op: 'insert'; at: number; text: string };

export function applyText(s: string, muts: readonly TextMutation[]): string {
  for (const m of muts) {
    const at = s.length === 0 ? 0 : m.op === 'extend' ? 0 : m.at % (s.length + 1);
    if (m.op === 'flip') s = s.slice(0, at) + m.ch + s.slice(at + 1);
    else if (m.op === 'truncate') s = s.slice(0, at);
    else if (m.op === 'extend') s += m.text;
    else s = s.slice(0, at) + m.text + s.slice(at);
  }
  return s;
}

// ---- hostile pieces ---------------------------------------------------------------

export const loneSurrogate = fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c));

/** Strings that break naive code: lone surrogates, NUL, very long, unicode, prototype names. */
export const hostileString: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: fc.string({ maxLength: 12 }), weight: 4 },
  { arbitrary: fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', '', ' ', '\u0000', 'é', '\u{1F600}', '\uFFFD'), weight: 3 },
  { arbitrary: fc.tuple(fc.string({ maxLength: 4 }), loneSurrogate, fc.string({ maxLength: 4 })).map(([a, b, c]) => a + b + c), weight: 2 },
  { arbitrary: fc.string({ unit: 'binary', maxLength: 12 }), weight: 1 },
  { arbitrary: fc.tuple(fc.constantFrom('A', 'é', '*', '\u{1F600}'), fc.integer({ min: 200, max: 70_000 })).map(([c, n]) => c.repeat(n)), weight: 1 },
);

export const hostileKey: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: fc.constantFrom('__proto__', 'constructor', 'prototype', '__defineGetter__', 'toString', 'valueOf', ''), weight: 3 },
  { arbitrary: hostileString, weight: 2 },
);

const nest = (d: number, obj: boolean, inner = '1'): string => (obj ? '{"a":'.repeat(d) + inner + '}'.repeat(d) : '['.repeat(d) + inner + ']'.repeat(d));

/** Hostile JSON values (as syntax nodes). */
export const hostileValue: fc.Arbitrary<JNode> = fc.oneof(
  { arbitrary: fc.constantFrom('0', '-0', '-1', '1.5', '1e21', '1e400', '-1e400', '9007199254740993', '18446744073709551615', '18446744073709551616', '1' + '0'.repeat(400), 'null', 'true', 'false', '[]', '{}', '""', '{"__proto__":"x"}', '{"__proto__":{"a":"b"}}', '{"constructor":{"prototype":"x"}}', '[null]').map(raw), weight: 4 },
  { arbitrary: fc.constantFrom('0', '1', '-1', '4096', '16384', '32768', '99999999999999999999', '18446744073709551615', '18446744073709551616', '9007199254740993', '0x10', '1e3', '010', ' 1').map(str), weight: 3 },
  { arbitrary: hostileString.map(str), weight: 3 },
  { arbitrary: fc.integer().map((n) => raw(String(n))), weight: 1 },
  { arbitrary: fc.tuple(fc.oneof(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 64, max: 12_000 })), fc.boolean()).map(([d, o]) => raw(nest(d, o))), weight: 1 },
  { arbitrary: fc.jsonValue({ maxDepth: 2 }).map(toNode), weight: 1 },
);

/**
 * Mutations of a document. `paths` are field paths the target knows matter
 * (`['segments','0','offset']`); `pathValue` the values to put there.
 */
export function structMutation(paths: readonly string[][] = [], pathValue: fc.Arbitrary<JNode> = hostileValue): fc.Arbitrary<StructMutation> {
  const at = fc.nat();
  const generic: fc.Arbitrary<StructMutation>[] = [
    fc.record({ op: fc.constant('set' as const), at, value: hostileValue }),
    fc.record({ op: fc.constant('remove' as const), at, i: fc.nat() }),
    fc.record({ op: fc.constant('insert' as const), at, key: hostileKey, value: hostileValue }),
    fc.record({ op: fc.constant('dup' as const), at, i: fc.nat(), value: fc.option(hostileValue, { nil: undefined }) }).map((m) => (m.value === undefined ? { op: m.op, at: m.at, i: m.i } : m) as StructMutation),
    fc.record({ op: fc.constant('wrap' as const), at, depth: fc.oneof(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1000, max: 12_000 })), obj: fc.boolean() }),
  ];
  if (paths.length === 0) return fc.oneof(...generic);
  const targeted = fc.record({ op: fc.constant('path' as const), path: fc.constantFrom(...paths), value: fc.option(pathValue, { nil: undefined, freq: 8 }) });
  return fc.oneof({ arbitrary: targeted, weight: generic.length }, ...generic.map((arbitrary) => ({ arbitrary, weight: 1 })));
}

export const textMutation: fc.Arbitrary<TextMutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), ch: fc.oneof(fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), fc.constantFrom('"', '{', '}', ',', ':', '\\', '\u0000', '[', ']')) }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('extend' as const), text: fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom(',', '}', ' ', '\u0000', ',"a":1}')) }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), text: fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom(',"__proto__":1', ',"a":1', ' ', '\\u0000')) }),
);

/** A base document (as a JS value) mutated into JSON text. */
export function mutatedJson(base: fc.Arbitrary<unknown>, o: { paths?: readonly string[][]; pathValue?: fc.Arbitrary<JNode>; maxMutations?: number; text?: boolean } = {}): fc.Arbitrary<string> {
  const struct = fc.array(structMutation(o.paths, o.pathValue), { maxLength: o.maxMutations ?? 3 });
  // text: false for members that arrive already parsed (a request body the server's JSON.parse took).
  const text = o.text === false ? fc.constant([] as TextMutation[]) : fc.oneof({ arbitrary: fc.constant([] as TextMutation[]), weight: 4 }, { arbitrary: fc.array(textMutation, { minLength: 1, maxLength: 2 }), weight: 1 });
  return fc.tuple(base, struct, text).map(([b, s, t]) => applyText(render(applyStruct(toNode(b), s)), t));
}
