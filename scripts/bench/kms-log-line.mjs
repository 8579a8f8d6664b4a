#!/usr/bin/env node
// Cost of the one info line the control socket logs per request ("control request"), with the
// logger factory's redaction (src/util/logger.ts) against the same redaction list given to pino
// as wildcard paths (`f`, `*.f`, `*.*.f`, `req.f`, `request.f`: the factory before it walked the
// object itself) and against no redaction. Same process, interleaved rounds, output to /dev/null.
// It checks the factory censors a listed field before timing anything (docs/architecture.md §11.14).
// Build first:  npx tsc -p .   then:  node scripts/bench/kms-log-line.mjs [--lines 20000] [--rounds 3]
import { openSync, closeSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { createLogger, REDACT_FIELDS } from '../../dist/util/logger.js';

const arg = (n, d) => { const i = process.argv.indexOf(`--${n}`); return i > 0 ? process.argv[i + 1] : d; };
const lines = Number(arg('lines', '20000'));
const rounds = Number(arg('rounds', '3'));

const dir = mkdtempSync(join(tmpdir(), 'ebsd-logline-'));
try {
  const probe = join(dir, 'probe.log');
  const pfd = openSync(probe, 'w');
  createLogger({ destination: pfd }).info({ req: { Plaintext: 'SECRET-PROBE' } }, 'probe');
  closeSync(pfd);
  if (readFileSync(probe, 'utf8').includes('SECRET-PROBE')) throw new Error('the factory logger did not censor a listed field: refusing to time');

  const fd = openSync('/dev/null', 'w');
  const wildcardPaths = REDACT_FIELDS.flatMap((f) => [f, `*.${f}`, `*.*.${f}`, `req.${f}`, `request.${f}`]);
  const base = { base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime };
  const loggers = {
    factory: createLogger({ destination: fd }).child({ component: 'control' }),
    'wildcard paths': pino({ ...base, redact: { paths: wildcardPaths, censor: '[redacted]' } }, pino.destination({ fd, sync: true })).child({ component: 'control' }),
    'no redaction': pino(base, pino.destination({ fd, sync: true })).child({ component: 'control' }),
  };
  const line = (i) => ({ target: 'TrentService.Decrypt', uid: 0, peerPid: 4242, status: 200, errorType: undefined, requestId: `7c3f1d6e-1111-2222-3333-${String(i).padStart(12, '0')}`, ms: 0.4 });
  const us = Object.fromEntries(Object.keys(loggers).map((k) => [k, []]));
  for (let r = 0; r < rounds; r++) {
    for (const [name, log] of Object.entries(loggers)) {
      const t = process.hrtime.bigint();
      for (let i = 0; i < lines; i++) log.info(line(i), 'control request');
      us[name].push(Number(process.hrtime.bigint() - t) / 1000 / lines);
    }
  }
  console.log(`"control request" info line, ${lines} lines x ${rounds} rounds, load average ${loadavg()[0].toFixed(1)}; µs per line, median (range)`);
  for (const [name, xs] of Object.entries(us)) {
    const s = [...xs].sort((a, b) => a - b);
    console.log(`${name.padEnd(15)} ${s[s.length >> 1].toFixed(1).padStart(7)}  (${s[0].toFixed(1)} - ${s[s.length - 1].toFixed(1)})`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
