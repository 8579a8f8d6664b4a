/**
 * A Decrypt answer carries the plaintext volume key, so the KMS client takes
 * plain HTTP only to a loopback address (src/volume/aws-key-service.ts, the
 * rule of the listener, src/util/loopback.ts); anything else needs https://.
 * The daemon refuses such a --kms-endpoint before it starts (checkDaemonConfig).
 */
import { describe, expect, it } from 'vitest';
import { checkDaemonConfig } from '../../src/daemon/config.js';
import { AwsKeyService } from '../../src/volume/aws-key-service.js';

const REFUSED = ['http://10.0.0.1:4599', 'http://kms.internal:4599', 'http://[fd00::1]:4599', 'http://128.0.0.1', 'http://0.0.0.0:4599'];
const ALLOWED = ['http://127.0.0.1:4599', 'http://127.3.2.1', 'http://localhost:4599', 'http://[::1]:4599', 'https://10.0.0.1:4599', 'https://kms.us-east-1.amazonaws.com'];

describe('--kms-endpoint: plain HTTP only to a loopback address', () => {
  it('the KMS client refuses http:// elsewhere, naming the flag and the way out', () => {
    for (const endpoint of REFUSED) {
      expect(() => new AwsKeyService({ endpoint, region: 'us-east-1' }), endpoint).toThrow(/--kms-endpoint .*plain HTTP is allowed only to a loopback address.*use https:\/\//);
    }
    for (const endpoint of ALLOWED) expect(() => new AwsKeyService({ endpoint, region: 'us-east-1' }), endpoint).not.toThrow();
  });

  it('the daemon refuses it before anything starts', () => {
    const base = { stateDir: '/x', mountDir: '/y', logLevel: 'info', allowUnencrypted: false };
    for (const kmsEndpoint of REFUSED) expect(() => checkDaemonConfig({ ...base, kmsEndpoint }), kmsEndpoint).toThrow(/plain HTTP is allowed only to a loopback address/);
    for (const kmsEndpoint of ALLOWED) expect(() => checkDaemonConfig({ ...base, kmsEndpoint }), kmsEndpoint).not.toThrow();
  });
});
