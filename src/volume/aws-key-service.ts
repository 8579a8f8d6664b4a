import {
  CreateGrantCommand,
  DecryptCommand,
  DescribeKeyCommand,
  GenerateDataKeyWithoutPlaintextCommand,
  GenerateMacCommand,
  KMSClient,
  type KMSClientConfig,
  ListKeysCommand,
  ListRetirableGrantsCommand,
  ReEncryptCommand,
  RetireGrantCommand,
  VerifyMacCommand,
  type GrantOperation,
  type MacAlgorithmSpec,
} from '@aws-sdk/client-kms';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import type { Logger } from 'pino';
import type { Caller } from '../kms/types.js';
import { ArgRangeError } from '../util/errors.js';
import { caBundleAgent } from '../util/ca-bundle.js';
import { isLoopback } from '../util/loopback.js';
import { endpointUserinfo, shownEndpoint } from '../util/endpoint-url.js';
import { silentLogger } from '../util/logger.js';
import { KeyServiceError } from './errors.js';
export { isUnreachable } from './unreachable.js';
import { isUnreachable } from './unreachable.js';
import { checkGivenPrincipal, isAwsHost, parseIamPrincipalArn, resolvedStsEndpoint, SESSION_RE, type IamPrincipalArn } from './host-identity.js';
import { toKeyServiceError, type CallOptions, type KeyService, type RetirableGrant } from './key-service.js';

export interface AwsKeyServiceOptions {
  /** The KMS endpoint (`https://kms.us-east-1.amazonaws.com`, another host's `ebsd daemon --kms-only`). */
  endpoint: string;
  /** Region of the KMS; default: the SDK's own resolution (AWS_REGION, the profile's `region`). */
  region?: string;
  /** Per HTTP attempt: the TCP/TLS connect, then the whole request. */
  connectionTimeoutMs?: number;
  requestTimeoutMs?: number;
  /** The SDK's standard retry mode: exponential backoff with full jitter, this many attempts per call. */
  maxAttempts?: number;
  /** Consecutive calls KMS did not answer, or answered with a server fault (after the SDK's retries), before the circuit opens. */
  circuitFailures?: number;
  /** First open period; doubles while probes keep failing, up to circuitMaxOpenMs. */
  circuitOpenMs?: number;
  circuitMaxOpenMs?: number;
  /**
   * The host's principal as grants and key policies name it (`--host-principal-arn`), for a role
   * with a path: STS names a session by its role's name only. Checked against STS's answer (hostPrincipal).
   */
  hostPrincipalArn?: string;
  logger?: Logger;
}

/** What `ebsd status` shows about the remote KMS; no credentials, no key material. */
export interface RemoteKmsHealth {
  Endpoint: string;
  Region: string;
  HostPrincipal: string;
  /**
   * closed: calls go out; open: calls fail at once until NextProbeTime; half-open: the open period
   * is over and the circuit has not closed: the next call goes out as its trial (or one is out),
   * and fails the circuit open again for twice as long unless the KMS answers.
   */
  Circuit: 'closed' | 'open' | 'half-open';
  NextProbeTime?: string;
  LastSuccessTime?: string;
  LastError?: { Operation: string; AwsName?: string; Message: string; Time: string };
  ConsecutiveFailures: number;
  /**
   * Whether the last request that went out, a call or an idle probe, was answered (a refusal
   * included). Probes set only this (and LastSuccessTime, LastError): never the circuit.
   */
  Reachable: boolean;
  /** KMS calls made, by operation (one SDK call, retries included, counts once). */
  Calls: Record<string, number>;
}

/**
 * The idle probe's wait, `intervalMs` ±20 % (`random` in [0, 1)): the hosts of a fleet, started
 * together, do not all probe their KMS in the same instant, interval after interval.
 */
export function probeDelayMs(intervalMs: number, random: () => number = Math.random): number {
  return Math.round(intervalMs * (0.8 + 0.4 * random()));
}

const DEFAULTS = { connectionTimeoutMs: 2_000, requestTimeoutMs: 5_000, maxAttempts: 3, circuitFailures: 3, circuitOpenMs: 1_000, circuitMaxOpenMs: 30_000 };

