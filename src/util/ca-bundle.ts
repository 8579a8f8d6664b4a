import { readFileSync } from 'node:fs';
import { Agent } from 'node:https';
import { rootCertificates } from 'node:tls';
import { ArgRangeError } from './errors.js';

/**
 * AWS_CA_BUNDLE (the AWS CLI's variable; the JS SDK does not read it): an
 * HTTPS agent trusting that PEM bundle besides the system roots, for a KMS or
 * an S3-compatible store behind a private CA. Empty when the variable is unset.
 */
export function caBundleAgent(): { httpsAgent?: Agent } {
  const file = process.env.AWS_CA_BUNDLE;
  if (!file) return {};
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ArgRangeError('AWS_CA_BUNDLE', `cannot read ${file}: ${(e as Error).message}`);
  }
  return { httpsAgent: new Agent({ keepAlive: true, ca: [...rootCertificates, pem] }) };
}
