/**
 * The HSM domain: a domain key (AES-256) and the audit signing key (Ed25519),
 * sealed at rest in `<kms>/hsm/domain.json` under a key-encryption key (KEK).
 * The KEK is either 32 random bytes in `<kms>/hsm/kek` (mode 0600, created on
 * first start) or derived from a passphrase with scrypt (RFC 7914).
 * Opening never rewrites anything: a wrong passphrase, a missing KEK file or a
 * tampered domain file is an HsmDomainError and the files stay as they were.
 */
import { randomBytes, randomFillSync, generateKeyPairSync, createPublicKey, createPrivateKey } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, openSync, writeSync, fsyncSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { scrypt } from '@noble/hashes/scrypt.js';
import { atomicWriteSync } from '../../util/atomic-write.js';
import { secretBuffer, wipe } from '../../util/wipe.js';
import { HsmDomainError } from '../errors.js';
import { HSM_PASSPHRASE_ENV } from './protocol.js';
import { gcmOpen } from './gcm-open.js';
import { gcmSeal } from './gcm-seal.js';

const DOMAIN_VERSION = 1;
/** scrypt cost: N = 2^15, r = 8, p = 1 (RFC 7914 §2 recommends N ≥ 2^14 for interactive use). */
export const SCRYPT_COST = Object.freeze({ N: 2 ** 15, r: 8, p: 1 });

export interface ScryptCost { N: number; r: number; p: number }

/**
 * The scrypt cost for a new passphrase domain: the production cost, or a
 * requested one. A cost cheaper than production (memory N·r or parallelism p
 * lower) exists only so test suites need not spend seconds per domain; it is
 * refused unless the process runs under a test runner (NODE_ENV=test or
 * VITEST), so a production daemon can never be configured into it.
 */
export function chooseScryptCost(requested: ScryptCost | undefined, env: NodeJS.ProcessEnv = process.env): ScryptCost {
  if (requested === undefined) return { ...SCRYPT_COST };
  const { N, r, p } = requested;
  if (!Number.isInteger(N) || N < 2 || (N & (N - 1)) !== 0) throw new RangeError(`scrypt N must be a power of two > 1, got ${N}`);
  if (!Number.isInteger(r) || r < 1 || !Number.isInteger(p) || p < 1) throw new RangeError('scrypt r and p must be positive integers');
  const weaker = N * r < SCRYPT_COST.N * SCRYPT_COST.r || p < SCRYPT_COST.p;
  if (weaker && env.NODE_ENV !== 'test' && !env.VITEST) {
    throw new RangeError(`scrypt cost N=${N} r=${r} p=${p} is below the production cost (N=2^15, r=8, p=1); allowed only in tests`);
  }
  return { N, r, p };
}

interface DomainFile {
  version: number;
  kekSource: 'file' | 'passphrase';
  kdf?: { alg: 'scrypt'; N: number; r: number; p: number; salt: string };
  /** AES-256-GCM(KEK, iv, domainKey ‖ auditPkcs8), AAD = "ebsd/domain/v1" */
  iv: string;
  sealed: string;
  auditPublicKey: string;
}

export interface Domain {
  domainKey: Buffer;
  auditPrivateKey: ReturnType<typeof createPrivateKey>;
  auditPublicKeyPem: string;
}

const AAD = Buffer.from('ebsd/domain/v1');

function kekFromPassphrase(pass: string, kdf: NonNullable<DomainFile['kdf']>): Buffer {
  const k = scrypt(pass, Buffer.from(kdf.salt, 'base64'), { N: kdf.N, r: kdf.r, p: kdf.p, dkLen: 32 });
  return Buffer.from(k.buffer, k.byteOffset, k.byteLength);
}

