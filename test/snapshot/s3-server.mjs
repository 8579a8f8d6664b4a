// A local S3 server for the snapshot-store tests: s3rver in its own process,
// on 127.0.0.1 and a free port, over a directory the test owns. It is started
// with --openssl-legacy-provider: s3rver's ListObjectsV2 continuation tokens
// use DES, which OpenSSL 3 keeps only there (a truncated listing is an HTTP 500 without it).
// argv: DIRECTORY BUCKET. Prints one JSON line {"port": N} when it listens.
// S3 replaces an object whole; s3rver streams a PUT into the existing file and
// keeps its length in a separate metadata file, so a GET racing a PUT of the
// same key can read a torn object. Here each key's PUT, GET and DELETE run one
// at a time (a GET reads the object whole), which restores S3's semantics.
// Each stdin line "ACCESS_KEY_ID SECRET" adds credentials it accepts (s3rver
// checks the key id, not SigV4 signatures) and is answered "added ACCESS_KEY_ID".
// A line "fail-puts PREFIX" makes every PUT of a key starting with PREFIX fail
// with HTTP 500 InternalError (a store error mid-snapshot); "fail-puts -"
// stops it. Answered "fail-puts PREFIX".
import { createInterface } from 'node:readline';
import { Readable } from 'node:stream';
import S3rver from 's3rver';
import AWSAccount from 's3rver/lib/models/account.js';

const [directory, bucket] = process.argv.slice(2);
const server = new S3rver({ address: '127.0.0.1', port: 0, directory, silent: true, configureBuckets: [{ name: bucket }] });
_serializePerKey(server.store);
const { port } = await server.run();
process.stdout.write(`${JSON.stringify({ port })}\n`);
let failPuts;
createInterface({ input: process.stdin }).on('line', (l) => {
  const [id, secret] = l.trim().split(/\s+/);
  if (id === 'fail-puts') {
    failPuts = secret === '-' ? undefined : secret;
    process.stdout.write(`fail-puts ${secret}\n`);
    return;
  }
  if (!id || !secret) return;
  AWSAccount.DUMMY_ACCOUNT.createKeyPair(id, secret);
  process.stdout.write(`added ${id}\n`);
});
process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));

function _serializePerKey(store) {
  const chains = new Map();
  const locked = (bucket, key, fn) => {
    const k = `${bucket}/${key}`;
    const run = (chains.get(k) ?? Promise.resolve()).then(fn, fn);
    const tail = run.catch(() => {});
    chains.set(k, tail);
    void tail.then(() => chains.get(k) === tail && chains.delete(k));
    return run;
  };
  const readAll = async (stream) => {
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    return Buffer.concat(chunks);
  };
  const put = store.putObject.bind(store);
  const get = store.getObject.bind(store);
  const del = store.deleteObject.bind(store);
  store.putObject = async (object) => {
    // The body arrives first, outside the lock; only the write to disk holds it.
    if (object.content && !Buffer.isBuffer(object.content)) object.content = await readAll(object.content);
    // Not an S3Error: s3rver answers it 500 InternalError.
    if (failPuts !== undefined && object.key.startsWith(failPuts)) throw new Error(`injected failure of the PUT of ${object.key}`);
    return locked(object.bucket, object.key, () => put(object));
  };
  store.getObject = (bucket, key, options) => locked(bucket, key, async () => {
    const o = await get(bucket, key, options);
    if (o && o.content) o.content = Readable.from([await readAll(o.content)]);
    return o;
  });
  store.deleteObject = (bucket, key) => locked(bucket, key, () => del(bucket, key));
}
