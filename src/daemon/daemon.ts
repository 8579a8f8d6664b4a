import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { KmsService } from '../kms/kms-core.js';
import type { AuthzHandles } from '../kms/authz/index.js';
import { openKms, type Kms } from '../kms/open-kms.js';
import { verifyAuditLogOffThread } from '../kms/audit/verify.js';
import { KeyedMutex } from '../util/lock.js';
import type { Caller } from '../kms/types.js';
import { createHash } from 'node:crypto';
import { selectXtsEngine } from '../crypto/xts-engine.js';
import { isNativeAvailable, nativeLoadError } from '../native/addon.js';
import { VolumeManager, type VolumeAuditEvent } from '../volume/volume-manager.js';
import { Catalog } from '../volume/catalog.js';
import type { XtsEngine } from '../crypto/xts.js';
import { KmsCoreKeyService, type KeyService } from '../volume/key-service.js';
import type { AwsKeyService } from '../volume/aws-key-service.js';
import { isUnreachable } from '../volume/unreachable.js';
import { HostResolver } from './host-resolver.js';
import { DEFAULT_KEY_CACHE_MAX_STALE_MS, DEFAULT_KEY_CACHE_TTL_MS } from '../volume/key-cache.js';
import { BlockFileSystem, FuseMount, earlierDeadMounts, readMountRecord, writeMountRecord } from '../fuse/index.js';
import { StaleUsers, deletedVolumeProblem, volumeStaleProblem, type StaleUsersSeen, type VolumeStaleUsers } from './stale-users.js';
import { EbsdError } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { checkDaemonConfig, keyCacheMaxStaleRaised, DEFAULT_KMS_PROBE_INTERVAL_MS, type DaemonConfig } from './config.js';
import { PidLock, prepareStateDir, statePaths, type StatePaths } from './state-dir.js';
import { ControlServer, type PeerIdentity } from './control-server.js';
import { decodeKmsRequest, wipeRequestSecrets } from './aws-json.js';
import { auditPruneEvent, deniedEvent, signManifestsEvent, SIGN_EVENT_IDS, iamEvent, iamEventName, isIamOperation, refusalKey, refusalParty, refusedKmsRequestEvent, refusedKmsRequestReason, throttledEvent, volumeEvent } from './audit-events.js';
import { SourceSnapshotAuthz } from './restore-authz.js';
import { describingStore } from '../snapshot/snapshot-view.js';
import { RefusedManifestWarnings } from '../snapshot/refused-snapshot.js';
import { DryRunOperation, Ec2Authorizer, UnauthorizedOperation } from './ec2-authz.js';
import { judgeRemoteKeyUse, RemoteKeyNames } from './remote-key-names.js';
import { ResumeRetry } from '../volume/resume-retry.js';
import type { RefusalSummary } from './connection-guard.js';
import { Ec2RequestError, isEc2Operation, parseEc2Request, VOLUME_ID_RE, type CreateVolumeInput, type DescribeVolumesInput, type Ec2Request } from './ec2-requests.js';
import { checkImageSizeFits, parseVolumeSize } from '../volume/size.js';
import { DataPathFirst, KMS_RATE_WHILE_IO_BUSY } from './data-path-first.js';
import { KmsListener } from './kms-listener.js';
import { SnapshotRestore } from '../snapshot/restore.js';
import { SnapshotCopier } from '../snapshot/copy.js';
import { copySnapshot, parseCopySnapshotRequest } from './copy-snapshot-api.js';
import { AccessKeyStore } from '../kms/sts/access-keys.js';
import { TrustPolicies } from '../kms/sts/trust-policies.js';
import { StsService } from '../kms/sts/sts-service.js';
import type { DaemonMetrics } from './metrics.js';
import { SdNotify } from './sd-notify.js';
import type { KmsCore } from '../kms/types.js';
import { openSnapshotStore } from '../snapshot/open-store.js';
import { errInfo } from '../volume/errors.js';
import { ManifestKeyUnavailable, ManifestSigner, signedManifests, withoutManifestMacs } from '../snapshot/manifest-mac.js';
import { ManifestKeyOpener } from '../snapshot/manifest-key-opener.js';
import { signManifest, surveyManifestMacs } from '../snapshot/sign-manifests.js';
import { SnapshotGc, type CollectableStore } from '../snapshot/gc.js';
import { SnapshotManager, type SnapshotAuditEvent } from '../snapshot/snapshot-manager.js';
import { CowMemory, resolveCowBudget } from '../snapshot/cow-memory.js';
import { SNAPSHOT_OPS, SnapshotApi, parseSnapshotRequest, snapshotEvent, type SnapshotRequest } from './snapshot-api.js';
import { EbsApi, openEbsApi } from './ebs-api.js';
import { hardenProcess, setIoFlusherAtStart, type StartSecrets } from './process-hardening.js';
import { RequestAudit } from './request-audit.js';
import { DEFAULT_STOP_TIMEOUT_MS, StopDeadline } from './stop-deadline.js';

export { VERSION } from './config.js';
import { VERSION } from './config.js';
import { faultHang } from '../util/fault-point.js';
/** The largest uid a mapping may name: uid_t is 32 bits and 2^32-1 is (uid_t)-1, "no uid". */
export const MAX_UID = 2 ** 32 - 2;

/** The IAM role this host acts as: grantee and retiring principal of attach grants (docs/architecture.md §5.3, §6.2). */
export const HOST_ROLE = 'ebsd-host';
/** How often the daemon looks for its FUSE mount taken away from outside (README "State directory"). */
const MOUNT_WATCH_MS = 5_000;
const HOST_HOUSEKEEPING_POLICY = 'ebsd-host-list-retirable-grants';
const HOST_HOUSEKEEPING_DOC = JSON.stringify({
  Version: '2012-10-17',
  Statement: [{ Sid: 'FindOwnAttachGrants', Effect: 'Allow', Action: 'kms:ListRetirableGrants', Resource: '*' }],
});
/** The shared key check (docs/architecture.md §6.3) reads the state of each key in use: one DescribeKey per key per TTL. */
const HOST_KEY_STATE_POLICY = 'ebsd-host-describe-keys';
const HOST_KEY_STATE_DOC = JSON.stringify({
  Version: '2012-10-17',
  Statement: [{ Sid: 'ReadKeyStates', Effect: 'Allow', Action: 'kms:DescribeKey', Resource: '*' }],
});

/**
 * Control API targets (X-Amz-Target), all `POST /` with a JSON body:
 *
 *   TrentService.<Op>        every KMS operation, AWS JSON 1.1 (blobs base64)
 *   ebsd.CreateVolume        EC2 names and shapes: CreateVolume, DescribeVolumes,
 *   ebsd.DescribeVolumes     DescribeVolumeStatus, DeleteVolume, AttachVolume,
 *   ...                      DetachVolume, ModifyVolume
 *   ebsd.Status              daemon, volumes, key-cache state
 *   ebsd.AuditTail           last N audit events        (account root only)
 *   ebsd.AuditVerify         hash chain + signed digests (account root only)
 *   ebsd.AuditPrune          remove sealed log files older than Before (account root only)
 *   ebsd.Iam<Op>             CreateUser, DeleteUser, ListUsers, CreateRole, UpdateRole,
 *                            DeleteRole, ListRoles, PutPolicy, DeletePolicy, GetPolicy, MapUid,
 *                            UnmapUid, ListUidMappings      (account root only)
 *
 * The caller is the socket peer's uid (SO_PEERCRED) mapped through identities.json.
 * An unmapped uid is refused everything and every refusal is audited.
 */
const VOLUME_OPS = new Set(['CreateVolume', 'DescribeVolumes', 'DescribeVolumeStatus', 'DeleteVolume', 'AttachVolume', 'DetachVolume', 'ModifyVolume', 'DescribeVolumesModifications']);
/** The daemon's other own operations (ebsd.<op>; ebsd.Iam<op> are audit-events.ts isIamOperation's). */
const EBSD_OPS = new Set(['CopySnapshot', 'Status', 'AuditTail', 'AuditVerify', 'AuditPrune', 'SignManifests']);
/** The host role's policy that lets it make and check manifest MACs with the embedded KMS's key of --snapshot-manifest-key. */
const HOST_MANIFEST_MAC_POLICY = 'ebsd-snapshot-manifest-mac';

export class Daemon {
  private lock: PidLock | undefined;
  /** The KMS as opened (src/kms/open-kms.ts); `kms` is its core and `authz` its authorization engine. */
  private opened: Kms | undefined;
  private kms: KmsService | undefined;
  /** `ebsd audit verify` runs one at a time, on a thread the stop ends (doStop). */
  private readonly verifying = new KeyedMutex();
  private readonly verifyAbort = new AbortController();
  private authz: AuthzHandles | undefined;
  private mgr: VolumeManager | undefined;
  /** Snapshots of this host's volumes (docs/architecture.md §12). */
  private snapshots: SnapshotManager | undefined;
  private snapshotApi: SnapshotApi | undefined;
  /** CreateVolume with SnapshotId, CopySnapshot (src/snapshot/restore.ts, copy.ts). */
  private restore: SnapshotRestore | undefined;
  private copier: SnapshotCopier | undefined;
  /** CreateVolume with SnapshotId (and CopySnapshot): what the caller needs on the source snapshot and its key. */
  private sourceSnapshotAuthz: SourceSnapshotAuthz | undefined;
  private ec2Authz: Ec2Authorizer | undefined;
  private bfs: BlockFileSystem | undefined;
  private fuse: FuseMount | undefined;
  private server: ControlServer | undefined;
  private listener: KmsListener | undefined;
  /** Callers' KMS and EBS direct calls wait while the volume data path is busy (data-path-first.ts); undefined under --kms-only. */
  private dataPathFirst: DataPathFirst | undefined;
  private accessKeys: AccessKeyStore | undefined;
  private trust: TrustPolicies | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private readonly paths: StatePaths;
  private readonly startedAt = Date.now();
  private xtsEngineName = 'none';
  private get writeBehind(): boolean {
    return this.cfg.writeBehind ?? true;
  }
  private host: Caller | undefined;
  /** Volume keys from another KMS (--kms-endpoint); the embedded core otherwise. */
  private remoteKms: AwsKeyService | undefined;
  /** With --kms-endpoint: key names resolved to key ARNs for the local key check (remote-key-names.ts). */
  private remoteKeyNames: RemoteKeyNames | undefined;
  /** Set while a host with --kms-endpoint waits for its KMS to answer at start (host-resolver.ts). */
  private hostResolver: HostResolver | undefined;
  /** The key of --snapshot-manifest-key refused once the host's KMS answered after the start (openManifestSigner). */
  private manifestKeyRefusal: { Time: string; LastError: string; AwsName?: string } | undefined;
  /** Volumes recorded attached whose re-attach the KMS did not answer: retried with back-off (resume-retry.ts). */
  private resumeRetry: ResumeRetry | undefined;
  /** Why the re-attach at start of a volume recorded attached failed for good (not retried): shown by status until it is served. */
  private readonly resumeFailures = new Map<string, string>();
  /** Meanwhile: the volumes the catalog records as attached here, shown as waiting in `ebsd status`. */
  private waitingVolumes: { VolumeId: string; SizeBytes: number; KmsKeyId: string; Encrypted: boolean }[] = [];
  private xtsEngine: XtsEngine | undefined;
  private stopping: Promise<void> | undefined;
  /** The step doStop is at, for the log of a stop that outlasts its deadline. */
  private stopStep = 'not begun';
  /** Armed by the first request to stop (runDaemon's signal, or stop()); see stop-deadline.ts. */
  readonly deadline: StopDeadline;
  /** Operations (README "Running in production"): metrics when --metrics-listen, readiness when $NOTIFY_SOCKET. */
  /** Made in start() with --metrics-listen only: prom-client (and what it loads) is read then, not by every daemon. */
  private metrics: DaemonMetrics | undefined;
  private readonly notify: SdNotify;
  /** The KMS core as every caller in here uses it: metered when metrics are on. */
  private kmsCore: KmsCore | undefined;
  /** The KMS core's operations (TrentService.<op>). */
  private kmsOps: ReadonlySet<string> = new Set();
  /** Where /metrics is served (Status shows it; `ebsd top` reads it). */
  private metricsUrl: string | undefined;
  /** Where --kms-listen bound (Status shows it: with port 0 it is known only once bound). */
  private kmsUrl: string | undefined;
  /** Snapshot blocks and manifests (--snapshot-store) and their collector; none on a --kms-only daemon. */
  private snapshotStore: CollectableStore | undefined;
  /** The store as opened, manifests neither signed nor verified: what sign-manifests reads (manifest-mac.ts). */
  private rawSnapshotStore: CollectableStore | undefined;
  /** With --snapshot-manifest-key: signs and verifies every manifest (docs/architecture.md §13.5). */
  private manifestSigner: ManifestSigner | undefined;
  /** Retries opening the manifest key when the KMS did not answer at start (manifest-key-opener.ts). */
  private manifestKeyOpener: ManifestKeyOpener | undefined;
  private snapshotGc: SnapshotGc | undefined;
  private gcTicker: NodeJS.Timeout | undefined;
  /** Looks for the FUSE mount taken away from outside (mountLost), so the log says so without anyone asking. */
  private mountWatch: NodeJS.Timeout | undefined;
  private mountLostLogged = false;
  /** What still holds volume files no longer served (stale-users.ts); made once the mount is up. */
  private staleUsersOf: StaleUsers | undefined;
  /** The EBS direct APIs (target `ebs.<Operation>`); absent with --kms-only or --kms-endpoint. */
  private ebs: EbsApi | undefined;
  /** EC2 operations and the events they write (docs/architecture.md §5.8): refused while the audit log fails, answered once written. */
  /** CreateVolume ClientTokens whose create is running: a repeat waits for it, then finds its volume (VolumeManager.repeatCreate). */
  private readonly creatingTokens = new Map<string, Promise<unknown>>();
  private readonly ec2Audit = new RequestAudit(() => {
    const h = this.kms?.audit.health();
    return h?.State === 'failing' ? `${h.LastError ?? 'disk full'}; free space in ${this.paths.root}` : undefined;
  });
  /** Taken from the environment at start (process-hardening.ts), until the KMS is open. */
  private secrets: StartSecrets = {};

