import { createHmac, randomFillSync, timingSafeEqual } from 'node:crypto';
import { secretBuffer, wipe } from '../util/wipe.js';

/**
 * Block tokens and page tokens of the EBS direct APIs: opaque to the caller,
 * verifiable by this daemon. A token is base64 of
 *
 *   kind (1) ‖ expiry, Unix milliseconds (8, big-endian) ‖ [next index (8)] ‖ HMAC-SHA256 (32)
 *
 * where the HMAC (RFC 2104) is keyed by a random 32-byte key held in memory
 * only and covers the kind, the expiry and what the token stands for: the
 * snapshot, the block index and the block's content hash for a block token;
 * the request and the next index for a page token. So a token cannot be
 * moved to another snapshot, index or block content, nor its expiry
 * extended. The key never reaches a file: tokens die with the daemon, as EBS
 * lets tokens change ("Block tokens are temporary", EBS direct APIs user
 * guide, "Concepts"); callers list again.
 *
 * Lifetimes as EBS gives them (user guide, FAQ): block tokens seven days,
 * page tokens (NextToken) 60 minutes. The expiry is kept to the millisecond:
 * a block token is good until exactly the ExpiryTime its listing answered
 * (whole seconds would end it up to a second before).
 */
export const BLOCK_TOKEN_TTL_MS = 7 * 24 * 3600 * 1000;
export const PAGE_TOKEN_TTL_MS = 60 * 60 * 1000;

const KIND_BLOCK = 1;
const KIND_PAGE = 2;
const MAC_BYTES = 32;

export class TokenSigner {
  private key: Buffer | null;

  /** `key` for tests only (32 bytes, copied); a fresh random key otherwise. */
  constructor(key?: Uint8Array) {
    this.key = secretBuffer(32); // off V8's heap (wipe.ts)
    // Into the key's own buffer: a randomBytes() or Buffer.from() copied from would stay unwiped.
    if (key) this.key.set(key.subarray(0, 32));
    else randomFillSync(this.key);
  }

  /** A block token for block `index` of `snapshotId` holding content `hash`, valid until `expiresAtMs`. */
  block(snapshotId: string, index: number, hash: string, expiresAtMs: number): string {
    return this._sign(KIND_BLOCK, expiresAtMs, undefined, `${snapshotId}\0${index}\0${hash}`);
  }

  /** True when `token` is this daemon's block token for exactly (snapshot, index, hash) and has not expired at `nowMs`. */
  verifyBlock(token: string, snapshotId: string, index: number, hash: string, nowMs: number): boolean {
    const t = this._open(token, KIND_BLOCK, false);
    return t !== undefined && t.expiresAtMs > nowMs && this._macOk(t, `${snapshotId}\0${index}\0${hash}`);
  }

  /** A page token: continue `scope` (the operation and its snapshots) at block index `next`. */
  page(scope: string, next: number, expiresAtMs: number): string {
    return this._sign(KIND_PAGE, expiresAtMs, next, scope);
  }

  /** The next index a page token names, or undefined if it is not this daemon's token for `scope` or has expired. */
  openPage(token: string, scope: string, nowMs: number): number | undefined {
    const t = this._open(token, KIND_PAGE, true);
    if (t === undefined || t.expiresAtMs <= nowMs || !this._macOk(t, scope)) return undefined;
    return t.next;
  }

  /** Wipe the key (best effort: JS may have copied it); every later token check fails. */
  destroy(): void {
    wipe(this.key);
    this.key = null;
  }

  private _head(kind: number, expiresAtMs: number, next: number | undefined): Buffer {
    const h = Buffer.alloc(next === undefined ? 9 : 17);
    h[0] = kind;
    h.writeBigUInt64BE(BigInt(Math.floor(expiresAtMs)), 1);
    if (next !== undefined) h.writeBigUInt64BE(BigInt(next), 9);
    return h;
  }

  private _mac(head: Buffer, subject: string): Buffer {
    if (!this.key) throw new Error('token signer destroyed');
    return createHmac('sha256', this.key).update(head).update(subject, 'utf8').digest();
  }

  private _sign(kind: number, expiresAtMs: number, next: number | undefined, subject: string): string {
    const head = this._head(kind, expiresAtMs, next);
    return Buffer.concat([head, this._mac(head, subject)]).toString('base64');
  }

  private _open(token: string, kind: number, paged: boolean): { head: Buffer; mac: Buffer; expiresAtMs: number; next: number } | undefined {
    if (typeof token !== 'string' || token.length > 256 || !/^[A-Za-z0-9+/=]+$/.test(token)) return undefined;
    const raw = Buffer.from(token, 'base64');
    const headLen = paged ? 17 : 9;
    if (raw.length !== headLen + MAC_BYTES || raw[0] !== kind) return undefined;
    const head = raw.subarray(0, headLen);
    const next = paged ? Number(head.readBigUInt64BE(9)) : 0;
    if (!Number.isSafeInteger(next)) return undefined;
    return { head, mac: raw.subarray(headLen), expiresAtMs: Number(head.readBigUInt64BE(1)), next };
  }

  private _macOk(t: { head: Buffer; mac: Buffer }, subject: string): boolean {
    if (!this.key) return false;
    return timingSafeEqual(this._mac(t.head, subject), t.mac);
  }
}
