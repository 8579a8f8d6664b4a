import fc from 'fast-check';
import { LUKS2_JSON_SIZE, parseLuks2Json } from '../../../src/volume/luks2-json.js';
import { mutatedJson } from '../harness/json-mutate.js';
import { showInput, type FuzzTarget } from '../harness/target.js';
import { areaText, BASES, isLuks2Error, LUKS_PATHS, LUKS_VALUES, luksInvalid } from './luks2-common.js';

/**
 * The LUKS2 JSON area (src/volume/luks2-json.ts parseLuks2Json): valid ebsd
 * metadata mutated (targeted fields, members, nesting, characters), and raw
 * bytes. Accepted areas must pass luksInvalid.
 */
const target: FuzzTarget<Uint8Array, null> = {
  name: 'luks2-json',
  about: 'parseLuks2Json(area, 12288) on mutated ebsd metadata and raw bytes',
  arbitrary: () =>
    fc.oneof(
      { arbitrary: mutatedJson(fc.constantFrom(...BASES), { paths: LUKS_PATHS, pathValue: LUKS_VALUES }).map((t) => toArea(t)), weight: 8 },
      { arbitrary: fc.uint8Array({ maxLength: 256 }).map((b) => toArea(b)), weight: 1 },
      { arbitrary: fc.uint8Array({ minLength: LUKS2_JSON_SIZE, maxLength: LUKS2_JSON_SIZE }), weight: 1 },
    ),
  open: async () => null,
  close: async () => {},
  run(area) {
    const v = parseLuks2Json(area, LUKS2_JSON_SIZE);
    return luksInvalid(v, areaText(area), LUKS2_JSON_SIZE) ?? 'accepted';
  },
  isTyped: isLuks2Error,
  show: (a) => showInput(areaText(a), 1500),
};
export default target;

/** NUL-padded JSON area of exactly 12288 bytes (longer text is cut, as it could only be on disk). */
function toArea(t: string | Uint8Array): Uint8Array {
  const out = Buffer.alloc(LUKS2_JSON_SIZE);
  (typeof t === 'string' ? Buffer.from(t, 'utf8') : Buffer.from(t)).copy(out, 0, 0, LUKS2_JSON_SIZE);
  return out;
}
