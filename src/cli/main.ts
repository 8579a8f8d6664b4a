#!/usr/bin/env node
/**
 * `ebsd`: the command line. Talks to the daemon over its control socket
 * (`<state-dir>/ebsd.sock`), except `ebsd daemon` (which is the daemon) and
 * `ebsd speed` (local). Exit codes live here and in ./exit-codes.ts only.
 */
import { totalmem } from 'node:os';
import { resolve as resolvePath } from 'node:path';
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
// Only light modules load eagerly: a client call should not pay for the KMS,
// FUSE and crypto code the daemon needs (measured: ~0.6 s -> ~0.15 s per call).
import { checkDaemonFlags, DEFAULT_MOUNT_DIR, DEFAULT_STATE_DIR, MAX_KMS_REQUEST_TIMEOUT_MS, MIN_KMS_REQUEST_TIMEOUT_MS, parseByteSize, parseDuration, parseListenAddress, refusalWindow, MAX_MODIFICATION_WINDOW_MS, MIN_SNAPSHOT_COW_MEMORY, VERSION, type DaemonConfig } from '../daemon/config.js';
import { callDaemon, DaemonUnreachableError, ServiceError, socketPathFor, STATUS_TIMEOUT_MS } from './client.js';
import { EXIT, EXIT_CODES_HELP, exitCodeFor } from './exit-codes.js';
import { kmsPages } from './kms-pages.js';
import { DRY_RUN_OPTION, KMS_OPERATIONS, UsageError, checkRequiredMembers, decimalSeconds, dryRunMember, kmsFlagsHelp, operationFromKebab, parseKmsArgs, pascalToKebab, readLocalFile, refuseEmpty, tagArgs, wholeNumber } from './kms-args.js';
import { applyQuery, checkQuery, defaultFormat, humanBytes, kv, print, printableCell, table, type OutputFormat } from './output.js';
import { completionCommand } from './completion.js';
import { installUnitsCommand } from './install-units.js';
import { topCommand } from './top.js';
import { describeListing, snapshotCommands } from './snapshot-commands.js';
import { waitWithProgress } from './wait-progress.js';
import { ebsCommands } from './ebs-commands.js';

interface Globals {
  stateDir: string;
  output?: OutputFormat;
  query?: string;
}

type R = Record<string, unknown>;

/** Set by a command that wants a specific exit code without an error (audit verify). */
let exitCode: number = EXIT.OK;

function fmt(g: Globals): OutputFormat {
  return g.output ?? defaultFormat();
}

async function call(g: Globals, target: string, body: R = {}): Promise<R> {
  return callDaemon(socketPathFor(g.stateDir), target, body);
}

function show(g: Globals, v: unknown, tableFn?: () => string): void {
  const out = applyQuery(v, g.query);
  print(out, fmt(g), g.query ? undefined : tableFn);
}

function readArg(v: string, flag: string): string {
  return v.startsWith('file://') ? readLocalFile(v.slice(7), `${flag} file://`).toString('utf8') : v;
}

/** The largest uid a mapping may name: uid_t is 32 bits and 2^32-1 is (uid_t)-1, "no uid". */
const MAX_UID = 2 ** 32 - 2;

/** A uid argument: decimal digits, 0 .. 2^32-2 (never 1e20, -1 or 4294967295). */
function parseUid(v: unknown): number {
  const s = String(v);
  const n = /^[0-9]{1,10}$/.test(s) ? Number(s) : NaN;
  if (!Number.isInteger(n) || n > MAX_UID) throw new UsageError(`uid must be an integer from 0 to ${MAX_UID}, got "${s}"`);
  return n;
}

/** The Name tag of a volume row; tolerant of rows whose Tags are not {Key, Value} objects. */
function nameTag(r: R): unknown {
  const tags = Array.isArray(r.Tags) ? (r.Tags as unknown[]) : [];
  const t = tags.find((x): x is R => !!x && typeof x === 'object' && (x as R).Key === 'Name');
  return t?.Value ?? r.Name;
}

const volumeColumns: Parameters<typeof table>[1] = [
  ['VOLUME ID', (r) => r.VolumeId],
  ['NAME', nameTag],
  ['SIZE', (r) => humanBytes(r.SizeBytes)],
  ['STATE', (r) => r.State],
  ['ENCRYPTED', encryptedCell],
  ['KMS KEY', (r) => r.KmsKeyId ?? (r.Encrypted === false ? 'UNENCRYPTED' : undefined)],
];

function encryptedCell(r: R): string {
  return r.Encrypted === false ? 'NO' : 'yes';
}

const UNENCRYPTED_WARNING = 'WARNING: UNENCRYPTED volume: its data is stored in PLAINTEXT (measurement only, never for real data)';

/** Key-cache column: the state, and for stale/impaired what went wrong. */
function keyCacheCell(r: R): string {
  const kc = (r.KeyCache ?? {}) as R;
  const st = String(kc.State ?? '-');
  if (st === 'unencrypted') return 'UNENCRYPTED (no key)';
  if (st === 'stale') return `stale since ${shortTime(kc.StaleSince)}${(kc.LastError as R | undefined)?.AwsName ? ` (${(kc.LastError as R).AwsName})` : ' (KMS unreachable)'}`;
  if (st === 'impaired') {
    const i = (kc.Impaired ?? {}) as R;
    return `impaired: ${i.Reason ?? '?'}${i.AwsName ? ` (${i.AwsName})` : ''}`;
  }
  return st;
}

/** ISO time -> HH:MM:SS (UTC), for narrow table cells; JSON output keeps the full ISO time. */
function shortTime(v: unknown): string | undefined {
  return typeof v === 'string' ? v.slice(11, 19) : undefined;
}

// ---- commands ------------------------------------------------------------

