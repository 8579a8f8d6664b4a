/**
 * Contract between the KMS core and its callers (daemon, volume layer).
 * The core has one entry point: `call(operation, request, caller)`.
 */

/** The authenticated principal on whose behalf a KMS call is made. */
export interface Caller {
  /** Principal ARN: arn:aws:iam::<acct>:root | :user/<n> | :role/<n> | arn:aws:sts::<acct>:assumed-role/<r>/<s>; or a service principal name like `ec2.amazonaws.com`. */
  arn: string;
  /** 12-digit account id the principal belongs to. */
  accountId: string;
  /** CloudTrail userIdentity.type. */
  type: 'Root' | 'IAMUser' | 'AssumedRole' | 'Role' | 'AWSService' | 'Unknown';
  /** Stable principal id (AIDA…, AROA…:session, account id for root). */
  principalId?: string;
  /** IAM user name, for aws:username. */
  userName?: string;
  /** Set when an AWS service (ebsd acting as EC2) calls on the principal's behalf: `ec2.<region>.amazonaws.com`. */
  viaService?: string;
  /** Local Unix uid of the control-socket peer, if the call came from one. */
  uid?: number;
  sourceIp?: string;
  /**
   * aws:SecureTransport: false for a request that arrived over plain HTTP (`--kms-listen` without
   * --tls-cert), true over HTTPS; absent for the control socket and the daemon's own calls, which
   * count as secure (docs/architecture.md §5.4, "aws:SecureTransport").
   */
  secureTransport?: boolean;
  userAgent?: string;
  /** The SigV4 access key (AKIA… or ASIA…) a network caller signed with (CloudTrail userIdentity.accessKeyId). */
  accessKeyId?: string;
  /** Set for a caller signing with STS session credentials (ASIA…): who issued the session and when (CloudTrail userIdentity.sessionContext). */
  sessionContext?: SessionContext;
  /**
   * A session caller's origin: the long-term identity that minted its chain of sessions (the IAM
   * user whose access key called AssumeRole; a session assumed by a session keeps its assumer's;
   * the role's ARN for a version 1 or 2 token), read from the session token, which the HSM
   * authenticates (docs/kms-format.md, "STS session token"). Set only by StsService; whose turn
   * and whose refusal budget a call is (caller-party.ts), never a principal: policies, audit
   * records and answers read `arn`.
   */
  origin?: string;
  /**
   * The session policy a role session was issued with (AssumeRole `Policy`), as its session token
   * carries it: the text, which the HSM authenticated with the rest of the token. It limits what the
   * session may do (src/kms/authz/evaluate.ts; docs/architecture.md, "Session policies").
   */
  sessionPolicy?: string;
}

/**
 * CloudTrail userIdentity.sessionContext of an AssumedRole caller: the role
 * that issued the session and the session's attributes (the CloudTrail
 * userIdentity element, "userIdentity with temporary security credentials").
 * Held frozen: the audit caches a caller's serialized identity by reference.
 */
export interface SessionContext {
  readonly sessionIssuer: { readonly type: 'Role'; readonly principalId: string; readonly arn: string; readonly accountId: string; readonly userName: string };
  /** `creationDate`: when AssumeRole issued the credentials, ISO 8601 to the second; MFA is never part of an ebsd session. */
  readonly attributes: { readonly creationDate?: string; readonly mfaAuthenticated: 'false' };
}

/** AWS JSON 1.1 request/response objects; Blob fields are Uint8Array in-process, base64 on the wire. */
export type KmsRequest = Record<string, unknown>;
export type KmsResponse = Record<string, unknown>;

export interface KmsCore {
  /** `requestId`: the response's x-amzn-RequestId, so the audit event carries the same id. */
  call(operation: string, request: KmsRequest, caller: Caller, requestId?: string): Promise<KmsResponse>;
  close(): Promise<void>;
}