  constructor(private readonly cfg: DaemonConfig, private readonly log: Logger) {
    this.paths = statePaths(cfg.stateDir);
    this.notify = new SdNotify(log);
    this.deadline = new StopDeadline(cfg.stopTimeoutMs ?? DEFAULT_STOP_TIMEOUT_MS, () => this.stopStep);
  }

  private fail!: (e: Error) => void; // declared before `failed`, whose initializer sets it
  /** Resolves with the error when a part the daemon cannot run without dies (the KMS front-end worker). */
  readonly failed = new Promise<Error>((r) => (this.fail = r));

  async start(): Promise<void> {
    checkDaemonConfig(this.cfg);
    if (!isNativeAvailable()) {
      // SO_PEERCRED is how callers are identified; without it nobody can be judged.
      throw new EbsdError('NATIVE_ADDON_MISSING', `the native addon is required to identify control-socket callers: ${nativeLoadError?.message}`);
    }
    // Before anything is spawned or opened: no core dumps, the HSM passphrase out of the environment.
    this.secrets = hardenProcess(this.log);
    if (this.cfg.metricsListen !== undefined) this.metrics = new (await import('./metrics.js')).DaemonMetrics();
    // Before the FUSE thread and the KMS workers exist: they inherit it. A KMS-only daemon serves no
    // volume file, so no write-back goes through it: nothing to set, and no warning that would say otherwise.
    if (!this.cfg.kmsOnly) await setIoFlusherAtStart(this.log);
    const { created, lock, removedTemps } = await prepareStateDir(this.paths);
    this.lock = lock;
    if (lock.pidFileProblem) this.log.warn({ pidFile: this.paths.pidFile }, lock.pidFileProblem);
    if (removedTemps.length) this.log.info({ removed: removedTemps }, 'removed temp files of interrupted atomic writes');
    try {
      await this.startServices(created);
    } catch (e) {
      await this.stop().catch((err) => this.log.error({ err }, 'cleanup after failed start'));
      throw e;
    }
  }