function writeNew(path: string, data: Buffer): void {
  // 'wx': never clobber an existing KEK.
  const fd = openSync(path, 'wx', 0o600);
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** `scryptCost` applies only when a new passphrase domain is created (see chooseScryptCost); an existing domain keeps the cost it was sealed with. */
export function openDomain(kmsDir: string, passphrase?: string, opts: { scryptCost?: ScryptCost } = {}): Domain {
  const dir = join(kmsDir, 'hsm');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, 'domain.json');
  const kekPath = join(dir, 'kek');
  if (!existsSync(path)) return createDomain(path, kekPath, passphrase, opts.scryptCost);

  let f: DomainFile;
  try {
    f = JSON.parse(readFileSync(path, 'utf8')) as DomainFile;
    if (f.version !== DOMAIN_VERSION || typeof f.iv !== 'string' || typeof f.sealed !== 'string') throw new Error('bad fields');
  } catch {
    throw new HsmDomainError('HSM_DOMAIN_CORRUPT', `HSM domain file ${path} is not a valid domain file (tampered or truncated); nothing was changed`);
  }
  let kek: Buffer;
  if (f.kekSource === 'passphrase') {
    if (passphrase === undefined) throw new HsmDomainError('HSM_KEK_SOURCE_MISMATCH', `HSM domain is sealed under a passphrase; start the daemon with ${HSM_PASSPHRASE_ENV} set`);
    if (!f.kdf) throw new HsmDomainError('HSM_DOMAIN_CORRUPT', `HSM domain file ${path} lacks its KDF parameters`);
    kek = kekFromPassphrase(passphrase, f.kdf);
  } else {
    if (passphrase !== undefined) throw new HsmDomainError('HSM_KEK_SOURCE_MISMATCH', 'HSM domain is sealed under a KEK file, but a passphrase was given');
    if (!existsSync(kekPath)) throw new HsmDomainError('HSM_KEK_MISSING', `HSM key-encryption key ${kekPath} is missing; the domain cannot be opened`);
    kek = readFileSync(kekPath);
    if (kek.length !== 32) throw new HsmDomainError('HSM_DOMAIN_UNSEAL_FAILED', `HSM key-encryption key ${kekPath} has the wrong length`);
  }
  let plain: Buffer | undefined;
  try {
    const sealed = Buffer.from(f.sealed, 'base64');
    if (sealed.length < 16) throw new Error('format');
    // Opened in place into one buffer, kept and wiped as `plain` (gcm-open.ts, docs/architecture.md
    // §6.5); null, with nothing left in the clear, when the tag fails (it may still be the domain
    // under a tampered tag).
    const out = gcmOpen(kek, Buffer.from(f.iv, 'base64'), AAD, sealed.subarray(0, sealed.length - 16), sealed.subarray(sealed.length - 16));
    if (!out) throw new Error('authentication');
    plain = out;
  } catch {
    throw new HsmDomainError('HSM_DOMAIN_UNSEAL_FAILED',
      f.kekSource === 'passphrase' ? 'wrong HSM passphrase, or the domain file was tampered with; nothing was changed'
        : 'HSM domain failed authentication under the KEK file (tampered domain or KEK); nothing was changed');
  } finally {
    wipe(kek);
  }
  try {
    const domainKey = secretBuffer(32);
    plain.copy(domainKey, 0, 0, 32);
    const auditPrivateKey = createPrivateKey({ key: plain.subarray(32), format: 'der', type: 'pkcs8' });
    // Only iv and sealed are authenticated: the stored auditPublicKey is a convenience copy that
    // anyone able to write state files could replace (audit verification trusts it). The key
    // returned is the one derived from the sealed private key; a stored one that differs is refused.
    const derived = createPublicKey(auditPrivateKey);
    let stored: ReturnType<typeof createPublicKey> | undefined;
    try {
      if (typeof f.auditPublicKey === 'string') stored = createPublicKey(f.auditPublicKey);
    } catch {
      stored = undefined;
    }
    const spki = (k: ReturnType<typeof createPublicKey>) => k.export({ format: 'der', type: 'spki' });
    if (stored === undefined || !spki(stored).equals(spki(derived))) {
      wipe(domainKey);
      throw new HsmDomainError('HSM_DOMAIN_CORRUPT', `HSM domain file ${path}: field auditPublicKey does not match the sealed audit signing key (tampered); nothing was changed`);
    }
    return { domainKey, auditPrivateKey, auditPublicKeyPem: derived.export({ format: 'pem', type: 'spki' }).toString() };
  } finally {
    wipe(plain);
  }
}

function createDomain(path: string, kekPath: string, passphrase?: string, scryptCost?: ScryptCost): Domain {
  const cost = chooseScryptCost(scryptCost);
  const domainKey = secretBuffer(32);
  randomFillSync(domainKey); // in place: a randomBytes() copied from would stay in the clear, unwiped
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const pkcs8 = privateKey.export({ format: 'der', type: 'pkcs8' });
  let kek: Buffer;
  let kdf: DomainFile['kdf'];
  if (passphrase !== undefined) {
    kdf = { alg: 'scrypt', ...cost, salt: randomBytes(16).toString('base64') };
    kek = kekFromPassphrase(passphrase, kdf);
  } else {
    kek = randomBytes(32);
    if (existsSync(kekPath)) {
      throw new HsmDomainError('HSM_DOMAIN_CORRUPT', `HSM KEK file ${kekPath} exists but the domain file is missing; refusing to create a new domain`);
    }
    writeNew(kekPath, kek);
  }
  const plain = Buffer.concat([domainKey, pkcs8]);
  try {
    const iv = randomBytes(12);
    // In place (gcm-seal.ts, docs/architecture.md §6.5): the domain key and the audit key stay only in `plain`.
    const sealed = gcmSeal(kek, iv, AAD, plain);
    const pem = publicKey.export({ format: 'pem', type: 'spki' }).toString();
    const f: DomainFile = {
      version: DOMAIN_VERSION,
      kekSource: passphrase !== undefined ? 'passphrase' : 'file',
      ...(kdf ? { kdf } : {}),
      iv: iv.toString('base64'),
      sealed: sealed.toString('base64'),
      auditPublicKey: pem,
    };
    atomicWriteSync(path, JSON.stringify(f, null, 2) + '\n');
    return { domainKey, auditPrivateKey: privateKey, auditPublicKeyPem: createPublicKey(pem).export({ format: 'pem', type: 'spki' }).toString() };
  } finally {
    wipe(kek, plain, pkcs8);
  }
}
