import { validation } from '../snapshot/ebs-direct-errors.js';
import { toWireError } from './aws-json.js';
import { MAX_BODY_VALUES } from './control-server.js';
import { parseStrictJson } from '../util/strict-json.js';

/**
 * The EBS direct APIs' REST binding (EBS direct APIs reference, each
 * operation's "Request Syntax" / "Response Syntax"), for the network
 * listener: a SigV4-verified HTTP request -> (operation, members) in the
 * control API's shapes (so ebs-api.ts checks and runs it the same way), and
 * the answer back: JSON bodies, the block as the raw body of
 * GetSnapshotBlock / PutSnapshotBlock, `x-amz-*` headers, timestamps as
 * epoch seconds, errors as `{message, Reason}` with `x-amzn-ErrorType`.
 */
/**
 * A path label: any one segment. The route is chosen by the path's shape alone; the
 * snapshot id and block index in it are checked as members (ebs-direct-input.ts), so one
 * the model refuses (`snap-ABC`, `vol-…`, a negative index) is ValidationException with
 * its Reason (INVALID_SNAPSHOT_ID, INVALID_BLOCK), as the socket answers it, not an
 * unknown operation the SDKs cannot name.
 */
const LABEL = '([^/]+)';
const ROUTES: { method: string; path: RegExp; op: string }[] = [
  { method: 'GET', path: new RegExp(`^/snapshots/${LABEL}/blocks$`), op: 'ListSnapshotBlocks' },
  { method: 'GET', path: new RegExp(`^/snapshots/${LABEL}/changedblocks$`), op: 'ListChangedBlocks' },
  { method: 'GET', path: new RegExp(`^/snapshots/${LABEL}/blocks/${LABEL}$`), op: 'GetSnapshotBlock' },
  { method: 'PUT', path: new RegExp(`^/snapshots/${LABEL}/blocks/${LABEL}$`), op: 'PutSnapshotBlock' },
  { method: 'POST', path: /^\/snapshots$/, op: 'StartSnapshot' },
  { method: 'POST', path: new RegExp(`^/snapshots/completion/${LABEL}$`), op: 'CompleteSnapshot' },
];

/** A path label as sent (the SDKs percent-encode labels); a malformed escape stays as it is, for the member check to refuse. */
function label(v: string): string {
  try {
    return decodeURIComponent(v);
  } catch {
    return v;
  }
}
/** Success statuses of the REST binding. */
const STATUS: Record<string, number> = { StartSnapshot: 201, PutSnapshotBlock: 201, CompleteSnapshot: 202 };

/** Decimal digits as a number; anything else stays a string for the member check to refuse by name. */
const num = (v: string | null | undefined): number | string | undefined => (v == null ? undefined : /^[0-9]{1,16}$/.test(v) ? Number(v) : v);

function put(out: Record<string, unknown>, k: string, v: unknown): void {
  if (v !== undefined && v !== null) out[k] = v;
}

/** The parts of a request (node's IncomingMessage, or the listener's plain form) this binding reads. */
export interface RestRequest { method?: string; url?: string; headers: Record<string, string | string[] | undefined> }
/** Where an answer is written (node's ServerResponse, or the listener's collector). */
export interface RestResponse { writeHead(status: number, headers: Record<string, string | number>): unknown; end(body?: Buffer | string): unknown }

/** The operation a method and target (path and query) name, undefined for no EBS direct API route; the body not read. */
export function ebsRestOperation(method: string, target: string): string | undefined {
  const path = new URL(target, 'http://localhost').pathname;
  return ROUTES.find((r) => r.method === method && r.path.test(path))?.op;
}

/**
 * Accepting `x-amz-content-sha256: UNSIGNED-PAYLOAD` for a request: only
 * PutSnapshotBlock, as the SDKs send it, and then the headers that bind the
 * unsigned block (its SHA-256, algorithm and length, and the progress when
 * sent) must be signed (docs/architecture.md §15). Undefined: refused.
 */
export function ebsUnsignedPayload(method: string, target: string): { mustSign: readonly string[]; mustSignWhenPresent: readonly string[] } | undefined {
  if (ebsRestOperation(method, target) !== 'PutSnapshotBlock') return undefined;
  return { mustSign: ['x-amz-checksum', 'x-amz-checksum-algorithm', 'x-amz-data-length'], mustSignWhenPresent: ['x-amz-progress'] };
}

