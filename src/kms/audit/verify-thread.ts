/**
 * The worker side of `verifyAuditLogOffThread` (verify.ts): checks the log in
 * `workerData.dir` and posts the result. The daemon's main thread never reads
 * the log files itself, which can be gigabytes after months of rotation.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { verifyAuditLog } from './verify.js';

const { dir, markPath, publicKeyPem } = workerData as { dir: string; markPath?: string; publicKeyPem?: string };
try {
  parentPort!.postMessage({ result: verifyAuditLog(dir, { ...(markPath !== undefined ? { markPath } : {}), ...(publicKeyPem !== undefined ? { publicKeyPem } : {}) }) });
} catch (e) {
  parentPort!.postMessage({ error: (e as Error)?.message ?? String(e), code: (e as NodeJS.ErrnoException)?.code });
}
