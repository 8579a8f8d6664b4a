import { describe, expect, it } from 'vitest';
import { JsonDocumentError, parseStrictJson } from '../../src/util/strict-json.js';

const parse = (t: string, maxDepth?: number): unknown => parseStrictJson(t, { what: 'test doc', ...(maxDepth ? { maxDepth } : {}) });
const fault = (t: string, maxDepth?: number): JsonDocumentError => {
  try { parse(t, maxDepth); } catch (e) { expect(e).toBeInstanceOf(JsonDocumentError); return e as JsonDocumentError; }
  throw new Error(`accepted: ${t}`);
};

describe('parseStrictJson', () => {
  it('yields what JSON.parse yields for valid documents', () => {
    const docs = ['{}', '[]', '0', '-1.5e+3', '"a\\u00e9\\n\\"b"', ' {"a":[1,2,{"b":null,"c":true,"d":false}],"e":"\\ud83d\\ude00"} ', '[[[]]]', '"x"'];
    for (const d of docs) expect(parse(d)).toStrictEqual(JSON.parse(d));
  });

  it('keeps "__proto__" an own member and never the prototype', () => {
    const v = parse('{"__proto__":{"polluted":1},"a":1}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(Object.keys(v)).toEqual(['__proto__', 'a']);
    expect((v as { polluted?: unknown }).polluted).toBeUndefined();
  });

  it('refuses duplicate member names, naming the member, the document and the offset', () => {
    const e = fault('{"Effect":"Deny","Effect":"Allow"}');
    expect(e.message).toBe('test doc: duplicate member name "Effect" at offset 17');
    expect(e.awsName).toBe('SerializationException');
    fault('{"a":{"__proto__":1,"__proto__":2}}');
    // The same name spelled with an escape is the same name.
    fault('{"a":1,"\\u0061":2}');
  });

  it('bounds nesting depth', () => {
    expect(parse('[[[1]]]', 3)).toEqual([[[1]]]);
    expect(fault('[[[[1]]]]', 3).message).toMatch(/nested deeper than 3 levels/);
    const deep = '['.repeat(5000) + ']'.repeat(5000);
    expect(fault(deep).message).toMatch(/nested deeper than 64 levels/);
  });

  it('bounds the count of values, so a small body cannot become a large heap', () => {
    expect(parseStrictJson('[1,[2,3],{"a":4}]', { what: 'test doc', maxValues: 7 })).toEqual([1, [2, 3], { a: 4 }]);
    expect(() => parseStrictJson('[1,[2,3],{"a":4}]', { what: 'test doc', maxValues: 6 })).toThrow(/more than 6 values/);
    const flood = `[${'{},'.repeat(100_000)}{}]`;
    expect(() => parseStrictJson(flood, { what: 'test doc', maxValues: 20_000 })).toThrow(JsonDocumentError);
  });

  it('refuses lone surrogates, raw control characters and malformed text', () => {
    expect(fault('"\\ud800"').message).toMatch(/lone UTF-16 surrogate/);
    expect(fault('"\ud800"').message).toMatch(/lone UTF-16 surrogate/);
    for (const bad of ['', '{', '{"a"}', '{"a":1,}', '[1,]', '01', '1.', '.5', 'nul', '"a\nb"', '"\\x41"', '{"a":1} x', '{a:1}', "'a'", 'NaN', '[1 2]']) fault(bad);
  });
});