function daemonCommand(y: Argv): Argv {
  return y.command(
    'daemon',
    'Run the ebsd daemon in the foreground (JSON logs on stdout)',
    (b) =>
      b
        .option('mount', { type: 'string', default: DEFAULT_MOUNT_DIR, describe: 'FUSE mount point: one file per attached volume' })
        .option('region', { type: 'string', describe: 'AWS region name (fixed when the state dir is initialised; default us-east-1)' })
        .option('key-cache-ttl', { type: 'string', describe: 'how long an unwrapped volume key is cached before refresh (300, 5m, 0 = until detach; at most 596h)' })
        .option('key-cache-max-stale', { type: 'string', describe: 'how long to keep a key while KMS does not answer (default 1h, or the TTL when longer; at least the TTL, at most 596h)' })
        .option('log-level', { type: 'string', default: process.env.EBSD_LOG_LEVEL ?? 'info', choices: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'], describe: 'the least severe log lines written (env EBSD_LOG_LEVEL)' })
        .option('log-format', { type: 'string', choices: ['json', 'pretty'], describe: 'log lines: pretty (readable) or json (default: pretty on a terminal, json otherwise)' })
        .option('metrics-listen', { type: 'string', describe: 'serve Prometheus /metrics on HOST:PORT (e.g. 127.0.0.1:9464)' })
        .option('allow-unencrypted', {
          type: 'boolean',
          default: false,
          describe: 'permit measurement-only PLAINTEXT volumes (ebsd volume create --cipher none) and unencrypted EBS direct StartSnapshot snapshots (EBS encryption by default off); refused otherwise',
        })
        // Gone (see the handler); declared so that its refusal explains what replaced it.
        .option('cipher', { type: 'string', hidden: true })
        .option('kms-listen', { type: 'string', describe: 'serve the KMS and STS (SigV4-authenticated) on HOST:PORT; plain HTTP only on loopback' })
        .option('tls-cert', { type: 'string', describe: 'PEM certificate (chain) for --kms-listen: HTTPS' })
        .option('tls-key', { type: 'string', describe: 'PEM private key for --tls-cert' })
        .option('kms-only', { type: 'boolean', default: false, describe: 'run the KMS alone (with --kms-listen): no FUSE mount, no volume service' })
        .option('kms-front-threads', { type: 'string', coerce: wholeNumber('--kms-front-threads'), describe: '--kms-listen\'s TLS and HTTP: 0 on the main thread, 1 on a front-end worker thread (default 1)' })
        .option('kms-rate-while-io-busy', { type: 'string', coerce: wholeNumber('--kms-rate-while-io-busy'), describe: 'callers\' KMS and EBS direct calls (network and socket) admitted per second while the volume data path is busy, in turns per source; 0 = no limit (default 250)' })
        .option('kms-endpoint', { type: 'string', describe: 'volume keys from this KMS (AWS KMS or another host\'s --kms-only daemon), as the host role from the standard AWS credential chain' })
        .option('kms-probe-interval', { type: 'string', describe: 'with --kms-endpoint: after this long without a request to it, ask it whether it answers (ebsd_kms_remote_reachable, ebsd status; default 30s, 0 = never)' })
        .option('kms-request-timeout', { type: 'string', describe: 'with --kms-endpoint: how long each attempt of a call waits for its answer before the SDK retries it (3 attempts; 100ms to 10m; default 5s)' })
        .option('kms-region', { type: 'string', describe: 'region of --kms-endpoint (default: AWS_REGION or the profile\'s region)' })
        .option('host-principal-arn', { type: 'string', describe: 'this host\'s role (or user) ARN for grants at --kms-endpoint, for a role with a path (STS names a session by its role\'s name only); must agree with STS GetCallerIdentity' })
        .option('snapshot-store', { type: 'string', describe: 'keep snapshots in s3://BUCKET[/PREFIX] (any S3-compatible store, standard AWS credential and endpoint configuration); default: STATE_DIR/snapshots' })
        .option('snapshot-manifest-key', { type: 'string', describe: 'sign every snapshot manifest with this HMAC_256 KMS key (id, ARN or alias; GENERATE_VERIFY_MAC) and refuse manifests whose MAC is missing or wrong; off by default (README "Snapshot store")' })
        .option('refusal-window', { type: 'string', describe: 'how long refusals of one caller are summed into one audit event (1s to 10m; default 10s)' })
        .option('snapshot-cow-memory', { type: 'string', describe: 'memory for the old bytes of sectors written while snapshots of attached volumes run, shared by all of them (64MiB, 1.5GiB, bytes; 4KiB to the host\'s memory); past it they spill to a file; default min(2GiB, RAM/16, cgroup memory limit/8)' })
        .option('volume-modification-window', { type: 'string', describe: 'the rolling window in which a volume may be modified (ModifyVolume) at most 4 times, as EC2 allows (default 24h, at most 8760h; 0 = no limit)' })
        .option('stop-timeout', { type: 'string', describe: 'how long a stop (SIGTERM) may take before the daemon gives up, logs the step it was stuck at and exits 1 (default 90s, under the systemd unit\'s TimeoutStopSec=120)' })
        .option('snapshot-gc-grace', { type: 'string', hidden: true, describe: 'keep unreferenced snapshot blocks younger than this (default 1h)' })
        .option('write-behind', {
          type: 'boolean',
          default: true,
          describe: 'acknowledge aligned writes once copied and write them right after the reply (a volatile write cache: fsync is the barrier); --no-write-behind: a write is in the backing file before it is acknowledged',
        }),
    async (a) => {
      if ((a as R).cipher !== undefined) {
        // The cipher is chosen per volume now; a daemon-wide switch would silently serve plaintext.
        throw new UsageError('ebsd daemon no longer takes --cipher: start it with --allow-unencrypted and create plaintext volumes with `ebsd volume create --cipher none`');
      }
      const cfg: DaemonConfig = {
        stateDir: a.stateDir as string,
        mountDir: a.mount,
        ...(a.region ? { region: a.region } : {}),
        ...(a.keyCacheTtl !== undefined ? { keyCacheTtlMs: parseDuration(a.keyCacheTtl, '--key-cache-ttl') } : {}),
        ...(a.keyCacheMaxStale !== undefined ? { keyCacheMaxStaleMs: parseDuration(a.keyCacheMaxStale, '--key-cache-max-stale') } : {}),
        logLevel: a.logLevel,
        allowUnencrypted: a.allowUnencrypted,
        writeBehind: a.writeBehind,
        ...(a.kmsListen !== undefined ? { kmsListen: listenAddress(a.kmsListen) } : {}),
        ...(a.kmsOnly ? { kmsOnly: true } : {}),
        ...(a.kmsFrontThreads !== undefined ? { kmsFrontThreads: a.kmsFrontThreads as 0 | 1 } : {}),
        ...(a.kmsRateWhileIoBusy !== undefined ? { kmsRateWhileIoBusy: a.kmsRateWhileIoBusy as number } : {}),
        ...(a.kmsEndpoint !== undefined ? { kmsEndpoint: a.kmsEndpoint } : {}),
        ...(a.kmsRegion !== undefined ? { kmsRegion: a.kmsRegion } : {}),
        ...(a.kmsProbeInterval !== undefined ? { kmsProbeIntervalMs: parseDuration(a.kmsProbeInterval, '--kms-probe-interval') } : {}),
        ...(a.kmsRequestTimeout !== undefined ? { kmsRequestTimeoutMs: parseDuration(a.kmsRequestTimeout, '--kms-request-timeout', MAX_KMS_REQUEST_TIMEOUT_MS, MIN_KMS_REQUEST_TIMEOUT_MS) } : {}),
        ...(a.hostPrincipalArn !== undefined ? { hostPrincipalArn: a.hostPrincipalArn } : {}),
        ...(a.snapshotStore !== undefined ? { snapshotStore: a.snapshotStore } : {}),
        ...(a.snapshotManifestKey !== undefined ? { snapshotManifestKey: a.snapshotManifestKey } : {}),
        ...(a.snapshotCowMemory !== undefined ? { snapshotCowMemoryBytes: parseByteSize(a.snapshotCowMemory, '--snapshot-cow-memory', MIN_SNAPSHOT_COW_MEMORY, totalmem(), "this host's memory") } : {}),
        ...(a.refusalWindow !== undefined ? { refusalWindowMs: refusalWindow(a.refusalWindow) } : {}),
        ...(a.volumeModificationWindow !== undefined ? { volumeModificationWindowMs: parseDuration(a.volumeModificationWindow, '--volume-modification-window', MAX_MODIFICATION_WINDOW_MS) } : {}),
        ...(a.snapshotGcGrace !== undefined ? { snapshotGcGraceMs: parseDuration(a.snapshotGcGrace, '--snapshot-gc-grace', Number.MAX_SAFE_INTEGER) } : {}),
        ...(a.metricsListen !== undefined ? { metricsListen: a.metricsListen } : {}),
        ...(a.stopTimeout !== undefined ? { stopTimeoutMs: parseDuration(a.stopTimeout, '--stop-timeout', undefined, 1) } : {}),
      };
      if ((a.tlsCert === undefined) !== (a.tlsKey === undefined)) throw new UsageError('--tls-cert and --tls-key go together');
      if (a.tlsCert !== undefined) cfg.tls = { certFile: a.tlsCert, keyFile: a.tlsKey! };
      // Every flag's value and the flags each needs, before the daemon touches the state dir or the mount: exit 2.
      checkDaemonFlags(cfg);
      const format = (a.logFormat as 'json' | 'pretty' | undefined) ?? (process.stdout.isTTY ? 'pretty' : 'json');
      // pino is loaded for the daemon only: every other command starts without it.
      const { createLogger } = await import('../util/logger.js');
      const log = createLogger({ level: cfg.logLevel, name: 'ebsd', format });
      try {
        const { runDaemon } = await import('../daemon/daemon.js');
        await runDaemon(cfg, log);
      } catch (e) {
        // A stop given up on (src/daemon/stop-deadline.ts) left something running that holds the
        // process: it exits here, now, rather than waiting for what never ends.
        const gaveUp = (e as { code?: unknown }).code === 'STOP_TIMEOUT';
        reportDaemonFailure(log, e);
        if (gaveUp) process.exit(EXIT.INTERNAL);
        exitCode = EXIT.DAEMON_START;
      }
      exitWhenHeld(log);
    },
  );
}

/** The daemon's last words; they must not throw (stderr may be a closed pipe). */
function reportDaemonFailure(log: import('../util/logger.js').Logger, e: unknown): void {
  try {
    log.fatal({ err: e }, 'daemon failed');
    process.stderr.write(`ebsd daemon: ${(e as Error).message}\n`);
  } catch {
    // nowhere to say it
  }
}

/**
 * The daemon has stopped; nothing of it should keep the process alive. If something still
 * holds the event loop a moment later (a native handle left referenced, a socket or timer
 * nobody closed: a daemon that logged "stopped" and never exited), say what, and exit anyway,
 * non-zero. The timer is unreferenced: a process with nothing left exits at once, as before.
 */
function exitWhenHeld(log: import('../util/logger.js').Logger): void {
  setTimeout(() => {
    try {
      log.error({ resources: process.getActiveResourcesInfo() }, 'the daemon stopped but its process was still held; exiting');
    } catch {
      // nowhere to say it
    }
    process.exit(process.exitCode === undefined || process.exitCode === EXIT.OK ? EXIT.INTERNAL : process.exitCode);
  }, 2_000).unref();
}

function kmsCommand(y: Argv): Argv {
  const ops = KMS_OPERATIONS.map(pascalToKebab);
  return y.command(
    'kms <operation> [args..]',
    'Call a KMS operation (AWS CLI style: ebsd kms encrypt --key-id alias/app --plaintext fileb://f)',
    (b) =>
      kmsOperationEpilogue(b)
        .positional('operation', { type: 'string', describe: `one of: ${ops.join(', ')}` })
        .option('alias', { type: 'string', describe: 'create-key only: also create this alias for the new key' })
        .strict(false)
        .strictOptions(false) // checked per operation by parseKmsArgs, against the operation's members
        .epilogue(
          'Flags are the operation\'s request members in kebab case (--key-id, --encryption-context k=v,..., --grant-tokens t1 t2, ' +
            '--policy file://p.json). Blob members (--plaintext, --ciphertext-blob, --message, --signature, --mac) take fileb://path or base64. ' +
            'Output is the AWS response; blobs are base64 (use --query CiphertextBlob --output text | base64 -d).',
        ),
    async (a) => {
      const g = a as unknown as Globals;
      const op = operationFromKebab(String(a.operation));
      const raw = hideBin(process.argv);
      const at = raw.indexOf(String(a.operation), raw.indexOf('kms') + 1);
      const req = parseKmsArgs(raw.slice(at + 1), op);
      checkRequiredMembers(req, op);
      const alias = op === 'CreateKey' && a.alias !== undefined ? await aliasForNewKey(g, a.alias) : undefined;
      const res = await kmsPages(op, req, (r) => call(g, `TrentService.${op}`, r));
      if (alias !== undefined) {
        const keyId = (res.KeyMetadata as R).KeyId as string;
        try {
          await call(g, 'TrentService.CreateAlias', { AliasName: alias, TargetKeyId: keyId });
        } catch (e) {
          // The key exists now: its description goes to stdout all the same, and the error names it.
          show(g, res);
          const note = `key ${keyId} was created, but not its alias ${alias}`;
          if (e instanceof ServiceError) throw new ServiceError(e.awsName, `${e.message} (${note})`, e.status);
          process.stderr.write(`ebsd: ${note}\n`);
          throw e;
        }
      }
      show(g, res);
    },
  );
}

/**
 * `volume ls --kms-key`: volumes show their key as an ARN, and the filter matches that, so the
 * `alias/app` or key id `volume create --kms-key` takes matched nothing, silently. A value that is no
 * ARN and no wildcard pattern is resolved to its key's ARN first (DescribeKey as the caller): an alias
 * that does not exist is refused (NotFoundException) instead of listing nothing.
 */
async function keyArnFilter(g: Globals, key: string): Promise<string> {
  if (key.startsWith('arn:') || /[*?]/.test(key)) return key;
  try {
    const res = await call(g, 'TrentService.DescribeKey', { KeyId: key });
    return String((res.KeyMetadata as R).Arn);
  } catch (e) {
    if (e instanceof ServiceError) throw new ServiceError(e.awsName, `${e.message} (--kms-key ${key} is resolved to its key ARN with DescribeKey; give the ARN to filter without it)`, e.status);
    throw e;
  }
}

/** `ebsd kms encrypt --help`: the general help, then the flags encrypt takes (kmsFlagsHelp). */
function kmsOperationEpilogue(b: Argv): Argv {
  if (!process.argv.includes('--help')) return b;
  const raw = hideBin(process.argv);
  const op = raw.slice(raw.indexOf('kms') + 1).find((t) => !t.startsWith('-'));
  const known = op === undefined ? undefined : KMS_OPERATIONS.find((o) => pascalToKebab(o) === op);
  return known ? b.epilogue(kmsFlagsHelp(known)) : b;
}

/** AWS: `alias/` then letters, digits, `/ _ -`; 1-256 characters; `alias/aws/` is reserved (src/kms/ops/aliases.ts). */
const ALIAS_RE = /^alias\/[a-zA-Z0-9/_-]+$/;

/**
 * `kms create-key --alias NAME`: the alias is checked before the key is made (a valid name, and free),
 * so a refused alias leaves no key behind with an id nobody was told.
 */
async function aliasForNewKey(g: Globals, alias: unknown): Promise<string> {
  const name = String(alias);
  if (name === '') throw new UsageError('--alias needs a value: alias/NAME');
  if (!ALIAS_RE.test(name) || name.length > 256) {
    throw new UsageError(`--alias "${name}": an alias name is alias/ then letters, digits, /, _ or - (at most 256 characters)`);
  }
  if (name.startsWith('alias/aws/')) throw new UsageError(`--alias "${name}": names beginning with alias/aws/ are reserved for AWS managed keys`);
  try {
    const taken = await call(g, 'TrentService.DescribeKey', { KeyId: name });
    const keyId = (taken.KeyMetadata as R | undefined)?.KeyId;
    throw new ServiceError('AlreadyExistsException', `An alias with the name ${name} already exists (key ${String(keyId)}); no key was created`, 400);
  } catch (e) {
    // NotFound: the name is free. Denied or another refusal: CreateAlias will judge it, and a failure there names the new key.
    if (e instanceof ServiceError && e.awsName !== 'AlreadyExistsException') return name;
    throw e;
  }
}

function volumeCommands(y: Argv): Argv {
  return y
    .command('volume', 'Create, list, describe, grow and delete volumes', (v) =>
      v
        .command(
          'create',
          'Create an encrypted volume (EC2 CreateVolume); prints its volume id',
          (b) =>
            b
              .option('size', { type: 'string', describe: 'bytes or 512MiB, 8GiB, 1TiB (multiple of 4 KiB); with --snapshot-id at least the snapshot\'s (its size if left out)' })
              .option('snapshot-id', { type: 'string', describe: 'restore this snapshot (snap-…): same KMS key shares its data key, another key re-encrypts every block' })
              .option('wait', { type: 'boolean', default: false, describe: 'with --snapshot-id: wait until the volume is available (progress on stderr)' })
              .option('kms-key', { type: 'string', describe: 'key id, ARN or alias (default alias/aws/ebs; with --snapshot-id the snapshot\'s key)' })
              .option('cipher', {
                type: 'string',
                choices: ['aes-xts-plain64', 'none'],
                describe: '"none" = UNENCRYPTED plaintext passthrough, for measuring overhead only; the daemon must run with --allow-unencrypted',
              })
              .option('name', { type: 'string', describe: 'Name tag' })
              .option('tag', { type: 'array', string: true, describe: 'more tags, Key=Value' })
              .option('client-token', { type: 'string', describe: 'idempotency token (EC2 ClientToken, up to 64 ASCII characters): a retry with the same token and options answers the same volume' })
              .option('dry-run', DRY_RUN_OPTION),
          async (a) => {
            const g = a as unknown as Globals;
            refuseEmpty(a, 'kms-key', 'name', 'snapshot-id', 'size', 'client-token');
            if (a.cipher === 'none' && a.kmsKey !== undefined) throw new UsageError('--kms-key cannot be combined with --cipher none: a plaintext volume has no key');
            if (a.size === undefined && a.snapshotId === undefined) throw new UsageError('volume create needs --size or --snapshot-id');
            const tags = tagArgs(a.tag);
            let res = await call(g, 'ebsd.CreateVolume', {
              ...(a.size !== undefined ? { Size: /^\d+$/.test(a.size) ? Number(a.size) : a.size } : {}),
              ...(a.snapshotId !== undefined ? { SnapshotId: a.snapshotId } : {}),
              ...(a.kmsKey !== undefined ? { KmsKeyId: a.kmsKey } : {}),
              ...(a.cipher ? { Cipher: a.cipher } : {}),
              ...(a.name !== undefined ? { Name: a.name } : {}),
              ...(tags.length ? { TagSpecifications: [{ ResourceType: 'volume', Tags: tags }] } : {}),
              ...(a.clientToken !== undefined ? { ClientToken: a.clientToken } : {}),
              ...dryRunMember(a),
            });
            if (a.wait && res.State === 'creating') {
              const id = res.VolumeId as string;
              const describe = async (): Promise<R> => ((await call(g, 'ebsd.DescribeVolumes', { VolumeIds: [id] })).Volumes as R[])[0]!;
              await waitWithProgress(async () => {
                res = await describe();
                return {
                  state: res.State as string,
                  ...(typeof res.Progress === 'string' ? { progress: parseInt(res.Progress, 10) } : {}),
                  ...(typeof res.StateMessage === 'string' ? { message: res.StateMessage } : {}),
                };
              }, { label: `${id} from ${a.snapshotId}`, done: ['available'], failed: ['error'] });
            }
            if (res.Encrypted === false) process.stderr.write(`ebsd: ${UNENCRYPTED_WARNING}\n`);
            if (fmt(g) === 'text' && !g.query) {
              // `id=$(ebsd volume create --size 1GiB --output text)`
              process.stdout.write(`${res.VolumeId}\n`);
              return;
            }
            // The id first and alone on its line: it is what the next command needs.
            show(g, res, () =>
              [
                `${res.VolumeId}`,
                '',
                table([res], volumeColumns),
                '',
                res.Encrypted === false ? `${UNENCRYPTED_WARNING}\nnext: ebsd attach ${res.VolumeId}` : `next: ebsd attach ${res.VolumeId}`,
              ].join('\n'),
            );
          },
        )
        .command(
          ['ls', 'list'],
          'List volumes (EC2 DescribeVolumes)',
          (b) =>
            b
              .option('state', { type: 'string', describe: 'filter: available | in-use | creating | deleting | error' })
              .option('name', { type: 'string', describe: 'filter: Name tag' })
              .option('kms-key', { type: 'string', describe: 'filter: key ARN (wildcards * ?), or a key id or alias, resolved to its ARN with DescribeKey' })
              .option('filters', { type: 'array', string: true, describe: 'EC2 filters, Name=snapshot-id,Values=snap-… or JSON; repeatable, with the filters above' })
              .option('max-results', { type: 'string', coerce: wholeNumber('--max-results'), describe: 'at least 5 (over 500 returns 500)' })
              .option('next-token', { type: 'string', describe: 'The token returned by a previous paginated request' })
              .option('dry-run', DRY_RUN_OPTION),
          async (a) => {
            const g = a as unknown as Globals;
            refuseEmpty(a, 'state', 'name', 'kms-key');
            const Filters: R[] = [];
            if (a.state !== undefined) Filters.push({ Name: 'status', Values: [a.state] });
            if (a.name !== undefined) Filters.push({ Name: 'tag:Name', Values: [a.name] });
            if (a.kmsKey !== undefined) Filters.push({ Name: 'kms-key-id', Values: [await keyArnFilter(g, a.kmsKey)] });
            // DescribeVolumes' filters (README, "CLI reference"), as `snapshot describe --filters` takes DescribeSnapshots'.
            const listing = describeListing(a);
            Filters.push(...((listing.Filters as R[] | undefined) ?? []));
            const res = await call(g, 'ebsd.DescribeVolumes', { ...listing, ...(Filters.length ? { Filters } : {}) });
            show(g, res, () => table(res.Volumes as R[], [...volumeColumns, ['ATTACHED AS', (r) => (r.Attachments as R[])[0]?.Device]]));
          },
        )
        .command('describe <volume-ids..>', 'Describe volumes (EC2 DescribeVolumes)', (b) => b.positional('volume-ids', { type: 'string', array: true, describe: 'one or more vol-… ids' }).option('dry-run', DRY_RUN_OPTION), async (a) => {
          const g = a as unknown as Globals;
          const res = await call(g, 'ebsd.DescribeVolumes', { VolumeIds: a.volumeIds, ...dryRunMember(a) });
          show(g, res);
        })
        .command(
          'modify <volume-id>',
          'Grow a volume (EC2 ModifyVolume; grow only)',
          (b) => b.positional('volume-id', { type: 'string', demandOption: true, describe: 'The ID of the volume (vol-…)' }).option('size', { type: 'string', demandOption: true, describe: 'the new size, larger than the current one: bytes or 16GiB, 1TiB (multiple of 4 KiB)' }).option('dry-run', DRY_RUN_OPTION),
          async (a) => {
            const g = a as unknown as Globals;
            refuseEmpty(a, 'size');
            show(g, await call(g, 'ebsd.ModifyVolume', { VolumeId: a.volumeId, Size: /^\d+$/.test(a.size) ? Number(a.size) : a.size, ...dryRunMember(a) }));
          },
        )
        .command(
          'modifications [volume-ids..]',
          'The latest modification of each volume (EC2 DescribeVolumesModifications)',
          (b) =>
            b
              .positional('volume-ids', { type: 'string', array: true, describe: 'The IDs of the volumes (default: every volume)' })
              .option('filters', { type: 'array', string: true, describe: 'Name=modification-state,Values=completed or JSON; repeatable' })
              .option('max-results', { type: 'string', coerce: wholeNumber('--max-results'), describe: '1..500' })
              .option('next-token', { type: 'string', describe: 'The token returned by a previous paginated request' })
              .option('dry-run', DRY_RUN_OPTION),
          async (a) => {
            const g = a as unknown as Globals;
            const res = await call(g, 'ebsd.DescribeVolumesModifications', { ...(a.volumeIds?.length ? { VolumeIds: a.volumeIds } : {}), ...describeListing(a) });
            show(g, res, () => table(res.VolumesModifications as R[], [
              ['VOLUME', (r) => r.VolumeId], ['STATE', (r) => r.ModificationState],
              ['FROM', (r) => humanBytes(r.OriginalSizeBytes as number)], ['TO', (r) => humanBytes(r.TargetSizeBytes as number)],
              ['STARTED', (r) => r.StartTime], ['ENDED', (r) => r.EndTime ?? ''], ['MESSAGE', (r) => r.StatusMessage ?? ''],
            ]));
          },
        )
        .command('delete <volume-id>', 'Delete an available volume and its image', (b) => b.positional('volume-id', { type: 'string', demandOption: true, describe: 'The ID of the volume (vol-…)' }).option('dry-run', DRY_RUN_OPTION), async (a) => {
          const g = a as unknown as Globals;
          await call(g, 'ebsd.DeleteVolume', { VolumeId: a.volumeId, ...dryRunMember(a) });
          if (fmt(g) === 'table') process.stdout.write(`deleted ${a.volumeId}\n`);
          else show(g, {});
        })
        .demandCommand(1, 'name a volume subcommand: create, ls, describe, modify, modifications, delete'),
    )
    .command(
      'attach <volume-id>',
      'Attach a volume: its file appears under the mount',
      (b) =>
        b
          .positional('volume-id', { type: 'string', demandOption: true, describe: 'The ID of the volume (vol-…)' })
          .option('instance-id', { type: 'string', describe: 'EC2 InstanceId: must be this host\'s (<state-dir>/volumes/instance-id)' })
          .option('device', { type: 'string', describe: 'EC2 Device: recorded and shown only (default /dev/ebsd/VOL); the volume is the file under the mount' })
          .option('wait', { type: 'string', coerce: wholeNumber('--wait'), describe: `seconds to wait, up to ${MAX_ATTACH_WAIT_SECONDS}, when the volume is recorded attached to this host and not served yet (the daemon re-attaches it once its KMS answers; account root, while the daemon waits for its KMS at start): then its attachment once its file is there (without: refused as VolumeInUse or ServiceUnavailable)` })
          .option('dry-run', DRY_RUN_OPTION),
      async (a) => {
        const g = a as unknown as Globals;
        refuseEmpty(a, 'instance-id', 'device');
        if (a.wait !== undefined && a.wait > MAX_ATTACH_WAIT_SECONDS) throw new UsageError(`--wait is at most ${MAX_ATTACH_WAIT_SECONDS} seconds (a day), got ${a.wait}`);
        const req = {
          VolumeId: a.volumeId,
          ...(a.instanceId !== undefined ? { InstanceId: a.instanceId } : {}),
          ...(a.device !== undefined ? { Device: a.device } : {}),
          ...dryRunMember(a),
        };
        let res: R;
        try {
          res = await call(g, 'ebsd.AttachVolume', req);
        } catch (e) {
          // Refused as attached already (VolumeInUse) or while the daemon waits for its KMS (ServiceUnavailable):
          // with --wait, a volume recorded attached to this host and not served yet is waited for. The call above
          // was authorized and audited as any attach is; anything else it answered stands.
          const waitable = e instanceof ServiceError && (e.awsName === 'VolumeInUse' || e.awsName === 'ServiceUnavailable');
          const served = waitable && a.wait && !a.dryRun ? await untilServed(g, String(a.volumeId), a.wait) : undefined;
          if (!served) throw e;
          res = served;
        }
        if (res.Unencrypted === true) process.stderr.write(`ebsd: ${UNENCRYPTED_WARNING}\n`);
        show(g, res, () => `${res.VolumeId} attached at ${res.Path}${res.Unencrypted ? '  (UNENCRYPTED: plaintext passthrough, measurement only)' : ''}`);
      },
    )
    .command(
      'detach <volume-id>',
      'Detach a volume (refused while its file is open, unless --force)',
      (b) =>
        b
          .positional('volume-id', { type: 'string', demandOption: true, describe: 'The ID of the volume (vol-…)' })
          .option('force', { type: 'boolean', default: false, describe: 'detach even while open: open handles get EIO' })
          .option('instance-id', { type: 'string', describe: 'EC2 InstanceId: must be this host\'s' })
          .option('dry-run', DRY_RUN_OPTION),
      async (a) => {
        const g = a as unknown as Globals;
        refuseEmpty(a, 'instance-id');
        const res = await call(g, 'ebsd.DetachVolume', { VolumeId: a.volumeId, Force: a.force, ...(a.instanceId !== undefined ? { InstanceId: a.instanceId } : {}), ...dryRunMember(a) });
        show(g, res, () => `${res.VolumeId} detached`);
      },
    );
}

/** `ebsd attach --wait`'s bound: a day (the shipped ebsd-attach@ unit waits that long for its volume). */
const MAX_ATTACH_WAIT_SECONDS = 86_400;

/**
 * `ebsd attach --wait`, after AttachVolume refused the volume as attached already or the daemon as waiting
 * for its KMS: a volume recorded attached to this host and not served yet (`ebsd status` shows it with a
 * Problem: re-attached by the daemon once its KMS answers, or being attached by another call) is waited
 * for, up to `seconds`; once its file is under the mount, the attachment as AttachVolume answers it.
 * Undefined when the volume is not in that state (served already, not this host's, not shown to the
 * caller: the refusal stands). Past `seconds`: ServiceUnavailable (exit 10) naming what it still waits
 * for; a re-attach that failed for good: IncorrectState (exit 6) at once.
 *
 * Status is asked at growing intervals (1 s doubling to 15 s): while the host waits for its KMS at start,
 * each Status nudges the daemon to try it again (host-resolver.ts), and a recovering KMS must not get that
 * from every waiting unit every second.
 */
async function untilServed(g: Globals, volumeId: string, seconds: number): Promise<R | undefined> {
  const deadline = Date.now() + seconds * 1000;
  for (let pause = 1_000, first = true; ; pause = Math.min(pause * 2, 15_000), first = false) {
    const st = await call(g, 'ebsd.Status');
    const v = (st.Volumes as R[]).find((x) => x.VolumeId === volumeId);
    if (!v || v.State !== 'in-use') return undefined;
    if (v.Attached === true) {
      if (first) return undefined; // served when AttachVolume refused it: VolumeInUse stands
      const d = (await call(g, 'ebsd.DescribeVolumes', { VolumeIds: [volumeId] })).Volumes as R[];
      const att = ((d[0]?.Attachments as R[] | undefined) ?? [])[0] ?? {};
      return {
        VolumeId: volumeId, InstanceId: att.InstanceId, Device: att.Device, State: 'attached', AttachTime: att.AttachTime, Path: v.Path,
        ...(v.Encrypted === false ? { Unencrypted: true } : {}),
      };
    }
    if (!(await mayBeServed(g, v))) throw new ServiceError('IncorrectState', `${volumeId} is recorded attached to this host and will not be served: ${String(v.Problem)}`, 400);
    if (Date.now() >= deadline) {
      throw new ServiceError('ServiceUnavailable', `${volumeId} is recorded attached to this host and still not served after ${seconds} s: ${String(v.Problem ?? 'being attached or detached')}`, 503);
    }
    await new Promise((r) => setTimeout(r, Math.min(pause, Math.max(0, deadline - Date.now()))));
  }
}

/**
 * Whether a volume `ebsd status` shows recorded attached and not served will be, without an operator: the
 * daemon retries its re-attach (Resume), waits for its KMS at start (KeyCache attaching), or another call
 * is attaching it (DescribeVolumes: attachment `attaching`). Otherwise its re-attach failed for good.
 */
async function mayBeServed(g: Globals, v: R): Promise<boolean> {
  if (v.Resume !== undefined || (v.KeyCache as R | undefined)?.State === 'attaching') return true;
  const d = (await call(g, 'ebsd.DescribeVolumes', { VolumeIds: [v.VolumeId] })).Volumes as R[];
  return ((d[0]?.Attachments as R[] | undefined) ?? []).some((x) => x.State === 'attaching');
}

function statusCommand(y: Argv): Argv {
  return y.command('status', 'Daemon, volumes and key-cache state', (b) =>
    b.option('status-timeout', { type: 'string', default: STATUS_TIMEOUT_MS / 1000, coerce: decimalSeconds('--status-timeout', 1, 600), describe: 'seconds to wait for the daemon\'s answer before saying it is stopped or stuck (exit 3; 1 to 600)' }),
  async (a) => {
    const g = a as unknown as Globals;
    // A daemon stopped (SIGSTOP) or stuck still accepts the connection: without a bound, status (a health
    // check, a script, an operator's first look) waited for ever. As `ebsd top` (--status-timeout).
    const waitMs = Number(a.statusTimeout) * 1000;
    const socket = socketPathFor(g.stateDir);
    const ctl = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; ctl.abort(new Error('timeout')); }, waitMs);
    const res = await callDaemon(socket, 'ebsd.Status', {}, { signal: ctl.signal }).catch((e: unknown) => {
      if (timedOut) throw new DaemonUnreachableError(socket, `no answer to Status within ${waitMs / 1000} s: the daemon is stopped or stuck`);
      throw e;
    }).finally(() => clearTimeout(timer));
    // A --kms-only daemon serves no volumes: no volume table (the JSON keeps its empty Volumes).
    const kmsOnly = (res.Daemon as R | undefined)?.KmsOnly === true;
    show(g, res, () =>
      [
        kv(res.Daemon),
        `Caller: ${(res.Caller as R).Arn} (uid ${(res.Caller as R).Uid})`,
        ...(kmsOnly ? [] : ['', table(res.Volumes as R[], [
          ['VOLUME ID', (r) => r.VolumeId], ['NAME', (r) => r.Name], ['SIZE', (r) => humanBytes(r.SizeBytes)], ['STATE', (r) => r.State],
          ['ENCRYPTED', encryptedCell], ['PATH', (r) => r.Path], ['OPEN', (r) => r.OpenHandles], ['KEY CACHE', keyCacheCell],
          ['LAST UNWRAP', (r) => shortTime((r.KeyCache as R | undefined)?.LastUnwrapTime)],
          ['NEXT REFRESH', (r) => shortTime((r.KeyCache as R | undefined)?.NextRefreshTime)],
          ['EXPIRES', (r) => shortTime((r.KeyCache as R | undefined)?.ExpiryTime)],
        ]),
        '(times UTC; EXPIRES = max-stale deadline: without a KMS confirmation by then the volume is impaired)',
        // What needs an operator (a re-attach that failed, a loop device left over a file no longer served): the
        // table has no room for it, and leaving it out showed such a volume as in-use and cached, nothing wrong.
        ...volumeProblems(res.Volumes as R[])]),
      ].join('\n'),
    );
  });
}

