// A hostile local caller for test/e2e/bounds.test.ts, run as another uid
// (setpriv). Modes:
//   refused <socket> <n> <uaBytes> [target]  n sequential requests with a uaBytes User-Agent; prints status counts
//   hold <socket> <n> <bodyBytes> [min503]
//                                    n connections, each sending headers (Content-Length 1 MiB) and
//                                    bodyBytes of body, then holding; prints {"ready":...} once at least
//                                    min503 (default 0) 503 answers were read (30 s at most) and waits
//                                    for stdin to close, then closes everything and exits
// Everything it opens is closed when it exits; the test kills it on failure.
import { connect } from 'node:net';
import { request, Agent } from 'node:http';

const [mode, socketPath, nArg, sizeArg, target = 'ebsd.DescribeVolumes'] = process.argv.slice(2);
const min503 = mode === 'hold' ? Number(process.argv[6] ?? 0) : 0;
const n = Number(nArg);
const size = Number(sizeArg);

if (mode === 'refused') {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const counts = {};
  const ua = 'x'.repeat(size);
  for (let i = 0; i < n; i++) {
    const status = await new Promise((resolve) => {
      const req = request({ socketPath, agent, method: 'POST', path: '/', headers: { 'X-Amz-Target': target, 'User-Agent': ua, 'Content-Type': 'application/x-amz-json-1.1' } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      });
      req.on('error', (e) => resolve(e.code));
      req.end('{}');
    });
    counts[status] = (counts[status] ?? 0) + 1;
  }
  agent.destroy();
  console.log(JSON.stringify(counts));
} else if (mode === 'hold') {
  const sockets = [];
  let connected = 0;
  let refused503 = 0;
  let closedEarly = 0;
  let failed = 0;
  await Promise.all(Array.from({ length: n }, () => new Promise((resolve) => {
    const s = connect(socketPath);
    sockets.push(s);
    let done = false;
    const finish = () => { if (!done) { done = true; resolve(); } };
    s.on('connect', () => {
      connected++;
      s.write('POST / HTTP/1.1\r\nHost: ebsd\r\nX-Amz-Target: ebsd.DescribeVolumes\r\nContent-Length: 1048576\r\n\r\n');
      if (size > 0) s.write(Buffer.alloc(size, 0x20));
      setImmediate(finish);
    });
    s.on('data', (d) => { if (d.toString('latin1').startsWith('HTTP/1.1 503')) refused503++; });
    s.on('error', () => { failed++; finish(); });
    s.on('close', () => { closedEarly++; finish(); });
  })));
  // Give the daemon's answers a moment to arrive, then report: the answers are counted, not timed.
  await new Promise((r) => setTimeout(r, 500));
  // A caller that needs some 503s read says how many: a loaded daemon may take longer than 500 ms to
  // answer the connections past its caps. Bounded: with none after 30 s, the count says so.
  for (const end = Date.now() + 30_000; refused503 < min503 && Date.now() < end;) await new Promise((r) => setTimeout(r, 25));
  console.log(JSON.stringify({ ready: true, connected, refused503, closedEarly, failed }));
  process.stdin.resume();
  process.stdin.on('end', () => {
    for (const s of sockets) s.destroy();
    process.exit(0);
  });
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
