import { request } from 'node:http';
import { join } from 'node:path';
import { SOCKET_FILE } from '../daemon/state-dir.js';
import { VERSION } from '../daemon/daemon.js';
/** A service answered with an AWS error body. */
export class ServiceError extends Error {
    awsName;
    status;
    constructor(awsName, message, status) {
        super(message);
        this.awsName = awsName;
        this.status = status;
        this.name = 'ServiceError';
    }
}
/** The daemon's socket is missing or refuses connections. */
export class DaemonUnreachableError extends Error {
    socketPath;
    reason;
    constructor(socketPath, reason) {
        super(`cannot reach the ebsd daemon at ${socketPath} (${reason})`);
        this.socketPath = socketPath;
        this.reason = reason;
        this.name = 'DaemonUnreachableError';
    }
}
export function socketPathFor(stateDir) {
    return join(stateDir, SOCKET_FILE);
}
/** One control-API call: POST / with X-Amz-Target over the Unix socket. */
export function callDaemon(socketPath, target, body) {
    const text = JSON.stringify(body);
    return new Promise((resolve, reject) => {
        const req = request({
            socketPath,
            method: 'POST',
            path: '/',
            headers: {
                'Content-Type': 'application/x-amz-json-1.1',
                'X-Amz-Target': target,
                'Content-Length': Buffer.byteLength(text),
                'User-Agent': `ebsd-cli/${VERSION}`,
            },
        }, (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('error', reject);
            res.on('end', () => {
                let parsed;
                try {
                    parsed = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
                }
                catch {
                    return reject(new ServiceError('InternalFailure', `daemon sent a non-JSON answer (HTTP ${res.statusCode})`, res.statusCode ?? 500));
                }
                if (res.statusCode === 200)
                    return resolve(parsed);
                const type = typeof parsed.__type === 'string' ? parsed.__type : 'InternalFailure';
                const msg = typeof parsed.message === 'string' ? parsed.message : `HTTP ${res.statusCode}`;
                reject(new ServiceError(type, msg, res.statusCode ?? 500));
            });
        });
        req.on('error', (e) => {
            if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED')
                reject(new DaemonUnreachableError(socketPath, e.code === 'ENOENT' ? 'no socket' : 'connection refused'));
            else if (e.code === 'EACCES')
                reject(new DaemonUnreachableError(socketPath, 'permission denied on the socket path'));
            else
                reject(e);
        });
        req.end(text);
    });
}
//# sourceMappingURL=client.js.map