/** `ebsd status` as a table: each volume's Problem on a line of its own under it, none when no volume has one. */
function volumeProblems(volumes: R[]): string[] {
  const withProblem = volumes.filter((r) => typeof r.Problem === 'string' && r.Problem !== '');
  if (withProblem.length === 0) return [];
  return ['', 'PROBLEMS', ...withProblem.map((r) => `${printableCell(String(r.VolumeId))}: ${printableCell(String(r.Problem))}`)];
}

function auditCommands(y: Argv): Argv {
  return y.command('audit', 'Read and verify the audit trail (account root only)', (v) =>
    v
      .command(
        'tail',
        'Show the last audit events',
        (b) => b.option('n', { alias: 'limit', type: 'string', coerce: wholeNumber('-n'), default: '20', describe: 'how many of the latest events (1 to 10000)' }),
        async (a) => {
          const g = a as unknown as Globals;
          if (!Number.isInteger(a.n) || a.n < 1 || a.n > 10_000) throw new UsageError(`-n must be an integer from 1 to 10000, got ${String(a.n)}`);
          const res = await call(g, 'ebsd.AuditTail', { Limit: a.n });
          show(g, res, () =>
            table(res.Events as R[], [
              ['TIME', (r) => r.eventTime], ['SOURCE', (r) => String(r.eventSource).split('.')[0]], ['EVENT', (r) => r.eventName],
              ['PRINCIPAL', (r) => (r.userIdentity as R | undefined)?.arn ?? (r.userIdentity as R | undefined)?.invokedBy],
              ['VIA', (r) => (r.userIdentity as R | undefined)?.invokedBy], ['ERROR', (r) => r.errorCode],
              ['RESOURCE', (r) => ((r.resources as R[] | undefined) ?? []).map((x) => String(x.ARN).split(':').pop()).join(',')],
            ]),
          );
        },
      )
      .command('verify', 'Check the hash chain and signed digests of the audit log', () => {}, async (a) => {
        const g = a as unknown as Globals;
        const res = await call(g, 'ebsd.AuditVerify', {});
        if (res.ok !== true) exitCode = EXIT.AUDIT_FAILED;
        show(g, res, () =>
          res.ok
            ? `audit log OK: ${res.events} events, ${res.digests} signed digests, sealed through #${res.sealedThrough}${typeof res.prunedThrough === 'number' ? ` (pruned through #${res.prunedThrough})` : ''}`
            : auditProblemsText(res),
        );
      })
      .command(
        'prune',
        'Remove sealed audit log files whose events are all older than --before (the log then begins after them; audit verify checks it from there)',
        (b) => b.option('before', { type: 'string', demandOption: true, describe: 'an ISO 8601 date or time (2026-09-01, 2026-09-01T00:00:00Z), or an age: 90d, 12h' }),
        async (a) => {
          const g = a as unknown as Globals;
          const res = await call(g, 'ebsd.AuditPrune', { Before: pruneBefore(String(a.before)) });
          const files = res.FilesRemoved as string[];
          show(g, res, () =>
            files.length
              ? `removed ${files.length} sealed file${files.length === 1 ? '' : 's'} (${res.BytesFreed} bytes) and ${res.DigestsRemoved} digest${res.DigestsRemoved === 1 ? '' : 's'}; the log now begins after event #${res.PrunedThroughSequence}`
              : `nothing to remove: no sealed file holds only events older than ${String(a.before)} (the live file and the newest digest's events are kept)`,
          );
        },
      )
      .demandCommand(1, 'name an audit subcommand: tail, verify, prune'),
  );
}

/** `--before` of `ebsd audit prune`: an age (`90d`, `12h`) becomes the time that long ago; a date or time goes as given (the daemon checks it). */
function pruneBefore(v: string): string {
  const age = /^(\d{1,6})([dh])$/.exec(v);
  if (!age) return v;
  return new Date(Date.now() - Number(age[1]) * (age[2] === 'd' ? 86_400_000 : 3_600_000)).toISOString();
}

/** Every problem `ebsd audit verify` found, one line each: where (file:line), what, which event. */
function auditProblemsText(res: R): string {
  // A daemon from before the list answers only the first problem.
  const list = (Array.isArray(res.problems) ? res.problems : res.problem ? [res.problem] : []) as R[];
  const count = typeof res.problemCount === 'number' ? res.problemCount : list.length;
  const lines = list.map((p) => {
    const where = p.file === undefined ? '-' : `${String(p.file)}${p.line === undefined ? '' : `:${String(p.line)}`}`;
    return `  ${printableCell(where)}  ${printableCell(String(p.kind))}  #${String(p.sequence)}: ${printableCell(String(p.detail))}`;
  });
  if (count > list.length) lines.push(`  ... and ${count - list.length} more (the first ${list.length} are listed)`);
  return [`AUDIT LOG FAILED VERIFICATION: ${count} problem${count === 1 ? '' : 's'}`, ...lines].join('\n');
}

function listenAddress(v: string): { host: string; port: number } {
  try {
    return parseListenAddress(v);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** `ebsd iam` positionals, in the AWS CLI's words for the members they stand for. */
const IAM_POSITIONALS: Record<string, string> = {
  uid: 'a local uid, 0 to 4294967294',
  principal: 'user/<name> or role/<name>: the user or role the policy is embedded in',
  'policy-name': 'The name of the inline policy',
};

function iamPositional(cmd: string, name: string): string {
  if (name !== 'name') return IAM_POSITIONALS[name] ?? name;
  const [verb, what] = cmd.split(' ')[0]!.split('-');
  return `The name of the ${what} to ${verb}`;
}

const ACCESS_KEY_ID_OPTION = { type: 'string', demandOption: true, describe: 'The access key ID (AKIA…) of the secret access key' } as const;

function iamCommands(y: Argv): Argv {
  const simple = (v: Argv, cmd: string, desc: string, op: string, toBody: (a: R) => R, tableFn?: (res: R) => string): Argv =>
    // Positionals declared, or strictOptions() takes them for unknown options.
    v.command(cmd, desc, (b) => [...cmd.matchAll(/<([^>]+)>/g)].reduce((y, m) => y.positional(m[1]!, { type: 'string', describe: iamPositional(cmd, m[1]!) }), b), async (a) => {
      const g = a as unknown as Globals;
      const res = await call(g, `ebsd.Iam${op}`, toBody(a as R));
      show(g, res, tableFn ? () => tableFn(res) : undefined);
    });
  return y.command('iam', 'Users, roles, identity policies and uid mappings (account root only)', (v) => {
    simple(v, 'create-user <name>', 'Create an IAM user', 'CreateUser', (a) => ({ UserName: a.name }));
    simple(v, 'delete-user <name>', 'Delete an IAM user (and its uid mappings); refused while it has access keys or inline policies', 'DeleteUser', (a) => ({ UserName: a.name }));
    simple(v, 'list-users', 'List IAM users', 'ListUsers', () => ({}), (r) => table(r.Users as R[], [['USER', (x) => x.UserName], ['ARN', (x) => x.Arn], ['POLICIES', (x) => (x.PolicyNames as string[]).join(',')]]));
    v.command(
      'create-role <name>',
      'Create an IAM role',
      (b) => b.positional('name', { type: 'string', describe: 'The name of the role to create' }).option('max-session-duration', { type: 'string', coerce: wholeNumber('--max-session-duration'), describe: 'longest AssumeRole session, seconds (3600..43200; default 3600)' }),
      async (a) => {
        const g = a as unknown as Globals;
        show(g, await call(g, 'ebsd.IamCreateRole', { RoleName: a.name, ...(a.maxSessionDuration !== undefined ? { MaxSessionDuration: a.maxSessionDuration } : {}) }));
      },
    );
    simple(v, 'delete-role <name>', 'Delete an IAM role (and its trust policy and uid mappings); refused while it has inline policies', 'DeleteRole', (a) => ({ RoleName: a.name }));
    simple(v, 'list-roles', 'List IAM roles', 'ListRoles', () => ({}), (r) => table(r.Roles as R[], [['ROLE', (x) => x.RoleName], ['ARN', (x) => x.Arn], ['MAX SESSION', (x) => x.MaxSessionDuration], ['POLICIES', (x) => (x.PolicyNames as string[]).join(',')]]));
    v.command(
      'map-uid <uid> <principal>',
      'Map a local uid to root, user/<name>, role/<name> or an ARN',
      (b) => b.positional('uid', { type: 'string', describe: IAM_POSITIONALS.uid }).positional('principal', { type: 'string', describe: 'root, user/<name>, role/<name> or an IAM user or role ARN' }).option('session-name', { type: 'string', describe: 'roles: session name (default uid-<n>)' }),
      async (a) => {
        const g = a as unknown as Globals;
        show(g, await call(g, 'ebsd.IamMapUid', { Uid: parseUid(a.uid), Principal: a.principal, ...(a.sessionName ? { SessionName: a.sessionName } : {}) }));
      },
    );
    simple(v, 'unmap-uid <uid>', 'Remove a uid mapping (the uid is then denied everything)', 'UnmapUid', (a) => ({ Uid: parseUid(a.uid) }));
    simple(v, 'list-uids', 'List uid -> principal mappings', 'ListUidMappings', () => ({}), (r) => table(r.Mappings as R[], [['UID', (x) => x.uid], ['PRINCIPAL', (x) => x.principal], ['SESSION', (x) => x.session]]));
    v.command(
      'put-policy <principal>',
      'Attach (create or replace) an inline identity policy on user/<n> or role/<n>',
      (b) => b.positional('principal', { type: 'string', describe: IAM_POSITIONALS.principal }).option('policy-name', { type: 'string', demandOption: true, describe: 'The name of the policy document' }).option('policy-document', { type: 'string', demandOption: true, describe: 'The policy document: JSON or file://path' }),
      async (a) => {
        const g = a as unknown as Globals;
        show(g, await call(g, 'ebsd.IamPutPolicy', { Principal: a.principal, PolicyName: a.policyName, PolicyDocument: readArg(a.policyDocument, '--policy-document') }));
      },
    );
    simple(v, 'delete-policy <principal> <policy-name>', 'Remove an inline identity policy', 'DeletePolicy', (a) => ({ Principal: a.principal, PolicyName: a.policyName }));
    simple(v, 'get-policy <principal> <policy-name>', 'Show an inline identity policy', 'GetPolicy', (a) => ({ Principal: a.principal, PolicyName: a.policyName }));
    simple(v, 'list-policies <principal>', 'List inline identity policies', 'ListPolicies', (a) => ({ Principal: a.principal }));
    const keyTable = (r: R): string => table(r.AccessKeyMetadata as R[], [['USER', (x) => x.UserName], ['ACCESS KEY ID', (x) => x.AccessKeyId], ['STATUS', (x) => x.Status], ['CREATED', (x) => x.CreateDate]]);
    const userName = (b: Argv): Argv => b.option('user-name', { type: 'string', describe: 'The name of the IAM user' });
    const iam = (cmd: string, desc: string, op: string, build: (b: Argv) => Argv, toBody: (a: R) => R, tableFn?: (res: R) => string): Argv =>
      v.command(cmd, desc, build, async (a) => {
        const g = a as unknown as Globals;
        const res = await call(g, `ebsd.Iam${op}`, toBody(a as R));
        show(g, res, tableFn ? () => tableFn(res) : undefined);
      });
    // The secret is in this answer only (as `aws iam create-access-key` prints it); the daemon keeps it sealed.
    // --user-name is optional to the parser, as in `aws iam create-access-key`: the daemon decides whose key a call
    // without it makes (the caller's own in IAM; ebsd has no root access keys, so it names the flag to give).
    iam('create-access-key', 'Create an access key (AKIA…) for an IAM user, for SigV4 calls to --kms-listen; prints its secret once', 'CreateAccessKey',
      userName, (a) => (a.userName !== undefined ? { UserName: a.userName } : {}));
    iam('list-access-keys', "List access keys (of one user with --user-name; without it, every user's)", 'ListAccessKeys', userName,
      (a) => (a.userName ? { UserName: a.userName } : {}), keyTable);
    iam('update-access-key', 'Set an access key Active or Inactive', 'UpdateAccessKey',
      (b) => userName(b).option('access-key-id', ACCESS_KEY_ID_OPTION).option('status', { type: 'string', choices: ['Active', 'Inactive'], demandOption: true, describe: 'The status you want to assign to the secret access key: Active can sign calls, Inactive cannot' }),
      (a) => ({ AccessKeyId: a.accessKeyId, Status: a.status, ...(a.userName ? { UserName: a.userName } : {}) }));
    iam('delete-access-key', 'Delete an access key', 'DeleteAccessKey',
      (b) => userName(b).option('access-key-id', ACCESS_KEY_ID_OPTION),
      (a) => ({ AccessKeyId: a.accessKeyId, ...(a.userName ? { UserName: a.userName } : {}) }));
    iam('update-role', "Change a role: its MaxSessionDuration (the longest session AssumeRole grants)", 'UpdateRole',
      (b) => b.option('role-name', { type: 'string', demandOption: true, describe: 'The name of the role that you want to modify' }).option('max-session-duration', { type: 'string', coerce: wholeNumber('--max-session-duration'), demandOption: true, describe: 'seconds, 3600..43200' }),
      (a) => ({ RoleName: a.roleName, MaxSessionDuration: a.maxSessionDuration }));
    iam('update-assume-role-policy', "Set a role's trust policy: who may sts:AssumeRole it over --kms-listen", 'UpdateAssumeRolePolicy',
      (b) => b.option('role-name', { type: 'string', demandOption: true, describe: 'The name of the role to update with the new policy' }).option('policy-document', { type: 'string', demandOption: true, describe: 'The policy that grants an entity permission to assume the role: JSON or file://path' }),
      (a) => ({ RoleName: a.roleName, PolicyDocument: readArg(a.policyDocument as string, '--policy-document') }));
    return v.demandCommand(1, 'name an iam subcommand');
  });
}

function speedCommand(y: Argv): Argv {
  return y.command(
    'speed',
    'Self-test and measure the XTS engines (local, no daemon)',
    (b) => b.option('json', { type: 'boolean', default: false, describe: 'print the report as JSON (as --output json)' }).option('seconds', { type: 'string', default: 0.5, coerce: decimalSeconds('--seconds', 0.01, 600), describe: 'per measurement (0.01 to 600)' }),
    async (a) => {
      const { runSpeed } = await import('../crypto/speed.js');
      const report = await runSpeed({ seconds: Number(a.seconds) });
      if (a.json || a.output === 'json') {
        process.stdout.write(JSON.stringify(report, null, 4) + '\n');
        return;
      }
      process.stdout.write(`AES-256-XTS, single thread; engine in use: ${report.selected}\n`);
      process.stdout.write(
        table(report.engines as unknown as R[], [
          ['ENGINE', (r) => r.name], ['LIBRARY', (r) => r.library], ['UNIT', (r) => `${r.unitSize} B`], ['ENCRYPT MB/s', (r) => r.encryptMBps], ['DECRYPT MB/s', (r) => r.decryptMBps],
        ]) + '\n',
      );
    },
  );
}

// ---- main ------------------------------------------------------------------

/** The state dir the command line named (resolved), for the "is the daemon running?" hint. */
let stateDirUsed: string | undefined;

const camel = (k: string): string => k.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/**
 * Argument rules yargs does not apply itself, run before validation and before any request:
 * - an option given twice keeps its last value, as the AWS CLI does (yargs would make an array
 *   of it: `--query A --query B` crashed after the call, `--output json --output text` printed a table);
 *   options declared as arrays (--tag, --filters, positionals with ..) keep every value;
 * - a boolean flag takes no value or `=true` / `=false` (any case); `--wait=yes` was silently false;
 * - the state dir: EBSD_STATE_DIR= (empty) is unset, `--state-dir ''` is refused, a relative one is made absolute.
 */
function normalizeArgs(a: R, yy: Argv, argv: string[]): void {
  const o = (yy as unknown as { getOptions(): unknown }).getOptions() as { key: Record<string, boolean>; array: string[]; boolean: string[] };
  const arrays = new Set(o.array.flatMap((k) => [k, camel(k)]));
  for (const k of Object.keys(o.key)) {
    if (arrays.has(k)) continue;
    for (const key of new Set([k, camel(k)])) {
      const v = a[key];
      if (Array.isArray(v)) a[key] = v[v.length - 1];
    }
  }
  const bools = new Set(o.boolean);
  const end = argv.indexOf('--');
  for (const tok of end < 0 ? argv : argv.slice(0, end)) {
    const m = /^--(no-)?([^=]+)=(.*)$/s.exec(tok);
    if (!m) continue;
    const name = m[2]!;
    if (!bools.has(name)) continue;
    const negated = m[1] !== undefined;
    if (!/^(true|false)$/i.test(m[3]!)) throw new UsageError(`--${m[1] ?? ''}${m[2]} takes no value, or true or false; got "${m[3]}"`);
    const v = (m[3]!.toLowerCase() === 'true') !== negated;
    a[name] = v;
    a[camel(name)] = v;
  }
  if (typeof a.stateDir === 'string' || typeof a['state-dir'] === 'string') {
    const dir = String(a.stateDir ?? a['state-dir']);
    if (dir === '') throw new UsageError('--state-dir: empty path (leave it out for the default, or set EBSD_STATE_DIR)');
    a.stateDir = a['state-dir'] = stateDirUsed = resolvePath(dir);
  }
}

export async function main(argv: string[]): Promise<number> {
  exitCode = EXIT.OK;
  let y: Argv = yargs(argv)
    .scriptName('ebsd')
    .version(VERSION)
    .option('state-dir', { type: 'string', default: process.env.EBSD_STATE_DIR || DEFAULT_STATE_DIR, describe: 'daemon state dir (env EBSD_STATE_DIR; empty = unset)', global: true })
    .option('output', { type: 'string', choices: ['json', 'table', 'text'], describe: 'output format (default: table on a terminal, else json)', global: true })
    .option('query', { type: 'string', describe: 'pick a field: KeyMetadata.KeyId, Volumes[].VolumeId', global: true })
    .usage('$0 <command> [options]\n\nEBS-style encrypted block volumes: LUKS2 images, AES-256-XTS, a bundled KMS, FUSE block files.')
    .epilogue(`${EXIT_CODES_HELP}\n\nThe daemon must be running for every command except \`daemon\` and \`speed\`.`)
    .demandCommand(1, 'name a command (ebsd --help)')
    // Unknown flags are refused, as the AWS CLI does (`ebsd kms` checks per operation, in parseKmsArgs);
    // not while the shell asks for completions, whose words are half-typed by definition.
    .strictOptions(!argv.includes('--get-yargs-completions'))
    // An unknown subcommand (`ebsd snapshot restore x`, `ebsd iam bogus`) is refused too, never a silent exit 0.
    .strictCommands(!argv.includes('--get-yargs-completions'))
    // Repeated options, boolean values and the state dir are settled before validation and before anything is sent.
    // Not while the shell asks for completions: a half-typed `--wait=t` would print an error on every key press.
    .middleware(((a: R, yy: Argv) => (argv.includes('--get-yargs-completions') ? undefined : normalizeArgs(a, yy, argv))) as unknown as (a: R) => void, true)
    // A bad --query is a usage error before anything is sent, not after the call took effect.
    .middleware((a) => {
      if (typeof a.query === 'string') checkQuery(a.query);
    })
    .recommendCommands()
    .wrap(Math.min(120, process.stdout.columns || 100))
    // yargs' own refusals (unknown option, missing argument, bad choice) are usage errors, exit 2.
    .fail((msg, err, usage) => {
      throw err ?? new UsageError(missingPositionals(msg, usage) ?? msg);
    });
  y = daemonCommand(y);
  y = kmsCommand(y);
  y = volumeCommands(y);
  y = snapshotCommands(y, (code) => (exitCode = code));
  y = statusCommand(y);
  y = auditCommands(y);
  y = iamCommands(y);
  y = speedCommand(y);
  y = installUnitsCommand(y);
  y = completionCommand(y);
  y = topCommand(y);
  y = ebsCommands(y);
  skipHelpCache(y);
  try {
    await y.parseAsync();
    return exitCode;
  } catch (e) {
    return reportError(e, argv);
  }
}

/**
 * yargs lays out a command's whole help text before running its handler, to
 * have it ready should the command fail and show it (its command.js calls
 * `cacheHelpMessage`): ~40 ms of string-width per command here, ~65 ms for
 * the daemon's. This CLI never shows help on failure (`.fail` throws a
 * UsageError, reportError prints only the message) and never calls
 * showHelp, so the cache is skipped: `--help` lays help out when asked.
 * Guarded: a yargs without these internals keeps its behaviour.
 */
function skipHelpCache(y: Argv): void {
  const usage = (y as unknown as { getInternalMethods?: () => { getUsageInstance?: () => { cacheHelpMessage?: () => void } } })
    .getInternalMethods?.().getUsageInstance?.();
  if (usage && typeof usage.cacheHelpMessage === 'function') usage.cacheHelpMessage = () => {};
}

function reportError(e: unknown, argv: string[]): number {
  // Messages carry names and texts callers chose (tags, policy documents, remote services' messages): shown, never acted on.
  const write = (s: string): void => void process.stderr.write(`ebsd: ${printableCell(s)}\n`);
  if (e instanceof ServiceError) {
    write(`${e.awsName}: ${e.message}`);
    return exitCodeFor(e.awsName, e.status);
  }
  if (e instanceof DaemonUnreachableError) {
    const dir = stateDirUsed ?? stateDirArg(argv) ?? (process.env.EBSD_STATE_DIR || DEFAULT_STATE_DIR);
    if (/permission denied/.test(e.reason)) {
      write(`${e.message}: every directory above the socket must be searchable (the state dir is 0711)`);
      return EXIT.NO_DAEMON;
    }
    if (/stopped or stuck/.test(e.reason)) {
      // It accepts connections, so it runs: starting another would only fail on its lock.
      write(`${e.message}. Look at its log and \`systemctl status ebsd\` (a SIGSTOPped or blocked process answers nothing)`);
      return EXIT.NO_DAEMON;
    }
    write(`${e.message}. Is the daemon running? Start it with: ebsd daemon --state-dir ${dir} (or set EBSD_STATE_DIR / --state-dir to the right one)`);
    return EXIT.NO_DAEMON;
  }
  if (e instanceof UsageError || (e as Error)?.name === 'YError') {
    const m = (e as Error).message;
    const text = unknownOptions(m) ?? invalidChoices(m) ?? missingOptions(m) ?? m.replace(/\s*\n\s*/g, ' ');
    // A message that already says which help to read (`ebsd kms --help`, a usage line) needs no second pointer.
    write(/--help|\(usage: /.test(text) ? text : `${text} (see ebsd --help)`);
    return EXIT.USAGE;
  }
  const err = e as { code?: string; message?: string };
  if (err?.code === 'ENOENT' && /open '/.test(err.message ?? '')) {
    write(err.message!);
    return EXIT.USAGE;
  }
  if (err?.code === 'ERR_ARG_RANGE' || err?.code === 'ERR_ARG_TYPE') {
    write(err.message!);
    return EXIT.USAGE;
  }
  write(`internal error: ${(e as Error)?.stack ?? String(e)}`);
  return EXIT.INTERNAL;
}

/**
 * yargs' "Not enough non-option arguments: got 0, need at least 1" names neither the argument nor the
 * command. From the failing command's usage line (`$0 iam map-uid <uid> <principal>`, which yargs hands
 * `.fail` as its third argument) and the count it got: `iam map-uid: the following arguments are
 * required: <principal> (usage: ebsd iam map-uid <uid> <principal>)`, as the AWS CLI names what is missing.
 * Guarded: a yargs whose third argument has no getUsage keeps its own message.
 */
function missingPositionals(message: string, usage: unknown): string | undefined {
  const m = /^Not enough non-option arguments: got (\d+), need at least \d+$/.exec(message);
  const getUsage = (usage as { getUsage?: () => unknown } | undefined)?.getUsage;
  if (!m || typeof getUsage !== 'function') return undefined;
  const line = (getUsage.call(usage) as unknown[][] | undefined)?.[0]?.[0];
  if (typeof line !== 'string') return undefined;
  const words = line.replace(/^\$0/, 'ebsd').split(' ');
  const command = words.slice(1).filter((w) => !/^[<[]/.test(w)).join(' ');
  const missing = words.filter((w) => w.startsWith('<')).slice(Number(m[1]));
  if (!missing.length) return undefined;
  return `${command}: the following arguments are required: ${missing.join(', ')} (usage: ${words.join(' ')})`;
}

/** The last --state-dir of the command line, `--state-dir X` or `--state-dir=X`. */
function stateDirArg(argv: string[]): string | undefined {
  let dir: string | undefined;
  argv.forEach((t, i) => {
    if (t === '--state-dir' && i + 1 < argv.length) dir = argv[i + 1];
    else if (t.startsWith('--state-dir=')) dir = t.slice('--state-dir='.length);
  });
  return dir || undefined;
}

/**
 * yargs' "Invalid values:\n  Argument: output, Given: "xml", Choices: "json", ..." on one line:
 * `--output: invalid choice "xml" (choose from "json", ...)`, as the AWS CLI words it.
 */
function invalidChoices(message: string): string | undefined {
  if (!message.startsWith('Invalid values:')) return undefined;
  const args = [...message.matchAll(/Argument: ([^,]+), Given: (.*?), Choices: (.*)$/gm)];
  if (!args.length) return undefined;
  return args.map(([, name, given, choices]) => `--${name}: invalid choice ${given} (choose from ${choices!.trim()})`).join('; ');
}

/** yargs' "Missing required arguments: policy-name, policy-document" in the AWS CLI's words: "the following arguments are required: --policy-name, --policy-document". */
function missingOptions(message: string): string | undefined {
  const m = /^Missing required arguments?: (.*)$/.exec(message);
  if (!m) return undefined;
  return `the following arguments are required: ${m[1]!.split(', ').map((o) => (o.length === 1 ? `-${o}` : `--${o}`)).join(', ')}`;
}

/** yargs' "Unknown arguments: bogus, kye-id" in the AWS CLI's words: "Unknown options: --bogus, --kye-id". */
function unknownOptions(message: string): string | undefined {
  const m = /^Unknown arguments?: (.*)$/.exec(message);
  if (!m) return undefined;
  // yargs names a kebab-case option twice (such-flag, suchFlag): once is enough.
  const names = [...new Set(m[1]!.split(', ').map((o) => pascalToKebab(o)))];
  return `Unknown options: ${names.map((o) => (o.length === 1 ? `-${o}` : `--${o}`)).join(', ')}`;
}

main(hideBin(process.argv)).then(
  (code) => { process.exitCode = code; },
  (e) => { process.stderr.write(`ebsd: internal error: ${String(e)}\n`); process.exitCode = EXIT.INTERNAL; },
);