  private async startServices(created: boolean): Promise<void> {
    const { cfg, log, paths } = this;
    if (cfg.allowUnencrypted) {
      log.warn({ allowUnencrypted: true }, '--allow-unencrypted: this daemon will create and attach PLAINTEXT volumes (--cipher none) and begin unencrypted EBS direct snapshots on request; for measurement only');
    }
    const { hsmPassphrase } = this.secrets;
    this.secrets = {}; // needed to open the domain only
    this.opened = await openKms({
      stateDir: paths.root, kmsDir: paths.kms, logger: log, ...(cfg.region ? { region: cfg.region } : {}), ...(hsmPassphrase !== undefined ? { passphrase: hsmPassphrase } : {}),
      ...(cfg.refusalWindowMs !== undefined ? { auditRefusalWindowMs: cfg.refusalWindowMs } : {}),
    });
    this.authz = this.opened;
    this.kms = this.opened.core;
    // From the first batch: the start's own events (the re-attach of recorded volumes) are written before the listener starts.
    if (this.metrics) this.kms.audit.onBatchWritten = this.metrics.observeAuditBatch;
    const ids = this.authz.identities;
    if (!ids.listRoles().some((r) => r.RoleName === HOST_ROLE)) await ids.createRole(HOST_ROLE);
    // The host lists the grants it may retire, so a restart finds attach grants a crash left behind.
    if (ids.getPolicy(ids.roleArn(HOST_ROLE), HOST_HOUSEKEEPING_POLICY) === undefined) {
      await ids.attachPolicy(ids.roleArn(HOST_ROLE), HOST_HOUSEKEEPING_POLICY, HOST_HOUSEKEEPING_DOC);
    }
    if (ids.getPolicy(ids.roleArn(HOST_ROLE), HOST_KEY_STATE_POLICY) === undefined) {
      await ids.attachPolicy(ids.roleArn(HOST_ROLE), HOST_KEY_STATE_POLICY, HOST_KEY_STATE_DOC);
    }
    const kms = this.kms;
    const kmsOps = new Set(kms.operations());
    this.kmsOps = kmsOps;
    this.kmsCore = this.metrics ? this.metrics.meterKms(kms, (op) => kmsOps.has(op)) : kms;
    if (created) log.info({ stateDir: paths.root, accountId: ids.accountId, region: ids.region }, 'initialised a new state dir (uid 0 -> account root)');
    this.accessKeys = await AccessKeyStore.open(paths.root, this.kms.hsm, ids);
    this.trust = await TrustPolicies.open(paths.root, ids, this.log);
    // With its RoleId: a key policy naming the role is bound to that id (src/kms/authz/principal-bindings.ts).
    const hostRoleId = ids.uniqueIdOf(ids.roleArn(HOST_ROLE));
    let host: Caller = { arn: ids.roleArn(HOST_ROLE), accountId: ids.accountId, type: 'Role', ...(hostRoleId ? { principalId: hostRoleId } : {}) };
    if (cfg.kmsEndpoint !== undefined) {
      // The host acts as whoever the AWS credential chain makes it; the remote KMS's key policies decide.
      // The AWS SDK is loaded only here: a daemon with the bundled KMS starts without it (~0.3 s less).
      const { AwsKeyService } = await import('../volume/aws-key-service.js');
      this.remoteKms = new AwsKeyService({
        endpoint: cfg.kmsEndpoint, ...(cfg.kmsRegion ? { region: cfg.kmsRegion } : {}),
        ...(cfg.kmsRequestTimeoutMs !== undefined ? { requestTimeoutMs: cfg.kmsRequestTimeoutMs } : {}),
        ...(cfg.hostPrincipalArn !== undefined ? { hostPrincipalArn: cfg.hostPrincipalArn } : {}), logger: log.child({ component: 'remote-kms' }),
      });
      this.remoteKms.startIdleProbe(cfg.kmsProbeIntervalMs ?? DEFAULT_KMS_PROBE_INTERVAL_MS);
      try {
        host = await this.remoteKms.hostPrincipal();
        log.info({ kmsEndpoint: cfg.kmsEndpoint, hostPrincipal: host.arn }, 'volume keys from a remote KMS');
      } catch (e) {
        // Missing credentials or a refusal stop the start; a KMS that does not answer yet does not.
        if (cfg.kmsOnly || !isUnreachable(e)) throw e;
        await this.mountVolumes();
        const recorded = (await Catalog.load(join(paths.root, 'volumes'), log)).list().filter((r) => r.state === 'in-use' && r.attachment);
        this.waitingVolumes = recorded.map((r) => ({ VolumeId: r.volumeId, SizeBytes: r.size, KmsKeyId: r.kmsKeyId, Encrypted: !r.unencrypted }));
        const remote = this.remoteKms;
        this.hostResolver = new HostResolver(remote, log.child({ component: 'remote-kms' }), (h) => this.openVolumes(h), e);
      }
    }
    if (!this.hostResolver) {
      this.host = host;
      if (!cfg.kmsOnly) await this.startVolumeService(host);
    }

    this.server = new ControlServer(paths.socket, (t, b, p) => this.handleCounted(t, b, p), log.child({ component: 'control' }), {
      ...(cfg.refusalWindowMs !== undefined ? { limits: { refusalWindowMs: cfg.refusalWindowMs } } : {}),
      onRefusals: (rows) => this.auditThrottled(rows),
      isMapped: (uid) => this.authz!.identities.callerForUid(uid).type !== 'Unknown',
      onUnreadableBody: async (target, err, peer) => {
        if (!target.startsWith('TrentService.')) return;
        const caller = this.authz!.identities.callerForUid(peer.uid, peer.userAgent ? { userAgent: peer.userAgent } : {});
        await this.auditUndecodable(target.slice('TrentService.'.length), caller, err, peer);
      },
    });
    await this.server.listen();
    const metricsAt = await this.startMetrics();
    let kmsUrl: string | undefined;
    if (!cfg.kmsOnly) this.dataPathFirst = new DataPathFirst({ requests: () => this.bfs?.requests ?? 0, inFlight: () => this.bfs?.inflightAll ?? 0, ratePerSecond: cfg.kmsRateWhileIoBusy ?? KMS_RATE_WHILE_IO_BUSY });
    if (cfg.kmsListen) {
      const kms = this.kms;
      const tls = cfg.tls ? { cert: await fsp.readFile(cfg.tls.certFile), key: await fsp.readFile(cfg.tls.keyFile) } : undefined;
      this.listener = new KmsListener({
        ...cfg.kmsListen, ...(tls ? { tls } : {}), region: ids.region, accountId: ids.accountId,
        sts: new StsService(ids, this.accessKeys, this.trust, kms.hsm,
          (caller, action, resource, context) => this.authz!.authorizer.evaluator.evaluate({ action, caller, resource, ...(context ? { context } : {}) }),
          { secureTransport: tls !== undefined }),
        kms: (op, req, caller, requestId) => this.kmsCore!.call(op, req, caller, requestId),
        audit: (ev) => kms.audit.append(ev),
        auditRefusal: (key, ev, party) => kms.audit.appendRefusal(key, ev, party),
        ...(this.ebs ? { ebs: (op: string, members: Record<string, unknown>, caller: Caller, requestId: string) => this.ebs!.call(op, members, caller, { requestId }) as Promise<Record<string, unknown>> } : {}),
        log: log.child({ component: 'kms-listener' }),
        frontThreads: cfg.kmsFrontThreads ?? 1,
        ...(this.dataPathFirst ? { admit: this.dataPathFirst.admit.bind(this.dataPathFirst) } : {}),
        ...(cfg.refusalWindowMs !== undefined ? { limits: { refusalWindowMs: cfg.refusalWindowMs } } : {}),
        onFatal: (e) => this.fail(e),
      });
      const a = await this.listener.listen();
      kmsUrl = `${a.protocol}://${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
      this.kmsUrl = kmsUrl;
    }
    if (!cfg.kmsOnly) {
      // Reads /proc/self/mountinfo only (never the mount), every MOUNT_WATCH_MS, until the mount is seen lost: it
      // cannot come back for this daemon (FuseMount.lost), so there is nothing left to watch for. Not a stat of the
      // mount dir's st_dev instead: a mount stacked over ours would change it with ours still there, and a stat of
      // our own mount is a FUSE request this process must serve (a sync one from this thread never returns).
      this.mountWatch = setInterval(() => {
        if (this.mountLost()) clearInterval(this.mountWatch);
      }, MOUNT_WATCH_MS);
      this.mountWatch.unref();
    }
    const tickMs = cfg.tickMs ?? 60_000;
    this.ticker = setInterval(() => void this.kms?.tick().catch((err) => log.error({ err }, 'KMS tick failed')), tickMs);
    this.ticker.unref();
    log.info({ socket: paths.socket, mount: cfg.kmsOnly ? undefined : cfg.mountDir, kmsOnly: cfg.kmsOnly ?? false, ...(kmsUrl ? { kmsUrl } : {}), xtsEngine: this.xtsEngineName, allowUnencrypted: cfg.allowUnencrypted, writeBehind: this.writeBehind, version: VERSION, ...(metricsAt ? { metrics: metricsAt } : {}) }, 'ebsd daemon ready');
    // Ready for systemd only now: the mount is up, recorded volumes are back, the sockets answer.
    await this.notify.ready(cfg.kmsOnly ? 'serving the KMS' : `serving ${this.mgr?.attachedVolumeIds().length ?? 0} volume(s) at ${cfg.mountDir}`);
    this.notify.startWatchdog();
  }

  /**
   * Opens the key of --snapshot-manifest-key as the host (manifest-mac.ts). With the embedded KMS the
   * host role is first given kms:GenerateMac and kms:VerifyMac on that key alone (an identity policy,
   * which the key's policy must allow, as the default key policy does); with a remote KMS the key's
   * owner grants the host that (README "Snapshot store").
   */
  private async openManifestSigner(signer: ManifestSigner, keys: KeyService, host: Caller): Promise<void> {
    if (!this.remoteKms) {
      const ids = this.authz!.identities;
      let arn: string | undefined;
      try {
        arn = (await keys.describeKey({ KeyId: signer.keyId }, host)).KeyMetadata.Arn;
      } catch {
        // signer.open below says what is wrong with the key.
      }
      if (arn !== undefined) {
        const doc = JSON.stringify({ Version: '2012-10-17', Statement: [{ Sid: 'SnapshotManifestMac', Effect: 'Allow', Action: ['kms:GenerateMac', 'kms:VerifyMac'], Resource: arn }] });
        if (ids.getPolicy(ids.roleArn(HOST_ROLE), HOST_MANIFEST_MAC_POLICY) !== doc) await ids.attachPolicy(ids.roleArn(HOST_ROLE), HOST_MANIFEST_MAC_POLICY, doc);
      }
    }
    try {
      await signer.open(keys, host);
    } catch (e) {
      // A refusal stops the start (exit 9); a KMS that did not answer does not: the signer stays closed
      // (every manifest read or write fails, nothing is trusted) and is opened again in the background.
      if (!(e instanceof ManifestKeyUnavailable)) {
        // At start a refusal stops the daemon (exit 9). Once started, while the host's KMS did not answer at start
        // (HostResolver), it must not: thrown here it failed every try of openVolumes, so the recorded volumes were
        // never served and the KMS was shown unreachable. As a refusal met by ManifestKeyOpener's later try: volumes
        // are served, every snapshot manifest read or write fails until a restart with a key this host may use.
        if (!this.hostResolver) throw e;
        const aws = (e as { awsName?: unknown }).awsName ?? (e as { cause?: { awsName?: unknown } }).cause?.awsName;
        this.manifestKeyRefusal = { Time: new Date().toISOString(), LastError: (e as Error).message, ...(typeof aws === 'string' ? { AwsName: aws } : {}) };
        this.log.error({ err: errInfo(e), snapshotManifestKey: signer.keyId }, 'the KMS refused the key of --snapshot-manifest-key: snapshot manifests cannot be read or written; restart the daemon with a key it may use');
        return;
      }
      if (!this.manifestKeyOpener) {
        this.manifestKeyOpener = new ManifestKeyOpener({ signer, open: () => signer.open(keys, host), log: this.log.child({ component: 'snapshot-manifest-key' }) });
        this.manifestKeyOpener.start(e);
      }
      return;
    }
    this.log.info({ snapshotManifestKey: signer.keyArn, store: this.snapshotStore?.location }, 'snapshot manifests are signed and verified with a KMS HMAC key');
  }

  /** FUSE mount and volume manager; a `--kms-only` daemon has neither. */
  private async startVolumeService(host: Caller): Promise<void> {
    await this.mountVolumes();
    await this.openVolumes(host);
  }

  /** The snapshot store and the FUSE mount, empty until openVolumes. */
  private async mountVolumes(): Promise<void> {
    const { cfg, log, paths } = this;
    // Before the mount: a bad --snapshot-store is refused with nothing started.
    const raw = await openSnapshotStore(cfg.snapshotStore, paths.root);
    this.rawSnapshotStore = raw;
    // Every reader and writer below (snapshots, restore, copy, the collector, EBS direct) goes through
    // the signing store; its key is opened with the host principal (openVolumes), and until then every
    // manifest read or write fails rather than being trusted unchecked.
    if (cfg.snapshotManifestKey !== undefined) this.manifestSigner = new ManifestSigner(cfg.snapshotManifestKey);
    this.snapshotStore = this.manifestSigner ? signedManifests(raw, this.manifestSigner) : withoutManifestMacs(raw);
    const store = this.snapshotStore;
    // A remote store is probed, not awaited: an S3 outage must not keep volumes from being served.
    void store.check?.().then(() => log.info({ store: store.location }, 'snapshot store answers'), (err) => log.warn({ err, store: store.location }, 'snapshot store does not answer; snapshots will fail until it does'));
    const gc = new SnapshotGc(store, { log: log.child({ component: 'snapshot-gc' }), ...(cfg.snapshotGcGraceMs !== undefined ? { graceMs: cfg.snapshotGcGraceMs } : {}) });
    this.snapshotGc = gc;
    // Orphans (crashes, young blocks of deleted snapshots) are freed once per grace period (at least once a minute apart).
    this.gcTicker = setInterval(() => void gc.sweep().catch((err) => log.error({ err, store: store.location }, 'snapshot store sweep failed')), Math.max(gc.graceMs, 60_000));
    this.gcTicker.unref();
    const engine = selectXtsEngine('auto', log);
    this.xtsEngine = engine;
    this.xtsEngineName = engine.name;
    const bfs = new BlockFileSystem({ logger: log.child({ component: 'fuse' }), writeBehind: this.writeBehind, ...(this.metrics ? { observe: this.metrics.observeVolume } : {}) });
    this.bfs = bfs;
    this.fuse = new FuseMount(cfg.mountDir, bfs.ops(), { logger: log.child({ component: 'fuse' }) });
    // Where the previous daemon of this state dir served: read before this mount is recorded over it.
    const previous = await readMountRecord(paths.root, log.child({ component: 'fuse' }));
    await this.fuse.mount();
    const fuse = this.fuse;
    const at = fuse.mountedAt!;
    // A previous daemon killed under a loop device and this one started with another --mount: its dead mount
    // is still at the old path, and the loop devices over its files are named under it (mount-record.ts).
    const earlier = await earlierDeadMounts(previous, at, log.child({ component: 'fuse' }));
    this.staleUsersOf = new StaleUsers({
      mountedAt: () => fuse.mountedAt, lost: () => fuse.lost(),
      cutOffHandles: (id) => bfs.cutOffHandles(id), cutOffVolumeIds: () => bfs.cutOffVolumeIds(), earlier,
    });
    const device = fuse.device;
    const source = fuse.source;
    if (device !== undefined && source !== undefined) {
      // Kept with the earlier ones still there, so a second restart elsewhere still looks under them. Not written
      // (the state dir's disk full): the start goes on, as without a pid file (state-dir.ts); only the next start's
      // look for loop devices under this mount dir is lost.
      await writeMountRecord(paths.root, { MountDir: at, Device: device, Source: source, Earlier: earlier }).catch((err: Error) => {
        log.warn({ err: err.message, stateDir: paths.root }, 'could not record the mount dir in mount.json; the next start will not look for loop devices left over files of this mount if it is given another --mount');
      });
    }
  }

  /**
   * The volume manager (recovery, grant sweeps), snapshots, and the re-attach of recorded volumes: needs the host principal.
   * All or nothing: the parts are built in locals and published together at the end (`this.mgr` last, the
   * flag the volume API tests), so a request never finds some of them; on a failure the parts opened are
   * closed and nothing is published, so HostResolver's next try opens everything afresh, not over a
   * VolumeManager still open on the same state dir (docs/architecture.md §8).
   */
  private async openVolumes(host: Caller): Promise<void> {
    const { cfg, log, paths } = this;
    const ids = this.authz!.identities;
    const engine = this.xtsEngine!;
    const bfs = this.bfs!;
    const store = this.snapshotStore!;
    const gc = this.snapshotGc!;
    // What the FUSE callbacks below see; set as each part opens.
    let mgr: VolumeManager | undefined;
    let snapshots: SnapshotManager | undefined;
    let copier: SnapshotCopier | undefined;
    let ebs: EbsApi | undefined;
    // Remote calls are metered here; the embedded core's through kmsCore.
    const keyService = this.remoteKms ? (this.metrics ? this.metrics.meterKeyService(this.remoteKms) : this.remoteKms) : new KmsCoreKeyService(this.kmsCore!);
    try {
      // Before anything reads a manifest: a key that is missing, not HMAC or not usable stops the start
      // (a KMS that does not answer does not: the key is opened in the background, manifests refused meanwhile).
      if (this.manifestSigner) await this.openManifestSigner(this.manifestSigner, keyService, host);
      const raised = keyCacheMaxStaleRaised(cfg);
      if (raised) log.warn(raised);
      mgr = await VolumeManager.open({
        stateDir: paths.root,
        keyService,
        hostPrincipal: host,
        // Op grants with a remote KMS only: the embedded KMS judges each step's Decrypt or ReEncrypt as the caller's (op-grants.ts).
        opGrants: this.remoteKms !== undefined,
        xtsEngine: engine,
        region: ids.region,
        ...(cfg.keyCacheTtlMs !== undefined ? { keyCacheTtlMs: cfg.keyCacheTtlMs } : {}),
        ...(cfg.keyCacheMaxStaleMs !== undefined ? { keyCacheMaxStaleMs: cfg.keyCacheMaxStaleMs } : {}),
        ...(cfg.volumeModificationWindowMs !== undefined ? { modificationWindowMs: cfg.volumeModificationWindowMs } : {}),
        allowUnencrypted: cfg.allowUnencrypted,
        openCount: (id) => bfs.openCount(id),
        // The FUSE table changes inside the volume's mutex, with the attachment (attach, detach, resume, close).
        // Snapshots track every attached volume's writes (docs/architecture.md §12.3).
        expose: (dev) => {
          bfs.add(dev);
          snapshots?.volumeAttached(dev);
        },
        hide: async (id, { force, shutdown }) => {
          await bfs.remove(id, { force, ...(shutdown ? { shutdown } : {}) });
          await snapshots?.volumeDetaching(id, mgr?.getBlockDevice(id));
        },
        onAudit: (ev) => this.auditVolume(ev),
        onImpaired: (ev) => log.error({ volumeId: ev.volumeId, reason: ev.reason, awsName: ev.awsName }, 'volume impaired: I/O now fails with EIO'),
        logger: log,
      });
      const m = mgr;
      const ec2Authz = new Ec2Authorizer({
        evaluator: this.authz!.authorizer.evaluator, accountId: ids.accountId, region: ids.region, instanceId: m.instanceId,
        volume: (id) => m.describeVolumes().Volumes.find((v) => v.VolumeId === id),
      });
      const cowBudget = resolveCowBudget(cfg.snapshotCowMemoryBytes);
      log.info({ snapshotCowMemoryBytes: cowBudget.bytes, from: cowBudget.from }, `snapshot copy-on-write memory budget ${(cowBudget.bytes / 2 ** 20).toFixed(1)} MiB`);
      // Once per daemon life per (snapshot, content or error): DescribeSnapshots, polled, lists a refused manifest every time.
      const refusedWarnings = new RefusedManifestWarnings((snapshotId, err) => log.warn({ snapshotId, store: store.location, err }, 'snapshot manifest refused: the snapshot is shown in state error (said once per daemon start for each content or error)'));
      snapshots = await SnapshotManager.open({
        // DescribeSnapshots shows (and logs) a manifest it cannot read or trust as a snapshot in `error`; the collector (gc) keeps the strict store.
        store: describingStore(store, (snapshotId, err) => refusedWarnings.report(snapshotId, err)),
        refusedWarnings,
        gc,
        localDir: join(paths.root, 'snapshots-local'),
        volumes: m,
        accountId: ids.accountId,
        onAudit: (ev) => this.auditSnapshot(ev),
        logger: log,
        cowMemory: new CowMemory(cowBudget.bytes),
        ...(this.metrics ? { onCreateEnded: this.metrics.observeSnapshotEnd } : {}),
      });
      const snaps = snapshots;
      const snapshotApi = new SnapshotApi({ snapshots: snaps, authz: ec2Authz });
      // With a remote KMS, key names are judged as the keys they stand for (remote-key-names.ts).
      const remoteKeyNames = this.remoteKms ? new RemoteKeyNames(async (name) => (await m.keyService.describeKey({ KeyId: name }, host)).KeyMetadata.Arn) : undefined;
      const sourceSnapshotAuthz = new SourceSnapshotAuthz({
        ec2: ec2Authz, evaluator: this.authz!.authorizer.evaluator, region: ids.region, ...(remoteKeyNames ? { remoteKeys: remoteKeyNames } : {}),
        manifest: (id) => snaps.getManifest(id),
      });
      if (!this.remoteKms) {
        // Not with a remote KMS: its calls are signed as this host, so they could not act for the local caller.
        ebs = await openEbsApi({
          store, gc, pendingDir: join(paths.root, 'ebs-direct-pending'), keys: new KmsCoreKeyService(this.kmsCore!), xts: engine,
          evaluator: this.authz!.authorizer.evaluator, accountId: ids.accountId, region: ids.region,
          audit: this.kms!.audit, log: log.child({ component: 'ebs-direct' }),
          // As for volumes: without --allow-unencrypted no plaintext snapshot is begun (EBS encryption by default).
          allowUnencrypted: cfg.allowUnencrypted,
        });
      }
      // Restore and copy (docs/architecture.md §14): a source is held against DeleteSnapshot while read.
      const restore = new SnapshotRestore({ store, volumes: m, hold: (id) => snaps.hold(id), logger: log });
      copier = await SnapshotCopier.open({
        store, keyService: m.keyService, ...(m.opGrants ? { opGrants: m.opGrants } : {}), xtsEngine: engine, region: ids.region, accountId: ids.accountId,
        localDir: join(paths.root, 'snapshots-local', 'copies'), pin: (h) => gc.pin(h), hold: (id) => snaps.hold(id),
        onAudit: (ev) => this.auditSnapshot(ev as SnapshotAuditEvent), logger: log, allowUnencrypted: cfg.allowUnencrypted,
      });
      const copies = copier;
      snaps.showCopies((id) => copies.runningManifest(id));
      const { resumed, failed } = await m.resumeAttachments();
      if (resumed.length || failed.length) log.info({ resumed, failed: failed.map((f) => f.volumeId) }, 're-attached volumes recorded as attached');
      // A loop device a previous daemon left over one of its files answers EIO while the volume is served afresh:
      // said once here (and by `ebsd status` while it lasts), since the kernel tells the daemon nothing.
      // A volume deleted since (not in the catalog) is said too, when the file is under an earlier daemon's dead mount.
      const stale = await this.staleUsers(m.describeVolumes().Volumes.map((v) => v.VolumeId));
      for (const [volumeId, st] of stale.volumes) {
        if (!st.loops.length) continue;
        log.warn({ volumeId, loopDevices: st.loops.map((l) => l.device), ...this.earlierMountsOf(st) }, volumeStaleProblem({ ...st, cutOff: 0 }, this.pathOf(volumeId), volumeId));
      }
      for (const [volumeId, st] of stale.deleted) {
        log.warn({ volumeId, deleted: true, loopDevices: [...st.loops.map((l) => l.device), ...st.cutOffLoops], ...this.earlierMountsOf(st) }, deletedVolumeProblem(volumeId, st));
      }
      // Those the KMS did not answer (unreachable, throttled, internal) are tried again until it does; a refusal stays.
      const resumeRetry = new ResumeRetry({ resume: (only) => m.resumeAttachments(only), logger: log.child({ component: 'resume-retry' }) });
      const retried = new Set(resumeRetry.add(failed));
      for (const f of failed) {
        if (retried.has(f.volumeId)) continue;
        const { awsName, message } = f.error as { awsName?: unknown; message?: unknown };
        this.resumeFailures.set(f.volumeId, `${typeof awsName === 'string' ? `${awsName}: ` : ''}${typeof message === 'string' ? message : String(f.error)}`);
      }
      // Published together (nothing awaited in between, so no request runs among them); `mgr` last.
      this.host = host;
      this.ec2Authz = ec2Authz;
      this.snapshots = snaps;
      this.snapshotApi = snapshotApi;
      this.remoteKeyNames = remoteKeyNames;
      this.sourceSnapshotAuthz = sourceSnapshotAuthz;
      this.ebs = ebs;
      this.restore = restore;
      this.copier = copier;
      this.resumeRetry = resumeRetry;
      this.mgr = m;
    } catch (e) {
      // In the reverse order of opening; a failure to close is logged, the open's error is what the caller gets.
      const closing = async (what: string, fn: () => Promise<unknown> | undefined): Promise<void> => {
        try { await fn(); } catch (err) { log.error({ err, step: what }, 'could not close after a failed open of the volumes'); }
      };
      await closing('snapshot copies', () => copier?.close());
      await closing('ebs direct', () => ebs?.close());
      await closing('snapshots', () => snapshots?.close());
      await closing('volumes', () => mgr?.close());
      throw e;
    }
  }

  private async startMetrics(): Promise<string | undefined> {
    const m = this.metrics;
    if (!m || this.cfg.metricsListen === undefined) return undefined;
    const bfs = this.bfs;
    const audit = this.kms!.audit;
    m.bind({
      attached: () => bfs?.volumeIds() ?? [],
      openHandles: (id) => bfs?.openCount(id) ?? 0,
      inflight: (id) => bfs?.inflightCount(id) ?? 0,
      // Read at scrape time: a host waiting for its KMS at start opens its volumes later (host-resolver.ts).
      keyCaches: () => this.mgr?.describeKeyCaches() ?? [],
      // Since the log was opened: the events of the start (re-attach Decrypts, grant sweeps) come before this listener.
      auditEventsWritten: () => audit.eventsWritten,
      auditHealth: () => {
        const h = audit.health();
        return { state: h.State, droppedRefusalEvents: h.DroppedRefusalEvents, tampered: h.Integrity === 'tampered', failedEvents: audit.failedWrites };
      },
      kmsCallLoad: () => this.kms?.callLoad ?? { active: 0, waiting: 0, callers: 0 },
      ...(this.remoteKms ? { remoteKms: () => this.remoteKmsReachability() } : {}),
      volumesUnserved: () => this.unservedVolumeCount(),
      staleUsers: async () => {
        const attached = bfs?.volumeIds() ?? [];
        const known = this.mgr?.describeVolumes().Volumes.map((v) => v.VolumeId) ?? attached;
        const { volumes, deleted } = await this.staleUsers(known);
        const all = new Map([...volumes, ...deleted]);
        const ids = new Set([...attached, ...all.keys()]);
        return [...ids].map((volumeId) => ({ volumeId, loopDevices: all.get(volumeId)?.loops.length ?? 0, cutOffHandles: all.get(volumeId)?.cutOff ?? 0 }));
      },
      ...(this.cfg.kmsOnly ? {} : { mountLost: () => this.mountLost() }),
      snapshotsInProgress: () => this.snapshots?.inProgress() ?? [],
      kmsListener: () => this.listener?.usage() ?? Promise.resolve(undefined),
      callsHeldForIo: () => (this.dataPathFirst ? { held: this.dataPathFirst.held, waiting: this.dataPathFirst.waitingCalls } : undefined),
    });
    const { host, port } = await m.listen(this.cfg.metricsListen, this.log);
    const at = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    this.metricsUrl = `http://${at}/metrics`;
    this.log.info({ metrics: this.metricsUrl }, 'serving Prometheus metrics');
    return at;
  }

  /**
   * Orderly shutdown (SIGTERM/SIGINT): stop taking requests, drain FUSE I/O,
   * fdatasync and wipe every volume key (attachments stay recorded so the
   * next start resumes them), unmount, close KMS, release the lock.
   */
  stop(): Promise<void> {
    // Bounded (stop-deadline.ts): a step that never ends (a peer that never answers, a handle
    // nobody settles) rejects this with STOP_TIMEOUT, and the CLI exits non-zero.
    this.deadline.arm('stop');
    this.stopping ??= this.deadline.race(this.doStop());
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    const { log } = this;
    const step = async (what: string, fn: () => Promise<unknown> | undefined): Promise<void> => {
      this.stopStep = what;
      try { await fn(); } catch (err) { log.error({ err, step: what }, 'shutdown step failed'); }
    };
    if (this.ticker) clearInterval(this.ticker);
    if (this.gcTicker) clearInterval(this.gcTicker);
    if (this.mountWatch) clearInterval(this.mountWatch);
    await step('sd_notify', () => this.notify.stopping());
    this.verifyAbort.abort('the daemon is shutting down'); // an audit verification under way answers that, its thread ended
    // Before the listeners close: a CompleteSnapshot waiting for the KMS ends now, answered (failed, the snapshot left
    // pending) while its client is still connected, rather than completing after the KMS listener cut its client off
    // or holding the control server's drain (10 s) for nothing. The keys stay until 'ebs direct' below.
    await step('ebs direct waits', () => this.ebs?.stopWaits());
    this.dataPathFirst?.close(); // calls still waiting go on to the listener, which is closing
    await step('kms listener', () => this.listener?.close());
    await step('control server', () => this.server?.close());
    await step('metrics', () => this.metrics?.close());
    await step('host resolver', () => this.hostResolver?.stop());
    await step('resume retry', () => this.resumeRetry?.stop());
    await step('manifest key', () => this.manifestKeyOpener?.stop());
    await step('ebs direct', async () => this.ebs?.close());
    await step('drain FUSE', async () => {
      await faultHang('stop.drain');
      await this.bfs?.drainAll();
    });
    // First: a sweep or a delete's collection queued and not begun is left to a later sweep, rather than begun while
    // the creates and copies below wind down (it would then run on into the store's close).
    this.snapshotGc?.close();
    await step('snapshots', () => this.snapshots?.close()); // creates under way end `error`
    await step('snapshot copies', () => this.copier?.close()); // markers still waiting for the store stay for the next start
    this.snapshotStore?.close?.(); // after the manifests above are written
    await step('volumes', () => this.mgr?.close()); // hides each file, then drains and closes its device
    for (const id of this.bfs?.volumeIds() ?? []) await step(`hide ${id}`, () => this.bfs!.remove(id, { force: true, shutdown: true }));
    await step('unmount', () => this.fuse?.unmount());
    await step('kms', () => this.opened?.close()); // audit sealed, HSM stopped, identities and grants written
    this.remoteKms?.close();
    await step('lock', () => this.lock?.release());
    this.notify.stopWatchdog(); // pinged through the drain: a drain of many volumes may outlast the interval
    this.stopStep = 'stopped';
    log.info('ebsd daemon stopped');
  }

  // ---- control API -------------------------------------------------------

  private async handleCounted(target: string, body: Record<string, unknown>, peer: PeerIdentity): Promise<unknown> {
    if (!this.metrics) return this.handle(target, body, peer);
    try {
      const out = await this.handle(target, body, peer);
      this.metrics.controlRequest(target, this.dispatches(target), undefined);
      return out;
    } catch (e) {
      this.metrics.controlRequest(target, this.dispatches(target), e ?? new Error('undefined thrown'));
      throw e;
    }
  }

  /** Is `target` (X-Amz-Target) one `handle` dispatches? The names a metrics label may take. */
  private dispatches(target: string): boolean {
    const dot = target.indexOf('.');
    const service = target.slice(0, dot);
    const op = target.slice(dot + 1);
    if (service === 'TrentService') return this.kmsOps.has(op);
    if (service === 'ebs') return EbsApi.isOperation(op);
    if (service !== 'ebsd') return false;
    return VOLUME_OPS.has(op) || SNAPSHOT_OPS.has(op) || EBSD_OPS.has(op) || (op.startsWith('Iam') && isIamOperation(op.slice(3)));
  }

  private async handle(target: string, body: Record<string, unknown>, peer: PeerIdentity): Promise<unknown> {
    const ids = this.authz!.identities;
    const caller = ids.callerForUid(peer.uid, peer.userAgent ? { userAgent: peer.userAgent } : {});
    const dot = target.indexOf('.');
    const service = target.slice(0, dot);
    const op = target.slice(dot + 1);
    if (service === 'TrentService') {
      // An unmapped uid is refused here, so its refusals are aggregated and bounded like
      // every other refused caller's (deny); the core would deny it too, one event per call.
      if (caller.type === 'Unknown') {
        await this.deny('kms.amazonaws.com', op, caller, `uid ${peer.uid} is not mapped to any principal (ebsd iam map-uid)`, peer);
      }
      let request: Record<string, unknown>;
      try {
        request = decodeKmsRequest(body);
      } catch (e) {
        // Refused before the core (which audits every call it sees): audited here, aggregated like other refusals.
        await this.auditUndecodable(op, caller, e, peer);
        throw e;
      }
      // The core authorizes and audits; while the volume data path is busy, in turns per uid.
      try {
        const wait = this.dataPathFirst?.admit(`uid:${peer.uid}`);
        if (wait) await wait;
        return await this.kmsCore!.call(op, request, caller, peer.requestId);
      } finally {
        wipeRequestSecrets(request); // decoded here: ours to wipe (aws-json.ts)
      }
    }
    if (service === 'ebs' && EbsApi.isOperation(op)) {
      if (caller.type === 'Unknown') {
        await this.deny('ebs.amazonaws.com', op, caller, `uid ${peer.uid} is not mapped to any principal (ebsd iam map-uid)`, peer);
      }
      if (!this.ebs) {
        throw new EbsdError('EBS_DIRECT_UNAVAILABLE', `ebs.${op}: the EBS direct APIs are not served by a daemon with --kms-only or --kms-endpoint`, { awsName: 'UnsupportedOperation' });
      }
      // Checked, authorized (ebs:<Operation>) and audited by the EBS API itself; while the volume data path is busy, in turns per uid.
      const wait = this.dataPathFirst?.admit(`uid:${peer.uid}`);
      if (wait) await wait;
      return this.ebs.call(op, body, caller, { requestId: peer.requestId, uid: peer.uid });
    }
    if (service !== 'ebsd' || !op) throw new EbsdError('UNKNOWN_TARGET', `unknown target "${target}"`, { awsName: 'UnknownOperationException' });

    const iam = op.startsWith('Iam');
    const source = VOLUME_OPS.has(op) || SNAPSHOT_OPS.has(op) || op === 'CopySnapshot' ? 'ec2.amazonaws.com' : iam ? 'iam.amazonaws.com' : 'ebsd';
    // An IAM call is recorded, refused or not, under IAM's name for it (PutUserPolicy for ebsd.IamPutPolicy on a user).
    const eventName = iam ? iamEventName(op.slice(3), body) : op;
    // Only a well-formed id reaches the audit record of a refusal (a body member may be 1 MB long).
    const volumeId = typeof body.VolumeId === 'string' && VOLUME_ID_RE.test(body.VolumeId) ? body.VolumeId : undefined;
    if (caller.type === 'Unknown') {
      await this.deny(source, eventName, caller, `uid ${peer.uid} is not mapped to any principal (ebsd iam map-uid)`, peer, volumeId);
    }
    const rootOnly = iam || op.startsWith('Audit') || op === 'SignManifests';
    if (rootOnly && caller.type !== 'Root') {
      await this.deny(source, eventName, caller, `only the account root may call ebsd:${op}`, peer, volumeId);
    }
    if (VOLUME_OPS.has(op) && isEc2Operation(op)) {
      if (!this.mgr && this.hostResolver && !this.cfg.kmsOnly) throw this.hostResolver.refusal(op);
      if (!this.mgr) throw new EbsdError('KMS_ONLY', `ebsd.${op}: this daemon runs with --kms-only and serves no volumes`, { awsName: 'UnsupportedOperation' });
      // Every member checked (types, lengths, counts) before authorization reads it and before anything changes.
      const req = parseEc2Request(op, body);
      // A ClientToken stands for these parameters, as the caller sent them (before a key name is resolved), and this caller.
      const tokenRequest = req.op === 'CreateVolume' && req.input.ClientToken !== undefined ? createVolumeDigest(req.input, caller) : undefined;
      // EC2 authorization, before any state changes or KMS call on the caller's behalf. A restore
      // without Size makes a volume of the snapshot's size: its volume side is judged below, once
      // the snapshot's VolumeSize is known (ec2:VolumeSize, as for a Size given).
      const sizeFromSnapshot = req.op === 'CreateVolume' && req.input.SnapshotId !== undefined && req.input.Size === undefined;
      const refusal = sizeFromSnapshot ? undefined : this.ec2Authz!.check(op, req.input as unknown as Record<string, unknown>, caller);
      if (refusal) await this.deny(source, op, caller, refusal.message, peer, volumeId, refusal);
      const keyCheck = await this.remoteKeyRefusal(req, caller);
      if (keyCheck.refusal) await this.deny(source, op, caller, keyCheck.refusal.message, peer, volumeId, keyCheck.refusal);
      // The key judged is the key used: the KMS would resolve a name again, after an alias may have moved.
      if (keyCheck.keyArn !== undefined && req.op === 'CreateVolume') req.input.KmsKeyId = keyCheck.keyArn;
      if (req.op === 'CreateVolume' && req.input.SnapshotId !== undefined) {
        // The source snapshot, and with a remote KMS the caller's use of its key (restore-authz.ts).
        const { SnapshotId, KmsKeyId, Cipher, Encrypted } = req.input;
        const plain = Cipher === 'none' || Encrypted === false;
        const snap = await this.sourceSnapshotAuthz!.check({ op: 'CreateVolume', snapshotId: SnapshotId, ...(KmsKeyId !== undefined ? { kmsKeyId: KmsKeyId } : {}), plain }, caller);
        if (snap.refusal) await this.deny(source, op, caller, snap.refusal.message, peer, volumeId, snap.refusal);
        if (snap.targetKeyArn !== undefined) req.input.KmsKeyId = snap.targetKeyArn;
        if (sizeFromSnapshot) {
          // A snapshot that does not exist gives no size: judged without ec2:VolumeSize, the operation says NotFound.
          const input = snap.volumeSize === undefined ? req.input : { ...req.input, Size: `${snap.volumeSize}GiB` };
          const sized = this.ec2Authz!.check(op, input as unknown as Record<string, unknown>, caller);
          if (sized) await this.deny(source, op, caller, sized.message, peer, volumeId, sized);
        }
      }
      // Checked and authorized: a dry run ends here, before the volume manager.
      if (req.dryRun) {
        // What the real call would refuse before any effect, a dry run refuses too.
        if (req.op === 'AttachVolume' || req.op === 'DetachVolume') this.mgr!.checkInstance(req.input.InstanceId);
        // The size as the call parses it (unit, range, 4 KiB, what the image filesystem holds): a dry run
        // of `--size abc` or `--size 65TiB` answered "would have succeeded".
        if ((req.op === 'CreateVolume' || req.op === 'ModifyVolume') && req.input.Size !== undefined) await checkImageSizeFits(this.mgr!.dir, req.input.Size, 'Size');
        // And what a modify refuses of the volume as it is (a size that does not grow it, its state, the rate limit).
        if (req.op === 'ModifyVolume') this.mgr!.checkModify(req.input);
        // A restore: a size below the snapshot's, a plaintext volume of an encrypted snapshot.
        if (req.op === 'CreateVolume' && req.input.SnapshotId !== undefined) await this.restore!.checkCreate({ ...req.input, SnapshotId: req.input.SnapshotId });
        if ((req.op === 'DescribeVolumes' || req.op === 'DescribeVolumeStatus') && !req.input.VolumeIds?.length) {
          const listing = req.op;
          const mgr = this.mgr!;
          const refusal = await this.ec2Authz!.checkListingDryRun(listing, caller, () => mgr.describeVolumes().Volumes.some((v) => this.ec2Authz!.mayDescribe(listing, caller, v)));
          if (refusal) await this.deny(source, op, caller, refusal.message, peer, volumeId, refusal);
        }
        await this.dryRun(source, op, caller, peer, volumeId);
      }
      return this.ec2Audit.run(op, { requestId: peer.requestId, caller, changes: !op.startsWith('Describe') }, () => this.volumeOp(req, caller, tokenRequest));
    }
    if (op === 'CopySnapshot') {
      if (!this.copier) throw new EbsdError('KMS_ONLY', `ebsd.${op}: this daemon runs with --kms-only and serves no volumes`, { awsName: 'UnsupportedOperation' });
      const copyReq = parseCopySnapshotRequest(body);
      // With a remote KMS, the caller's use of the source snapshot's key (restore-authz.ts); the EC2 half is copySnapshot's.
      // A plaintext source copied without Encrypted stays plaintext: no key to judge.
      const keyCheck = await this.sourceSnapshotAuthz!.check({ op: 'CopySnapshot', snapshotId: copyReq.SourceSnapshotId, ...(copyReq.KmsKeyId !== undefined ? { kmsKeyId: copyReq.KmsKeyId } : {}), plain: copyReq.Encrypted !== true }, caller);
      if (keyCheck.refusal) await this.deny(source, op, caller, keyCheck.refusal.message, peer, undefined, keyCheck.refusal);
      // The key judged is the key used (as for a restore above).
      if (keyCheck.targetKeyArn !== undefined) copyReq.KmsKeyId = keyCheck.targetKeyArn;
      return this.ec2Audit.run(op, { requestId: peer.requestId, caller, changes: true },
        () => copySnapshot({ copier: this.copier!, authz: this.ec2Authz! }, copyReq, caller, (r) => this.deny(source, op, caller, r.message, peer, undefined, r),
          copyReq.DryRun === true ? () => this.dryRun(source, op, caller, peer) : undefined));
    }
    if (SNAPSHOT_OPS.has(op)) {
      if (!this.snapshotApi && this.hostResolver && !this.cfg.kmsOnly) throw this.hostResolver.refusal(op);
      if (!this.snapshotApi) throw new EbsdError('KMS_ONLY', `ebsd.${op}: this daemon runs with --kms-only and serves no volumes`, { awsName: 'UnsupportedOperation' });
      const req = parseSnapshotRequest(op as SnapshotRequest['op'], body);
      // A refusal is audited as the volume refusals are; CreateSnapshot's names its volume.
      const api = this.snapshotApi;
      return this.ec2Audit.run(op, { requestId: peer.requestId, caller, changes: !op.startsWith('Describe') },
        () => api.run(req, caller, (refusal, volId) => this.deny(source, op, caller, refusal.message, peer, volId, refusal), (volId) => this.dryRun(source, op, caller, peer, volId)));
    }
    if (op === 'Status') return this.status(caller);
    if (op === 'AuditTail') return this.auditTail(body);
    if (op === 'AuditVerify') return this.auditVerify(body);
    if (op === 'AuditPrune') return this.auditPrune(body, caller, peer);
    if (op === 'SignManifests') return this.signManifests(body, caller, peer);
    if (iam) return this.auditedIamOp(op.slice(3), body, caller, peer);
    throw new EbsdError('UNKNOWN_TARGET', `unknown operation ebsd.${op}`, { awsName: 'UnknownOperationException' });
  }

  private async deny(source: string, op: string, caller: Caller, why: string, peer: PeerIdentity, volumeId?: string, policyRefusal?: UnauthorizedOperation): Promise<never> {
    const said = `User: ${caller.arn} is not authorized to perform: ${source.split('.')[0]}:${op} because ${why}`;
    // An EC2 operation is refused as EC2 refuses one (UnauthorizedOperation), whatever refused it: a policy,
    // or an unmapped uid, which a mapped user without a policy would otherwise answer differently from.
    const refusal = policyRefusal ?? (source === 'ec2.amazonaws.com' ? new UnauthorizedOperation(said) : undefined);
    const message = refusal?.message ?? said;
    const ids = this.authz!.identities;
    // Aggregated per (uid, operation, reason) and bounded in size (audit-events.ts), so a refused flood costs
    // bounded audit bytes; a policy refusal keeps its volume in the key, so different volumes stay apart.
    const reason = caller.type === 'Unknown' ? 'unmapped-uid' : policyRefusal ? `ec2-policy:${(volumeId ?? '').slice(0, 64)}` : 'root-only';
    try {
      await this.kms!.audit.appendRefusal(refusalKey(peer.uid, source, op, reason), () => {
        const ev = deniedEvent(source, op, caller, message, {
          accountId: ids.accountId, region: ids.region, requestId: peer.requestId, ...(volumeId ? { volumeId } : {}),
        });
        return refusal ? { ...ev, errorCode: refusal.auditErrorCode } : ev;
      }, refusalParty(peer.uid, caller));
    } catch (err) {
      this.log.error({ err }, 'could not audit a denial');
    }
    this.log.debug({ uid: peer.uid, peerPid: peer.pid, principal: caller.arn, op: op.slice(0, 128) }, 'control request denied');
    throw refusal ?? new EbsdError('ACCESS_DENIED', message, { awsName: 'AccessDeniedException' });
  }

  /**
   * An EC2 request with DryRun that was checked and authorized: audited as CloudTrail records a dry
   * run (errorCode Client.DryRunOperation), aggregated as refusals are (a dry run changes nothing and
   * costs the caller nothing, so a flood of them costs bounded audit bytes), then DryRunOperation.
   */
  private async dryRun(source: string, op: string, caller: Caller, peer: PeerIdentity, volumeId?: string): Promise<never> {
    const answer = new DryRunOperation();
    const ids = this.authz!.identities;
    try {
      await this.kms!.audit.appendRefusal(refusalKey(peer.uid, source, op, `dry-run:${(volumeId ?? '').slice(0, 64)}`), () => ({
        ...deniedEvent(source, op, caller, answer.message, { accountId: ids.accountId, region: ids.region, requestId: peer.requestId, ...(volumeId ? { volumeId } : {}) }),
        errorCode: answer.auditErrorCode,
      }), refusalParty(peer.uid, caller));
    } catch (err) {
      this.log.error({ err }, 'could not audit a dry run');
    }
    throw answer;
  }

  /**
   * A KMS request whose body the daemon refused before the core saw it (refusedKmsRequestEvent),
   * aggregated per (uid, operation, error and its message) as the core aggregates per reason.
   */
  private async auditUndecodable(op: string, caller: Caller, err: unknown, peer: PeerIdentity): Promise<void> {
    const ids = this.authz!.identities;
    try {
      await this.kms!.audit.appendRefusal(refusalKey(peer.uid, 'kms.amazonaws.com', op, `undecodable\0${refusedKmsRequestReason(err)}`),
        () => refusedKmsRequestEvent(op, caller, err, { accountId: ids.accountId, region: ids.region, requestId: peer.requestId }), refusalParty(peer.uid, caller));
    } catch (e) {
      this.log.error({ err: e }, 'could not audit a refused KMS request');
    }
  }

  /** Connections refused by the limits, already summed per (uid, reason) by the guard. */
  private auditThrottled(rows: RefusalSummary[]): void {
    const ids = this.authz!.identities;
    for (const r of rows) {
      const uid = /^\d+$/.test(r.caller) ? Number(r.caller) : undefined;
      const caller = uid !== undefined ? ids.callerForUid(uid) : undefined;
      void this.kms!.audit.appendRefusal(`throttle\0${r.caller}\0${r.reason}`,
        () => throttledEvent(r, { accountId: ids.accountId, region: ids.region, ...(uid !== undefined ? { uid } : {}), ...(caller ? { caller } : {}) }),
        // A mapped local user's own budget (audit-events.ts, refusalParty); an unmapped uid's, and the guard's row of
        // everyone past its table ('*'), are nobody's.
        caller ? refusalParty(uid, caller) : undefined)
        .catch((err) => this.log.error({ err }, 'could not audit refused connections'));
    }
  }

  /**
   * A snapshot event from the managers. One a control request caused is awaited by its answer,
   * which fails if the write does (request-audit.ts). Resolves once written: a snapshot's
   * SnapshotCompleted is awaited before the snapshot shows completed (auditCompletion), and fails
   * it if the write does; a failed write is logged here in any case.
   */
  private auditSnapshot(ev: SnapshotAuditEvent): Promise<void> {
    const ids = this.authz!.identities;
    // The request's own caller carries its user agent; its request id is the one it is answered with.
    const req = this.ec2Audit.requestOf(ev.principal);
    const write = (async () => {
      const caller = req?.caller ?? (ev.principal ? ids.callerFor(ev.principal) ?? (ev.principal === this.host?.arn ? this.host : undefined) : undefined);
      await this.kms!.audit.append(snapshotEvent({ ...ev, time: new Date().toISOString() }, { accountId: ids.accountId, region: ids.region, ...(caller ? { caller } : {}), ...(req ? { requestId: req.requestId } : {}) }));
    })();
    if (req) this.ec2Audit.track(write);
    write.catch((err: unknown) => this.log.error({ err, snapshotId: ev.snapshotId, eventName: ev.eventName }, 'could not audit a snapshot event'));
    return write;
  }

  /** A volume event from the volume manager, awaited by the request that caused it as auditSnapshot's are. */
  private auditVolume(ev: VolumeAuditEvent): void {
    const ids = this.authz!.identities;
    // The request's own caller carries its user agent; its request id is the one it is answered with.
    const req = this.ec2Audit.requestOf(ev.principal);
    const write = (async () => {
      const caller = req?.caller ?? (ev.principal ? ids.callerFor(ev.principal) ?? (ev.principal === this.host?.arn ? this.host : undefined) : undefined);
      await this.kms!.audit.append(volumeEvent(ev, { accountId: ids.accountId, region: ids.region, ...(caller ? { caller } : {}), ...(req ? { requestId: req.requestId } : {}) }));
    })();
    if (req) this.ec2Audit.track(write);
    write.catch((err: unknown) => this.log.error({ err, volumeId: ev.volumeId, eventName: ev.eventName }, 'could not audit a volume event'));
  }

  private pathOf(volumeId: string): string {
    return join(this.cfg.mountDir, volumeId);
  }

  private async volumeOp(req: Ec2Request, caller: Caller, tokenRequest?: string): Promise<unknown> {
    const mgr = this.mgr!;
    switch (req.op) {
      case 'CreateVolume': {
        const { ClientToken, ...rest } = req.input;
        if (ClientToken === undefined || tokenRequest === undefined) return this.createVolume(rest, caller);
        // EC2 idempotency: a repeat answers the volume the token made (its state now); a repeat while that create runs waits for it.
        for (let running = this.creatingTokens.get(ClientToken); running; running = this.creatingTokens.get(ClientToken)) await running.catch(() => {});
        const seen = mgr.repeatCreate(ClientToken, tokenRequest, caller);
        if (seen) return seen;
        const p = this.createVolume({ ...rest, clientToken: { token: ClientToken, request: tokenRequest } }, caller);
        this.creatingTokens.set(ClientToken, p);
        try {
          return await p;
        } finally {
          if (this.creatingTokens.get(ClientToken) === p) this.creatingTokens.delete(ClientToken);
        }
      }
      case 'DescribeVolumes':
        return this.describeVolumes(req.input, caller);
      case 'DescribeVolumeStatus': {
        const ids = req.input.VolumeIds
          ?? mgr.describeVolumes().Volumes.filter((v) => this.ec2Authz!.mayDescribe('DescribeVolumeStatus', caller, v)).map((v) => v.VolumeId);
        return { VolumeStatuses: ids.map((id) => mgr.describeVolumeStatus(id)) };
      }
      case 'DeleteVolume':
        await mgr.deleteVolume(req.input, caller);
        // Its changed-block tracking goes too; one left by a failure here is pruned at the next start.
        await this.snapshots?.volumeDeleted(req.input.VolumeId).catch((err: unknown) => this.log.warn({ volumeId: req.input.VolumeId, err }, 'could not remove the changed-block tracking of a deleted volume'));
        return {};
      case 'ModifyVolume':
        await checkImageSizeFits(mgr.dir, req.input.Size, 'Size');
        return mgr.modifyVolume(req.input, caller);
      case 'DescribeVolumesModifications':
        return this.describeVolumesModifications(req.input);
      case 'AttachVolume': {
        // The manager exposes the file inside the volume's mutex (VolumeManagerOptions.expose).
        const id = req.input.VolumeId;
        // Its file would be served nowhere: refused before the grant, the key and the catalog.
        if (this.mountLost()) throw new EbsdError('FUSE_MOUNT_LOST', `ebsd.AttachVolume: ${this.mountLostProblem()}`, { awsName: 'ServiceUnavailable' });
        const r = await mgr.attachVolume(req.input, caller);
        const plain = mgr.getBlockDevice(id)?.unencrypted === true;
        return { ...r, Path: this.pathOf(id), Encrypted: !plain, ...(plain ? { Unencrypted: true } : {}) };
      }
      case 'DetachVolume':
        // The manager hides the file inside the volume's mutex (refused while open unless Force).
        // Device is not compared: a volume has one attachment here, on this host.
        return mgr.detachVolume({ VolumeId: req.input.VolumeId, Force: req.input.Force === true, ...(req.input.InstanceId !== undefined ? { InstanceId: req.input.InstanceId } : {}) }, caller);
    }
  }

  private async createVolume(req: Omit<CreateVolumeInput, 'ClientToken'> & { clientToken?: { token: string; request: string } }, caller: Caller): Promise<unknown> {
    const mgr = this.mgr!;
    const { SnapshotId, Size, ...input } = req;
    if (Size !== undefined) await checkImageSizeFits(mgr.dir, Size, 'Size');
    if (SnapshotId !== undefined) {
      // The restore holds the snapshot until the volume is built: DeleteSnapshot answers InvalidSnapshot.InUse meanwhile.
      return this.restore!.createVolume({ ...input, SnapshotId, ...(Size !== undefined ? { Size } : {}) }, caller);
    }
    if (Size === undefined) throw new Ec2RequestError('EC2_MISSING_PARAMETER', 'Size', 'The request must contain the parameter Size (or SnapshotId)');
    return mgr.createVolume({ ...input, Size }, caller);
  }

  /**
   * With a remote KMS, the KMS calls of CreateVolume and AttachVolume are signed as this host, so
   * the remote key policy cannot judge the local caller (it judges the host). The local identity
   * decides instead (docs/architecture.md §5.5): a caller other than the account root needs an
   * identity policy allowing what EBS needs of the caller on the key, `kms:GenerateDataKeyWithoutPlaintext`
   * to create and `kms:CreateGrant` to attach, with `kms:ViaService` = `ec2.<region>.amazonaws.com`.
   * The resource is the key's ARN, whatever the request or the volume names it by (an ARN, an id,
   * an alias name or ARN: resolved by DescribeKey as this host, remote-key-names.ts), with
   * `kms:RequestAlias` when an alias was used. The ARN judged is returned so that the create sends it,
   * not the name, to the KMS: a name resolved again there could stand for another key by then.
   */
  private async remoteKeyRefusal(req: Ec2Request, caller: Caller): Promise<{ refusal?: UnauthorizedOperation; keyArn?: string }> {
    if (!this.remoteKms || caller.type === 'Root') return {};
    let action: string;
    let key: string | undefined;
    if (req.op === 'CreateVolume') {
      if (req.input.Cipher === 'none' || req.input.Encrypted === false) return {};
      if (req.input.SnapshotId !== undefined) return {}; // the target is the snapshot's key unless named: restore-authz.ts decides
      action = 'kms:GenerateDataKeyWithoutPlaintext';
      key = req.input.KmsKeyId ?? 'alias/aws/ebs';
    } else if (req.op === 'AttachVolume') {
      action = 'kms:CreateGrant';
      key = this.mgr!.describeVolumes().Volumes.find((v) => v.VolumeId === req.input.VolumeId)?.KmsKeyId;
      if (key === undefined) return {}; // unknown or plaintext volume: the operation refuses or needs no key
    } else {
      return {};
    }
    const resolved = await this.remoteKeyNames!.resolve(key);
    const refusal = judgeRemoteKeyUse(this.authz!.authorizer.evaluator, this.authz!.identities.region, action, key, resolved, caller);
    return refusal ? { refusal } : { keyArn: resolved.arn };
  }

  /** DescribeVolumes, paged when MaxResults or NextToken is given (NextToken: the last VolumeId returned). */
  private describeVolumes(input: DescribeVolumesInput, caller: Caller): unknown {
    const { MaxResults, NextToken, ...query } = input;
    // Only the volumes the caller may describe (ec2:DescribeVolumes, per volume).
    const all = this.mgr!.describeVolumes(query).Volumes.filter((v) => this.ec2Authz!.mayDescribe('DescribeVolumes', caller, v));
    if (MaxResults === undefined && NextToken === undefined) return { Volumes: all };
    const { page, next } = pageById(all, MaxResults, NextToken);
    return { Volumes: page, ...(next ? { NextToken: next } : {}) };
  }

  /**
   * Paged as describeVolumes (by volume id), with VolumeIds too (ec2-requests.ts, MODIFICATIONS_PAGING);
   * authorized as a whole (ec2-authz.ts), so nothing is filtered per volume.
   */
  private describeVolumesModifications(input: DescribeVolumesInput): unknown {
    const { MaxResults, NextToken, ...query } = input;
    const all = this.mgr!.describeVolumesModifications(query).VolumesModifications;
    if (MaxResults === undefined && NextToken === undefined) return { VolumesModifications: all };
    const { page, next } = pageById(all, MaxResults, NextToken);
    return { VolumesModifications: page, ...(next ? { NextToken: next } : {}) };
  }

  private async status(caller: Caller): Promise<unknown> {
    const ids = this.authz!.identities;
    // The listener's connections (its guard may live on the front-end worker: asked, not read). Which sources
    // hold them (addresses, local users) to the account root only; the counts to every caller, as Control's.
    const listener = this.listener ? await this.kmsListenerStatus(caller) : undefined;
    const mgr = this.mgr;
    const ttl = this.cfg.keyCacheTtlMs ?? DEFAULT_KEY_CACHE_TTL_MS;
    // The stale-user scan awaits sysfs: done for every volume first, so that what follows (volume states, which
    // are served, their key caches) is read in one turn of the event loop; read on both sides of the await, a
    // re-attach finishing in between showed a served volume with no key cache.
    const stale = await this.staleUsers((mgr?.describeVolumes().Volumes ?? []).map((v) => v.VolumeId));
    const caches = new Map(mgr?.describeKeyCaches().map((c) => [c.VolumeId, c]));
    const audit = this.kms!.audit.health();
    const described = (mgr?.describeVolumes().Volumes ?? []).filter((v) => this.ec2Authz!.mayDescribe('DescribeVolumes', caller, v));
    // Only the volumes the caller may describe (ec2:DescribeVolumes, per volume).
    const volumes = described.map((v) => {
      const attached = this.bfs!.has(v.VolumeId);
      const name = v.Tags.find((t) => t.Key === 'Name')?.Value;
      const kc = attached ? caches.get(v.VolumeId) : undefined;
      const { VolumeId: _id, Encrypted: _enc, ...keyCache } = kc ?? { VolumeId: '', Encrypted: v.Encrypted, State: 'none' as const };
      const st = stale.volumes.get(v.VolumeId);
      // Recorded in-use but not served: a resume failed; retried when the KMS did not answer (resume-retry.ts).
      const unserved = v.State === 'in-use' && !attached ? this.unservedProblem(v.VolumeId) : {};
      const problems = [unserved.Problem, st ? volumeStaleProblem(st, this.pathOf(v.VolumeId)) : undefined].filter((p): p is string => typeof p === 'string');
      return {
        VolumeId: v.VolumeId,
        ...(name ? { Name: name } : {}),
        State: v.State,
        SizeBytes: v.SizeBytes,
        Encrypted: v.Encrypted,
        ...(v.KmsKeyId ? { KmsKeyId: v.KmsKeyId } : {}),
        Attached: attached,
        ...(attached ? { Path: this.pathOf(v.VolumeId), OpenHandles: this.bfs!.openCount(v.VolumeId) } : {}),
        ...(st?.loops.length ? { StaleLoopDevices: st.loops.map((l) => l.device) } : {}),
        ...(st?.cutOff ? { CutOffHandles: st.cutOff } : {}),
        ...unserved,
        ...(problems.length ? { Problem: problems.join('; ') } : {}),
        // State: cached | refreshing | stale | impaired | held-until-detach | unencrypted | none (not attached).
        KeyCache: keyCache,
        ...(v.Encrypted ? { Kms: this.kmsOf(keyCache) } : {}),
      };
    });
    // Waiting for the KMS at start (host-resolver.ts): the recorded attachments, to the account root only (no EC2 authorizer yet).
    if (!mgr && this.hostResolver && caller.type === 'Root') {
      volumes.push(...this.waitingVolumes.map((w) => ({
        VolumeId: w.VolumeId, State: 'in-use', SizeBytes: w.SizeBytes, Encrypted: w.Encrypted, ...(w.KmsKeyId ? { KmsKeyId: w.KmsKeyId } : {}), Attached: false,
        Problem: `waiting for the KMS at ${this.remoteKms!.endpoint}: re-attached through its grant when it answers`,
        KeyCache: { State: 'attaching' as const },
      }) as unknown as (typeof volumes)[number]));
    }
    // What applies to volumes only (the mount, the XTS engine, write-behind, the key cache): not on a --kms-only daemon, which serves none.
    const volumeSettings = this.cfg.kmsOnly ? {} : {
      MountDir: this.cfg.mountDir, AllowUnencrypted: this.cfg.allowUnencrypted, XtsEngine: this.xtsEngineName, WriteBehind: this.writeBehind,
    };
    const keyCacheSettings = this.cfg.kmsOnly ? {} : {
      // What the key caches use: the default max-stale yields to a longer TTL (src/volume/key-cache.ts).
      KeyCacheTtlSeconds: ttl / 1000, KeyCacheMaxStaleSeconds: Math.max(this.cfg.keyCacheMaxStaleMs ?? DEFAULT_KEY_CACHE_MAX_STALE_MS, ttl) / 1000,
    };
    return {
      Daemon: {
        Pid: process.pid, Version: VERSION, StateDir: this.paths.root, Socket: this.paths.socket, ...(this.cfg.kmsOnly ? { KmsOnly: true } : {}),
        AccountId: ids.accountId, Region: ids.region, ...volumeSettings,
        StartedAt: new Date(this.startedAt).toISOString(), UptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
        // The listeners' bound URLs (port 0 picks a free one): here as well as in the ready log line.
        ...(this.kmsUrl ? { KmsUrl: this.kmsUrl } : {}),
        ...(this.metricsUrl ? { MetricsUrl: this.metricsUrl } : {}),
        ...(this.snapshotStore ? { SnapshotStore: this.snapshotStore.location } : {}),
        // The key's ARN once it is open; the flag's value as given until then (a remote KMS not answered yet).
        ...(this.manifestSigner ? { SnapshotManifestKey: this.manifestSigner.keyArn ?? this.manifestSigner.keyId } : {}),
        ...this.manifestKeyProblem(),
        Kms: this.remoteKms ? { ...this.remoteKms.health(), ...this.waitingForKms() } : { Endpoint: 'embedded' },
        ...keyCacheSettings,
        // Disk state of the audit log: reserve-in-use / failing means the state dir is full (README, "Security model", Full disk).
        Audit: audit,
        ...(this.server ? { Control: this.server.usage() } : {}),
        ...(listener ? { KmsListener: listener } : {}),
        // Volumes deleted while something still holds their file (a forced detach, then DeleteVolume): no volume row to show them in.
        ...(stale.deleted.size ? { DeletedVolumeUsers: [...stale.deleted].map(([id, d]) => this.deletedVolumeUsers(id, d)) } : {}),
        ...this.daemonProblem(audit.State, stale.deleted),
      },
      Caller: { Arn: caller.arn, Type: caller.type, Uid: caller.uid },
      Volumes: volumes,
    };
  }

  /** Daemon.KmsListener of `ebsd status`: KmsListener.usage, the busiest sources to the account root only. */
  private async kmsListenerStatus(caller: Caller): Promise<Record<string, unknown>> {
    const u = await this.listener!.usage();
    if (!u) return { Problem: 'the KMS listener did not report its connections: its front-end worker did not answer within a second, or it is stopping' };
    if (caller.type === 'Root') return { ...u };
    const { BusiestSources: _hidden, ...counts } = u;
    return counts;
  }

  /** The --kms-endpoint and whether it answers now: not while the host waits for it at start, nor while its last call or idle probe went unanswered. */
  private remoteKmsReachability(): { endpoint: string; reachable: boolean } {
    const remote = this.remoteKms!;
    const waiting = this.hostResolver !== undefined && !this.hostResolver.done;
    return { endpoint: remote.endpoint, reachable: !waiting && remote.health().Reachable };
  }

  /**
   * Volumes recorded attached to this host whose file is not under the mount: the recorded ones
   * while the host waits for its KMS at start, then those whose re-attach failed (as `ebsd status`
   * shows them, with a Problem). An attach or detach in progress is not counted.
   */
  private unservedVolumeCount(): number {
    const mgr = this.mgr;
    if (!mgr) return this.hostResolver && !this.cfg.kmsOnly ? this.waitingVolumes.length : 0;
    let n = 0;
    for (const v of mgr.describeVolumes().Volumes) {
      if (v.State === 'in-use' && v.Attachments[0]?.State === 'attached' && !this.bfs?.has(v.VolumeId)) n++;
    }
    return n;
  }

  /**
   * What still holds a file of these volumes (the catalog's) that is no longer served, and of volumes no
   * longer in the catalog (stale-users.ts); nothing on a daemon with no mount.
   */
  private async staleUsers(volumeIds: readonly string[]): Promise<StaleUsersSeen> {
    return this.staleUsersOf ? this.staleUsersOf.seen(volumeIds) : { volumes: new Map(), deleted: new Map() };
  }

  /** `mounts`, for a log line: where a previous daemon served the files of these loop devices, when its dead mount is still there. */
  private earlierMountsOf(st: VolumeStaleUsers): { mounts?: string[] } {
    const mounts = [...new Set(st.loops.map((l) => l.mount).filter((m): m is string => m !== undefined))];
    return mounts.length ? { mounts } : {};
  }

  /** One row of Daemon.DeletedVolumeUsers (what to do is in Daemon.Problem). */
  private deletedVolumeUsers(volumeId: string, st: VolumeStaleUsers): Record<string, unknown> {
    const loops = [...st.loops.map((l) => l.device), ...st.cutOffLoops];
    return { VolumeId: volumeId, ...(loops.length ? { LoopDevices: loops } : {}), ...(st.cutOff ? { CutOffHandles: st.cutOff } : {}) };
  }

  /** What is wrong with the daemon as a whole (a full disk, its mount gone), or nothing. */
  private daemonProblem(auditState: string, deleted: ReadonlyMap<string, VolumeStaleUsers>): { Problem?: string } {
    const problems = [
      ...(auditState !== 'ok' ? [`audit log: disk full (${auditState}); free space in ${this.paths.root}`] : []),
      ...(this.mountLost() ? [this.mountLostProblem()] : []),
      ...[...deleted].map(([id, st]) => deletedVolumeProblem(id, st)),
    ].filter((p) => p !== '');
    return problems.length ? { Problem: problems.join('; ') } : {};
  }

  /**
   * Whether the FUSE mount was taken away from outside (FuseMount.lost), logged once when first seen:
   * by the watch below, a status, a scrape or an attach, whichever comes first. The kernel tells the
   * daemon nothing, and the files open then keep being served, so without this line the log said
   * nothing at all while no volume file could be opened.
   */
  private mountLost(): boolean {
    const lost = this.fuse?.lost() ?? false;
    if (lost && !this.mountLostLogged) {
      this.mountLostLogged = true;
      this.log.error({ mount: this.cfg.mountDir }, this.mountLostProblem());
    }
    return lost;
  }

  private mountLostProblem(): string {
    return `the FUSE mount ${this.cfg.mountDir} was unmounted from outside: no volume file can be opened (those open then stay served); `
      + 'restart the daemon to mount it again (the volumes recorded as attached come back)';
  }

  /** Why a volume recorded attached is not served, and its retry when there is one. */
  private unservedProblem(volumeId: string): Record<string, unknown> {
    const r = this.resumeRetry?.state(volumeId);
    const why = this.resumeFailures.get(volumeId);
    if (!r && why !== undefined) return { Problem: `recorded attached but not served: the re-attach failed (${why}); detach it` };
    if (!r) return { Problem: 'recorded attached but not served (KMS refused the re-attach, or it failed); see daemon log; detach it' };
    if (r.DiskFull) return { Problem: `recorded attached, not served yet: the state dir's disk is full (${r.LastError}); retrying with back-off until there is room`, Resume: r };
    return { Problem: `recorded attached, not served yet: the KMS did not answer the re-attach (${r.AwsName ?? r.LastError}); retrying with back-off`, Resume: r };
  }

  /** `Waiting` in Daemon.Kms while the host's KMS has not answered since start. */
  /**
   * Why the key of --snapshot-manifest-key is not open (every snapshot manifest read or write fails meanwhile):
   * waiting for the KMS to answer for it, or for this host's KMS to answer at all (the key is opened once the
   * host is known), or refused on a later try (the retries ended: a restart with a key it may use is needed).
   * Nothing once it is open.
   */
  private manifestKeyProblem(): Record<string, unknown> {
    const signer = this.manifestSigner;
    if (!signer || signer.keyArn !== undefined) return {};
    const refused = this.manifestKeyRefusal ?? this.manifestKeyOpener?.refusal();
    if (refused) return { SnapshotManifestKeyRefused: refused };
    const waiting = this.manifestKeyOpener?.state();
    if (waiting) return { SnapshotManifestKeyWaiting: waiting };
    const host = this.hostResolver?.waiting() as { Since?: string } | undefined;
    if (!host) return {};
    return { SnapshotManifestKeyWaiting: { Since: host.Since ?? new Date(this.startedAt).toISOString(), Attempts: 0, LastError: 'not tried yet: this host\'s KMS has not answered since the start (Daemon.Kms.Waiting); the key is opened once it does' } };
  }

  private waitingForKms(): Record<string, unknown> {
    this.hostResolver?.nudge();
    const w = this.hostResolver?.waiting();
    return w ? { State: 'unreachable', Waiting: w } : {};
  }

  /**
   * Which KMS serves a volume's key and how fresh it is: the endpoint (or
   * `embedded`), the last refresh KMS confirmed, the last error (the volume's
   * while stale, else the remote KMS's last one), seconds left before max-stale.
   */
  private kmsOf(c: { State: string; LastUnwrapTime?: string | undefined; ExpiryTime?: string | undefined; LastError?: unknown }): Record<string, unknown> {
    const remote = this.remoteKms?.health();
    const lastError = c.LastError ?? remote?.LastError;
    return {
      Endpoint: remote ? remote.Endpoint : 'embedded',
      ...(remote ? { HostPrincipal: remote.HostPrincipal, Circuit: remote.Circuit } : {}),
      ...(c.LastUnwrapTime ? { LastRefreshTime: c.LastUnwrapTime } : {}),
      ...(lastError ? { LastError: lastError } : {}),
      ...(c.ExpiryTime ? { SecondsToMaxStale: Math.max(0, Math.round((Date.parse(c.ExpiryTime) - Date.now()) / 1000)) } : {}),
    };
  }

  private async auditTail(b: Record<string, unknown>): Promise<unknown> {
    const limit = typeof b.Limit === 'number' && b.Limit > 0 ? Math.min(b.Limit, 10_000) : 20;
    return { Events: await this.kms!.audit.tail(limit) };
  }

  private auditVerify(b: Record<string, unknown>): Promise<unknown> {
    return this.inAuditQueue('AuditVerify', async () => {
      if (b.Seal !== false) await this.kms!.sealAudit();
      return this.verifyAuditOffThread();
    });
  }

  /**
   * `fn` in the audit log's verification queue, one at a time (each reads the whole log, on a thread
   * of its own, and a prune must not remove files under one); refused once the daemon is stopping.
   */
  private inAuditQueue<T>(op: string, fn: () => Promise<T>): Promise<T> {
    const stopping = (): EbsdError => new EbsdError('SHUTTING_DOWN', `ebsd.${op}: the daemon is shutting down`, { awsName: 'ServiceUnavailable' });
    if (this.stopping) throw stopping();
    return this.verifying.run('audit', async () => {
      if (this.stopping) throw stopping(); // queued behind another one while the stop began
      return fn();
    });
  }

  /** verifyAuditLog of the KMS's log on a worker thread, against the HSM's own public key (the PEM file beside the log is only a copy anyone who can write the state dir could swap). */
  private verifyAuditOffThread(): ReturnType<typeof verifyAuditLogOffThread> {
    const audit = this.kms!.audit;
    return verifyAuditLogOffThread(audit.dir, { publicKeyPem: audit.publicKeyPem, markPath: audit.markFile, signal: this.verifyAbort.signal });
  }

  /**
   * `ebsd snapshot sign-manifests` (account root only), in two steps (docs/architecture.md §13.5).
   * Without ConfirmPlanDigest a dry run: lists the manifests that have no MAC, each with its
   * canonical digest, and the plan digest over them; signs nothing (audited as a read). With it:
   * surveys again, refuses unless the plan digest is the one given, audits the plan, then signs
   * exactly the manifest objects surveyed, each only if a read just before writing finds the same
   * content (signing trusts what it signs: only what root reviewed).
   */
  private async signManifests(b: Record<string, unknown>, caller: Caller, peer: PeerIdentity): Promise<unknown> {
    const unknown = Object.keys(b).filter((k) => k !== 'ConfirmPlanDigest');
    if (unknown.length) throw new Ec2RequestError('EC2_UNKNOWN_PARAMETER', unknown[0]!, `The parameter ${unknown[0]!.slice(0, 64)} is not recognized by ebsd.SignManifests (it takes ConfirmPlanDigest)`);
    const confirm = b.ConfirmPlanDigest;
    if (confirm !== undefined && (typeof confirm !== 'string' || !/^[0-9a-f]{64}$/.test(confirm))) {
      throw new Ec2RequestError('EC2_INVALID_PARAMETER_VALUE', 'ConfirmPlanDigest', `ConfirmPlanDigest ${JSON.stringify(String(confirm).slice(0, 80))} is not a plan digest (64 lower-case hex digits, as the dry run of 'ebsd snapshot sign-manifests' prints)`);
    }
    const signer = this.manifestSigner;
    const raw = this.rawSnapshotStore;
    if (!signer || !raw) {
      throw new EbsdError('MANIFEST_SIGNING_OFF', 'ebsd.SignManifests: this daemon does not sign snapshot manifests: start it with --snapshot-manifest-key KEY', { awsName: 'UnsupportedOperation' });
    }
    if (signer.keyArn === undefined) throw new EbsdError('MANIFEST_SIGNING_OFF', 'ebsd.SignManifests: the key of --snapshot-manifest-key is not open yet (the KMS has not answered since the daemon started)', { awsName: 'UnsupportedOperation' });
    const dryRun = confirm === undefined;
    const plan = await surveyManifestMacs(raw, signer, { keepManifests: !dryRun });
    const unsigned = plan.unsigned.map((u) => ({ snapshotId: u.snapshotId, digest: u.digest }));
    const refused = plan.refused.map((x) => ({ SnapshotId: x.snapshotId, Message: x.message }));
    const ids = this.authz!.identities;
    if (confirm !== undefined && confirm !== plan.planDigest) {
      const refusedConfirm = new EbsdError('MANIFEST_PLAN_CHANGED', `ebsd.SignManifests: nothing signed: the unsigned manifests are not those of the plan confirmed (ConfirmPlanDigest ${confirm}; the store's now ${plan.planDigest}): run 'ebsd snapshot sign-manifests' again and review its list`, { awsName: 'IncorrectState' });
      // Recorded as a refused call (the store changed between the review and the confirmation: someone wrote it).
      await this.kms!.audit.append(signManifestsEvent(caller, {
        accountId: ids.accountId, region: ids.region, requestId: peer.requestId, keyArn: signer.keyArn, store: raw.location, dryRun: false, planDigest: plan.planDigest,
        unsigned, alreadySigned: plan.alreadySigned, refused: plan.refused.map((r) => r.snapshotId),
        error: { code: 'IncorrectState', message: refusedConfirm.message, confirm },
      })).catch((x: unknown) => this.log.error({ err: x }, 'could not audit a refused ebsd.SignManifests'));
      throw refusedConfirm;
    }
    // A dry run is recorded as a read; a confirmed plan, what is about to be trusted, before any manifest is signed (§5.8: what cannot be audited does not take effect).
    try {
      for (let i = 0; i === 0 || i < unsigned.length; i += SIGN_EVENT_IDS) {
        await this.kms!.audit.append(signManifestsEvent(caller, {
          accountId: ids.accountId, region: ids.region, requestId: peer.requestId, keyArn: signer.keyArn, store: raw.location, dryRun, planDigest: plan.planDigest,
          unsigned: unsigned.slice(i, i + SIGN_EVENT_IDS), alreadySigned: plan.alreadySigned, refused: plan.refused.map((r) => r.snapshotId),
        }));
      }
    } catch (err) {
      throw new EbsdError('MANIFEST_SIGNING_NOT_AUDITED', `ebsd.SignManifests: nothing signed: its event could not be written to the audit log: ${(err as Error)?.message ?? String(err)}`, { awsName: 'ServiceFailure', cause: err });
    }
    if (dryRun) {
      return {
        DryRun: true, PlanDigest: plan.planDigest, AlreadySigned: plan.alreadySigned, Refused: refused,
        Unsigned: plan.unsigned.map((u) => ({ SnapshotId: u.snapshotId, VolumeId: u.volumeId, StartTime: u.startTime, BlockCount: u.blockCount, Digest: u.digest })),
      };
    }
    const signed: string[] = [];
    for (const u of plan.unsigned) {
      const outcome = await signManifest(raw, signer, u);
      if (outcome === 'signed') signed.push(u.snapshotId);
      else if (outcome === 'changed') refused.push({ SnapshotId: u.snapshotId, Message: `snapshot manifest ${u.snapshotId}: not signed: it changed after the survey (its digest is no longer ${u.digest})` });
    }
    this.log.info({ signed, alreadySigned: plan.alreadySigned, refused: refused.map((x) => x.SnapshotId), planDigest: plan.planDigest, store: raw.location }, 'signed snapshot manifests that had no MAC');
    return { PlanDigest: plan.planDigest, Signed: signed, AlreadySigned: plan.alreadySigned, Refused: refused };
  }

  /**
   * Remove the sealed audit files whose events are all older than `Before` (AuditLog.prune): the
   * call's event, then a signed record of where the log now begins, then the files and the digests
   * that covered only them. Verification takes the chain up after them (docs/kms-format.md, Retention).
   */
  private async auditPrune(b: Record<string, unknown>, caller: Caller, peer: PeerIdentity): Promise<unknown> {
    const ids = this.authz!.identities;
    // As sent, in every event of the call (the CLI sends an age as the time it stands for).
    const asked = typeof b.Before === 'string' ? b.Before : b.Before === undefined ? '' : JSON.stringify(b.Before);
    const event = (o: { prunedThrough?: number; files?: string[]; error?: { code: string; message: string } }): Record<string, unknown> =>
      auditPruneEvent(caller, { accountId: ids.accountId, region: ids.region, requestId: peer.requestId, before: asked, ...o });
    // AuditLog.prune writes the call's event itself, before it removes anything, when it has a plan; every other
    // outcome (nothing to remove, only a crash's leftovers, a refusal, a failure before that event) is recorded here,
    // so each call is in the log once, as CloudTrail records calls that change nothing or fail.
    let recorded = false;
    const own = (plan: { prunedThrough: number; files: string[] }): Record<string, unknown> => {
      recorded = true;
      return event(plan);
    };
    let res: { PrunedThroughSequence: number; FilesRemoved: string[] };
    try {
      res = await this.pruneAuditLog(b, own);
    } catch (e) {
      if (!recorded) {
        const name = (e as { awsName?: unknown })?.awsName;
        const code = typeof name === 'string' ? name : e instanceof EbsdError ? e.code : 'InternalFailure';
        await this.kms!.audit.append(event({ error: { code, message: (e as Error)?.message ?? String(e) } }))
          .catch((x: unknown) => this.log.error({ err: x }, 'could not audit a refused or failed ebsd.AuditPrune'));
      }
      throw e;
    }
    if (!recorded) {
      await this.kms!.audit.append(event({ prunedThrough: res.PrunedThroughSequence, files: res.FilesRemoved }))
        .catch((x: unknown) => this.log.error({ err: x }, 'could not audit an ebsd.AuditPrune'));
    }
    return res;
  }

  private async pruneAuditLog(b: Record<string, unknown>, eventFor: (plan: { prunedThrough: number; files: string[] }) => Record<string, unknown>): Promise<{ PrunedThroughSequence: number; FilesRemoved: string[] }> {
    const unknown = Object.keys(b).filter((k) => k !== 'Before');
    if (unknown.length) throw new Ec2RequestError('EC2_UNKNOWN_PARAMETER', unknown[0]!, `The parameter ${unknown[0]!.slice(0, 64)} is not recognized by ebsd.AuditPrune (it takes Before)`);
    if (b.Before === undefined) throw new Ec2RequestError('EC2_MISSING_PARAMETER', 'Before', 'The request must contain the parameter Before: an ISO 8601 time; sealed log files whose events are all older go');
    const before = typeof b.Before === 'string' && /^\d{4}-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2}))?$/.test(b.Before) ? Date.parse(b.Before) : NaN;
    if (!Number.isFinite(before)) {
      throw new Ec2RequestError('EC2_INVALID_PARAMETER_VALUE', 'Before', `Before ${JSON.stringify(String(b.Before).slice(0, 64))} is not an ISO 8601 date or time (e.g. 2026-09-01 or 2026-09-01T00:00:00Z)`);
    }
    if (before > Date.now()) throw new Ec2RequestError('EC2_INVALID_PARAMETER_VALUE', 'Before', `Before ${b.Before as string} is in the future: only events already written can be pruned`);
    return this.inAuditQueue('AuditPrune', async () => {
      try {
        return await this.kms!.audit.prune(before, () => this.verifyAuditOffThread(), eventFor);
      } catch (e) {
        if (e instanceof EbsdError) throw e;
        throw new EbsdError('AUDIT_PRUNE_FAILED', `ebsd.AuditPrune: ${(e as Error)?.message ?? String(e)}`, { awsName: 'InternalFailure', cause: e });
      }
    });
  }

  /**
   * An IAM call, recorded as CloudTrail records IAM's (audit-events.ts iamEvent): allowed or
   * failed, one event after it ran, without secrets. A call that cannot be recorded is
   * answered with ServiceFailure, as a KMS call that cannot be audited fails (dispatcher.ts).
   */
  private async auditedIamOp(op: string, b: Record<string, unknown>, caller: Caller, peer: PeerIdentity): Promise<unknown> {
    if (!isIamOperation(op)) return this.iamOp(op, b); // UnknownOperationException: nothing ran
    let response: unknown;
    let error: unknown;
    try {
      response = await this.iamOp(op, b);
    } catch (e) {
      error = e ?? new Error('undefined thrown');
    }
    const ids = this.authz!.identities;
    const failed = error === undefined ? undefined : { message: (error as Error).message ?? String(error), ...(typeof (error as { awsName?: unknown }).awsName === 'string' ? { awsName: (error as { awsName: string }).awsName } : {}) };
    try {
      await this.kms!.audit.append(iamEvent(op, b, caller, { accountId: ids.accountId, requestId: peer.requestId, ...(failed ? { error: failed } : { response }) }));
    } catch (err) {
      this.log.error({ err, operation: iamEventName(op, b), requestId: peer.requestId }, 'could not audit an IAM call');
      throw new EbsdError('IAM_NOT_AUDITED', `iam:${iamEventName(op, b)} ${failed ? 'failed and ' : 'ran but '}could not be recorded in the audit log kms/audit/events.ndjson: ${(err as Error).message}`, { awsName: 'ServiceFailure' });
    }
    if (error !== undefined) throw error;
    return response;
  }

  private async iamOp(op: string, b: Record<string, unknown>): Promise<unknown> {
    const ids = this.authz!.identities;
    const str = (k: string): string => {
      const v = b[k];
      if (typeof v !== 'string' || v === '') throw new EbsdError('MISSING_PARAMETER', `${k} is required`, { awsName: 'InvalidInputException' });
      return v;
    };
    /** A UserName member naming a user that exists, as IAM requires of the access-key operations (undefined: none given). */
    const existingUser = (v: unknown): string | undefined => {
      if (typeof v !== 'string') return undefined;
      if (!ids.listUsers().some((u) => u.UserName === v)) throw new EbsdError('IAM_NO_SUCH_ENTITY', `The user with name ${v} cannot be found.`, { awsName: 'NoSuchEntityException' });
      return v;
    };
    const uid = (): number => {
      const v = b.Uid;
      // A uid_t is 32 bits and (uid_t)-1 means "no uid" (setresuid): 0 .. 2^32-2.
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > MAX_UID) {
        throw new EbsdError('BAD_UID', `Uid must be an integer from 0 to ${MAX_UID}, got ${typeof v === 'number' ? String(v) : typeof v}`, { awsName: 'InvalidInputException' });
      }
      return v;
    };
    const path = typeof b.Path === 'string' ? { path: b.Path } : {};
    const maxSession = (): { maxSessionDuration?: number } => {
      const v = b.MaxSessionDuration;
      if (v === undefined) return {};
      if (typeof v !== 'number' || !Number.isInteger(v)) {
        throw new EbsdError('BAD_MAX_SESSION_DURATION', `MaxSessionDuration must be an integer number of seconds, got ${typeof v === 'number' ? String(v) : typeof v}`, { awsName: 'ValidationError' });
      }
      return { maxSessionDuration: v };
    };
    switch (op) {
      case 'CreateUser': {
        const c = await ids.createUser(str('UserName'), path);
        return { User: { UserName: c.userName, Arn: c.arn, UserId: c.principalId } };
      }
      case 'DeleteUser':
        // IAM refuses to delete a user who still has access keys or inline policies (IAM API Reference,
        // DeleteUser): both checked before anything is written, then one write, to identities.json, and
        // no key outlives its user to sign for a later one of the name.
        this.accessKeys!.assertNoKeys(str('UserName'));
        await ids.deleteUser(str('UserName'));
        return {};
      case 'ListUsers': return { Users: ids.listUsers() };
      case 'CreateRole': {
        const arn = await ids.createRole(str('RoleName'), { ...path, ...maxSession() });
        return { Role: ids.listRoles().find((r) => r.Arn === arn) };
      }
      case 'UpdateRole': await ids.updateRole(str('RoleName'), maxSession()); return {};
      case 'DeleteRole':
        if (str('RoleName') === HOST_ROLE) throw new EbsdError('IAM_PROTECTED', `${HOST_ROLE} is the host's own role`, { awsName: 'DeleteConflictException' });
        // Refused (inline policies left: DeleteConflict) before anything is written; the trust policy is dropped
        // only once the role is gone (docs/architecture.md §5.4).
        await ids.deleteRole(str('RoleName'));
        await this.trust!.delete(str('RoleName'));
        return {};
      case 'ListRoles': return { Roles: ids.listRoles() };
      case 'PutPolicy': await ids.attachPolicy(str('Principal'), str('PolicyName'), str('PolicyDocument')); return {};
      case 'DeletePolicy': await ids.detachPolicy(str('Principal'), str('PolicyName')); return {};
      case 'GetPolicy': {
        const doc = ids.getPolicy(str('Principal'), str('PolicyName'));
        if (doc === undefined) throw new EbsdError('IAM_NO_SUCH_ENTITY', `no policy ${str('PolicyName')} on ${str('Principal')}`, { awsName: 'NoSuchEntityException' });
        return { PolicyName: str('PolicyName'), PolicyDocument: doc };
      }
      case 'ListPolicies': return { PolicyNames: ids.listPolicies(str('Principal')) };
      case 'MapUid':
        await ids.mapUid(uid(), str('Principal'), typeof b.SessionName === 'string' ? { session: b.SessionName } : {});
        return { Mapping: ids.listUidMappings().find((m) => m.uid === b.Uid) };
      case 'UnmapUid': await ids.unmapUid(uid()); return {};
      case 'ListUidMappings': return { Mappings: ids.listUidMappings() };
      case 'CreateAccessKey': {
        // IAM API Reference, CreateAccessKey: without UserName the key is the caller's own, and for the account
        // root a root access key. ebsd has no root access keys (a key belongs to a user: access-keys.ts), and
        // only the root calls Iam* targets (docs/architecture.md §5.1), so the user must be named.
        if (b.UserName === undefined) {
          throw new EbsdError('MISSING_PARAMETER', 'UserName is required: ebsd has no access keys for the account root, only for IAM users; name the user (ebsd iam create-access-key --user-name NAME)', { awsName: 'InvalidInputException' });
        }
        return { AccessKey: await this.accessKeys!.create(existingUser(str('UserName'))!) };
      }
      case 'ListAccessKeys':
        // IAM API Reference, ListAccessKeys: a UserName that names no user is NoSuchEntity, not an empty list.
        return { AccessKeyMetadata: this.accessKeys!.list(existingUser(b.UserName)), IsTruncated: false };
      case 'UpdateAccessKey':
        await this.accessKeys!.update(str('AccessKeyId'), str('Status') as 'Active', existingUser(b.UserName));
        this.listener?.forgetSigningKeys();
        return {};
      case 'DeleteAccessKey':
        await this.accessKeys!.delete(str('AccessKeyId'), existingUser(b.UserName));
        this.listener?.forgetSigningKeys();
        return {};
      case 'UpdateAssumeRolePolicy': {
        const role = str('RoleName');
        if (!ids.listRoles().some((r) => r.RoleName === role)) throw new EbsdError('IAM_NO_SUCH_ENTITY', `The role with name ${role} cannot be found.`, { awsName: 'NoSuchEntityException' });
        await this.trust!.put(role, str('PolicyDocument'));
        return {};
      }
    }
    throw new EbsdError('UNKNOWN_TARGET', `unknown IAM operation ${op}`, { awsName: 'UnknownOperationException' });
  }
}

