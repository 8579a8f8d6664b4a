/**
 * Main-thread side of the HSM boundary. Requests issued during one turn of
 * the event loop travel to the worker as one message, and the worker answers
 * each batch with one message: a postMessage round trip costs tens of
 * microseconds, so one per request would cap Decrypt far below the goal
 * (measured in docs/benchmarks.md). Batches are pipelined: a new batch may
 * leave while earlier ones are still being answered.
 *
 * `mode: 'inline'` runs the same engine on the main thread through the same
 * message shapes; it exists to measure the cost of the thread boundary and for
 * hosts without worker threads. The worker is the default.
 */
import { Worker } from 'node:worker_threads';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { EbsdError } from '../../util/errors.js';
import { HsmDomainError, KMSInternalException, KmsError } from '../errors.js';
import { exactBytes, HSM_PASSPHRASE_ENV, type HsmBatch, type HsmInit, type HsmOp, type HsmReplyBatch, type HsmRequest, type HsmResult, type HsmWireError } from './protocol.js';

export interface Hsm {
  call<R extends HsmRequest>(req: R): Promise<HsmResult<R['op']>>;
  close(): Promise<void>;
}

function fromWire(e: HsmWireError): Error {
  if (e.code.startsWith('HSM_')) return new HsmDomainError(e.code as ConstructorParameters<typeof HsmDomainError>[0], e.message);
  if (e.awsName) return new KmsError(e.awsName, e.message, { code: e.code });
  return new EbsdError(e.code, e.message);
}

/**
 * A batch leaves once it holds this many requests, without waiting for the end of the turn: the
 * worker then starts on them while this thread prepares the rest, instead of every request of a
 * large turn reaching the worker (and its answer coming back) only after the whole turn's work.
 */
export const HANDOFF_CHUNK = 16;

interface Pending { resolve: (v: unknown) => void; reject: (e: Error) => void }

export async function startHsm(init: HsmInit, mode: 'worker' | 'inline' = 'worker'): Promise<Hsm> {
  return mode === 'inline' ? InlineHsm.start(init) : WorkerHsm.start(init);
}

