/**
 * The HSM's message interface: everything that crosses the boundary between
 * the KMS service (main thread) and the HSM simulator (worker thread).
 * Only exported key tokens (EKTs), ciphertexts, public keys and, for the
 * operations whose AWS response contains it, plaintext cross it; the domain
 * key and plaintext HBKs never do.
 */
import { wipe } from '../../util/wipe.js';

/** A backing key as the main thread knows it: who it belongs to and its token. */
export interface KeyHandle {
  arn: string;
  /** 32-byte HSM backing key id (AWS "key material id"). */
  hbkId: Uint8Array;
  /** Exported key token: AES-256-GCM of the material under the domain key (docs/kms-format.md §Exported key token). */
  ekt: Uint8Array;
  /** Key spec of the KMS key, e.g. SYMMETRIC_DEFAULT, RSA_2048; a version 2 token authenticates it. */
  spec: string;
  /** Key usage of the KMS key, e.g. ENCRYPT_DECRYPT; a version 2 token authenticates it. */
  usage: string;
}

/**
 * The exported key token format the HSM writes (its first byte). Version 1 bound only the key
 * ARN and material id; version 2 binds the key spec and usage too. The KMS re-seals the version 1
 * tokens of a state dir when it opens (kms-core.ts, `resealKeyTokens`).
 */
export const EKT_VERSION = 2;

/** Where a ReEncrypt reads from / writes to. */
export interface CipherEndpoint {
  key: KeyHandle;
  /** SYMMETRIC_DEFAULT or RSAES_OAEP_SHA_1/256. */
  algorithm: string;
  /** Canonical encryption context (symmetric only). */
  ctx?: Uint8Array;
}

export type HsmRequest =
  | { op: 'generateKey'; arn: string; hbkId: Uint8Array; spec: string; usage: string }
  | { op: 'resealKeyToken'; key: KeyHandle }
  | { op: 'encrypt'; key: KeyHandle; plaintext: Uint8Array; ctx: Uint8Array }
  | { op: 'decrypt'; key: KeyHandle; blob: Uint8Array; ctx: Uint8Array }
  | { op: 'generateDataKey'; key: KeyHandle; bytes: number; ctx: Uint8Array; wantPlaintext: boolean }
  | { op: 'rsaEncrypt'; key: KeyHandle; algorithm: string; plaintext: Uint8Array }
  | { op: 'rsaDecrypt'; key: KeyHandle; algorithm: string; blob: Uint8Array }
  | { op: 'reEncrypt'; src: CipherEndpoint; blob: Uint8Array; dst: CipherEndpoint }
  | { op: 'sign'; key: KeyHandle; algorithm: string; message: Uint8Array; messageType: 'RAW' | 'DIGEST' }
  | { op: 'verify'; key: KeyHandle; algorithm: string; message: Uint8Array; messageType: 'RAW' | 'DIGEST'; signature: Uint8Array }
  | { op: 'generateDataKeyPair'; key: KeyHandle; ctx: Uint8Array; pairSpec: string; wantPlaintext: boolean }
  | { op: 'generateMac'; key: KeyHandle; algorithm: string; message: Uint8Array }
  | { op: 'verifyMac'; key: KeyHandle; algorithm: string; message: Uint8Array; mac: Uint8Array }
  | { op: 'random'; bytes: number }
  | { op: 'signAudit'; data: Uint8Array }
  | { op: 'newSecret'; kind: SecretKind; id: string; context: Uint8Array }
  | { op: 'sigv4Key'; kind: SecretKind; id: string; context: Uint8Array; sealed: Uint8Array; date: string; region: string; service: string }
  | { op: 'auditPublicKey' };

export interface HsmResults {
  generateKey: { ekt: Uint8Array; publicKey?: Uint8Array };
  /** The same material in a token of format EKT_VERSION. */
  resealKeyToken: { ekt: Uint8Array };
  encrypt: { blob: Uint8Array };
  decrypt: { plaintext: Uint8Array };
  generateDataKey: { blob: Uint8Array; plaintext?: Uint8Array };
  rsaEncrypt: { blob: Uint8Array };
  rsaDecrypt: { plaintext: Uint8Array };
  reEncrypt: { blob: Uint8Array };
  sign: { signature: Uint8Array };
  verify: { valid: boolean };
  generateDataKeyPair: { privateBlob: Uint8Array; privatePlaintext?: Uint8Array; publicKey: Uint8Array };
  generateMac: { mac: Uint8Array };
  verifyMac: { valid: boolean };
  random: { bytes: Uint8Array };
  signAudit: { signature: Uint8Array };
  auditPublicKey: { pem: string };
  /** The secret leaves the HSM this once, to be shown to its owner; only `sealed` is stored. */
  newSecret: { secret: string; sealed: Uint8Array };
  sigv4Key: { key: Uint8Array };
}