/** The operation and its members; undefined when the path is no EBS direct API route. */
export function ebsRestRequest(req: RestRequest, body: Buffer): { op: string; members: Record<string, unknown> } | undefined {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const route = ROUTES.find((r) => r.method === req.method && r.path.test(url.pathname));
  if (!route) return undefined;
  const m = route.path.exec(url.pathname)!.map((x, i) => (i === 0 ? x : label(x)));
  const q = url.searchParams;
  const h = (k: string): string | undefined => {
    const v = req.headers[k];
    return typeof v === 'string' ? v : undefined;
  };
  const out: Record<string, unknown> = {};
  switch (route.op) {
    case 'ListSnapshotBlocks':
    case 'ListChangedBlocks':
      put(out, route.op === 'ListSnapshotBlocks' ? 'SnapshotId' : 'SecondSnapshotId', m[1]);
      if (route.op === 'ListChangedBlocks') put(out, 'FirstSnapshotId', q.get('firstSnapshotId'));
      put(out, 'MaxResults', num(q.get('maxResults')));
      put(out, 'NextToken', q.get('pageToken'));
      put(out, 'StartingBlockIndex', num(q.get('startingBlockIndex')));
      break;
    case 'GetSnapshotBlock':
      Object.assign(out, { SnapshotId: m[1], BlockIndex: num(m[2]) });
      put(out, 'BlockToken', q.get('blockToken'));
      break;
    case 'PutSnapshotBlock':
      // The body itself, not a base64 string of it: a block may be plaintext, and a string cannot be
      // wiped; the listener zeroes the body once answered, the EBS direct API once it has taken a copy.
      Object.assign(out, { SnapshotId: m[1], BlockIndex: num(m[2]), BlockData: body });
      put(out, 'DataLength', num(h('x-amz-data-length')));
      put(out, 'Progress', num(h('x-amz-progress')));
      put(out, 'Checksum', h('x-amz-checksum'));
      put(out, 'ChecksumAlgorithm', h('x-amz-checksum-algorithm'));
      break;
    case 'CompleteSnapshot':
      put(out, 'SnapshotId', m[1]);
      put(out, 'ChangedBlocksCount', num(h('x-amz-changedblockscount')));
      put(out, 'Checksum', h('x-amz-checksum'));
      put(out, 'ChecksumAlgorithm', h('x-amz-checksum-algorithm'));
      put(out, 'ChecksumAggregationMethod', h('x-amz-checksum-aggregation-method'));
      break;
    case 'StartSnapshot': {
      let v: unknown;
      try {
        // Strictly, as the socket reads bodies (duplicate members, depth, value count).
        v = body.length ? parseStrictJson(body.toString('utf8'), { what: 'StartSnapshot body', maxDepth: 8, maxValues: MAX_BODY_VALUES }) : {};
      } catch (e) {
        throw validation('INVALID_PARAMETER_VALUE', `StartSnapshot body is not valid JSON: ${(e as Error).message}`);
      }
      if (typeof v !== 'object' || v === null || Array.isArray(v)) throw validation('INVALID_PARAMETER_VALUE', 'StartSnapshot body is not a JSON object');
      // Defined, not assigned: a member named __proto__ stays a member (and is refused as unknown).
      for (const [k, x] of Object.entries(v)) Object.defineProperty(out, k, { value: x, enumerable: true, writable: true, configurable: true });
      break;
    }
  }
  return { op: route.op, members: out };
}

/** ISO time members -> epoch seconds, as REST-JSON carries timestamps. */
function epoch(o: Record<string, unknown>): Record<string, unknown> {
  const r: Record<string, unknown> = { ...o };
  for (const k of ['ExpiryTime', 'StartTime']) if (typeof r[k] === 'string') r[k] = Date.parse(r[k] as string) / 1000;
  return r;
}

export function sendEbsRest(res: RestResponse, op: string, out: Record<string, unknown>, requestId: string): void {
  const status = STATUS[op] ?? 200;
  if (op === 'GetSnapshotBlock') {
    const data = out.BlockData as Buffer;
    res.writeHead(status, {
      'Content-Type': 'application/octet-stream', 'Content-Length': data.length, 'x-amzn-RequestId': requestId,
      'x-amz-Data-Length': String(out.DataLength), 'x-amz-Checksum': String(out.Checksum), 'x-amz-Checksum-Algorithm': String(out.ChecksumAlgorithm),
    });
    res.end(data);
    return;
  }
  if (op === 'PutSnapshotBlock') {
    res.writeHead(status, { 'Content-Length': 0, 'x-amzn-RequestId': requestId, 'x-amz-Checksum': String(out.Checksum), 'x-amz-Checksum-Algorithm': String(out.ChecksumAlgorithm) });
    res.end();
    return;
  }
  const text = JSON.stringify(epoch(out));
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), 'x-amzn-RequestId': requestId });
  res.end(text);
}

export function sendEbsRestError(res: RestResponse, e: unknown, requestId: string): void {
  const w = toWireError(e);
  const text = JSON.stringify({ message: w.body.message, ...(w.body.Reason ? { Reason: w.body.Reason } : {}) });
  res.writeHead(w.status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), 'x-amzn-RequestId': requestId, 'x-amzn-ErrorType': w.body.__type });
  res.end(text);
}
