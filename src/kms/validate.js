/**
 * Request field checks with AWS's ValidationException wording
 * ("1 validation error detected: Value at 'x' failed to satisfy constraint: ...").
 */
import { ValidationException } from './errors.js';
const lc = (s) => s[0].toLowerCase() + s.slice(1);
const fail = (name, c) => new ValidationException(`1 validation error detected: Value at '${lc(name)}' failed to satisfy constraint: ${c}`);
export function optStr(req, name, min = 1, max = 2048) {
    const v = req[name];
    if (v === undefined || v === null)
        return undefined;
    if (typeof v !== 'string')
        throw fail(name, 'Member must be a string');
    if (v.length < min)
        throw fail(name, `Member must have length greater than or equal to ${min}`);
    if (v.length > max)
        throw fail(name, `Member must have length less than or equal to ${max}`);
    return v;
}
export function reqStr(req, name, min = 1, max = 2048) {
    const v = optStr(req, name, min, max);
    if (v === undefined)
        throw fail(name, 'Member must not be null');
    return v;
}
export function optInt(req, name, min, max) {
    const v = req[name];
    if (v === undefined || v === null)
        return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v))
        throw fail(name, 'Member must be an integer');
    if (v < min)
        throw fail(name, `Member must have value greater than or equal to ${min}`);
    if (v > max)
        throw fail(name, `Member must have value less than or equal to ${max}`);
    return v;
}
export function optBool(req, name) {
    const v = req[name];
    if (v === undefined || v === null)
        return undefined;
    if (typeof v !== 'boolean')
        throw fail(name, 'Member must be a boolean');
    return v;
}
export function optBytes(req, name, min, max) {
    const v = req[name];
    if (v === undefined || v === null)
        return undefined;
    if (!(v instanceof Uint8Array))
        throw fail(name, 'Member must be a blob (Uint8Array)');
    if (v.length < min)
        throw fail(name, `Member must have length greater than or equal to ${min}`);
    if (v.length > max)
        throw fail(name, `Member must have length less than or equal to ${max}`);
    return v;
}
export function reqBytes(req, name, min, max) {
    const v = optBytes(req, name, min, max);
    if (v === undefined)
        throw fail(name, 'Member must not be null');
    return v;
}
export function optEnum(req, name, values) {
    const v = req[name];
    if (v === undefined || v === null)
        return undefined;
    if (typeof v !== 'string' || !values.includes(v))
        throw fail(name, `Member must satisfy enum value set: [${values.join(', ')}]`);
    return v;
}
export function reqEnum(req, name, values) {
    const v = optEnum(req, name, values);
    if (v === undefined)
        throw fail(name, 'Member must not be null');
    return v;
}
/** EncryptionContext: string -> string map (AWS: keys and values are strings; total ≤ 8192 bytes here). */
export function optContext(req, name = 'EncryptionContext') {
    const v = req[name];
    if (v === undefined || v === null)
        return undefined;
    if (typeof v !== 'object' || Array.isArray(v) || v instanceof Uint8Array)
        throw fail(name, 'Member must be a map of strings');
    let total = 0;
    const out = {};
    for (const [k, x] of Object.entries(v)) {
        if (typeof x !== 'string')
            throw fail(name, 'Member must be a map of strings');
        if (k.length === 0)
            throw fail(name, 'Map keys must have length greater than or equal to 1');
        total += Buffer.byteLength(k) + Buffer.byteLength(x);
        out[k] = x;
    }
    if (total > 8192)
        throw fail(name, 'Member must have total length less than or equal to 8192');
    return out;
}
export function optStrList(req, name, maxItems, maxLen = 8192) {
    const v = req[name];
    if (v === undefined || v === null)
        return undefined;
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string' || x.length < 1 || x.length > maxLen))
        throw fail(name, 'Member must be a list of strings');
    if (v.length > maxItems)
        throw fail(name, `Member must have length less than or equal to ${maxItems}`);
    return v;
}
//# sourceMappingURL=validate.js.map