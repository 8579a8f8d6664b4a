import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/util/logger.js';
import {
  _checkRun,
  availableXtsEngines,
  getXtsEngine,
  selectXtsEngine,
  XtsError,
  XTS_ENGINE_NAMES,
} from '../../src/crypto/xts-engine.js';
import { EbsdError } from '../../src/util/errors.js';

function captureLogger() {
  const lines: Record<string, unknown>[] = [];
  const dest = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n')) if (l) lines.push(JSON.parse(l));
      cb();
    },
  });
  return { logger: createLogger({ destination: dest, level: 'info' }), lines };
}

describe('selectXtsEngine', () => {
  it('auto picks native here (the addon is built before tests run)', () => {
    expect(selectXtsEngine().name).toBe('native');
    expect(selectXtsEngine('auto').name).toBe('native');
  });

  it('honours an available preference', () => {
    for (const n of XTS_ENGINE_NAMES) expect(selectXtsEngine(n).name).toBe(n);
  });

  it('lists every engine as available, best first', () => {
    expect(availableXtsEngines().map((e) => e.name)).toEqual(['native', 'node', 'reference']);
  });

  it('logs the choice once, not on every call', async () => {
    const { logger, lines } = captureLogger();
    selectXtsEngine('reference', logger);
    selectXtsEngine('reference', logger);
    selectXtsEngine('reference', logger);
    await new Promise((r) => setImmediate(r));
    const logged = lines.filter((l) => l.xtsEngine !== undefined);
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ xtsEngine: 'reference', requested: 'reference' });
  });

  it('logs the choice once per logger: a second logger (a second daemon in this process) hears it too', async () => {
    const first = captureLogger();
    const second = captureLogger();
    for (const l of [first, second, first, second]) selectXtsEngine('node', l.logger);
    await new Promise((r) => setImmediate(r));
    for (const { lines } of [first, second]) {
      const logged = lines.filter((l) => l.xtsEngine !== undefined);
      expect(logged).toHaveLength(1);
      expect(logged[0]).toMatchObject({ xtsEngine: 'node', requested: 'node' });
    }
  });

  it('unknown engine name: XTS_ENGINE_UNAVAILABLE', () => {
    expect(() => getXtsEngine('gpu' as never)).toThrow(expect.objectContaining({ code: 'XTS_ENGINE_UNAVAILABLE' }));
    expect(() => selectXtsEngine('gpu' as never)).toThrow(XtsError);
  });
});

describe('_checkRun', () => {
  it('applies defaults and counts units', () => {
    expect(_checkRun(new Uint8Array(8192), 3, undefined)).toEqual({ unitSize: 4096, tweakStep: 8, firstTweak: 3n, units: 2 });
    expect(_checkRun(new Uint8Array(1024), 3n, { unitSize: 512 })).toEqual({ unitSize: 512, tweakStep: 1, firstTweak: 3n, units: 2 });
  });
  it('XtsError is an EbsdError with a stable code and the argument name', () => {
    try {
      _checkRun(new Uint8Array(10), 0, undefined);
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(EbsdError);
      expect(e).toBeInstanceOf(XtsError);
      expect((e as XtsError).code).toBe('XTS_PARTIAL_UNIT');
      expect((e as XtsError).argument).toBe('data');
      expect((e as XtsError).toJSON().code).toBe('XTS_PARTIAL_UNIT');
    }
  });
  it('rejects non-object opts', () => {
    expect(() => _checkRun(new Uint8Array(4096), 0, 5 as never)).toThrow(expect.objectContaining({ code: 'ERR_ARG_TYPE' }));
  });
});
