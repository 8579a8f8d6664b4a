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
import type { HsmBatch, HsmInit, HsmOp, HsmReplyBatch, HsmRequest, HsmResult, HsmWireError } from './protocol.js';

export interface Hsm {
  call<R extends HsmRequest>(req: R): Promise<HsmResult<R['op']>>;
  close(): Promise<void>;
}

function fromWire(e: HsmWireError): Error {
  if (e.code.startsWith('HSM_')) return new HsmDomainError(e.code as ConstructorParameters<typeof HsmDomainError>[0], e.message);
  if (e.awsName) return new KmsError(e.awsName, e.message, { code: e.code });
  return new EbsdError(e.code, e.message);
}

interface Pending { resolve: (v: unknown) => void; reject: (e: Error) => void }

export async function startHsm(init: HsmInit, mode: 'worker' | 'inline' = 'worker'): Promise<Hsm> {
  return mode === 'inline' ? InlineHsm.start(init) : WorkerHsm.start(init);
}

class WorkerHsm implements Hsm {
  private queue: HsmRequest[] = [];
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
    const worker = new Worker(url, { workerData: init, execArgv: dev ? ['--import', devLoaderUrl()] : [] });
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
      this.queue.push(req);
      this.waiting.push({ resolve: resolve as (v: unknown) => void, reject });
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
    this.queue = [];
    this.waiting = [];
    this.worker.ref();
    this.worker.postMessage(b);
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
    return new InlineHsm(new HsmEngine(openDomain(init.stateDir, init.passphrase)));
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
 */
export function devLoaderUrl(): string {
  const tsUrl = pathToFileURL(createRequire(import.meta.url).resolve('typescript')).href;
  const hooks = `
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
let ts;
export async function initialize(d) { ts = (await import(d.ts)).default; }
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
    const out = ts.transpileModule(readFileSync(file, 'utf8'), { fileName: file,
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, sourceMap: false } });
    return { format: 'module', source: out.outputText, shortCircuit: true };
  }
  return next(url, ctx);
}`;
  const hooksUrl = 'data:text/javascript,' + encodeURIComponent(hooks);
  const reg = `import { register } from 'node:module'; register(${JSON.stringify(hooksUrl)}, { parentURL: 'file:///', data: { ts: ${JSON.stringify(tsUrl)} } });`;
  return 'data:text/javascript,' + encodeURIComponent(reg);
}