/**
 * Run the daemon in the foreground until SIGTERM/SIGINT, then shut down in
 * order. Resolves when stopped; the CLI turns the outcome into an exit code.
 */
export async function runDaemon(cfg: DaemonConfig, log: Logger): Promise<void> {
  const d = new Daemon(cfg, log);
  let signalled: (sig: NodeJS.Signals) => void = () => {};
  const got = new Promise<NodeJS.Signals>((r) => (signalled = r));
  const onSig = (sig: NodeJS.Signals): void => {
    // The stop is asked for and its deadline armed before anything that could throw: a log line
    // to a closed pipe must not keep the daemon from stopping.
    signalled(sig);
    d.deadline.arm(sig);
    try {
      log.info({ signal: sig }, 'shutting down');
    } catch {
      // nowhere to say it
    }
  };
  process.on('SIGTERM', onSig);
  process.on('SIGINT', onSig);
  process.on('SIGHUP', onSig);
  try {
    // A signal during the start is answered once it is done, within the same deadline.
    await d.deadline.race(d.start());
    // Keep the event loop alive: fuse-native's handles are unref'd.
    const keepAlive = setInterval(() => {}, 1 << 30);
    const why = await Promise.race([got, d.failed]);
    clearInterval(keepAlive);
    await d.stop();
    if (why instanceof Error) throw why; // main.ts logs it and exits non-zero
  } finally {
    d.deadline.disarm();
    process.off('SIGTERM', onSig);
    process.off('SIGINT', onSig);
    process.off('SIGHUP', onSig);
  }
}

