import type { Caller, KmsCore } from '../kms/types.js';
import { KeyServiceError } from './errors.js';

/**
 * The subset of KMS the volume layer needs (docs/architecture.md §2): AWS request and
 * response shapes, one caller per call. The embedded core (KmsCoreKeyService)
 * and a remote AWS-KMS-protocol client are interchangeable behind it.
 */
export type EncryptionContext = Record<string, string>;

/** How one call goes out; a KeyService without a circuit ignores it. */
export interface CallOptions {
  /**
   * Send even while a circuit breaker holds calls back: the key cache's last
   * try at the max-stale deadline, so a circuit whose open period outlasts
   * the KMS outage never impairs a volume by itself (docs/architecture.md §6.3).
   */
  bypassCircuit?: boolean;
}

export interface KeyService {
  generateDataKeyWithoutPlaintext(
    req: { KeyId: string; NumberOfBytes: number; EncryptionContext: EncryptionContext },
    caller: Caller,
  ): Promise<{ CiphertextBlob: Uint8Array; KeyId: string }>;
  createGrant(
    req: {
      KeyId: string;
      GranteePrincipal: string;
      RetiringPrincipal?: string;
      Operations: string[];
      Constraints?: { EncryptionContextSubset?: EncryptionContext; EncryptionContextEquals?: EncryptionContext };
      Name?: string;
    },
    caller: Caller,
  ): Promise<{ GrantId: string; GrantToken: string }>;
  decrypt(
    req: { CiphertextBlob: Uint8Array; KeyId?: string; EncryptionContext?: EncryptionContext; GrantTokens?: string[] },
    caller: Caller,
    opts?: CallOptions,
  ): Promise<{ Plaintext: Uint8Array; KeyId: string }>;
  retireGrant(req: { KeyId?: string; GrantId?: string; GrantToken?: string }, caller: Caller): Promise<void>;
  /**
   * ReEncrypt: the blob re-wrapped under DestinationKeyId and context,
   * without the plaintext leaving KMS. A volume restored from a snapshot
   * under the snapshot's key shares its data key this way, bound to the new
   * volume's context (docs/architecture.md §14.1).
   */
  reEncrypt(
    req: {
      CiphertextBlob: Uint8Array;
      SourceKeyId?: string;
      SourceEncryptionContext?: EncryptionContext;
      DestinationKeyId: string;
      DestinationEncryptionContext?: EncryptionContext;
      GrantTokens?: string[];
    },
    caller: Caller,
  ): Promise<{ CiphertextBlob: Uint8Array; SourceKeyId: string; KeyId: string }>;
  describeKey(req: { KeyId: string; GrantTokens?: string[] }, caller: Caller): Promise<{ KeyMetadata: { Arn: string; KeyState?: string; Enabled?: boolean; [k: string]: unknown } }>;
  /**
   * GenerateMac and VerifyMac with an HMAC KMS key: the MAC of a signed snapshot manifest
   * (src/snapshot/manifest-mac.ts). VerifyMac of a wrong MAC throws KMSInvalidMacException.
   * Optional: a KeyService without them cannot serve --snapshot-manifest-key.
   */
  generateMac?(req: { KeyId: string; Message: Uint8Array; MacAlgorithm: string }, caller: Caller): Promise<{ Mac: Uint8Array; KeyId: string }>;
  verifyMac?(req: { KeyId: string; Message: Uint8Array; MacAlgorithm: string; Mac: Uint8Array }, caller: Caller): Promise<{ MacValid: boolean; KeyId: string }>;
  /**
   * ListRetirableGrants, as the host: lets a restart find attach grants a
   * crash left without a catalog record. Optional: without it such grants
   * are only retired when the volume is attached again (CreateGrant is
   * idempotent by Name and returns the same grant).
   */
  listRetirableGrants?(
    req: { RetiringPrincipal: string; Limit?: number; Marker?: string },
    caller: Caller,
  ): Promise<{ Grants: RetirableGrant[]; NextMarker?: string; Truncated?: boolean }>;
}

/** The members of a GrantListEntry the volume layer reads. */
export interface RetirableGrant {
  KeyId: string;
  GrantId: string;
  Name?: string;
}

/**
 * How long a grant KMS made may take to show throughout KMS, its lists included: "usually less
 * than five minutes" (AWS KMS API reference, CreateGrant: eventual consistency). A search by name
 * for a grant whose CreateGrant went unanswered does not end on an empty list before then.
 */
export const GRANT_CONSISTENCY_MS = 5 * 60_000;

/**
 * Every grant `host` may retire: ListRetirableGrants as the host, 100 a page, at most 1000
 * pages. `complete` is false when a page said Truncated without a NextMarker, or the pages
 * did not end: a grant missing from such a list may still exist. Throws what the list
 * threw; undefined when the KeyService cannot list.
 */
