import { describe, expect, test } from 'vitest';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { spawn } from 'node:child_process';
import { connect, createServer, type AddressInfo } from 'node:net';
import { loopPollCheck, nativeAddon, nativeAddonPath, nativeIo } from '../../src/native/addon.js';
import { loopbackLookupProblem } from '../../src/daemon/loopback-peers.js';

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
  test('tcpPeerUid: the uid owning the client end of a loopback connection (root, and 65534 through setpriv), -1 for none or a listening socket, typed errors', async () => {
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as AddressInfo).port;
    const seen: { from: string; uid: number }[] = [];
    srv.on('connection', (s) => {
      seen.push({ from: s.remoteAddress!, uid: nativeAddon!.tcpPeerUid(s.remoteAddress!, s.remotePort!, s.localAddress!, s.localPort!) });
    });
    try {
      const mine = connect({ host: '127.0.0.1', port, localAddress: '127.0.0.8' });
      await once(mine, 'connect');
      const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e',
        `const s=require('net').connect({host:'127.0.0.1',port:${port},localAddress:'127.0.0.9'});s.on('connect',()=>setTimeout(()=>s.end(),500));s.on('error',()=>{})`]);
      for (let i = 0; i < 100 && seen.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
      await once(child, 'exit');
      mine.destroy();
      expect(seen).toEqual(expect.arrayContaining([{ from: '127.0.0.8', uid: 0 }, { from: '127.0.0.9', uid: 65534 }]));
      expect(nativeAddon!.tcpPeerUid('127.0.0.7', 1, '127.0.0.1', port)).toBe(-1);
      // The kernel's exact lookup falls back to a listening socket on the port asked: never taken as the client's.
      expect(nativeAddon!.tcpPeerUid('127.0.0.1', port, '127.0.0.7', 1)).toBe(-1);
      expect(await loopbackLookupProblem(), 'the daemon\'s start-up self-check').toBeUndefined();
      // A client gone before its connection is looked at (its socket closed: no owner left) is not root's.
      const srv2 = createServer();
      await new Promise<void>((r) => srv2.listen(0, '127.0.0.1', r));
      const port2 = (srv2.address() as AddressInfo).port;
      const gone = new Promise<number>((resolve) => srv2.once('connection', (s) => {
        const [ra, rp, la, lp] = [s.remoteAddress!, s.remotePort!, s.localAddress!, s.localPort!];
        s.on('error', () => {});
        setTimeout(() => resolve(nativeAddon!.tcpPeerUid(ra, rp, la, lp)), 200);
      }));
      const quick = connect({ host: '127.0.0.1', port: port2, localAddress: '127.0.0.10' });
      quick.on('connect', () => quick.end());
      quick.on('error', () => {});
      try {
        expect(await gone).toBe(-1);
      } finally {
        srv2.close();
      }
      expect(() => nativeAddon!.tcpPeerUid('not an address', 1, '127.0.0.1', port)).toThrow(/one family/);
      expect(() => nativeAddon!.tcpPeerUid('127.0.0.1', 70000, '127.0.0.1', port)).toThrow(/two ports/);
    } finally {
      srv.close();
    }
  });

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
