import { isIP } from 'node:net';

/**
 * True for 127.0.0.0/8, ::1 and `localhost`: the only addresses plain HTTP
 * may be used on, listening (src/daemon/kms-listener.ts) or calling a KMS
 * (src/volume/aws-key-service.ts): KMS answers carry plaintext keys.
 * A URL's hostname keeps an IPv6 address's brackets (`[::1]`).
 */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (isIP(h) !== 6) return false;
  // An IPv4-mapped address is loopback when its IPv4 part is 127/8: `::ffff:127.x.y.z`, or in
  // hex (as URL writes it) `::ffff:7fxx:xxxx`; `::ffff:7f:1` is 0.127.0.1, not loopback.
  return h === '::1' || /^::ffff:127\./i.test(h) || /^::ffff:7f[0-9a-f]{2}:[0-9a-f]{1,4}$/i.test(h);
}