/** What a CreateVolume ClientToken stands for: the request's parameters as checked (ClientToken aside) and its caller. */
function createVolumeDigest(input: CreateVolumeInput, caller: Caller): string {
  const { ClientToken: _t, ...params } = input;
  // A size is the same size however it is written ("4MiB", 4194304).
  if (params.Size !== undefined) {
    try {
      params.Size = parseVolumeSize(params.Size);
    } catch {
      // refused later, by the create
    }
  }
  return createHash('sha256').update(JSON.stringify({ params, caller: caller.arn })).digest('base64');
}

/**
 * One page of `items` in volume-id order: the token is the last id shown, so a
 * volume created or deleted between pages neither repeats nor shifts the rest.
 */
function pageById<T extends { VolumeId: string }>(items: readonly T[], max: number | undefined, token: string | undefined): { page: T[]; next?: string } {
  if (token !== undefined && !VOLUME_ID_RE.test(token)) {
    throw new Ec2RequestError('EC2_INVALID_PARAMETER_VALUE', 'NextToken', 'Invalid value for NextToken: pass the NextToken of the previous page unchanged');
  }
  const sorted = [...items].sort((x, y) => (x.VolumeId < y.VolumeId ? -1 : x.VolumeId > y.VolumeId ? 1 : 0));
  const from = token === undefined ? 0 : sorted.findIndex((v) => v.VolumeId > token);
  const page = from < 0 ? [] : sorted.slice(from, from + (max ?? 500));
  const more = from >= 0 && from + page.length < sorted.length;
  return { page, ...(more ? { next: page[page.length - 1]!.VolumeId } : {}) };
}
