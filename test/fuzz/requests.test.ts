import { describe, it } from 'vitest';
import { expectClean, fuzzAndReport } from './fuzz-config.js';

describe('fuzz: requests as the control socket delivers them', () => {
  it('KMS: decodeKmsRequest then KmsService.call: typed, audited, decoded faithfully, strict base64', async () => {
    expectClean(await fuzzAndReport('kms-request', 400));
  });
  it('EC2 volumes: the daemon dispatch over VolumeManager: typed, no poisoned catalog, EC2 tag limits', async () => {
    expectClean(await fuzzAndReport('ec2-volume', 100));
  });
});
