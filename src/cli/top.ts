import type { Argv } from 'yargs';
import { callDaemon, DaemonUnreachableError, socketPathFor, STATUS_TIMEOUT_MS } from './client.js';
import { decimalSeconds } from './kms-args.js';
import { applyQuery, printableCell } from './output.js';

/**
 * `ebsd top`: a live view of the attached volumes, refreshed every second,
 * `q` to quit. It keeps no books of its own: each refresh reads the daemon's
 * Status over the control socket (handles, key cache, which volumes the
 * caller may see) and its Prometheus /metrics (the address Status gives),
 * and rates are differences between two scrapes.
 */

type R = Record<string, unknown>;
/** `name{labels}` -> value, labels as printed by prom-client (volume_id first). */
type Samples = Map<string, number>;

const ESC = '\x1b[';
const RED = `${ESC}1;37;41m`;
const YELLOW = `${ESC}1;30;43m`;
const BOLD = `${ESC}1m`;
const RESET = `${ESC}0m`;
/** Highlight a key whose max-stale deadline is this close (seconds), or within 10 % of max-stale. */
const NEAR_MAX_STALE_S = 300;

/** The text without its SGR escape sequences (colours, bold). */
export function stripEscapes(text: string): string {
  return text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
}

export function parseMetrics(text: string): Samples {
  const out: Samples = new Map();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

/** Sum of every sample of `name` whose label text contains all of `has`. */
function sum(s: Samples, name: string, ...has: string[]): number {
  let t = 0;
  for (const [k, v] of s) {
    if (k.startsWith(`${name}{`) && has.every((h) => k.includes(h))) t += v;
  }
  return t;
}

/** p99 latency (seconds) of a volume's reads+writes between two scrapes, from bucket differences; undefined without requests. */
function p99(now: Samples, before: Samples, volumeId: string): number | undefined {
  const name = 'ebsd_volume_request_duration_seconds_bucket';
  const byLe = new Map<string, number>();
  for (const [k, v] of now) {
    if (!k.startsWith(`${name}{`) || !k.includes(`volume_id="${volumeId}"`) || k.includes('operation="flush"')) continue;
    const le = /le="([^"]+)"/.exec(k)?.[1];
    if (le) byLe.set(le, (byLe.get(le) ?? 0) + v - (before.get(k) ?? 0));
  }
  const total = byLe.get('+Inf') ?? 0;
  if (total <= 0) return undefined;
  const bounds = [...byLe.keys()].filter((b) => b !== '+Inf').map(Number).sort((a, b) => a - b);
  for (const b of bounds) if ((byLe.get(String(b)) ?? 0) >= 0.99 * total) return b;
  return Infinity;
}

function fmtSeconds(s: number | undefined): string {
  if (s === undefined) return '-';
  if (s === Infinity) return '>1s';
  return s < 0.001 ? `${Math.round(s * 1e6)}µs` : `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)}ms`;
}

