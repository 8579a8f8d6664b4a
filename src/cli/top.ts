import type { Argv } from 'yargs';
import { callDaemon, socketPathFor } from './client.js';
import { UsageError } from './kms-args.js';

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

export interface TopFrame {
  text: string;
}

/** Render one screen from Status and two scrapes `dt` seconds apart (pure: tests and the loop share it). */
export function renderTop(status: R, now: Samples | undefined, before: Samples | undefined, dt: number, width = 120): string {
  const d = (status.Daemon ?? {}) as R;
  const vols = ((status.Volumes ?? []) as R[]).filter((v) => v.Attached === true);
  const lines: string[] = [];
  lines.push(`${BOLD}ebsd top${RESET}  pid ${d.Pid}  up ${fmtDuration(Number(d.UptimeSeconds ?? 0))}  ${vols.length} attached  mount ${d.MountDir}   (q: quit)`);
  if (!now) lines.push(`no metrics: start the daemon with --metrics-listen 127.0.0.1:PORT for IOPS, MB/s and latency`);
  const rate = (k: string, ...has: string[]): number => (now && before && dt > 0 ? Math.max(0, (sum(now, k, ...has) - sum(before, k, ...has)) / dt) : 0);
  if (now) {
    const calls = rate('ebsd_kms_requests_total');
    const errs = calls - rate('ebsd_kms_requests_total', 'outcome="ok"');
    lines.push(`KMS  ${calls.toFixed(1)} calls/s  ${errs.toFixed(1)} errors/s`);
  }
  lines.push('');
  const head = ['VOLUME ID', 'NAME', 'IOPS', 'MB/s', 'P99', 'OPEN', 'KEY CACHE', 'MAX-STALE IN'];
  const rows: { cells: string[]; color: string }[] = [];
  for (const v of vols) {
    const id = String(v.VolumeId);
    const L = `volume_id="${id}"`;
    const kc = (v.KeyCache ?? {}) as R;
    const state = String(kc.State ?? '-');
    const expiry = typeof kc.ExpiryTime === 'string' ? (Date.parse(kc.ExpiryTime) - Date.now()) / 1000 : undefined;
    const maxStale = Number(kc.MaxStaleSeconds ?? 0);
    const near = expiry !== undefined && (expiry < NEAR_MAX_STALE_S || (maxStale > 0 && expiry < 0.1 * maxStale));
    const iops = now ? rate('ebsd_volume_operations_total', L, 'operation="read"') + rate('ebsd_volume_operations_total', L, 'operation="write"') : undefined;
    const mbs = now ? rate('ebsd_volume_bytes_total', L) / 1e6 : undefined;
    rows.push({
      cells: [
        id, String(v.Name ?? ''), iops === undefined ? '-' : iops.toFixed(0), mbs === undefined ? '-' : mbs.toFixed(1),
        now && before ? fmtSeconds(p99(now, before, id)) : '-', String(v.OpenHandles ?? 0),
        state === 'impaired' ? `IMPAIRED${(kc.Impaired as R | undefined)?.AwsName ? ` (${(kc.Impaired as R).AwsName})` : ''}` : state,
        expiry === undefined ? '-' : fmtDuration(Math.max(0, expiry)),
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

async function scrape(url: string): Promise<Samples | undefined> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(900) });
    return res.ok ? parseMetrics(await res.text()) : undefined;
  } catch {
    return undefined;
  }
}

export function topCommand(y: Argv): Argv {
  return y.command(
    'top',
    'Live view of attached volumes: IOPS, MB/s, p99 latency, handles, key cache (q to quit)',
    (b) =>
      b
        .option('interval', { type: 'number', default: 1, describe: 'seconds between refreshes' })
        .option('once', { type: 'boolean', default: false, describe: 'print one screen (two scrapes one interval apart) and exit' }),
    async (a) => {
      const stateDir = String(a.stateDir);
      const interval = Number(a.interval);
      if (!Number.isFinite(interval) || interval < 0.2 || interval > 3600) throw new UsageError(`--interval must be between 0.2 and 3600 seconds, got ${a.interval}`);
      const socket = socketPathFor(stateDir);
      const out = process.stdout;
      const tty = out.isTTY === true && !a.once;
      let before: Samples | undefined;
      let beforeAt = 0;
      let stop = false;
      let wake: () => void = () => {};
      const quit = (): void => { stop = true; wake(); };
      if (tty && process.stdin.isTTY) {
        process.stdin.setRawMode(true);
        process.stdin.resume();
        process.stdin.on('data', (k: Buffer) => { if (k[0] === 0x71 /* q */ || k[0] === 0x51 || k[0] === 0x03 /* ^C */) quit(); });
      }
      process.once('SIGINT', quit);
      process.once('SIGTERM', quit);
      if (tty) out.write(`${ESC}?1049h${ESC}?25l`); // alternate screen, hide cursor
      try {
        for (let frame = 0; !stop; frame++) {
          const status = await callDaemon(socket, 'ebsd.Status', {});
          const url = typeof (status.Daemon as R | undefined)?.MetricsUrl === 'string' ? String((status.Daemon as R).MetricsUrl) : undefined;
          const now = url ? await scrape(url) : undefined;
          const at = performance.now();
          if (!a.once || frame > 0) {
            const text = renderTop(status, now, before, (at - beforeAt) / 1000, out.columns || 120);
            // Colours and bold only on a terminal: a pipe or file gets plain text.
            out.write(tty ? `${ESC}H${ESC}2J${text}\n` : `${out.isTTY === true ? text : stripEscapes(text)}\n`);
            if (a.once) break;
          }
          before = now;
          beforeAt = at;
          await new Promise<void>((r) => { const t = setTimeout(r, interval * 1000); wake = () => { clearTimeout(t); r(); }; });
        }
      } finally {
        if (tty) out.write(`${ESC}?25h${ESC}?1049l`);
        if (process.stdin.isTTY && tty) { process.stdin.setRawMode(false); process.stdin.pause(); }
      }
    },
  );
}
