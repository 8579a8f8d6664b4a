import { EbsdError } from '../../util/errors.js';

/**
 * Why a request failed authentication. Each kind has the name a JSON-protocol
 * service (KMS) answers with and the code a Query-protocol service (STS)
 * answers with; both as AWS sends them (README.md, "KMS over the network").
 */
export type SigV4Refusal = 'MissingAuthenticationToken' | 'IncompleteSignature' | 'InvalidSignature' | 'UnrecognizedClient' | 'ExpiredToken';

const NAMES: Record<SigV4Refusal, { json: string; query: string; queryStatus: number; code: string }> = {
  MissingAuthenticationToken: { json: 'MissingAuthenticationTokenException', query: 'MissingAuthenticationToken', queryStatus: 403, code: 'SIGV4_MISSING' },
  IncompleteSignature: { json: 'IncompleteSignatureException', query: 'IncompleteSignature', queryStatus: 400, code: 'SIGV4_INCOMPLETE' },
  InvalidSignature: { json: 'InvalidSignatureException', query: 'SignatureDoesNotMatch', queryStatus: 403, code: 'SIGV4_BAD_SIGNATURE' },
  UnrecognizedClient: { json: 'UnrecognizedClientException', query: 'InvalidClientTokenId', queryStatus: 403, code: 'SIGV4_UNKNOWN_KEY' },
  ExpiredToken: { json: 'ExpiredTokenException', query: 'ExpiredToken', queryStatus: 400, code: 'SIGV4_EXPIRED_TOKEN' },
};

/** A request refused before authorization. Never carries a secret or a signature. */
export class SigV4Error extends EbsdError {
  /** The access key id the request named, if it got that far (for the audit record). */
  readonly accessKeyId: string | undefined;
  /**
   * Set by the verifier: `accessKeyId` names a key this service holds (a long-term key in its store,
   * active or not, or a session whose token the HSM authenticated). Not proof that the request is its
   * holder's (the signature did not verify), but not a made-up id either: the refusal audit keeps a
   * budget of its own for each such key (src/kms/audit/refusal-aggregator.ts).
   */
  keyHeld = false;
  constructor(readonly refusal: SigV4Refusal, message: string, accessKeyId?: string) {
    super(NAMES[refusal].code, message, { awsName: NAMES[refusal].json });
    this.accessKeyId = accessKeyId;
  }
  /** The error code an STS (Query protocol) client expects. */
  get queryCode(): string {
    return NAMES[this.refusal].query;
  }
  /** HTTP status STS answers with; JSON services answer 400 for all of them. */
  get queryStatus(): number {
    return NAMES[this.refusal].queryStatus;
  }
}
