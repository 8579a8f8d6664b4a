// A worker thread of scripts/bench/restore.mjs: the CPU work of a restore under another key and
// nothing else, on `mib` MiB of its own 512 KiB blocks (distinct random data, made and encrypted
// under key A before the clock starts): per block, SHA-256 checked against the block's address,
// XTS decrypt under key A, XTS encrypt under key B, in place, 4 KiB units, tweak step 8 (as the
// volume data path). It checks one block end to end before timing and every block's result after
// (decrypts under B to the plaintext it made), and reports its own wall time for the timed pass;
// it starts when the main thread posts 'go', so all workers run at once.
import { parentPort, workerData } from 'node:worker_threads';
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import { selectXtsEngine } from '../../dist/crypto/xts-engine.js';

const BLOCK = 512 * 1024;
const UNITS = BLOCK / 4096;
const opts = { unitSize: 4096, tweakStep: 8 };
const { mib, seed } = workerData;
const engine = selectXtsEngine('auto');
const kA = engine.createContext(randomBytes(64));
const kB = engine.createContext(randomBytes(64));
const n = (mib * 1024 * 1024) / BLOCK;
const tweak = (i) => BigInt(i) * BigInt(UNITS * 8);
const sha = (b) => createHash('sha256').update(b).digest();

// Setup, untimed: distinct plaintext per block (the seed and the index written into it), its digest
// of the plaintext kept for the final check, the block encrypted under A and the address of that ciphertext.
const blocks = [];
const plainDigest = [];
const address = [];
for (let i = 0; i < n; i++) {
  const b = Buffer.allocUnsafeSlow(BLOCK);
  randomFillSync(b);
  b.writeUInt32LE(seed, 0);
  b.writeUInt32LE(i, 4);
  plainDigest.push(sha(b));
  kA.encryptSync(b, tweak(i), opts);
  address.push(sha(b));
  blocks.push(b);
}
const reencrypt = (b, i) => {
  if (!sha(b).equals(address[i])) throw new Error(`block ${i}: SHA-256 does not match its address`);
  kA.decryptSync(b, tweak(i), opts);
  kB.encryptSync(b, tweak(i), opts);
};
// Correctness before timing: one block through the same steps gives B's ciphertext of its plaintext.
{
  const c = Buffer.from(blocks[0]);
  reencrypt(c, 0);
  kB.decryptSync(c, tweak(0), opts);
  if (!sha(c).equals(plainDigest[0])) throw new Error('re-encryption check failed before timing');
}

parentPort.postMessage({ ready: true });
parentPort.once('message', () => {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) reencrypt(blocks[i], i);
  const ms = performance.now() - t0;
  for (let i = 0; i < n; i++) {
    kB.decryptSync(blocks[i], tweak(i), opts);
    if (!sha(blocks[i]).equals(plainDigest[i])) throw new Error(`block ${i}: not B's ciphertext of its plaintext after the timed pass`);
  }
  kA.destroy();
  kB.destroy();
  parentPort.postMessage({ ms, bytes: n * BLOCK });
});