class WorkerHsm implements Hsm {
  private queue: HsmRequest[] = [];
  /** The queued requests' own copies of pooled byte fields (exactBytes): moved to the worker, not copied. */
  private transfer: ArrayBuffer[] = [];
  private waiting: Pending[] = [];
  private readonly inflight = new Map<number, Pending[]>();
  private seq = 0;
  private scheduled = false;
  private closed = false;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (m: HsmReplyBatch) => this.onReply(m));
    worker.on('error', (e) => this.failAll(e));
    worker.on('exit', () => this.failAll(new KMSInternalException('HSM worker exited', { code: 'KMS_HSM_GONE' })));
  }

  static async start(init: HsmInit): Promise<WorkerHsm> {
    const dev = import.meta.url.endsWith('.ts');
    const url = new URL(dev ? './hsm-worker.ts' : './hsm-worker.js', import.meta.url);
    // The passphrase goes in workerData, to open the domain; never in the worker's copy of the environment.
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env[HSM_PASSPHRASE_ENV];
    const worker = new Worker(url, { workerData: init, env, execArgv: dev ? ['--import', devLoaderUrl()] : [] });
    const first = await new Promise<{ ready: boolean; e?: HsmWireError }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    if (!first.ready) {
      await worker.terminate();
      throw fromWire(first.e!);
    }
    worker.unref();
    return new WorkerHsm(worker);
  }

  call<R extends HsmRequest>(req: R): Promise<HsmResult<R['op']>> {
    if (this.closed) return Promise.reject(new KMSInternalException('HSM is closed', { code: 'KMS_HSM_GONE' }));
    return new Promise((resolve, reject) => {
      this.queue.push(exactBytes(req, this.transfer, false));
      this.waiting.push({ resolve: resolve as (v: unknown) => void, reject });
      if (this.queue.length >= HANDOFF_CHUNK) return this.flush();
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    if (this.queue.length === 0) return;
    const seq = ++this.seq;
    this.inflight.set(seq, this.waiting);
    const b: HsmBatch = { seq, reqs: this.queue };
    const transfer = this.transfer;
    this.queue = [];
    this.transfer = [];
    this.waiting = [];
    this.worker.ref();
    this.worker.postMessage(b, transfer);
  }

  private onReply(m: HsmReplyBatch): void {
    const ps = this.inflight.get(m.seq);
    if (!ps) return;
    this.inflight.delete(m.seq);
    if (this.inflight.size === 0) this.worker.unref();
    for (let i = 0; i < ps.length; i++) {
      const r = m.res[i]!;
      if (r.ok) ps[i]!.resolve(r.v);
      else ps[i]!.reject(fromWire(r.e));
    }
  }

  private failAll(e: Error): void {
    for (const ps of this.inflight.values()) for (const p of ps) p.reject(e);
    this.inflight.clear();
    for (const p of this.waiting) p.reject(e);
    this.waiting = [];
    this.queue = [];
    this.transfer = [];
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.worker.terminate();
  }
}

class InlineHsm implements Hsm {
  private constructor(private readonly engine: { handle(r: HsmRequest): unknown }) {}
  static async start(init: HsmInit): Promise<InlineHsm> {
    const { openDomain } = await import('./domain.js');
    const { HsmEngine } = await import('./engine.js');
    return new InlineHsm(new HsmEngine(openDomain(init.stateDir, init.passphrase, init.scryptCost ? { scryptCost: init.scryptCost } : {})));
  }
  async call<R extends HsmRequest>(req: R): Promise<HsmResult<R['op']>> {
    return this.engine.handle(req) as HsmResult<R['op']>;
  }
  async close(): Promise<void> {}
}

export type { HsmOp };

/**
 * When ebsd runs from its TypeScript sources (vitest), the worker must load
 * `.ts` files too: this registers a tiny ESM loader hook that transpiles them
 * with the `typescript` dev dependency. The built daemon (dist/*.js) never uses it.
 *
 * Transpiled files are cached in `node_modules/.cache/ebsd-worker-ts/`, keyed
 * by the SHA-256 of the source and the compiler version, and `typescript` is
 * imported only on a cache miss: importing it costs 1-2.5 s per worker on
 * this machine, which was most of a test's KmsService.open.
 */
export function devLoaderUrl(): string {
  const tsPath = createRequire(import.meta.url).resolve('typescript');
  const tsUrl = pathToFileURL(tsPath).href;
  const nm = tsPath.slice(0, tsPath.lastIndexOf('/node_modules/') + '/node_modules/'.length);
  const cacheDir = nm + '.cache/ebsd-worker-ts';
  const hooks = `
import { readFileSync, writeFileSync, renameSync, mkdirSync, existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { fileURLToPath } from 'node:url';
let tsUrl, cacheDir, tsP;
const KEY = 'v1 esnext es2022 ';
export async function initialize(d) { tsUrl = d.ts; cacheDir = d.cacheDir; }
export async function resolve(spec, ctx, next) {
  if (spec.startsWith('.') && spec.endsWith('.js') && ctx.parentURL && ctx.parentURL.endsWith('.ts')) {
    const u = new URL(spec.slice(0, -3) + '.ts', ctx.parentURL);
    if (existsSync(fileURLToPath(u))) return { url: u.href, format: 'module', shortCircuit: true };
  }
  return next(spec, ctx);
}
export async function load(url, ctx, next) {
  if (url.startsWith('file:') && url.endsWith('.ts')) {
    const file = fileURLToPath(url);
    const src = readFileSync(file, 'utf8');
    const cached = cacheDir + '/' + createHash('sha256').update(KEY + tsUrl + '\\0' + src).digest('hex') + '.js';
    try { return { format: 'module', source: readFileSync(cached, 'utf8'), shortCircuit: true }; } catch { /* miss */ }
    const ts = (await (tsP ??= import(tsUrl))).default;
    const out = ts.transpileModule(src, { fileName: file,
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, sourceMap: false } }).outputText;
    try {
      mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
      const tmp = cached + '.' + process.pid + '.' + Math.random().toString(36).slice(2);
      writeFileSync(tmp, out, { mode: 0o600 });
      renameSync(tmp, cached);
    } catch { /* read-only checkout: no cache */ }
    return { format: 'module', source: out, shortCircuit: true };
  }
  return next(url, ctx);
}`;
  const hooksUrl = 'data:text/javascript,' + encodeURIComponent(hooks);
  const reg = `import { register } from 'node:module'; register(${JSON.stringify(hooksUrl)}, { parentURL: 'file:///', data: { ts: ${JSON.stringify(tsUrl)}, cacheDir: ${JSON.stringify(cacheDir)} } });`;
  return 'data:text/javascript,' + encodeURIComponent(reg);
}
