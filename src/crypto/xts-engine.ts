import type { Logger } from '../util/logger.js';
import type { XtsEngine, XtsEngineName } from './xts.js';
import { XtsError } from './xts-errors.js';
import { isNativeAvailable, nativeLoadError, nativeXtsEngine } from './xts-native.js';
import { isNodeXtsAvailable, nodeXtsEngine } from './xts-node.js';
import { referenceXtsEngine } from './xts-reference.js';

export { _checkKey, _checkRun, _tweakBlock, type CheckedRun } from './xts-check.js';
export { XtsError, type XtsErrorCode } from './xts-errors.js';

/** All engines, best first: the order `auto` tries them in. */
export const XTS_ENGINE_NAMES: readonly XtsEngineName[] = ['native', 'node', 'reference'];

const ENGINES: Record<XtsEngineName, XtsEngine> = {
  native: nativeXtsEngine,
  node: nodeXtsEngine,
  reference: referenceXtsEngine,
};

/** Why an engine cannot run here, or null if it can. */
export function xtsEngineUnavailableReason(name: XtsEngineName): string | null {
  switch (name) {
    case 'native':
      return isNativeAvailable() ? null : `native addon not loaded: ${nativeLoadError?.message ?? 'unknown'}`;
    case 'node':
      return isNodeXtsAvailable() ? null : 'node:crypto has no aes-256-xts';
    case 'reference':
      return null;
  }
}

/** The engines that can run in this process, best first. */
export function availableXtsEngines(): XtsEngine[] {
  return XTS_ENGINE_NAMES.filter((n) => xtsEngineUnavailableReason(n) === null).map((n) => ENGINES[n]);
}

/** One engine by name, whether or not it can run (createContext then throws). */
export function getXtsEngine(name: XtsEngineName): XtsEngine {
  const e = ENGINES[name];
  if (e === undefined) throw new XtsError('XTS_ENGINE_UNAVAILABLE', `unknown engine ${String(name)}`, { argument: 'name' });
  return e;
}

/**
 * The choice each logger was last told, so it hears it once. Keyed by the logger, not
 * the process: two daemons in one process (tests start them so) each log their choice.
 */
const lastLogged = new WeakMap<Logger, string>();

/**
 * The engine to use: `preferred` if given and available (else an
 * XTS_ENGINE_UNAVAILABLE error), or with `auto` the best available
 * (native > node > reference). The choice is logged once per logger (again
 * only if it changes), at info, with the reason the better engines were skipped.
 */
export function selectXtsEngine(preferred: XtsEngineName | 'auto' = 'auto', logger?: Logger): XtsEngine {
  let chosen: XtsEngine;
  const skipped: Record<string, string> = {};
  if (preferred !== 'auto') {
    const why = xtsEngineUnavailableReason(getXtsEngine(preferred).name);
    if (why !== null) throw new XtsError('XTS_ENGINE_UNAVAILABLE', why, { argument: 'preferred', cause: nativeLoadError });
    chosen = ENGINES[preferred];
  } else {
    let found: XtsEngine | undefined;
    for (const n of XTS_ENGINE_NAMES) {
      const why = xtsEngineUnavailableReason(n);
      if (why === null) {
        found = ENGINES[n];
        break;
      }
      skipped[n] = why;
    }
    chosen = found ?? referenceXtsEngine;
  }
  const key = `${preferred}:${chosen.name}`;
  if (logger && lastLogged.get(logger) !== key) {
    lastLogged.set(logger, key);
    logger.info({ xtsEngine: chosen.name, xtsLibrary: chosen.library, requested: preferred, skipped }, `XTS engine: ${chosen.name} (${chosen.library})`);
  }
  return chosen;
}

export { nativeXtsEngine, nodeXtsEngine, referenceXtsEngine };
