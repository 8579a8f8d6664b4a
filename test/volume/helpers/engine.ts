import { existsSync } from 'node:fs';
import type { XtsEngine } from '../../../src/crypto/xts.js';
import { nodeTestEngine } from './node-xts.js';

/** The project's selected XTS engine once src/crypto/xts-engine.ts exists; the test engine before. */
export async function testEngine(): Promise<XtsEngine> {
  const p = new URL('../../../src/crypto/xts-engine.ts', import.meta.url);
  if (existsSync(p)) {
    const m = (await import(p.href)) as { selectXtsEngine?: () => XtsEngine | Promise<XtsEngine> };
    if (m.selectXtsEngine) return await m.selectXtsEngine();
  }
  return nodeTestEngine;
}
