import { describe, expect, test } from 'vitest';
import { SnapshotError } from '../../src/snapshot/errors.js';
import { DEFAULT_DELETE_WINDOWS, formatStoreSettings, parseStoreSettings } from '../../src/snapshot/store-settings.js';

/** The store's settings object (`PREFIX/settings.json`, src/snapshot/store-settings.ts) as a reader checks it. */

const WHERE = 's3://bucket/fleet/settings.json';

function refusal(text: string): SnapshotError {
  try {
    parseStoreSettings(WHERE, text);
  } catch (e) {
    expect(e).toBeInstanceOf(SnapshotError);
    return e as SnapshotError;
  }
  throw new Error(`accepted: ${text}`);
}

describe('parseStoreSettings', () => {
  test('the figures given, a member left out taking its default', () => {
    expect(parseStoreSettings(WHERE, '{"formatVersion":1,"deleteWindowMs":250,"deleteMarginMs":100}')).toEqual({ deleteWindowMs: 250, recheckMs: 350 });
    expect(parseStoreSettings(WHERE, '{"formatVersion":1}')).toEqual(DEFAULT_DELETE_WINDOWS);
  });

  test('a member it does not know (a misspelt one) is refused, naming it and the object, not ignored', () => {
    const e = refusal('{"formatVersion":1,"deleteWindowMs":250,"deleteMarginMS":30000}');
    expect(e.code).toBe('SNAPSHOT_CORRUPT');
    expect(e.message).toContain(WHERE);
    expect(e.message).toContain('"deleteMarginMS"');
    expect(e.message).toContain('formatVersion, deleteWindowMs, deleteMarginMs');
    const two = refusal('{"formatVersion":1,"window":1,"margin":2}');
    expect(two.message).toContain('"window", "margin"');
  });

  test('another format version is named as such, whatever members it has', () => {
    expect(refusal('{"formatVersion":2,"deleteWindowMs":250,"newMember":true}').message).toContain('formatVersion 2');
  });

  test('figures that are not whole milliseconds from 1 to 10 minutes, and text that is not an object, are refused', () => {
    expect(refusal('{"formatVersion":1,"deleteMarginMs":"250ms"}').message).toContain('deleteMarginMs is "250ms"');
    expect(refusal('{"formatVersion":1,"deleteWindowMs":0}').message).toContain('deleteWindowMs is 0');
    expect(refusal('{"formatVersion":1,"deleteWindowMs":600001}').message).toContain('deleteWindowMs is 600001');
    expect(refusal('[1]').message).toContain('not a JSON object');
    expect(refusal('{').message).toContain('not valid JSON');
  });

  test('formatStoreSettings writes what a reader accepts, and refuses a member it would refuse', () => {
    expect(parseStoreSettings(WHERE, formatStoreSettings(WHERE, { deleteWindowMs: 250, deleteMarginMs: 250 }))).toEqual({ deleteWindowMs: 250, recheckMs: 500 });
    expect(() => formatStoreSettings(WHERE, { deleteWindowMs: 250, deleteMarginMS: 1 } as never)).toThrow('"deleteMarginMS"');
  });
});
