import { pino, type Logger, type LoggerOptions, type DestinationStream } from 'pino';
import pinoPretty from 'pino-pretty';

/**
 * The one logger factory. It owns the redaction list (docs/architecture.md §11.9): any field
 * that could hold key material, plaintext or a ciphertext blob is censored
 * wherever it appears in a log object, at any nesting depth pino supports.
 * Code must still never pass secrets to the logger; this is the safety net.
 */
export const REDACT_PATHS: readonly string[] = (() => {
  const fields = [
    'key', 'volumeKey', 'plaintext', 'Plaintext', 'PlaintextKey', 'ciphertext', 'CiphertextBlob',
    'CiphertextForRecipient', 'PrivateKeyPlaintext', 'PrivateKeyCiphertextBlob', 'passphrase',
    'secret', 'kek', 'domainKey', 'hbk', 'token', 'GrantToken', 'GrantTokens', 'Mac', 'Message',
    'Signature', 'blob', 'body', 'data', 'buf', 'buffer',
  ];
  const out: string[] = [];
  for (const f of fields) out.push(f, `*.${f}`, `*.*.${f}`, `req.${f}`, `request.${f}`);
  return out;
})();

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
    redact: { paths: [...REDACT_PATHS], censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
    serializers: { err: pino.stdSerializers.err },
  };
  const dest = cfg.destination;
  if (cfg.format === 'pretty') {
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
