export function defaultFormat() {
    return process.stdout.isTTY ? 'table' : 'json';
}
/** A tiny JMESPath subset: `A.B`, `A[0].B`, `A[].B` (map). */
export function applyQuery(v, query) {
    if (!query)
        return v;
    let cur = [v];
    let mapped = false;
    for (const part of query.split('.')) {
        const m = /^([^[\]]*)((?:\[\d*\])*)$/.exec(part);
        if (!m)
            throw new Error(`unsupported --query expression "${query}"`);
        if (m[1])
            cur = cur.map((x) => (x && typeof x === 'object' ? x[m[1]] : undefined));
        for (const idx of m[2].match(/\[\d*\]/g) ?? []) {
            if (idx === '[]') {
                cur = cur.flatMap((x) => (Array.isArray(x) ? x : []));
                mapped = true;
            }
            else
                cur = cur.map((x) => (Array.isArray(x) ? x[Number(idx.slice(1, -1))] : undefined));
        }
    }
    return mapped ? cur : cur[0];
}
export function print(v, fmt, table) {
    if (fmt === 'json') {
        process.stdout.write(JSON.stringify(v ?? {}, null, 4) + '\n');
    }
    else if (fmt === 'text') {
        process.stdout.write(toText(v) + '\n');
    }
    else {
        process.stdout.write((table ? table() : kv(v)) + '\n');
    }
}
function toText(v) {
    if (v === null || v === undefined)
        return 'None';
    if (Array.isArray(v))
        return v.map((x) => (typeof x === 'object' ? JSON.stringify(x) : String(x))).join('\t');
    if (typeof v === 'object')
        return Object.values(v).map((x) => (typeof x === 'object' ? JSON.stringify(x) : String(x))).join('\t');
    return String(v);
}
/** Nested object as indented `Key: value` lines. */
export function kv(v, indent = '') {
    if (v === null || v === undefined)
        return `${indent}-`;
    if (typeof v !== 'object')
        return `${indent}${String(v)}`;
    const lines = [];
    const entries = Array.isArray(v) ? v.map((x, i) => [`[${i}]`, x]) : Object.entries(v);
    if (entries.length === 0)
        return `${indent}${Array.isArray(v) ? '(none)' : '(empty)'}`;
    for (const [k, x] of entries) {
        if (x !== null && typeof x === 'object' && (Array.isArray(x) ? x.length : Object.keys(x).length)) {
            lines.push(`${indent}${k}:`);
            lines.push(kv(x, indent + '  '));
        }
        else {
            lines.push(`${indent}${k}: ${x === null || x === undefined ? '-' : Array.isArray(x) ? '[]' : typeof x === 'object' ? '{}' : String(x)}`);
        }
    }
    return lines.join('\n');
}
/** Fixed-width columns. */
export function table(rows, columns) {
    if (rows.length === 0)
        return '(none)';
    const cells = rows.map((r) => columns.map(([, get]) => fmtCell(get(r))));
    const widths = columns.map(([h], i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
    const line = (c) => c.map((x, i) => x.padEnd(widths[i])).join('  ').trimEnd();
    return [line(columns.map(([h]) => h)), ...cells.map(line)].join('\n');
}
function fmtCell(v) {
    if (v === undefined || v === null || v === '')
        return '-';
    if (typeof v === 'object')
        return JSON.stringify(v);
    return String(v);
}
export function humanBytes(n) {
    if (typeof n !== 'number')
        return '-';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let x = n;
    while (x >= 1024 && i < units.length - 1) {
        x /= 1024;
        i++;
    }
    return `${Number.isInteger(x) ? x : x.toFixed(1)}${units[i]}`;
}
//# sourceMappingURL=output.js.map