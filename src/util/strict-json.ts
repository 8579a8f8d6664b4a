import { EbsdError } from './errors.js';

/**
 * JSON (RFC 8259) for documents that come from outside: request bodies,
 * key policies, LUKS2 JSON areas, state files. It yields exactly what
 * `JSON.parse` yields (a `"__proto__"` member becomes an own data property,
 * never the object's prototype), and additionally refuses:
 *
 * - duplicate member names in one object (RFC 8259 §4 leaves their meaning
 *   open; `JSON.parse` keeps the last, so `{"Effect":"Deny","Effect":"Allow"}`
 *   would read as Allow while another reader may take Deny);
 * - nesting deeper than `maxDepth` (a 5,000-deep document would otherwise
 *   overflow the stack of every recursive consumer after parsing);
 * - lone UTF-16 surrogates in strings (`\ud800`): they cannot be encoded as
 *   UTF-8, so two different strings would collide once canonicalized.
 *
 * Errors are `JsonDocumentError` with the document named (`what`) and the
 * offset of the fault, never a bare `SyntaxError`.
 */

export const DEFAULT_MAX_JSON_DEPTH = 64;

export class JsonDocumentError extends EbsdError {
  /** Offset in the text (UTF-16 code units) where the fault was found. */
  readonly offset: number;
  constructor(what: string, problem: string, offset: number, awsName: string) {
    super('JSON_INVALID', `${what}: ${problem} at offset ${offset}`, { awsName });
    this.offset = offset;
  }
}

export interface StrictJsonOptions {
  /** Names the document in errors: `request body`, `key policy`, `/var/lib/ebsd/volumes/catalog.json`. */
  what: string;
  /** Deepest allowed nesting of objects and arrays; default 64. */
  maxDepth?: number;
  /** AWS exception name the errors carry; default `SerializationException`. */
  awsName?: string;
  /**
   * Most values (objects, arrays, strings, numbers, literals) the document may hold; default
   * unbounded. A 1 MiB body of `[{},{},…]` is ~260,000 objects, ~15 MB of heap once parsed: a
   * bound here keeps what a request costs after parsing near what its bytes cost.
   */
  maxValues?: number;
}

export function parseStrictJson(text: string, opts: StrictJsonOptions): unknown {
  if (typeof text !== 'string') throw new JsonDocumentError(opts.what, 'not text', 0, opts.awsName ?? 'SerializationException');
  return new _Parser(text, opts).document();
}

const _LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Does `s` hold only complete surrogate pairs, so it has one UTF-8 encoding? (Unicode §3.9, D91) */
export function isWellFormedUtf16(s: string): boolean {
  return !_LONE_SURROGATE.test(s);
}

const _WS = new Set([0x20, 0x09, 0x0a, 0x0d]);
const _NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
// A string token: no raw control characters, escapes as RFC 8259 §7 lists them.
const _STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;

class _Parser {
  private pos = 0;
  private values = 0;
  private readonly maxDepth: number;
  private readonly maxValues: number;
  private readonly awsName: string;

  constructor(private readonly text: string, private readonly opts: StrictJsonOptions) {
    this.maxDepth = opts.maxDepth ?? DEFAULT_MAX_JSON_DEPTH;
    this.maxValues = opts.maxValues ?? Infinity;
    this.awsName = opts.awsName ?? 'SerializationException';
  }

  document(): unknown {
    this.skipWs();
    const v = this.value(0);
    this.skipWs();
    if (this.pos !== this.text.length) this.fail('unexpected text after the JSON value');
    return v;
  }

  private fail(problem: string, at = this.pos): never {
    throw new JsonDocumentError(this.opts.what, problem, at, this.awsName);
  }

  private skipWs(): void {
    const t = this.text;
    while (this.pos < t.length && _WS.has(t.charCodeAt(this.pos))) this.pos++;
  }

  private value(depth: number): unknown {
    const t = this.text;
    if (this.pos >= t.length) this.fail('unexpected end of JSON');
    if (++this.values > this.maxValues) this.fail(`more than ${this.maxValues} values`);
    const c = t[this.pos];
    if (c === '{') return this.object(depth + 1);
    if (c === '[') return this.array(depth + 1);
    if (c === '"') return this.string();
    if (c === 't') return this.literal('true', true);
    if (c === 'f') return this.literal('false', false);
    if (c === 'n') return this.literal('null', null);
    _NUMBER.lastIndex = this.pos;
    const m = _NUMBER.exec(t);
    if (!m) this.fail(`unexpected character ${JSON.stringify(c)}`);
    this.pos += m[0].length;
    return Number(m[0]);
  }

  private literal<T>(word: string, v: T): T {
    if (!this.text.startsWith(word, this.pos)) this.fail(`unexpected character ${JSON.stringify(this.text[this.pos])}`);
    this.pos += word.length;
    return v;
  }

  private string(): string {
    const start = this.pos;
    _STRING.lastIndex = start;
    const m = _STRING.exec(this.text);
    if (!m) this.fail('invalid string (unterminated, raw control character or bad escape)');
    this.pos += m[0].length;
    const s = m[0].indexOf('\\') < 0 ? m[0].slice(1, -1) : (JSON.parse(m[0]) as string);
    if (!isWellFormedUtf16(s)) this.fail('string holds a lone UTF-16 surrogate', start);
    return s;
  }

  private object(depth: number): Record<string, unknown> {
    if (depth > this.maxDepth) this.fail(`nested deeper than ${this.maxDepth} levels`);
    const out: Record<string, unknown> = {};
    this.pos++; // {
    this.skipWs();
    if (this.text[this.pos] === '}') { this.pos++; return out; }
    for (;;) {
      this.skipWs();
      if (this.text[this.pos] !== '"') this.fail('expected a member name');
      const at = this.pos;
      const key = this.string();
      if (Object.prototype.hasOwnProperty.call(out, key)) this.fail(`duplicate member name ${JSON.stringify(key)}`, at);
      this.skipWs();
      if (this.text[this.pos] !== ':') this.fail('expected ":"');
      this.pos++;
      this.skipWs();
      // defineProperty, as JSON.parse does: "__proto__" stays an own member.
      Object.defineProperty(out, key, { value: this.value(depth), enumerable: true, writable: true, configurable: true });
      this.skipWs();
      const c = this.text[this.pos++];
      if (c === '}') return out;
      if (c !== ',') this.fail('expected "," or "}"', this.pos - 1);
    }
  }

  private array(depth: number): unknown[] {
    if (depth > this.maxDepth) this.fail(`nested deeper than ${this.maxDepth} levels`);
    const out: unknown[] = [];
    this.pos++; // [
    this.skipWs();
    if (this.text[this.pos] === ']') { this.pos++; return out; }
    for (;;) {
      this.skipWs();
      out.push(this.value(depth));
      this.skipWs();
      const c = this.text[this.pos++];
      if (c === ']') return out;
      if (c !== ',') this.fail('expected "," or "]"', this.pos - 1);
    }
  }
}
