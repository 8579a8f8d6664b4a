import { Writable } from 'node:stream';
import { VolumeManager, type VolumeManagerOptions } from '../../../src/volume/volume-manager.js';
import { createLogger } from '../../../src/util/logger.js';
import type { KmsHarness } from './kms.js';
import { testEngine } from './engine.js';

/**
 * A VolumeManager on `stateDir` over the real KMS harness, with the test
 * defaults every volume suite uses (TTL 0, the test XTS engine). With
 * `logLines`, pino's output (trace level) is collected there.
 */
export async function openTestManager(
  stateDir: string,
  kms: KmsHarness,
  extra: Partial<VolumeManagerOptions> = {},
  logLines?: string[],
): Promise<VolumeManager> {
  const logger = logLines
    ? { logger: createLogger({ level: 'trace', destination: new Writable({ write: (c, _e, cb) => (logLines.push(String(c)), cb()) }) }) }
    : {};
  return VolumeManager.open({
    stateDir,
    keyService: kms.keyService,
    hostPrincipal: kms.host,
    xtsEngine: await testEngine(),
    keyCacheTtlMs: 0,
    ...logger,
    ...extra,
  });
}
