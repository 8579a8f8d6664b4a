import { request } from 'node:http';
import { join } from 'node:path';
import { SOCKET_FILE } from '../daemon/state-dir.js';
import { VERSION } from '../daemon/config.js';

/** A service answered with an AWS error body. */
export class ServiceError extends Error {
  constructor(readonly awsName: string, message: string, readonly status: number) {
    super(message);
    this.name = 'ServiceError';
  }
}

/** The daemon's socket is missing or refuses connections. */
export class DaemonUnreachableError extends Error {
  constructor(readonly socketPath: string, readonly reason: string) {
    super(`cannot reach the ebsd daemon at ${socketPath} (${reason})`);
    this.name = 'DaemonUnreachableError';
  }
}

/**
 * How long `ebsd status` and each refresh of `ebsd top` wait for the daemon's Status by default
 * (--status-timeout): a daemon stopped (SIGSTOP) or stuck still accepts connections, and they must then
 * say so and end (exit 3) rather than hang (top with the terminal in raw mode; q, ^C and SIGTERM also end its wait).
 */
export const STATUS_TIMEOUT_MS = 10_000;

export function socketPathFor(stateDir: string): string {
  return join(stateDir, SOCKET_FILE);
}

/**
 * One control-API call: POST / with X-Amz-Target over the Unix socket.
 * `signal` ends the call (the request is destroyed; the promise rejects with
 * the signal's reason): `ebsd top` quits or gives up on a daemon that
 * accepts connections but does not answer.
 */
export function callDaemon(socketPath: string, target: string, body: Record<string, unknown>, opts: { signal?: AbortSignal } = {}): Promise<Record<string, unknown>> {
  const text = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        // A connection per call. Node's global agent would keep the last one and reuse it even after the
        // daemon closed it idle (5 s): a caller whose event loop was blocked that long (a spawnSync, a
        // long computation) has not yet seen the close, and its request fails with EPIPE or ECONNRESET.
        agent: false,
        ...(opts.signal ? { signal: opts.signal } : {}),
        method: 'POST',
        path: '/',
        headers: {
          'Content-Type': 'application/x-amz-json-1.1',
          'X-Amz-Target': target,
          'Content-Length': Buffer.byteLength(text),
          'User-Agent': `ebsd-cli/${VERSION}`,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          let parsed: Record<string, unknown>;
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as Record<string, unknown>;
          } catch {
            return reject(new ServiceError('InternalFailure', `daemon sent a non-JSON answer (HTTP ${res.statusCode})`, res.statusCode ?? 500));
          }
          if (res.statusCode === 200) return resolve(parsed);
          const type = typeof parsed.__type === 'string' ? parsed.__type : 'InternalFailure';
          const msg = typeof parsed.message === 'string' ? parsed.message : `HTTP ${res.statusCode}`;
          reject(new ServiceError(type, msg, res.statusCode ?? 500));
        });
      },
    );
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (opts.signal?.aborted) reject(opts.signal.reason);
      else if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') reject(new DaemonUnreachableError(socketPath, e.code === 'ENOENT' ? 'no socket' : 'connection refused'));
      else if (e.code === 'EACCES') reject(new DaemonUnreachableError(socketPath, 'permission denied on the socket path'));
      // `--state-dir /etc/passwd`: a file where a directory should be; no daemon can be there.
      else if (e.code === 'ENOTDIR') reject(new DaemonUnreachableError(socketPath, 'not a directory: the state dir must be a directory'));
      else reject(e);
    });
    req.end(text);
  });
}