/**
 * The permissions the host role needs in the key policy, named in AccessDenied messages (README "A fleet").
 * No kms:Decrypt nor kms:ReEncrypt*: the host unwraps and re-wraps data keys only through grants
 * (attach grants; a create's, restore's or copy's short-lived op grants, src/volume/op-grants.ts).
 */
const HOST_KEY_ACTIONS = ['kms:GenerateDataKeyWithoutPlaintext', 'kms:CreateGrant', 'kms:DescribeKey'];
/** What a host needs on the key of --snapshot-manifest-key (src/snapshot/manifest-mac.ts). */
const HOST_MAC_KEY_ACTIONS = ['kms:GenerateMac', 'kms:VerifyMac', 'kms:DescribeKey'];

/**
 * KeyService over the AWS KMS protocol (`@aws-sdk/client-kms`): AWS KMS
 * itself or another host's `ebsd daemon --kms-only`. The host signs every
 * call with credentials from the standard AWS chain (environment, shared
 * config and credentials files, `role_arn` + `source_profile` through STS,
 * refreshed by the SDK before expiry), so the KMS sees the host's principal,
 * not the local caller's: local callers were judged on this host already,
 * the KMS host judges the host (`caller` only reaches its audit, see onBehalfOf).
 *
 * A dead KMS is ridden out, not hammered: per-attempt timeouts, the SDK's
 * jittered retries, then a circuit that fails calls at once for a period
 * that doubles while the probe after it keeps failing. An answer from KMS,
 * even a refusal or a throttle, closes it; a server fault (HTTP 5xx:
 * DependencyTimeoutException, KMSInternalException, KeyUnavailableException,
 * a proxy's 503) counts as no answer (isServerFault). Failures keep their AWS
 * names, so the key cache tells "no" (impair) from "not now" (serve until max-stale).
 */
export class AwsKeyService implements KeyService {
  readonly endpoint: string;
  private readonly kms: KMSClient;
  private readonly sts: STSClient;
  private readonly o: typeof DEFAULTS;
  private readonly log: Logger;
  private readonly givenPrincipal: IamPrincipalArn | undefined;
  private readonly clientConfig: ConstructorParameters<typeof STSClient>[0];
  private stsChecked = false;
  private region = '';
  private host: Caller | undefined;
  private failures = 0;
  private openUntil = 0;
  private openMs: number;
  private probing = false;
  private lastSuccess: number | undefined;
  private reachable = true;
  /** Requests sent so far (calls and probes), and the number of the one whose outcome `reachable` shows. */
  private sentSeq = 0;
  private reachableSeq = 0;
  private lastError: RemoteKmsHealth['LastError'];
  private readonly calls: Record<string, number> = {};
  /** When a request last went out and settled (answered or not); a call the open circuit failed at once does not count. */
  private lastSent = Date.now();
  private probeEveryMs = 0;
  /** This round's idle time before a probe: probeEveryMs ±20 % (probeDelayMs), drawn again after each probe. */
  private probeAfterMs = 0;
  private probeTimer: NodeJS.Timeout | undefined;
  private probeClient: { send: (c: any) => Promise<unknown>; destroy: () => void } | undefined;
  private closed = false;

