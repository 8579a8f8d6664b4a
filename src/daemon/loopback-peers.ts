/**
 * The local user behind a loopback TCP connection. On loopback an address
 * says nothing about who connects: every local user may bind any address in
 * 127.0.0.0/8 (or ::1), so a listener that counts connections per address
 * lets one user take every slot. The kernel knows which uid owns the other
 * end (the client's socket), and says so in /proc/net/tcp and /proc/net/tcp6;
 * this looks the client's socket up there, so a loopback listener can count
 * per user as the control socket does with SO_PEERCRED.
 *
 * Lookups are batched: one read of both tables answers every lookup waiting
 * when it starts; reads are at least READ_GAP_MS apart (and four times the
 * last read's duration, for a host with a very large table), so a flood of
 * connections costs a bounded share of the event loop whatever its rate.
 */

import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';

const READ_GAP_MS = 20;

interface Lookup { key: string; resolve: (uid: number | undefined) => void }

export class LoopbackPeerUids {
  private waiting: Lookup[] = [];
  private reading = false;
  private lastReadEnd = -Infinity;
  private lastReadMs = 0;

  constructor(private readonly tables: readonly string[] = ['/proc/net/tcp', '/proc/net/tcp6']) {}

  /**
   * The uid owning the client's socket of a connection accepted from
   * remoteAddress:remotePort on our localPort; undefined when the tables do
   * not show it (not Linux, not loopback, or it closed meanwhile).
   */
  uidOf(remoteAddress: string, remotePort: number, localPort: number): Promise<number | undefined> {
    const keys = procKeys(remoteAddress, remotePort, localPort);
    if (keys.length === 0) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      let left = keys.length;
      let found: number | undefined;
      // The client's socket is in tcp (an IPv4 socket) or tcp6 (an IPv6 one, v4-mapped or not): either answers.
      const one = (uid: number | undefined): void => {
        if (uid !== undefined && found === undefined) found = uid;
        if (--left === 0) resolve(found);
      };
      for (const key of keys) this.waiting.push({ key, resolve: one });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.reading || this.waiting.length === 0) return;
    this.reading = true;
    const wait = this.lastReadEnd + Math.max(READ_GAP_MS, 4 * this.lastReadMs) - performance.now();
    setTimeout(() => void this.read(), Math.max(0, wait)).unref();
  }

  private async read(): Promise<void> {
    const batch = this.waiting;
    this.waiting = [];
    const t0 = performance.now();
    const owners = new Map<string, number>();
    for (const t of this.tables) {
      const text = await readFile(t, 'latin1').catch(() => '');
      for (const line of text.split('\n')) {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
        const f = line.trim().split(/\s+/);
        if (f.length < 8 || !f[0]!.endsWith(':')) continue;
        const remPort = f[2]!.split(':')[1];
        const uid = Number(f[7]);
        if (remPort !== undefined && Number.isSafeInteger(uid)) owners.set(`${f[1]}|${remPort}`, uid);
      }
    }
    for (const l of batch) l.resolve(owners.get(l.key));
    this.lastReadEnd = performance.now();
    this.lastReadMs = this.lastReadEnd - t0;
    this.reading = false;
    this.schedule();
  }
}

/**
 * How /proc/net/tcp{,6} print the client's socket: its local address and port
 * (our remote), and the port it is connected to (our local), as
 * `ADDR:PORT|PORT`. Addresses are the raw bytes read as 32-bit host-order
 * words (little-endian here), in hex; ports in hex. An IPv4 client may show
 * in either table (an IPv4 socket, or an IPv6 one connecting v4-mapped).
 */
export function procKeys(remoteAddress: string, remotePort: number, localPort: number): string[] {
  const port = (p: number): string => p.toString(16).toUpperCase().padStart(4, '0');
  const words = (bytes: number[]): string => {
    let out = '';
    for (let i = 0; i < bytes.length; i += 4) {
      for (let j = 3; j >= 0; j--) out += bytes[i + j]!.toString(16).toUpperCase().padStart(2, '0');
    }
    return out;
  };
  const tail = `:${port(remotePort)}|${port(localPort)}`;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(remoteAddress)?.[1];
  const v4 = mapped ?? (isIP(remoteAddress) === 4 ? remoteAddress : undefined);
  if (v4) {
    const b = v4.split('.').map(Number);
    return [words(b) + tail, words([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...b]) + tail];
  }
  if (isIP(remoteAddress) === 6 && !remoteAddress.includes('.')) return [words(ipv6Bytes(remoteAddress)) + tail];
  return [];
}

function ipv6Bytes(a: string): number[] {
  const [head, rest] = a.includes('::') ? a.split('::') as [string, string] : [a, undefined];
  const h = head ? head.split(':') : [];
  const r = rest ? rest.split(':') : [];
  const groups = rest === undefined ? h : [...h, ...Array(8 - h.length - r.length).fill('0'), ...r];
  return groups.flatMap((g) => {
    const n = parseInt(g, 16);
    return [n >> 8, n & 0xff];
  });
}
