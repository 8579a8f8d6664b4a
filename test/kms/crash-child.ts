// Child process for the SIGKILL test: updates keys and aliases forever, and
// reports each update on stdout once it has returned (so it is durable).
import { KmsService } from '../../src/kms/kms-core.js';
const [dir, keyId] = process.argv.slice(2) as [string, string];
const admin = { arn: 'arn:aws:iam::111122223333:root', accountId: '111122223333', type: 'Root' as const };
const kms = await KmsService.open({ stateDir: dir, accountId: '111122223333', region: 'us-east-1', hsmMode: 'inline' });
process.stdout.write('ready\n');
for (let i = 0; ; i++) {
  await kms.call('UpdateKeyDescription', { KeyId: keyId, Description: `d${i}` }, admin);
  process.stdout.write(`desc ${i}\n`);
  await kms.call('TagResource', { KeyId: keyId, Tags: [{ TagKey: 't', TagValue: String(i) }] }, admin);
  process.stdout.write(`tag ${i}\n`);
  await kms.call('CreateAlias', { AliasName: `alias/a${process.pid}-${i}`, TargetKeyId: keyId }, admin);
  process.stdout.write(`alias ${i}\n`);
  if (i % 5 === 0) await kms.call('RotateKeyOnDemand', { KeyId: keyId }, admin).catch(() => {});
}
