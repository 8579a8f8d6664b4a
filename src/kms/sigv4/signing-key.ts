import { createHmac } from 'node:crypto';
import { wipe } from '../../util/wipe.js';

/**
 * SigV4 signing key: HMAC chain over date, region, service and "aws4_request"
 * starting from "AWS4" ‖ secret (AWS General Reference, "Calculate the
 * signature"). Runs inside the HSM for stored secrets; the intermediate keys
 * are wiped (best effort: the JS engine may have copied them).
 */
export function deriveSigningKey(secret: Uint8Array, date: string, region: string, service: string): Buffer {
  const k0 = Buffer.concat([Buffer.from('AWS4', 'latin1'), secret]);
  const kDate = createHmac('sha256', k0).update(date).digest();
  const kRegion = createHmac('sha256', kDate).update(region).digest();
  const kService = createHmac('sha256', kRegion).update(service).digest();
  try {
    return createHmac('sha256', kService).update('aws4_request').digest();
  } finally {
    wipe(k0); wipe(kDate); wipe(kRegion); wipe(kService);
  }
}
