/**
 * Who a TCP listener's connection counts against. On loopback an address says
 * nothing about who connects: every local user may bind any address in
 * 127.0.0.0/8 (or use ::1), so a listener that counts connections per
 * address lets one user take every slot. The kernel knows which uid owns the
 * other end (the client's socket); one exact sock_diag lookup asks it
 * (native/src/peercred.c `tcpPeerUid`, ~13 µs), so a loopback listener can
 * count per local user, as the control socket does with SO_PEERCRED.
 */

import type { Socket } from 'node:net';
import { nativeAddon } from '../native/addon.js';
import { isLoopback } from '../util/loopback.js';
import { callerKey } from './connection-guard.js';

/**
 * The source a connection counts against: `uid:N` for a loopback client whose
 * socket the kernel shows, else its address (an IPv4-mapped IPv6 address as
 * IPv4, an IPv6 one by its /64: connection-guard.ts callerKey).
 */
export function connectionSource(s: Socket): string {
  const address = (s.remoteAddress ?? 'unknown').replace(/^::ffff:/, '');
  if (isLoopback(address)) {
    const uid = loopbackPeerUid(s);
    if (uid !== undefined) return `uid:${uid}`;
  }
  return callerKey(address);
}

/** The uid owning the client's end of the loopback connection `s`; undefined when the kernel does not show it. */
export function loopbackPeerUid(s: Socket): number | undefined {
  const { remoteAddress, remotePort, localAddress, localPort } = s;
  if (!nativeAddon || remoteAddress === undefined || remotePort === undefined || localAddress === undefined || localPort === undefined) return undefined;
  try {
    const uid = nativeAddon.tcpPeerUid(remoteAddress, remotePort, localAddress, localPort);
    return uid >= 0 ? uid : undefined;
  } catch {
    return undefined;
  }
}
