import { describe, expect, test } from 'vitest';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { loopPollCheck, nativeAddon, nativeAddonPath, nativeIo } from '../../src/native/addon.js';

// src/native/addon.ts is the one loader of the addon. awaitLoopEvent reads one of
// libuv's private fields, so it is offered only when the running libuv is the
// major.minor the addon was built against and the loop's wake-up fd is an
// eventfd (checked in native/src/io.c at load, and by loopPollCheck).

describe('loopPollCheck', () => {
  const poll = (): number => 0;
  test('says why not: no addon, no verified fd, another libuv minor', () => {
    expect(loopPollCheck(null)).toMatch(/not loaded/);
    expect(loopPollCheck({ libuvBuiltAgainst: '1.46.0' }, '1.46.0')).toMatch(/eventfd/);
    expect(loopPollCheck({ libuvBuiltAgainst: '1.46.0', awaitLoopEvent: poll }, '1.47.0')).toBe('built against libuv 1.46.0, running 1.47.0');
    expect(loopPollCheck({ awaitLoopEvent: poll }, '1.46.0')).toMatch(/built against libuv unknown/);
  });
  test('accepts the same major.minor whatever the patch', () => {
    expect(loopPollCheck({ libuvBuiltAgainst: '1.46.0', awaitLoopEvent: poll }, '1.46.2')).toBeNull();
  });
});

describe.skipIf(nativeAddon === null)('the loaded addon', () => {
  test('offers the loop poll on this Node: built against its libuv, the fd verified as an eventfd', () => {
    expect(nativeAddon!.libuvBuiltAgainst!.split('.').slice(0, 2)).toEqual(process.versions.uv.split('.').slice(0, 2));
    expect(loopPollCheck(nativeAddon)).toBeNull();
    expect(typeof nativeIo!.awaitLoopEvent).toBe('function');
  });

  test('in a worker thread (not the loop verified at load) the addon loads without the loop poll', async () => {
    const w = new Worker(
      `const a = require(${JSON.stringify(nativeAddonPath)});
       require('node:worker_threads').parentPort.postMessage({ poll: typeof a.awaitLoopEvent, xts: typeof a.encryptSync, uv: a.libuvBuiltAgainst });`,
      { eval: true },
    );
    try {
      const [msg] = (await once(w, 'message')) as [{ poll: string; xts: string; uv: string }];
      expect(msg).toEqual({ poll: 'undefined', xts: 'function', uv: nativeAddon!.libuvBuiltAgainst });
    } finally {
      await w.terminate();
    }
  });
});
