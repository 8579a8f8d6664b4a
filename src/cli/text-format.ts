/**
 * `--output text` as the AWS CLI writes it, so a script written against `aws kms …` or
 * `aws ec2 …` reads ebsd's output the same way (README.md, "Common flags"; pinned against the
 * Debian awscli by test/kms-net/aws-cli-text.test.ts):
 *
 * - a scalar is printed alone on its line: strings as they are, `True`/`False`, `None` for null;
 * - an object prints its scalar members on one line, tab-separated, in key order (sorted by
 *   name), then each member that is an object or a list, in key order, named by that member;
 * - a named object's line begins with the member name in upper case (`KEYMETADATA\t…`);
 * - a list of objects is one line per object, each with the scalar members any object of the
 *   list has (sorted; an empty field where an object lacks one), so the columns line up;
 * - a named list of scalars is one line per element (`ENCRYPTIONALGORITHMS\tSYMMETRIC_DEFAULT`),
 *   an unnamed one (a --query result) a single tab-separated line;
 * - a list of lists: its scalars on one line, then each inner list on its own;
 * - an empty list or an object without members prints nothing.
 *
 * Map members (EncryptionContext) print their values, not their keys, as the AWS CLI's do.
 */

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);
const isNonScalar = (v: unknown): boolean => v !== null && typeof v === 'object';

/** Member names in the order the AWS CLI sorts them (by code point; member names are ASCII). */
const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Lines of `v` in the AWS CLI's text format, each ending in `\n` (`''` for nothing to print).
 * `cell` renders one field (the value exact, or made printable for a terminal).
 */
export function formatText(v: unknown, cell: (s: string) => string = (s) => s): string {
  const out: string[] = [];
  const scalar = (x: unknown): string => cell(x === null || x === undefined ? 'None' : typeof x === 'boolean' ? (x ? 'True' : 'False') : typeof x === 'object' ? JSON.stringify(x) : String(x));
  const name = (id: string): string => cell(id.toUpperCase());

  const item = (x: unknown, id?: string, keys?: string[]): void => {
    if (Array.isArray(x)) list(x, id);
    else if (isObj(x)) object(x, id, keys);
    else out.push(scalar(x));
  };

  const list = (xs: unknown[], id?: string): void => {
    if (xs.length === 0) return;
    if (xs.some(isObj)) {
      // One set of columns for the whole list: every scalar member any element has.
      const keys = new Set<string>();
      for (const el of xs) if (isObj(el)) for (const [k, val] of Object.entries(el)) if (!isNonScalar(val)) keys.add(k);
      const columns = [...keys].sort(byName);
      for (const el of xs) item(el, id, columns);
    } else if (xs.some(Array.isArray)) {
      const scalars = xs.filter((el) => !isNonScalar(el));
      if (scalars.length) scalarList(scalars, id);
      for (const el of xs) if (isNonScalar(el)) item(el, id);
    } else {
      scalarList(xs, id);
    }
  };

  const scalarList = (xs: unknown[], id?: string): void => {
    if (id !== undefined) for (const x of xs) out.push(`${name(id)}\t${scalar(x)}`);
    else out.push(xs.map(scalar).join('\t'));
  };

  const object = (o: Obj, id: string | undefined, columns: string[] | undefined): void => {
    const fields: string[] = [];
    const nested: [string, unknown][] = [];
    if (columns === undefined) {
      for (const k of Object.keys(o).sort(byName)) {
        if (isNonScalar(o[k])) nested.push([k, o[k]]);
        else fields.push(scalar(o[k]));
      }
    } else {
      // A member this element lacks is an empty field, so the columns of the list line up.
      for (const k of columns) fields.push(Object.hasOwn(o, k) ? scalar(o[k]) : '');
      const taken = new Set(columns);
      for (const k of Object.keys(o).sort(byName)) if (!taken.has(k)) nested.push([k, o[k]]);
    }
    if (fields.length) out.push((id !== undefined ? [name(id), ...fields] : fields).join('\t'));
    for (const [k, val] of nested) item(val, k);
  };

  item(v);
  return out.map((l) => `${l}\n`).join('');
}