  constructor(opts: AwsKeyServiceOptions) {
    let url: URL;
    try {
      url = new URL(opts.endpoint);
    } catch {
      throw new ArgRangeError('--kms-endpoint', `"${shownEndpoint(opts.endpoint)}" is not a URL (e.g. https://10.0.0.1:4599)`);
    }
    if (url.username || url.password) throw endpointUserinfo(url);
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new ArgRangeError('--kms-endpoint', `"${shownEndpoint(opts.endpoint)}": only http(s) URLs`);
    // A Decrypt answer carries the plaintext volume key: plain HTTP only to this machine, as the listener allows it.
    if (url.protocol === 'http:' && !isLoopback(url.hostname)) {
      throw new ArgRangeError('--kms-endpoint', `"${shownEndpoint(opts.endpoint)}": plain HTTP is allowed only to a loopback address (KMS answers carry plaintext volume keys); use https://`);
    }
    if (opts.hostPrincipalArn !== undefined) {
      this.givenPrincipal = parseIamPrincipalArn(opts.hostPrincipalArn);
      if (!this.givenPrincipal) throw new ArgRangeError('--host-principal-arn', `"${opts.hostPrincipalArn}" is not an IAM role or user ARN (arn:aws:iam::111122223333:role/fleet/host-a)`);
    }
    this.endpoint = opts.endpoint;
    this.o = { ...DEFAULTS, ...Object.fromEntries(Object.entries(opts).filter(([k, v]) => k in DEFAULTS && v !== undefined)) };
    this.openMs = this.o.circuitOpenMs;
    this.log = opts.logger ?? silentLogger;
    // The SDK's documented switch for its "node >= 22" notice (a process warning on stderr, printed
    // in the middle of ebsd's output): ebsd supports node >= 20.19 and pins the SDK it ships.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const requestHandler = {
      connectionTimeout: this.o.connectionTimeoutMs,
      requestTimeout: this.o.requestTimeoutMs,
      throwOnRequestTimeout: true,
      ...caBundleAgent(),
    };
    const common = { ...(opts.region ? { region: opts.region } : {}), maxAttempts: this.o.maxAttempts, retryMode: 'standard', requestHandler };
    this.clientConfig = common;
    this.kms = new KMSClient({ ...common, endpoint: opts.endpoint });
    // STS at its own configured endpoint (profile `endpoint_url`, AWS_ENDPOINT_URL_STS), as for AWS.
    this.sts = new STSClient(common);
  }

  /**
   * Who this host is to the KMS (STS GetCallerIdentity). An assumed-role
   * session answers with its role's ARN: grants and key policies name the
   * role, as AWS KMS requires, and every session of it matches. The session
   * ARN carries the role's name, not its path: a role with a path is given
   * with `hostPrincipalArn`, which must agree with STS (checkGivenPrincipal).
   */
  async hostPrincipal(): Promise<Caller> {
    if (this.host) return this.host;
    this.region = await this.kms.config.region();
    await this.checkStsEndpoint();
    let arn: string;
    let account: string;
    try {
      const me = await this.sts.send(new GetCallerIdentityCommand({}));
      arn = me.Arn!;
      account = me.Account!;
    } catch (e) {
      const err = toKeyServiceError('GetCallerIdentity', e);
      const msg = (e as Error)?.message ?? String(e);
      // A certificate that does not verify never reached the credentials: say so, and where trust comes from.
      const why = isTlsVerifyError(e)
        ? `the endpoint's TLS certificate did not verify against the trusted CAs (the system's, AWS_CA_BUNDLE, NODE_EXTRA_CA_CERTS): ${msg}`
        : `credentials from the AWS chain: AWS_PROFILE, AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE, environment: ${msg}`;
      throw new KeyServiceError('GetCallerIdentity', err.awsName, err.authoritative, `cannot tell who this host is to ${this.endpoint} (${why})`, e);
    }
    const session = SESSION_RE.exec(arn);
    const host: Caller = this.givenPrincipal
      ? checkGivenPrincipal(this.givenPrincipal, arn, account)
      : session
        ? { arn: `arn:${session[1]}:iam::${session[2]}:role/${session[3]}`, accountId: account, type: 'Role' }
        : { arn, accountId: account, type: /:role\//.test(arn) ? 'Role' : 'IAMUser' };
    this.host = host;
    return host;
  }

  /**
   * A KMS that is not AWS's (another host's `--kms-only` listener) with no STS endpoint configured
   * would send GetCallerIdentity, and this host's access key id, to AWS's public STS. Refused
   * before any call: the host's STS is the KMS host's listener, configured as the SDK reads it.
   */
  private async checkStsEndpoint(): Promise<void> {
    if (this.stsChecked || isAwsHost(new URL(this.endpoint).hostname)) return;
    const sts = await resolvedStsEndpoint(this.clientConfig);
    if (sts !== undefined && isAwsHost(sts.hostname)) {
      throw new ArgRangeError('--kms-endpoint', `${this.endpoint} is not an AWS endpoint, but no STS endpoint is configured: GetCallerIdentity would go to ${sts.origin} with this host's access key id. Set AWS_ENDPOINT_URL_STS (or AWS_ENDPOINT_URL, or endpoint_url in the AWS profile) to the KMS host's listener, e.g. AWS_ENDPOINT_URL_STS=${new URL(this.endpoint).origin} (README "A fleet")`);
    }
    this.stsChecked = true;
  }

  health(): RemoteKmsHealth {
    const now = Date.now();
    return {
      Endpoint: this.endpoint,
      Region: this.region,
      HostPrincipal: this.host?.arn ?? '',
      // openUntil stays set until an answer closes the circuit, also once its period is over.
      Circuit: this.openUntil === 0 ? 'closed' : this.openUntil > now && !this.probing ? 'open' : 'half-open',
      ...(this.openUntil > now ? { NextProbeTime: new Date(this.openUntil).toISOString() } : {}),
      ...(this.lastSuccess !== undefined ? { LastSuccessTime: new Date(this.lastSuccess).toISOString() } : {}),
      ...(this.lastError ? { LastError: { ...this.lastError } } : {}),
      ConsecutiveFailures: this.failures,
      Reachable: this.reachable,
      Calls: { ...this.calls },
    };
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
    this.probeClient?.destroy(); // a probe in flight fails; nothing after it is scheduled
    this.kms.destroy();
    this.sts.destroy();
  }

  /**
   * While no request has gone to the KMS for `intervalMs`, one probe (probeOnce), so that an
   * idle host's health() — `ebsd status`, ebsd_kms_remote_reachable — follows its KMS going
   * away and coming back instead of keeping what its last call saw. One at a time: the next is
   * scheduled when the last has settled, after `intervalMs` ±20 % (probeDelayMs). Stopped by
   * close(). `intervalMs` 0: no probes.
   */
  startIdleProbe(intervalMs: number): void {
    if (!Number.isInteger(intervalMs) || intervalMs < 0) throw new ArgRangeError('intervalMs', `must be a whole number of milliseconds >= 0, got ${intervalMs}`);
    if (intervalMs === 0 || this.closed || this.probeEveryMs > 0) return;
    this.probeEveryMs = intervalMs;
    this.probeAfterMs = probeDelayMs(intervalMs);
    this.scheduleProbe();
  }

  private scheduleProbe(): void {
    if (this.closed) return;
    this.probeTimer = setTimeout(() => void this.probeIfIdle(), Math.max(0, this.lastSent + this.probeAfterMs - Date.now()));
    this.probeTimer.unref();
  }

  private async probeIfIdle(): Promise<void> {
    this.probeTimer = undefined;
    try {
      if (!this.closed && Date.now() - this.lastSent >= this.probeAfterMs) {
        await this.probeOnce();
        this.probeAfterMs = probeDelayMs(this.probeEveryMs);
      }
    } finally {
      this.scheduleProbe();
    }
  }

  /**
   * One authenticated request to the KMS endpoint itself, one attempt: any HTTP answer below 500,
   * a refusal included, says the KMS answers (as in call()); no answer or a server fault says it
   * does not. Either sets Reachable only: the circuit counts the calls volumes need, and an idle
   * host's failed probe must not fail its next attach at once. A refusal is not a LastError (the
   * host policy need not allow the probe's action; README "A fleet"). Another host's `ebsd daemon
   * --kms-only` is asked STS GetCallerIdentity on the same listener, which answers it without an
   * audit record (src/daemon/kms-listener.ts, sts()): an idle fleet does not fill the KMS host's
   * audit log. AWS KMS serves no STS, so it is asked ListKeys (Limit 1), which CloudTrail records.
   */
  private async probeOnce(): Promise<void> {
    const aws = isAwsHost(new URL(this.endpoint).hostname);
    const op = aws ? 'ListKeys' : 'GetCallerIdentity';
    if (!this.probeClient) {
      const config = { ...this.clientConfig, maxAttempts: 1, endpoint: this.endpoint };
      // clientConfig is the region, retries and request handler both clients were built from (constructor).
      this.probeClient = aws ? new KMSClient(config as KMSClientConfig) : new STSClient(config);
    }
    this.calls[op] = (this.calls[op] ?? 0) + 1;
    const seq = ++this.sentSeq;
    try {
      await this.probeClient.send(aws ? new ListKeysCommand({ Limit: 1 }) : new GetCallerIdentityCommand({}));
      this.probeAnswered(seq);
    } catch (e) {
      if (this.closed) return;
      const status = (e as { $metadata?: { httpStatusCode?: unknown } } | undefined)?.$metadata?.httpStatusCode;
      if (typeof status === 'number' && status < 500) {
        this.probeAnswered(seq);
      } else {
        const err = toKeyServiceError(op, e);
        this.lastError = { Operation: op, ...(err.awsName ? { AwsName: err.awsName } : {}), Message: err.message, Time: new Date().toISOString() };
        this.showReachable(seq, false);
      }
    } finally {
      this.lastSent = Date.now();
    }
  }

  /** `viaGrant`: the request carries grant tokens, so an AccessDenied means the grant does not allow it (denied()). */
  private async call<T>(op: string, send: () => Promise<T>, keyId: string | undefined, opts?: CallOptions & { viaGrant?: boolean }): Promise<T> {
    const now = Date.now();
    let probe = false;
    // A bypassing call goes out while the circuit is open but is not its probe:
    // an answer closes the circuit, a failure leaves the open period as it was.
    if (this.openUntil > 0 && !opts?.bypassCircuit) {
      if (now < this.openUntil || this.probing) {
        throw new KeyServiceError(op, undefined, false, `KMS at ${this.endpoint} is not answering (${this.failures} calls in a row); circuit open, next try at ${new Date(Math.max(this.openUntil, now)).toISOString()}`);
      }
      probe = this.probing = true;
    }
    this.calls[op] = (this.calls[op] ?? 0) + 1;
    const seq = ++this.sentSeq;
    try {
      const r = await send();
      this.answered(seq);
      return r;
    } catch (e) {
      const err = toKeyServiceError(op, e);
      this.lastError = { Operation: op, ...(err.awsName ? { AwsName: err.awsName } : {}), Message: err.message, Time: new Date().toISOString() };
      // A throttle is an answer (README "A fleet": the SDK's retries back off, the key cache rides it out as "not now").
      if (err.awsName !== undefined && !isServerFault(e)) {
        this.answered(seq); // KMS answered: it is up, whatever it said
      } else {
        this.unanswered(probe, err, seq);
      }
      if (err.awsName === 'AccessDeniedException') throw this.denied(op, keyId, e, opts?.viaGrant === true);
      throw err;
    } finally {
      if (probe) this.probing = false;
      this.lastSent = Date.now();
    }
  }

  /**
   * The KMS answered a probe. A circuit that calls opened is closed by it (unless a trial call is
   * out, which decides): the KMS answers, so the next attach may go out at once instead of failing
   * fast until the open period ends while the gauge already says reachable.
   */
  private probeAnswered(seq: number): void {
    if (this.openUntil > 0 && !this.probing) return this.answered(seq);
    this.lastSuccess = Date.now();
    this.showReachable(seq, true);
  }

  /**
   * Reachable is the outcome of the last request sent (KmsHealth): a request's outcome is shown
   * unless one sent after it has already settled (a probe unanswered after a later call was
   * answered must not show an answering KMS as unreachable until the next probe).
   */
  private showReachable(seq: number, reachable: boolean): void {
    if (seq < this.reachableSeq) return;
    this.reachableSeq = seq;
    this.reachable = reachable;
  }

  private answered(seq: number): void {
    this.lastSuccess = Date.now();
    this.showReachable(seq, true);
    if (this.openUntil > 0) this.log.info({ kmsEndpoint: this.endpoint, failures: this.failures }, 'KMS answers again; circuit closed');
    this.failures = 0;
    this.openUntil = 0;
    this.openMs = this.o.circuitOpenMs;
  }

  private unanswered(probe: boolean, err: KeyServiceError, seq: number): void {
    this.failures++;
    this.showReachable(seq, false);
    if (probe) {
      this.openMs = Math.min(this.openMs * 2, this.o.circuitMaxOpenMs);
      this.openUntil = Date.now() + this.openMs;
    } else if (this.openUntil === 0 && this.failures >= this.o.circuitFailures) {
      this.openUntil = Date.now() + this.openMs;
      // Logged once per outage; the key cache says what it means per volume.
      this.log.warn({ kmsEndpoint: this.endpoint, failures: this.failures, awsName: err.awsName, message: err.message }, 'KMS not answering; circuit open, calls fail fast between probes');
    }
  }

  /**
   * AccessDenied, made to name the permission and the principal that lacks it (README "A fleet").
   * A call through a grant is refused when the grant is gone (revoked, retired) or does not cover
   * the request: no key-policy Allow is the fix for that, so the message says so instead.
   */
  private denied(op: string, keyId: string | undefined, cause: unknown, viaGrant: boolean): KeyServiceError {
    const who = this.host?.arn ?? 'this host';
    const on = keyId ?? 'the key';
    // An explicit Deny wins over every Allow and grant, so neither piece of advice below would help:
    // a Deny on the host's role (a revoked session's AWSRevokeOlderSessions, README "KMS over the
    // network") refuses calls through a live grant too. The KMS says so only in its message, worded
    // as AWS words it ("... with an explicit deny in an identity-based policy", src/kms/authz/evaluate.ts).
    const kmsMessage = (cause as { message?: unknown } | undefined)?.message;
    const deny = typeof kmsMessage === 'string' ? /with an explicit deny in (an? [a-z -]*?(?:policy|boundary))/.exec(kmsMessage) : null;
    if (deny) {
      return new KeyServiceError(op, 'AccessDeniedException', true,
        `kms:${op} denied for ${who} on ${on} by an explicit deny in ${deny[1]}; no Allow or grant overrides a Deny: remove it (KMS: ${kmsMessage}) (README "A fleet")`, cause);
    }
    if (viaGrant) {
      return new KeyServiceError(op, 'AccessDeniedException', true,
        `kms:${op} through a grant denied for ${who} on ${on}: the grant was revoked or retired, or does not allow this request (README "A fleet")`, cause);
    }
    return new KeyServiceError(op, 'AccessDeniedException', true,
      `kms:${op} denied for ${who} on ${on}: add an Allow for "${who}" with ${(op.endsWith('Mac') ? HOST_MAC_KEY_ACTIONS : HOST_KEY_ACTIONS).join(', ')} to the key policy (README "A fleet")`, cause);
  }

  /**
   * The KMS host audits who asked: the host signs, and the local principal
   * whose request this is (CreateVolume, AttachVolume) rides in the
   * User-Agent (`ebsd-on-behalf-of/<arn>`), which the KMS audit records as
   * `userAgent`. Informational, like AWS's `invokedBy`: the KMS authorizes the host only.
   */
  private onBehalfOf<C extends { middlewareStack: { add: (...a: any[]) => void } }>(cmd: C, caller: Caller): C {
    if (!caller.arn || caller.arn === this.host?.arn) return cmd;
    const tag = ` ebsd-on-behalf-of/${caller.arn}`;
    cmd.middlewareStack.add(
      (next: (a: unknown) => Promise<unknown>) => async (args: { request?: { headers?: Record<string, string> } }) => {
        const h = args.request?.headers;
        if (h) h['user-agent'] = `${h['user-agent'] ?? ''}${tag}`.trim();
        return next(args);
      },
      // Outside retries and signing: once per call, before any attempt is signed.
      { step: 'finalizeRequest', priority: 'high', name: 'ebsdOnBehalfOf' },
    );
    return cmd;
  }

  generateDataKeyWithoutPlaintext(req: Parameters<KeyService['generateDataKeyWithoutPlaintext']>[0], caller: Caller) {
    return this.call('GenerateDataKeyWithoutPlaintext', async () => {
      const r = await this.kms.send(this.onBehalfOf(new GenerateDataKeyWithoutPlaintextCommand(req), caller));
      return { CiphertextBlob: r.CiphertextBlob!, KeyId: r.KeyId! };
    }, req.KeyId);
  }

  createGrant(req: Parameters<KeyService['createGrant']>[0], caller: Caller) {
    return this.call('CreateGrant', async () => {
      const r = await this.kms.send(this.onBehalfOf(new CreateGrantCommand({ ...req, Operations: req.Operations as GrantOperation[] }), caller));
      return { GrantId: r.GrantId!, GrantToken: r.GrantToken! };
    }, req.KeyId);
  }

  decrypt(req: Parameters<KeyService['decrypt']>[0], caller: Caller, opts?: CallOptions) {
    return this.call('Decrypt', async () => {
      const r = await this.kms.send(this.onBehalfOf(new DecryptCommand(req), caller));
      return { Plaintext: r.Plaintext!, KeyId: r.KeyId! };
    }, req.KeyId, { ...opts, viaGrant: !!req.GrantTokens?.length });
  }

  /** ReEncrypt of a snapshot's data key for a restore or copy under the same key (signed as the host; through op grants, op-grants.ts). */
  reEncrypt(req: Parameters<KeyService['reEncrypt']>[0], caller: Caller) {
    return this.call('ReEncrypt', async () => {
      const r = await this.kms.send(this.onBehalfOf(new ReEncryptCommand(req), caller));
      return { CiphertextBlob: r.CiphertextBlob!, SourceKeyId: r.SourceKeyId!, KeyId: r.KeyId! };
    }, req.DestinationKeyId, { viaGrant: !!req.GrantTokens?.length });
  }

  async retireGrant(req: Parameters<KeyService['retireGrant']>[0], _caller: Caller): Promise<void> {
    await this.call('RetireGrant', () => this.kms.send(new RetireGrantCommand(req)), req.KeyId);
  }

  describeKey(req: Parameters<KeyService['describeKey']>[0], _caller: Caller) {
    return this.call('DescribeKey', async () => {
      const r = await this.kms.send(new DescribeKeyCommand(req));
      return { KeyMetadata: { ...r.KeyMetadata!, Arn: r.KeyMetadata!.Arn! } };
    }, req.KeyId);
  }

  /** The MAC of a signed snapshot manifest (src/snapshot/manifest-mac.ts), as the host. */
  generateMac(req: Parameters<NonNullable<KeyService['generateMac']>>[0], _caller: Caller) {
    return this.call('GenerateMac', async () => {
      const r = await this.kms.send(new GenerateMacCommand({ ...req, MacAlgorithm: req.MacAlgorithm as MacAlgorithmSpec }));
      return { Mac: r.Mac!, KeyId: r.KeyId! };
    }, req.KeyId);
  }

  verifyMac(req: Parameters<NonNullable<KeyService['verifyMac']>>[0], _caller: Caller) {
    return this.call('VerifyMac', async () => {
      const r = await this.kms.send(new VerifyMacCommand({ ...req, MacAlgorithm: req.MacAlgorithm as MacAlgorithmSpec }));
      return { MacValid: r.MacValid === true, KeyId: r.KeyId! };
    }, req.KeyId);
  }

  listRetirableGrants(req: { RetiringPrincipal: string; Limit?: number; Marker?: string }, _caller: Caller) {
    return this.call('ListRetirableGrants', async () => {
      const r = await this.kms.send(new ListRetirableGrantsCommand(req));
      const Grants: RetirableGrant[] = (r.Grants ?? []).map((g) => ({ KeyId: g.KeyId!, GrantId: g.GrantId!, ...(g.Name ? { Name: g.Name } : {}) }));
      return { Grants, ...(r.NextMarker ? { NextMarker: r.NextMarker } : {}), ...(r.Truncated !== undefined ? { Truncated: r.Truncated } : {}) };
    }, undefined);
  }
}

