import { webcrypto } from 'node:crypto';

/**
 * SHA-256 of `data` as lowercase hex, computed on libuv's thread pool
 * (WebCrypto digests run as pool jobs in Node), so hashing 512 KiB snapshot
 * blocks does not hold the event loop that serves FUSE and control requests.
 * For small inputs (headers of a few bytes, JSON) `createHash` on the loop is
 * cheaper than the hand-off.
 */
export async function sha256HexOffLoop(data: Uint8Array): Promise<string> {
  return Buffer.from(await webcrypto.subtle.digest('SHA-256', data)).toString('hex');
}