/**
 * What a sealed SigV4 secret belongs to: a long-term access key (AKIA…) or an
 * STS session (ASIA…, whose token carries the sealed secret).
 */
export type SecretKind = 'access-key' | 'session';

export type HsmOp = HsmRequest['op'];
export type HsmResult<O extends HsmOp> = HsmResults[O];

/** Wire error: a KMS exception name and message, never secret data. */
export interface HsmWireError { awsName?: string; code: string; message: string }

/**
 * The environment variable the daemon takes a domain's passphrase from, once, at
 * start, and then removes from its environment (docs/architecture.md §5.10); the
 * KMS core is given the passphrase explicitly (KmsOptions.passphrase, HsmInit).
 */
export const HSM_PASSPHRASE_ENV = 'EBSD_HSM_PASSPHRASE';

export interface HsmInit {
  /** The kms/ state directory; the HSM keeps its sealed domain in `<dir>/hsm/`. */
  stateDir: string;
  passphrase?: string;
  /** scrypt cost for a new passphrase domain; tests only (hsm/domain.ts, chooseScryptCost). */
  scryptCost?: { N: number; r: number; p: number };
}

/** main -> worker: a batch of requests; worker -> main: a batch of replies, same order. */
export interface HsmBatch { seq: number; reqs: HsmRequest[] }
export interface HsmReplyBatch { seq: number; res: ({ ok: true; v: unknown } | { ok: false; e: HsmWireError })[] }

/**
 * Prepare the top-level byte fields of `o` to cross postMessage, and list in
 * `transfer` the ArrayBuffers that are to move rather than be copied.
 *
 * postMessage's structured clone copies a typed array's whole backing
 * ArrayBuffer, and small Buffers are views into Node's shared 8 KiB pool: a
 * 64-byte field would cost an 8 KiB copy each way. So a field that is a view
 * into a larger buffer is copied into an exact-size one, which this function
 * owns and lists in `transfer`: posted with it, the copy moves to the
 * receiver and nothing of it stays on the sending side.
 *
 * `owned`: the fields belong to the sender and are not used after the post
 * (the HSM worker's replies, which carry plaintext and data keys). A field
 * that is exact already is then transferred as is, and the original of a
 * copied field is wiped (best effort: src/util/wipe.ts). Not owned (a
 * request, whose buffers are the caller's): every field is copied and the
 * copies move (none is cloned: the clone's buffer is freed unwiped); the
 * caller's buffers are neither wiped nor detached.
 *
 * Mutates and returns `o`.
 */
export function exactBytes<T extends object>(o: T, transfer: ArrayBuffer[], owned: boolean): T {
  const r = o as Record<string, unknown>;
  for (const k in r) {
    const v = r[k];
    if (!(v instanceof Uint8Array)) continue;
    const whole = v.buffer;
    // Not owned, a field is copied even when exact: cloned, its bytes (an Encrypt's 4 KiB plaintext)
    // would also pass through the structured-clone buffer, which is freed without being wiped.
    if (v.byteLength !== whole.byteLength || !owned) {
      // A new ArrayBuffer of exactly byteLength, allocated as one: V8 keeps a small typed array's
      // bytes (up to 64) on its own heap and copies them out when `.buffer` is first read, leaving
      // the heap copy (a plaintext or data key) behind, unwiped, until the GC reuses it.
      const copy = new Uint8Array(new ArrayBuffer(v.byteLength));
      copy.set(v);
      if (owned) wipe(v);
      r[k] = copy;
      transfer.push(copy.buffer);
    } else if (owned && whole instanceof ArrayBuffer && !transfer.includes(whole)) {
      transfer.push(whole);
    }
  }
  return o;
}
