import { createHash, randomBytes } from 'node:crypto';
import type { Logger } from '../util/logger.js';
import { wipe } from '../util/wipe.js';
import type { XtsEngine, XtsEngineName, XtsUnitSize } from './xts.js';
import { XtsError } from './xts-errors.js';
import { availableXtsEngines, getXtsEngine, selectXtsEngine, xtsEngineUnavailableReason } from './xts-engine.js';

/**
 * `ebsd speed`: checks every engine against a known answer, then times it
 * (gocryptfs `-speed` style; docs/architecture.md §11.14: check before timing).
 */

export interface SpeedEngineResult {
  name: XtsEngineName;
  /** XtsEngine.library: what computes the cipher. */
  library: string;
  unitSize: XtsUnitSize;
  encryptMBps: number;
  decryptMBps: number;
}

export interface SpeedReport {
  /** The engine selectXtsEngine('auto') picks in this process. */
  selected: XtsEngineName;
  engines: SpeedEngineResult[];
}

export interface SpeedOptions {
  /** Seconds per measurement (one engine, one unit size, one direction); default 0.5. */
  seconds?: number;
  /** Engines to measure; default every available one. Unavailable ones named here throw. */
  engines?: XtsEngineName[];
  /** Bytes per call (a run of units); default 256 KiB, the size of a large FUSE write. */
  runBytes?: number;
  logger?: Logger;
}

// IEEE 1619 Annex B, XTS-AES-256 vector 10 (test/vectors/xts-aes-256.json): key,
// data unit sequence number 0xff, plaintext bytes 0..255 twice, and the SHA-256
// of the expected 512-byte ciphertext (kept as a hash to keep this file small).
const KAT_KEY =
  '27182818284590452353602874713526624977572470936999595749669676273141592653589793238462643383279502884197169399375105820974944592';
const KAT_TWEAK = 0xffn;
const KAT_CT_SHA256 = 'e97e974fa393af794f7a4684395814cf820de60a01eaec677d87b452e316b364';

function katPlaintext(): Uint8Array {
  const p = new Uint8Array(512);
  for (let i = 0; i < 512; i++) p[i] = i & 0xff;
  return p;
}

/**
 * Throws XTS_SELF_TEST_FAILED unless `engine` reproduces IEEE vector 10
 * (512-byte unit, step 1) in both directions, and agrees with the reference
 * engine on a 4096-byte-unit, step-8 run (the volume layout).
 */
export function selfTestXtsEngine(engine: XtsEngine): void {
  const key = Buffer.from(KAT_KEY, 'hex');
  const ctx = engine.createContext(key);
  const fail = (what: string): never => {
    throw new XtsError('XTS_SELF_TEST_FAILED', `engine ${engine.name}: ${what}`);
  };
  try {
    const buf = katPlaintext();
    ctx.encryptSync(buf, KAT_TWEAK, { unitSize: 512, tweakStep: 1 });
    if (createHash('sha256').update(buf).digest('hex') !== KAT_CT_SHA256) fail('IEEE 1619 vector 10 encrypt mismatch');
    ctx.decryptSync(buf, KAT_TWEAK, { unitSize: 512, tweakStep: 1 });
    if (!Buffer.from(buf).equals(Buffer.from(katPlaintext()))) fail('IEEE 1619 vector 10 decrypt mismatch');
  } finally {
    ctx.destroy();
    wipe(key);
  }
  if (engine.name === 'reference') return;
  const rkey = randomBytes(64);
  const a = engine.createContext(rkey);
  const b = getXtsEngine('reference').createContext(rkey);
  try {
    const x = randomBytes(2 * 4096);
    const y = Buffer.from(x);
    a.encryptSync(x, 8n * 12345n, { unitSize: 4096, tweakStep: 8 });
    b.encryptSync(y, 8n * 12345n, { unitSize: 4096, tweakStep: 8 });
    if (!x.equals(y)) fail('4096-byte/step-8 run differs from the reference engine');
  } finally {
    a.destroy();
    b.destroy();
    wipe(rkey);
  }
}

function measure(fn: () => void, bytesPerCall: number, seconds: number): number {
  fn(); // warm-up (and lazy init) outside the timed window
  const limit = seconds * 1e9;
  const t0 = process.hrtime.bigint();
  let calls = 0;
  let elapsed = 0;
  do {
    fn();
    calls++;
    elapsed = Number(process.hrtime.bigint() - t0);
  } while (elapsed < limit);
  return (calls * bytesPerCall) / (elapsed / 1e9) / 1e6;
}

/** Self-tests, then measures each engine single-threaded at 512 and 4096-byte units (sync API). */
export async function runSpeed(opts: SpeedOptions = {}): Promise<SpeedReport> {
  const seconds = opts.seconds ?? 0.5;
  if (typeof seconds !== 'number' || !(seconds > 0) || seconds > 600) {
    throw new RangeError(`opts.seconds must be in (0, 600], got ${String(seconds)}`);
  }
  const runBytes = opts.runBytes ?? 256 * 1024;
  if (!Number.isInteger(runBytes) || runBytes < 4096 || runBytes % 4096 !== 0) {
    throw new RangeError(`opts.runBytes must be a positive multiple of 4096, got ${String(runBytes)}`);
  }
  const engines = opts.engines
    ? opts.engines.map((n) => {
        const why = xtsEngineUnavailableReason(n);
        if (why !== null) throw new XtsError('XTS_ENGINE_UNAVAILABLE', why, { argument: 'opts.engines' });
        return getXtsEngine(n);
      })
    : availableXtsEngines();
  const selected = selectXtsEngine('auto', opts.logger).name;
  for (const e of engines) selfTestXtsEngine(e);

  const results: SpeedEngineResult[] = [];
  const key = randomBytes(64);
  try {
    for (const engine of engines) {
      const ctx = engine.createContext(key);
      try {
        for (const unitSize of [512, 4096] as const) {
          const tweakStep = unitSize === 4096 ? 8 : 1;
          const buf = randomBytes(runBytes);
          const o = { unitSize, tweakStep };
          const encryptMBps = measure(() => ctx.encryptSync(buf, 0n, o), runBytes, seconds);
          const decryptMBps = measure(() => ctx.decryptSync(buf, 0n, o), runBytes, seconds);
          results.push({ name: engine.name, library: engine.library, unitSize, encryptMBps: round1(encryptMBps), decryptMBps: round1(decryptMBps) });
          opts.logger?.debug({ engine: engine.name, unitSize, encryptMBps, decryptMBps }, 'xts speed');
          // Let timers and I/O run between measurements.
          await new Promise((r) => setImmediate(r));
        }
      } finally {
        ctx.destroy();
      }
    }
  } finally {
    wipe(key);
  }
  return { selected, engines: results };
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}