/**
 * An SDK error for an HTTP 5xx: a modeled server fault (the KMS model marks DependencyTimeoutException,
 * KMSInternalException, KeyUnavailableException `server`) or an unmodeled status >= 500 (a load
 * balancer's 502/503). KMS failed to answer the request, as a timeout does; the key cache treats
 * it as "not now" (none of these is in AUTHORITATIVE_REFUSALS).
 */
export function isServerFault(e: unknown): boolean {
  const x = e as { $fault?: unknown; $metadata?: { httpStatusCode?: unknown } } | undefined;
  const status = x?.$metadata?.httpStatusCode;
  return x?.$fault === 'server' || (typeof status === 'number' && status >= 500);
}

/**
 * Whether `e` (or its cause) is Node's refusal of a peer certificate (tls.TLSSocket's verify error codes,
 * openssl verify(1) names such as UNABLE_TO_VERIFY_LEAF_SIGNATURE, and ERR_TLS_CERT_ALTNAME_INVALID).
 */
export function isTlsVerifyError(e: unknown): boolean {
  for (let x = e as { code?: unknown; cause?: unknown } | undefined, depth = 0; x && depth < 4; x = x.cause as typeof x, depth++) {
    if (typeof x.code === 'string' && /^(UNABLE_TO_|DEPTH_ZERO_SELF_SIGNED_CERT$|SELF_SIGNED_CERT_IN_CHAIN$|CERT_|ERR_TLS_CERT_ALTNAME_INVALID$|HOSTNAME_MISMATCH$)/.test(x.code)) return true;
  }
  return false;
}
