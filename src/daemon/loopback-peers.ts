/**
 * Who a TCP listener's connection counts against. On loopback an address says
 * nothing about who connects: every local user may bind any address in
 * 127.0.0.0/8 (or use ::1), so a listener that counts connections per
 * address lets one user take every slot. The kernel knows which uid owns the
 * other end (the client's socket); one exact sock_diag lookup asks it
 * (native/src/peercred.c `tcpPeerUid`, ~13 µs), so a loopback listener can
 * count per local user, as the control socket does with SO_PEERCRED.
 */

import { connect, createServer, type Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import { nativeAddon } from '../native/addon.js';
import { isLoopback } from '../util/loopback.js';
import { callerKey } from './connection-guard.js';

/** Loopback clients whose socket the kernel no longer shows as connected (closed already): one source for all of them. */
export const LOOPBACK_UNKNOWN = 'loopback:closed';

/**
 * The source a connection counts against: `uid:N` for a loopback client, or a
 * client on another of this host's own addresses (a local user all the same),
 * `loopback:closed` for a loopback client whose socket is already gone (a
 * TIME_WAIT stub tells no owner), else its address (an IPv4-mapped IPv6
 * address as IPv4, an IPv6 one by its /64: connection-guard.ts callerKey).
 * Where the kernel cannot be asked (no addon, netlink refused by a seccomp
 * filter) a loopback client counts by address: `loopbackLookupProblem` says so.
 */
export function connectionSource(s: Socket): string {
  const address = sourceAddress(s);
  if (isLoopback(address)) {
    const uid = loopbackPeerUid(s);
    if (uid >= 0) return `uid:${uid}`;
    if (uid === -1) return LOOPBACK_UNKNOWN;
  } else if (isOwnAddress(address)) {
    // A local user connecting through one of this host's other addresses (to a wildcard listener) is the same user.
    const uid = loopbackPeerUid(s);
    if (uid >= 0) return `uid:${uid}`;
  }
  return callerKey(address);
}

/** The client's address as the limits count it (an IPv4-mapped IPv6 address as IPv4). */
export function sourceAddress(s: Socket): string {
  return (s.remoteAddress ?? 'unknown').replace(/^::ffff:/, '');
}

/** This host's addresses (os.networkInterfaces), read again at most every 5 s. */
let ownAddresses: { at: number; set: Set<string> } | undefined;

function isOwnAddress(address: string): boolean {
  const now = Date.now();
  if (!ownAddresses || now - ownAddresses.at > 5_000) {
    const set = new Set<string>();
    for (const list of Object.values(networkInterfaces())) for (const i of list ?? []) set.add(i.address);
    ownAddresses = { at: now, set };
  }
  return ownAddresses.set.has(address);
}

/** The uid owning the client's end of the local connection `s`; -1 when it is gone (or not local), -2 when the kernel cannot be asked. */
export function loopbackPeerUid(s: Socket): number {
  const { remoteAddress, remotePort, localAddress, localPort } = s;
  if (typeof nativeAddon?.tcpPeerUid !== 'function' || remoteAddress === undefined || remotePort === undefined || localAddress === undefined || localPort === undefined) return -2;
  try {
    return nativeAddon.tcpPeerUid(remoteAddress, remotePort, localAddress, localPort);
  } catch {
    return -2;
  }
}

/**
 * Why loopback clients cannot be told apart here, or undefined when they can:
 * a connection of this process to itself must be found as this process's uid.
 * A listener logs it at start (loopback clients then count by address); the
 * check runs once per process, whichever listener asks first.
 */
export function loopbackLookupProblem(): Promise<string | undefined> {
  lookupChecked ??= checkLookup();
  return lookupChecked;
}

let lookupChecked: Promise<string | undefined> | undefined;

async function checkLookup(): Promise<string | undefined> {
  if (typeof nativeAddon?.tcpPeerUid !== 'function') return 'the native addon has no tcpPeerUid (rebuild it: scripts/build-native.mjs)';
  const server = createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const port = (server.address() as { port: number }).port;
    const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
    const client = connect({ host: '127.0.0.1', port });
    client.on('error', () => {});
    try {
      const s = await accepted;
      const uid = loopbackPeerUid(s);
      s.destroy();
      const me = process.getuid?.() ?? -1;
      if (uid === me) return undefined;
      return uid === -2 ? 'netlink (sock_diag) refused: allow AF_NETLINK (systemd RestrictAddressFamilies)' : `the lookup found uid ${uid} for this process (uid ${me})`;
    } finally {
      client.destroy();
    }
  } catch (e) {
    return `the self-check failed: ${(e as Error).message}`;
  } finally {
    server.close();
  }
}
