// A local S3 server for the snapshot-store tests: s3rver in its own process,
// on 127.0.0.1 and a free port, over a directory the test owns. It is started
// with --openssl-legacy-provider: s3rver's ListObjectsV2 continuation tokens
// use DES, which OpenSSL 3 keeps only there (a truncated listing is an HTTP 500 without it).
// argv: DIRECTORY BUCKET. Prints one JSON line {"port": N} when it listens.
import S3rver from 's3rver';

const [directory, bucket] = process.argv.slice(2);
const server = new S3rver({ address: '127.0.0.1', port: 0, directory, silent: true, configureBuckets: [{ name: bucket }] });
const { port } = await server.run();
process.stdout.write(`${JSON.stringify({ port })}\n`);
process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));
