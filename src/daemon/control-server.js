import { createServer } from 'node:http';
import { promises as fsp } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { peerCred } from '../crypto/native-addon.js';
import { EbsdError } from '../util/errors.js';
import { encodeResponse, toWireError } from './aws-json.js';
const MAX_BODY = 1 << 20; // 1 MiB: the largest KMS request (4 KiB plaintext, 32 KiB policy) with room to spare
/**
 * The control API: HTTP/1.1 over the Unix socket `<state>/ebsd.sock`.
 * Every request is `POST /` with `X-Amz-Target: <Service>.<Operation>` and a
 * JSON body (AWS JSON 1.1); see daemon.ts for the targets.
 */
export class ControlServer {
    path;
    handler;
    log;
    server;
    creds = new WeakMap();
    sockets = new Set();
    inflight = 0;
    idle = [];
    constructor(path, handler, log) {
        this.path = path;
        this.handler = handler;
        this.log = log;
    }
    async listen() {
        // We hold the state-dir lock, so a socket file left here is a dead daemon's.
        await fsp.rm(this.path, { force: true });
        const server = createServer({ keepAliveTimeout: 5_000 }, (req, res) => void this.serve(req, res));
        server.on('connection', (s) => {
            this.sockets.add(s);
            s.on('close', () => this.sockets.delete(s));
            try {
                this.creds.set(s, readPeer(s));
            }
            catch (e) {
                this.log.error({ err: e }, 'cannot read control-socket peer credentials; dropping connection');
                s.destroy();
            }
        });
        await new Promise((resolve, reject) => {
            server.once('error', reject);
            server.listen(this.path, () => { server.off('error', reject); resolve(); });
        });
        // 0666: any local user may connect; the uid then decides (DESIGN §7).
        await fsp.chmod(this.path, 0o666);
        this.server = server;
    }
    /** Stop accepting, let running requests finish (bounded), drop idle keep-alive connections. */
    async close(timeoutMs = 10_000) {
        const server = this.server;
        if (!server)
            return;
        this.server = undefined;
        const closed = new Promise((r) => server.close(() => r()));
        server.closeIdleConnections();
        if (this.inflight > 0) {
            await Promise.race([new Promise((r) => this.idle.push(r)), new Promise((r) => setTimeout(r, timeoutMs).unref())]);
        }
        for (const s of this.sockets)
            s.destroy();
        await closed;
        await fsp.rm(this.path, { force: true });
    }
    async serve(req, res) {
        const started = process.hrtime.bigint();
        const requestId = randomUUID();
        const cred = this.creds.get(req.socket);
        const target = String(req.headers['x-amz-target'] ?? '');
        this.inflight++;
        let status = 200;
        let errorType;
        try {
            if (!cred)
                throw new EbsdError('PEER_UNKNOWN', 'peer credentials unavailable', { awsName: 'AccessDeniedException' });
            if (req.method !== 'POST')
                throw new EbsdError('BAD_METHOD', 'use POST with X-Amz-Target', { awsName: 'ValidationException' });
            if (!target)
                throw new EbsdError('NO_TARGET', 'missing X-Amz-Target header', { awsName: 'ValidationException' });
            const body = await readJson(req);
            const ua = req.headers['user-agent'];
            const out = await this.handler(target, body, { ...cred, requestId, ...(typeof ua === 'string' ? { userAgent: ua } : {}) });
            send(res, 200, encodeResponse(out ?? {}), requestId);
        }
        catch (e) {
            const w = toWireError(e);
            status = w.status;
            errorType = w.body.__type;
            if (status >= 500)
                this.log.error({ target, requestId, err: e }, 'control request failed');
            send(res, w.status, w.body, requestId);
        }
        finally {
            const ms = Number(process.hrtime.bigint() - started) / 1e6;
            // Never the body: requests carry plaintext and blobs.
            this.log.info({ target, uid: cred?.uid, peerPid: cred?.pid, status, errorType, requestId, ms: Math.round(ms * 10) / 10 }, 'control request');
            if (--this.inflight === 0)
                for (const r of this.idle.splice(0))
                    r();
        }
    }
}
function readPeer(s) {
    const fd = s._handle?.fd;
    if (typeof fd !== 'number' || fd < 0)
        throw new EbsdError('PEER_UNKNOWN', 'control connection has no fd');
    return peerCred(fd);
}
function readJson(req) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        let n = 0;
        req.on('data', (c) => {
            n += c.length;
            if (n > MAX_BODY) {
                reject(new EbsdError('BODY_TOO_LARGE', `request body over ${MAX_BODY} bytes`, { awsName: 'ValidationException' }));
                req.destroy();
            }
            else
                chunks.push(c);
        });
        req.on('error', reject);
        req.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            chunks.forEach((c) => c.fill(0)); // best effort: the body may hold plaintext
            if (text.trim() === '')
                return resolve({});
            try {
                const v = JSON.parse(text);
                if (!v || typeof v !== 'object' || Array.isArray(v))
                    throw new Error('not an object');
                resolve(v);
            }
            catch {
                reject(new EbsdError('BAD_JSON', 'request body is not a JSON object', { awsName: 'SerializationException' }));
            }
        });
    });
}
function send(res, status, body, requestId) {
    const text = JSON.stringify(body);
    res.writeHead(status, {
        'Content-Type': 'application/x-amz-json-1.1',
        'Content-Length': Buffer.byteLength(text),
        'x-amzn-RequestId': requestId,
    });
    res.end(text);
}
//# sourceMappingURL=control-server.js.map