function fmtDuration(s: number): string {
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s)}s`;
}

/**
 * One refresh's figures, as `ebsd top --output json` prints them and the screen shows them
 * (renderTop draws from this, so the two cannot disagree). Names follow the Prometheus
 * metrics they come from, without the `ebsd_` prefix and with `_total` read as
 * `_per_second` (a rate between two scrapes); README.md "ebsd top" lists them. A rate
 * is null without metrics (no --metrics-listen) or before a second scrape.
 */
export interface TopFigures {
  time: string;
  pid: number | null;
  uptime_seconds: number;
  mount_dir: string | null;
  /** Seconds between the two scrapes the rates come from; null for the first screen. */
  interval_seconds: number | null;
  kms_requests_per_second: number | null;
  /** Calls whose outcome was not `ok` (denied, or an AWS exception). */
  kms_requests_failed_per_second: number | null;
  volumes: VolumeFigures[];
}

export interface VolumeFigures {
  volume_id: string;
  name: string;
  /** Reads and writes (the screen's IOPS is their sum; flushes are left out, as there). */
  volume_operations_per_second: { read: number; write: number } | null;
  /** Plaintext bytes (the screen's MB/s is their sum / 1e6). */
  volume_bytes_per_second: { read: number; write: number } | null;
  /** Upper bound of the histogram bucket holding the 99th percentile of reads and writes; "+Inf" past the last bucket. */
  volume_request_duration_seconds_p99: number | '+Inf' | null;
  volume_open_handles: number;
  key_cache_state: string | null;
  /** The AWS exception that impaired the volume, when it is impaired. */
  key_cache_impaired_by: string | null;
  key_cache_seconds_to_max_stale: number | null;
  key_cache_max_stale_seconds: number | null;
}

/** The figures of one refresh from Status and two scrapes `dt` seconds apart (pure: tests and the loop share it). */
export function topFigures(status: R, now: Samples | undefined, before: Samples | undefined, dt: number, at = Date.now()): TopFigures {
  const d = (status.Daemon ?? {}) as R;
  const vols = ((status.Volumes ?? []) as R[]).filter((v) => v.Attached === true);
  const rated = now !== undefined && before !== undefined && dt > 0;
  const rate = (k: string, ...has: string[]): number => (rated ? Math.max(0, (sum(now, k, ...has) - sum(before, k, ...has)) / dt) : 0);
  const byOp = (k: string, L: string): { read: number; write: number } | null =>
    (rated ? { read: rate(k, L, 'operation="read"'), write: rate(k, L, 'operation="write"') } : null);
  const calls = rate('ebsd_kms_requests_total');
  return {
    time: new Date(at).toISOString(),
    pid: typeof d.Pid === 'number' ? d.Pid : null,
    uptime_seconds: Number(d.UptimeSeconds ?? 0),
    mount_dir: typeof d.MountDir === 'string' ? d.MountDir : null,
    interval_seconds: rated ? dt : null,
    kms_requests_per_second: rated ? calls : null,
    kms_requests_failed_per_second: rated ? Math.max(0, calls - rate('ebsd_kms_requests_total', 'outcome="ok"')) : null,
    volumes: vols.map((v) => {
      const id = String(v.VolumeId);
      const L = `volume_id="${id}"`;
      const kc = (v.KeyCache ?? {}) as R;
      const q = rated ? p99(now, before, id) : undefined;
      return {
        volume_id: id,
        name: String(v.Name ?? ''),
        volume_operations_per_second: byOp('ebsd_volume_operations_total', L),
        volume_bytes_per_second: byOp('ebsd_volume_bytes_total', L),
        volume_request_duration_seconds_p99: q === undefined ? null : q === Infinity ? '+Inf' : q,
        volume_open_handles: Number(v.OpenHandles ?? 0),
        key_cache_state: typeof kc.State === 'string' ? kc.State : null,
        key_cache_impaired_by: kc.State === 'impaired' && typeof (kc.Impaired as R | undefined)?.AwsName === 'string' ? String((kc.Impaired as R).AwsName) : null,
        key_cache_seconds_to_max_stale: typeof kc.ExpiryTime === 'string' ? Math.max(0, (Date.parse(kc.ExpiryTime) - at) / 1000) : null,
        key_cache_max_stale_seconds: typeof kc.MaxStaleSeconds === 'number' ? kc.MaxStaleSeconds : null,
      };
    }),
  };
}

/** Render one screen from Status and two scrapes `dt` seconds apart (pure: tests and the loop share it). */
export function renderTop(status: R, now: Samples | undefined, before: Samples | undefined, dt: number, width = 120): string {
  const f = topFigures(status, now, before, dt);
  const lines: string[] = [];
  // Names and messages come from callers (tags) and remote services: control characters are shown, never sent to the terminal.
  lines.push(`${BOLD}ebsd top${RESET}  pid ${f.pid ?? '-'}  up ${fmtDuration(f.uptime_seconds)}  ${f.volumes.length} attached  mount ${printableCell(f.mount_dir ?? '-')}   (q: quit)`);
  const url = (status.Daemon as R | undefined)?.MetricsUrl;
  if (!now && typeof url === 'string') lines.push(`no metrics: ${printableCell(url)} did not answer (a firewall for this uid? see README "Running in production")`);
  else if (!now) lines.push(`no metrics: start the daemon with --metrics-listen 127.0.0.1:PORT for IOPS, MB/s and latency`);
  // The first screen (no earlier scrape yet) shows zero rates, as it always has.
  else lines.push(`KMS  ${(f.kms_requests_per_second ?? 0).toFixed(1)} calls/s  ${(f.kms_requests_failed_per_second ?? 0).toFixed(1)} errors/s`);
  lines.push('');
  const head = ['VOLUME ID', 'NAME', 'IOPS', 'MB/s', 'P99', 'OPEN', 'KEY CACHE', 'MAX-STALE IN'];
  const rows: { cells: string[]; color: string }[] = [];
  for (const v of f.volumes) {
    const state = v.key_cache_state ?? '-';
    const expiry = v.key_cache_seconds_to_max_stale ?? undefined;
    const maxStale = v.key_cache_max_stale_seconds ?? 0;
    const near = expiry !== undefined && (expiry < NEAR_MAX_STALE_S || (maxStale > 0 && expiry < 0.1 * maxStale));
    const ops = v.volume_operations_per_second;
    const bytes = v.volume_bytes_per_second;
    const q = v.volume_request_duration_seconds_p99;
    rows.push({
      cells: [
        printableCell(v.volume_id), printableCell(v.name),
        now ? (ops ? ops.read + ops.write : 0).toFixed(0) : '-',
        now ? ((bytes ? bytes.read + bytes.write : 0) / 1e6).toFixed(1) : '-',
        fmtSeconds(q === null ? undefined : q === '+Inf' ? Infinity : q), String(v.volume_open_handles),
        state === 'impaired' ? `IMPAIRED${v.key_cache_impaired_by ? ` (${printableCell(v.key_cache_impaired_by)})` : ''}` : printableCell(state),
        expiry === undefined ? '-' : fmtDuration(expiry),
      ],
      color: state === 'impaired' ? RED : near || state === 'stale' ? YELLOW : '',
    });
  }
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r.cells[i]!.length)));
  const fmt = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').slice(0, width);
  lines.push(BOLD + fmt(head) + RESET);
  for (const r of rows) lines.push(r.color ? r.color + fmt(r.cells) + RESET : fmt(r.cells));
  if (rows.length === 0) lines.push('(no attached volume)');
  return lines.join('\n');
}

async function scrape(url: string, quit: AbortSignal): Promise<Samples | undefined> {
  try {
    const res = await fetch(url, { signal: quit });
    return res.ok ? parseMetrics(await res.text()) : undefined;
  } catch {
    return undefined;
  }
}

export function topCommand(y: Argv): Argv {
  return y.command(
    'top',
    'Live view of attached volumes: IOPS, MB/s, p99 latency, handles, key cache (q to quit); --output json: one JSON line per refresh',
    (b) =>
      b
        .option('interval', { type: 'string', default: 1, coerce: decimalSeconds('--interval', 0.2, 3600), describe: 'seconds between refreshes (0.2 to 3600)' })
        .option('once', { type: 'boolean', default: false, describe: 'print one screen (two scrapes one interval apart) and exit' })
        .option('status-timeout', { type: 'string', default: STATUS_TIMEOUT_MS / 1000, coerce: decimalSeconds('--status-timeout', 1, 600), describe: 'seconds a refresh waits for the daemon before top says it is stopped or stuck and exits 3 (1 to 600)' }),
    async (a) => {
      const stateDir = String(a.stateDir);
      const interval = Number(a.interval);
      const statusTimeoutMs = Number(a.statusTimeout) * 1000;
      const socket = socketPathFor(stateDir);
      const out = process.stdout;
      // --output json, as every command takes it: no screen, one compact JSON document per
      // refresh (one line, for `| jq` and `| head -1`), --query applied to each. Only when asked
      // for: off a terminal top has always printed plain screens, and scripts read those.
      const json = a.output === 'json';
      const query = typeof a.query === 'string' ? a.query : undefined;
      const tty = out.isTTY === true && !a.once && !json;
      let before: Samples | undefined;
      let beforeAt = 0;
      let stop = false;
      let outError: Error | undefined;
      let wake: () => void = () => {};
      // One controller per refresh, ended by quit or its own timer: AbortSignal.any over a signal
      // that lives as long as top would keep every refresh's combined signal (a slow leak).
      let frameAbort = new AbortController();
      const quit = (): void => { stop = true; wake(); frameAbort.abort(new Error('quit')); };
      // The reader went away (`| head -1`): stop quietly with exit 0, as other line tools do.
      // Node ignores SIGPIPE, so this arrives as an EPIPE error on stdout; anything else is raised.
      const onOutError = (e: NodeJS.ErrnoException): void => {
        if (e.code !== 'EPIPE') outError = e;
        quit();
      };
      out.on('error', onOutError);
      if (tty && process.stdin.isTTY) {
        process.stdin.setRawMode(true);
        process.stdin.resume();
        process.stdin.on('data', (k: Buffer) => { if (k[0] === 0x71 /* q */ || k[0] === 0x51 || k[0] === 0x03 /* ^C */) quit(); });
      }
      process.once('SIGINT', quit);
      process.once('SIGTERM', quit);
      if (tty) out.write(`${ESC}?1049h${ESC}?25l`); // alternate screen, hide cursor
      try {
        let pid: unknown;
        for (let frame = 0; !stop; frame++) {
          const ctl = (frameAbort = new AbortController());
          let timedOut = false;
          const timer = setTimeout(() => { timedOut = true; ctl.abort(new Error('timeout')); }, statusTimeoutMs);
          const status = await callDaemon(socket, 'ebsd.Status', {}, { signal: ctl.signal }).catch((e: unknown) => {
            if (stop) return undefined;
            if (timedOut) throw new DaemonUnreachableError(socket, `no answer to Status within ${statusTimeoutMs / 1000} s: the daemon is stopped or stuck`);
            throw e;
          }).finally(() => clearTimeout(timer));
          if (!status) break;
          // A restarted daemon's counters start again: rates across the restart would be wrong.
          const d = (status.Daemon ?? {}) as R;
          if (d.Pid !== pid) before = undefined;
          pid = d.Pid;
          const url = typeof d.MetricsUrl === 'string' ? d.MetricsUrl : undefined;
          const scrapeTimer = setTimeout(() => ctl.abort(new Error('timeout')), 900);
          const now = url ? await scrape(url, ctl.signal).finally(() => clearTimeout(scrapeTimer)) : undefined;
          const at = performance.now();
          if (stop) break;
          // JSON documents, like --once, start at the second scrape, so each one has its rates.
          if ((!a.once && !json) || frame > 0) {
            const dt = (at - beforeAt) / 1000;
            if (json) {
              out.write(`${JSON.stringify(applyQuery(topFigures(status, now, before, dt), query))}\n`);
            } else {
              const text = renderTop(status, now, before, dt, out.columns || 120);
              // Colours and bold only on a terminal: a pipe or file gets plain text.
              out.write(tty ? `${ESC}H${ESC}2J${text}\n` : `${out.isTTY === true ? text : stripEscapes(text)}\n`);
            }
            if (a.once) break;
          }
          before = now;
          beforeAt = at;
          if (stop) break;
          await new Promise<void>((r) => { const t = setTimeout(r, interval * 1000); wake = () => { clearTimeout(t); r(); }; });
        }
      } finally {
        if (tty) out.write(`${ESC}?25h${ESC}?1049l`);
        if (process.stdin.isTTY && tty) { process.stdin.setRawMode(false); process.stdin.pause(); }
        process.removeListener('SIGINT', quit);
        process.removeListener('SIGTERM', quit);
      }
      if (outError) throw outError;
    },
  );
}