export async function listAllRetirableGrants(ks: KeyService, host: Caller): Promise<{ grants: RetirableGrant[]; complete: boolean } | undefined> {
  const list = ks.listRetirableGrants?.bind(ks);
  if (!list) return undefined;
  const grants: RetirableGrant[] = [];
  let marker: string | undefined;
  for (let page = 0; page < 1000; page++) {
    const r = await list({ RetiringPrincipal: host.arn, Limit: 100, ...(marker ? { Marker: marker } : {}) }, host);
    grants.push(...r.Grants);
    if (!r.Truncated) return { grants, complete: true };
    if (!r.NextMarker) break;
    marker = r.NextMarker;
  }
  return { grants, complete: false };
}

/**
 * KMS answers that mean "no" rather than "not now": the key is disabled or
 * pending deletion, the grant is gone, the caller is denied, the blob does
 * not belong to this key/context, the host's access key does not exist
 * (UnrecognizedClientException: deleted host credentials cut the host off
 * within one TTL, as a revoked grant does). Anything else (timeouts, internal
 * errors, KeyUnavailableException, a dead worker) is treated as KMS being
 * unreachable, which a cached key may ride out until max-stale. So are
 * InvalidSignatureException (a clock skewed past the signature window, or a
 * secret being rotated) and ExpiredTokenException (a session the SDK is
 * renewing): a host fixes those itself, and impairing on them would take
 * every volume down for a passing fault (docs/architecture.md §6.3).
 */
export const AUTHORITATIVE_REFUSALS: ReadonlySet<string> = new Set([
  'DisabledException',
  'KMSInvalidStateException',
  'AccessDeniedException',
  'NotFoundException',
  'InvalidGrantTokenException',
  'InvalidGrantIdException',
  'InvalidCiphertextException',
  'IncorrectKeyException',
  'InvalidKeyUsageException',
  'InvalidArnException',
  'ValidationException',
  'UnrecognizedClientException',
]);

/** Wrap whatever a KMS client threw into a KeyServiceError carrying the AWS name. */
export function toKeyServiceError(operation: string, e: unknown): KeyServiceError {
  if (e instanceof KeyServiceError) return e;
  const err = e as { awsName?: unknown; __type?: unknown; name?: unknown; message?: unknown } | undefined;
  const awsName =
    typeof err?.awsName === 'string' ? err.awsName : typeof err?.__type === 'string' ? err.__type : typeof err?.name === 'string' && /Exception$/.test(err.name) ? err.name : undefined;
  const authoritative = awsName !== undefined && AUTHORITATIVE_REFUSALS.has(awsName);
  return new KeyServiceError(operation, awsName, authoritative, typeof err?.message === 'string' ? err.message : String(e), e);
}

/** KeyService over the in-process KMS core (`KmsCore.call`). */
export class KmsCoreKeyService implements KeyService {
  constructor(private readonly core: KmsCore) {}

  private async call<T>(op: string, req: Record<string, unknown>, caller: Caller): Promise<T> {
    try {
      return (await this.core.call(op, req, caller)) as T;
    } catch (e) {
      throw toKeyServiceError(op, e);
    }
  }

  generateDataKeyWithoutPlaintext(req: Parameters<KeyService['generateDataKeyWithoutPlaintext']>[0], caller: Caller) {
    return this.call<{ CiphertextBlob: Uint8Array; KeyId: string }>('GenerateDataKeyWithoutPlaintext', req, caller);
  }
  createGrant(req: Parameters<KeyService['createGrant']>[0], caller: Caller) {
    return this.call<{ GrantId: string; GrantToken: string }>('CreateGrant', req, caller);
  }
  decrypt(req: Parameters<KeyService['decrypt']>[0], caller: Caller) {
    return this.call<{ Plaintext: Uint8Array; KeyId: string }>('Decrypt', req, caller);
  }
  async retireGrant(req: Parameters<KeyService['retireGrant']>[0], caller: Caller): Promise<void> {
    await this.call('RetireGrant', req, caller);
  }
  reEncrypt(req: Parameters<KeyService['reEncrypt']>[0], caller: Caller) {
    return this.call<{ CiphertextBlob: Uint8Array; SourceKeyId: string; KeyId: string }>('ReEncrypt', req, caller);
  }
  describeKey(req: Parameters<KeyService['describeKey']>[0], caller: Caller) {
    return this.call<{ KeyMetadata: { Arn: string; KeyState?: string; Enabled?: boolean } }>('DescribeKey', req, caller);
  }
  listRetirableGrants(req: { RetiringPrincipal: string; Limit?: number; Marker?: string }, caller: Caller) {
    return this.call<{ Grants: RetirableGrant[]; NextMarker?: string; Truncated?: boolean }>('ListRetirableGrants', req, caller);
  }
  generateMac(req: Parameters<NonNullable<KeyService['generateMac']>>[0], caller: Caller) {
    return this.call<{ Mac: Uint8Array; KeyId: string }>('GenerateMac', req, caller);
  }
  verifyMac(req: Parameters<NonNullable<KeyService['verifyMac']>>[0], caller: Caller) {
    return this.call<{ MacValid: boolean; KeyId: string }>('VerifyMac', req, caller);
  }
}
