// A local user keeping metrics connections busy, for test/ops/metrics.test.ts (run under setpriv):
//   node metrics-busy-client.mjs PORT CONNECTIONS SOURCE_PREFIX
// CONNECTIONS connections from SOURCE_PREFIX.1, .2, ... (one address each), each keeping two
// GET /metrics unanswered (pipelined: one more sent as each answer arrives), so none is ever idle.
// A closed connection is opened again 20 ms later. Prints "ready" once every connection was
// answered once; on SIGTERM prints {answered, refused, closed} as JSON and exits.
import { connect } from 'node:net';

const [port, count, prefix] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
const out = { answered: 0, refused: 0, closed: 0 };
const GET = 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';
const firstAnswer = new Set();
const sockets = new Set();
let stop = false;

function open(i) {
  if (stop) return;
  const s = connect({ host: '127.0.0.1', port, localAddress: `${prefix}.${i + 1}` });
  sockets.add(s);
  let buf = Buffer.alloc(0);
  s.on('connect', () => s.write(GET + GET));
  s.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      // A pipelined answer is sent chunked (its head goes out before its body is known), a single one with its length.
      let next;
      if (/transfer-encoding:\s*chunked/i.test(head)) {
        const last = buf.indexOf('\r\n0\r\n\r\n', end + 2);
        if (last < 0) return;
        next = last + 7;
      } else {
        next = end + 4 + Number(/content-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
        if (buf.length < next) return;
      }
      buf = buf.subarray(next);
      if (head.startsWith('HTTP/1.1 200')) {
        out.answered++;
        if (!firstAnswer.has(i)) {
          firstAnswer.add(i);
          if (firstAnswer.size === count) process.stdout.write('ready\n');
        }
        if (!stop) s.write(GET);
      } else out.refused++;
    }
  });
  s.on('error', () => {});
  s.on('close', () => {
    sockets.delete(s);
    out.closed++;
    setTimeout(() => open(i), 20);
  });
}

for (let i = 0; i < count; i++) open(i);
process.on('SIGTERM', () => {
  stop = true;
  for (const s of sockets) s.destroy();
  process.stdout.write(`${JSON.stringify(out)}\n`);
  process.exit(0);
});
