import { pino, type Logger, type LoggerOptions, type DestinationStream } from 'pino';
import { createRequire } from 'node:module';

/**
 * The one logger factory. It owns the redaction list (docs/architecture.md §11.9): any field
 * that could hold key material, plaintext or a ciphertext blob is censored
 * wherever it appears in a log object or a logged error, down to REDACT_DEPTH
 * levels of nesting, and in child bindings at their top level.
 * Code must still never pass secrets to the logger; this is the safety net.
 */
export const REDACT_FIELDS: readonly string[] = [
  'key', 'volumeKey', 'plaintext', 'Plaintext', 'PlaintextKey', 'ciphertext', 'CiphertextBlob',
  'CiphertextForRecipient', 'PrivateKeyPlaintext', 'PrivateKeyCiphertextBlob', 'passphrase',
  'secret', 'kek', 'domainKey', 'hbk', 'token', 'GrantToken', 'GrantTokens', 'Mac', 'Message',
  'Signature', 'blob', 'body', 'data', 'buf', 'buffer',
  // Access-key and STS session secrets, as AWS answers name them and as the SDKs' credential objects
  // and the SigV4 header carry them, and the signing key derived from a secret.
  'SecretAccessKey', 'secretAccessKey', 'SessionToken', 'sessionToken', 'x-amz-security-token', 'signingKey',
  // The SigV4 header (a signature a replay within the skew could use), as node's headers object names it (a key:
  // rawHeaders is a flat array of names and values, which redaction does not look into: never log it).
  'authorization', 'Authorization',
  // Grant tokens as the volume catalog stores them (src/volume/catalog.ts), and an EBS direct block (plaintext).
  'grantToken', 'BlockData',
];
const SENSITIVE: ReadonlySet<string> = new Set(REDACT_FIELDS);
const CENSOR = '[redacted]';
/** How deep `redact` looks: the top level and three levels below it (pino's paths here were `key`, `*.key`, `*.*.key`). */
const REDACT_DEPTH = 3;

/**
 * A copy of `v` with every member named in the redaction list censored, down
 * to REDACT_DEPTH levels (arrays included, as pino's `*` matches indices); `v`
 * itself when nothing is censored. Never mutates `v`: the caller's objects stay
 * as they were. Byte views are leaves (their indices are not names). Why not
 * pino's `redact` option: with these fields as wildcard paths (`*.*.key`) it
 * cost ~300 µs per log line, the largest single cost of a KMS request
 * (docs/benchmarks.md, "KMS over the network"); this walk costs about as much
 * as the object's JSON.
 */
export function redact(v: unknown, depth = 0): unknown {
  if (v === null || typeof v !== 'object' || depth > REDACT_DEPTH || ArrayBuffer.isView(v)) return v;
  if (Array.isArray(v)) {
    let out: unknown[] | undefined;
    for (let i = 0; i < v.length; i++) {
      const x: unknown = v[i];
      const y = redact(x, depth + 1);
      if (y !== x) (out ??= v.slice())[i] = y;
    }
    return out ?? v;
  }
  let out: Record<string, unknown> | undefined;
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    const x = o[k];
    const y = SENSITIVE.has(k) && x !== undefined ? CENSOR : redact(x, depth + 1);
    if (y !== x) (out ??= { ...o })[k] = y;
  }
  return out ?? v;
}

function redactLogObject(o: Record<string, unknown>): Record<string, unknown> {
  if (!('err' in o)) return redact(o) as Record<string, unknown>;
  const { err, ...rest } = o;
  const r = redact(rest) as Record<string, unknown>;
  return { ...r, err };
}

export type { Logger };

export interface LoggerConfig {
  level?: string;
  name?: string;
  destination?: DestinationStream | number | string;
  /**
   * `json` (default): one JSON object per line. `pretty`: readable lines
   * (pino-pretty, in process and synchronous, so nothing is lost on exit);
   * redaction happens before either.
   */
  format?: 'json' | 'pretty';
}

export function createLogger(cfg: LoggerConfig = {}): Logger {
  const opts: LoggerOptions = {
    level: cfg.level ?? process.env.EBSD_LOG_LEVEL ?? 'info',
    base: { pid: process.pid, ...(cfg.name ? { name: cfg.name } : {}) },
    // Child bindings: pino's redact, top-level names only (cheap; wildcard paths are what cost ~300 µs).
    redact: { paths: [...REDACT_FIELDS], censor: CENSOR },
    // The logged object, every level (a logged error is left to its serializer, which redacts it).
    formatters: { log: (o) => redactLogObject(o) },
    timestamp: pino.stdTimeFunctions.isoTime,
    serializers: { err: (e: Error) => redact(pino.stdSerializers.err(e)) },
  };
  const dest = cfg.destination;
  if (cfg.format === 'pretty') {
    // Loaded on first use: pino-pretty is ~40 modules, and only a pretty logger needs them
    // (every CLI command would otherwise load them before it does anything).
    const pinoPretty = createRequire(import.meta.url)('pino-pretty') as typeof import('pino-pretty');
    const fd = typeof dest === 'number' ? dest : 1;
    return pino(opts, pinoPretty({ sync: true, destination: fd, colorize: fd === 1 ? process.stdout.isTTY === true : false, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,name' }));
  }
  if (dest === undefined) return pino(opts, pino.destination({ fd: 1, sync: true }));
  if (typeof dest === 'number') return pino(opts, pino.destination({ fd: dest, sync: true }));
  if (typeof dest === 'string') return pino(opts, pino.destination({ dest, sync: true, mkdir: true }));
  return pino(opts, dest);
}

/** A logger that drops everything; for library users who pass none. */
export const silentLogger: Logger = pino({ level: 'silent' });
