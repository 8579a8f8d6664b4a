// A load generator in C for scripts/bench/kms-net.mjs (`--client h2load`): nghttp2's h2load over
// HTTP/1.1 (`--h1`, one request in flight per connection, keep-alive) replaying one Decrypt request
// signed with @smithy/signature-v4 when each phase starts. A SigV4 signature is valid for 15 minutes
// (X-Amz-Date) and AWS accepts the same signed request again within them, as ebsd does, so the bytes
// are what an SDK sends for that request in that second; h2load then spends far less CPU per call
// than any node client, which leaves more of the machine to the daemon. Its CPU is read from the
// kernel (the shell's cutime + cstime once it has waited for h2load), reported apart as the lean
// client's is. h2load does not verify the server's certificate: check() first sends the same bytes
// through node:https with the bench's CA and compares the plaintext.
import { spawn } from 'node:child_process';
import { createHash, createHmac } from 'node:crypto';
import { request as httpsRequest } from 'node:https';
import { request as httpRequest } from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignatureV4 } from '@smithy/signature-v4';

class Sha256 {
  constructor(secret) { this.h = secret === undefined ? createHash('sha256') : createHmac('sha256', secret); }
  update(d) { this.h.update(d); }
  async digest() { return this.h.digest(); }
  reset() {}
}

/** o: { url, ca, accessKeyId, secretAccessKey, region, op, body, conns } */
export async function h2loadClient(o) {
  const u = new URL(o.url);
  const text = JSON.stringify(o.body);
  const dir = mkdtempSync(join(tmpdir(), 'ebsd-h2load-'));
  const bodyFile = join(dir, 'body.json');
  writeFileSync(bodyFile, text);
  const signer = new SignatureV4({ credentials: { accessKeyId: o.accessKeyId, secretAccessKey: o.secretAccessKey }, region: o.region, service: 'kms', sha256: Sha256 });
  // content-length is h2load's to write (from the body file); it is not signed, as it need not be.
  const sign = async () => (await signer.sign({ method: 'POST', protocol: u.protocol, hostname: u.hostname, port: Number(u.port), path: '/', query: {},
    headers: { host: u.host, 'x-amz-target': `TrentService.${o.op}`, 'content-type': 'application/x-amz-json-1.1' }, body: text })).headers;

  const client = {
    /** CPU seconds (user + system) h2load used in the last run. */
    lastCpuSeconds: 0,
    async check(plaintext) {
      const headers = { ...(await sign()), 'content-length': String(Buffer.byteLength(text)) };
      const answer = await new Promise((ok, fail) => {
        const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)({ host: u.hostname, port: u.port, method: 'POST', path: '/', headers, ...(o.ca ? { ca: o.ca } : {}) }, (res) => {
          let t = ''; res.on('data', (c) => (t += c)); res.on('end', () => (res.statusCode === 200 ? ok(JSON.parse(t)) : fail(new Error(`h2load's request refused: ${res.statusCode} ${t}`))));
        });
        req.on('error', fail); req.end(text);
      });
      if (answer.Plaintext !== plaintext) throw new Error("h2load's request: Decrypt returned the wrong plaintext; refusing to time");
    },
    /** Runs h2load for `seconds`; resolves with the number of 2xx answers. Any other answer stops the bench. */
    async run(seconds) {
      const headers = await sign();
      const args = ['--h1', '-c', String(o.conns), '-m', '1', '-t', '1', '-D', String(Math.max(1, Math.round(seconds))), '-d', bodyFile];
      for (const [k, v] of Object.entries(headers)) if (k !== 'host') args.push('-H', `${k}: ${v}`);
      args.push(`${u.protocol}//${u.host}/`);
      const quoted = args.map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(' ');
      const { out, stat } = await new Promise((ok, fail) => {
        const sh = spawn('sh', ['-c', `h2load ${quoted} > '${dir}/out' 2>&1; s=$?; cat /proc/$$/stat; exit $s`], { stdio: ['ignore', 'pipe', 'inherit'] });
        let stat = '';
        sh.stdout.on('data', (c) => (stat += c));
        sh.on('error', fail);
        sh.on('exit', async (code) => {
          const out = (await import('node:fs')).readFileSync(join(dir, 'out'), 'utf8');
          if (code !== 0) fail(new Error(`h2load exited ${code}: ${out}`)); else ok({ out, stat });
        });
      });
      const f = stat.slice(stat.lastIndexOf(') ') + 2).split(' ');
      client.lastCpuSeconds = (Number(f[13]) + Number(f[14])) / 100; // cutime + cstime, CLK_TCK 100
      const done = /requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(out);
      const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(out);
      if (!done || !codes) throw new Error(`h2load's output not understood: ${out}`);
      if (Number(done[2]) + Number(done[3]) + Number(codes[2]) + Number(codes[3]) + Number(codes[4]) > 0) throw new Error(`h2load: not every answer was a 2xx: ${out}`);
      return Number(codes[1]);
    },
    async close() { rmSync(dir, { recursive: true, force: true }); },
  };
  return client;
}
