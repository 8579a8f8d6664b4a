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
  return host === '::1' || host === '[::1]' || /^::ffff:127\./.test(host) || /^\[::ffff:(127\.|7f)/i.test(host);
}
