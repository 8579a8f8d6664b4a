import { SnapshotError } from './errors.js';

/**
 * The collector's delete window on a shared store, and the writers' wait
 * that follows from it (docs/architecture.md §13.3, rule 5). Every host must
 * use the same figures, so they are recorded in the store itself
 * (`PREFIX/settings.json` on S3, docs/architecture.md §13.1), not in each
 * daemon's flags.
 */
export interface DeleteWindows {
  /** A collector's delete is sent within this long of its age read, or abandoned. */
  deleteWindowMs: number;
  /**
   * How long after its last put or touch of a block a writer asks again
   * whether it is still there: the window, plus the margin for a delete the
   * store received as its sender gave up.
   */
  recheckMs: number;
}

/** The delete window when the store records none. */
export const DEFAULT_DELETE_WINDOW_MS = 5_000;

/**
 * The margin for a delete the store received just as its sender gave up at
 * the window's end: the store acts on a request within milliseconds; five
 * seconds is the margin when the store records none.
 */
export const DEFAULT_DELETE_MARGIN_MS = 5_000;

export const DEFAULT_DELETE_WINDOWS: DeleteWindows = Object.freeze({
  deleteWindowMs: DEFAULT_DELETE_WINDOW_MS,
  recheckMs: DEFAULT_DELETE_WINDOW_MS + DEFAULT_DELETE_MARGIN_MS,
});

/** Bounds of either figure in a settings object: one millisecond to ten minutes. */
const MAX_SETTING_MS = 10 * 60_000;

/** The members of a settings object this daemon reads; any other is refused. */
const SETTINGS_MEMBERS: ReadonlySet<string> = new Set(['formatVersion', 'deleteWindowMs', 'deleteMarginMs']);

/** The settings object's format version this daemon reads and writes. */
export const STORE_SETTINGS_FORMAT = 1;

/** The settings object as stored (`{"formatVersion":1,"deleteWindowMs":…,"deleteMarginMs":…}`); a field left out takes its default, any other member is refused. */
export interface StoreSettings {
  deleteWindowMs?: number;
  deleteMarginMs?: number;
}

/** The windows a store's settings object sets (`where` names it in errors); SNAPSHOT_CORRUPT for one this daemon cannot follow. */
export function parseStoreSettings(where: string, text: string): DeleteWindows {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch (e) {
    throw new SnapshotError('SNAPSHOT_CORRUPT', `store settings ${where} are not valid JSON: ${(e as Error).message}`);
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new SnapshotError('SNAPSHOT_CORRUPT', `store settings ${where} are not a JSON object`);
  const s = o as Record<string, unknown>;
  if (s.formatVersion !== STORE_SETTINGS_FORMAT) throw new SnapshotError('SNAPSHOT_CORRUPT', `store settings ${where} have formatVersion ${JSON.stringify(s.formatVersion)}; this daemon reads ${STORE_SETTINGS_FORMAT}`);
  // A member this daemon does not know is refused, not ignored: a misspelt one (`deleteMarginMS`) would leave every
  // host on the default, shorter perhaps than the store needs, which is the unsafe direction (docs/architecture.md §13.3).
  const unknown = Object.keys(s).filter((k) => !SETTINGS_MEMBERS.has(k));
  if (unknown.length) throw new SnapshotError('SNAPSHOT_CORRUPT', `store settings ${where} have member(s) ${unknown.map((k) => JSON.stringify(k)).join(', ')} this daemon does not know; it reads ${[...SETTINGS_MEMBERS].join(', ')}`);
  const window = settingMs(where, s, 'deleteWindowMs', DEFAULT_DELETE_WINDOW_MS);
  const margin = settingMs(where, s, 'deleteMarginMs', DEFAULT_DELETE_MARGIN_MS);
  return { deleteWindowMs: window, recheckMs: window + margin };
}

/** The settings object's text for `s` (checked as a reader would check it). */
export function formatStoreSettings(where: string, s: StoreSettings): string {
  const text = `${JSON.stringify({ formatVersion: STORE_SETTINGS_FORMAT, ...s })}\n`;
  parseStoreSettings(where, text);
  return text;
}

function settingMs(where: string, s: Record<string, unknown>, name: string, dflt: number): number {
  const v = s[name];
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || (v as number) < 1 || (v as number) > MAX_SETTING_MS) {
    throw new SnapshotError('SNAPSHOT_CORRUPT', `store settings ${where}: ${name} is ${JSON.stringify(v)}; give whole milliseconds from 1 to ${MAX_SETTING_MS}`);
  }
  return v as number;
}

/**
 * A writer's wait after its last put or touch before it asks again: none on a store only this daemon
 * writes (no other host's collector to wait out), else the store's settings (`override`: its own
 * option, for tests on a store shown as shared).
 */
export async function recheckMsOf(store: { singleWriter?: boolean; deleteWindows?(): Promise<DeleteWindows> }, override?: number): Promise<number> {
  if (store.singleWriter) return 0;
  return override ?? (await store.deleteWindows?.())?.recheckMs ?? DEFAULT_DELETE_WINDOWS.recheckMs;
}
