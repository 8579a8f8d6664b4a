// A local S3 server for the snapshot-store tests: s3rver in its own process,
// on 127.0.0.1 and a free port, over a directory the test owns. It is started
// with --openssl-legacy-provider: s3rver's ListObjectsV2 continuation tokens
// use DES, which OpenSSL 3 keeps only there (a truncated listing is an HTTP 500 without it).
// argv: DIRECTORY BUCKET. Prints one JSON line {"port": N} when it listens.
// Each stdin line "ACCESS_KEY_ID SECRET" adds credentials it accepts (s3rver
// checks the key id, not SigV4 signatures) and is answered "added ACCESS_KEY_ID".
import { createInterface } from 'node:readline';
import S3rver from 's3rver';
import AWSAccount from 's3rver/lib/models/account.js';

const [directory, bucket] = process.argv.slice(2);
const server = new S3rver({ address: '127.0.0.1', port: 0, directory, silent: true, configureBuckets: [{ name: bucket }] });
const { port } = await server.run();
process.stdout.write(`${JSON.stringify({ port })}\n`);
createInterface({ input: process.stdin }).on('line', (l) => {
  const [id, secret] = l.trim().split(/\s+/);
  if (!id || !secret) return;
  AWSAccount.DUMMY_ACCOUNT.createKeyPair(id, secret);
  process.stdout.write(`added ${id}\n`);
});
process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));
