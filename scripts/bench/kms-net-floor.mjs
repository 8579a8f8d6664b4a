#!/usr/bin/env node
// The floor of node's HTTPS front end, for scripts/bench/kms-net.mjs --floor: a node:https server
// with keep-alive that reads each request's body and answers a fixed Decrypt response of the daemon's
// size (the same JSON bytes, a fresh x-amzn-RequestId), with nothing else: no SigV4, no JSON parse, no
// KMS. What it costs per call is what any daemon built on node:https (or node:http) pays before doing
// any work. Prints {"url": ...} on stdout once listening.
//   node scripts/bench/kms-net-floor.mjs CERT KEY ANSWER-JSON [http]
import { createServer as createHttps } from 'node:https';
import { createServer as createHttp } from 'node:http';
import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';

const [cert, key, answer, proto] = process.argv.slice(2);
const body = readFileSync(answer);
const handler = (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    Buffer.concat(chunks);
    res.writeHead(200, ['Content-Type', 'application/x-amz-json-1.1', 'Content-Length', String(body.length), 'x-amzn-RequestId', randomUUID()]);
    res.end(body);
  });
};
const opts = { keepAliveTimeout: 5_000 };
const server = proto === 'http' ? createHttp(opts, handler) : createHttps({ ...opts, cert: readFileSync(cert), key: readFileSync(key) }, handler);
server.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ url: `${proto === 'http' ? 'http' : 'https'}://127.0.0.1:${server.address().port}` })));
process.on('SIGTERM', () => process.exit(0));
