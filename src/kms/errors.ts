import { EbsdError } from '../util/errors.js';

/**
 * KMS exceptions. `awsName` is the AWS `__type` a JSON-protocol client sees;
 * `code` is ebsd's stable code. Messages follow AWS's wording where it is
 * public, but nobody may branch on them (docs/architecture.md §11.4).
 */
export class KmsError extends EbsdError {
  constructor(awsName: string, message: string, opts: { code?: string; cause?: unknown } = {}) {
    super(opts.code ?? `KMS_${awsName.replace(/Exception$/, '').replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase()}`, message, {
      awsName,
      ...(opts.cause === undefined ? {} : { cause: opts.cause }),
    });
  }
  /** The AWS JSON 1.1 error type. */
  get __type(): string {
    return this.awsName!;
  }
}

const make = (awsName: string) =>
  class extends KmsError {
    constructor(message: string, opts: { code?: string; cause?: unknown } = {}) {
      super(awsName, message, opts);
    }
  };

export class NotFoundException extends make('NotFoundException') {}
export class DisabledException extends make('DisabledException') {}
export class KMSInvalidStateException extends make('KMSInvalidStateException') {}
export class InvalidKeyUsageException extends make('InvalidKeyUsageException') {}
export class InvalidCiphertextException extends make('InvalidCiphertextException') {}
export class IncorrectKeyException extends make('IncorrectKeyException') {}
export class InvalidArnException extends make('InvalidArnException') {}
export class InvalidAliasNameException extends make('InvalidAliasNameException') {}
export class AlreadyExistsException extends make('AlreadyExistsException') {}
export class InvalidMarkerException extends make('InvalidMarkerException') {}
export class InvalidGrantTokenException extends make('InvalidGrantTokenException') {}
export class InvalidGrantIdException extends make('InvalidGrantIdException') {}
export class LimitExceededException extends make('LimitExceededException') {}
export class UnsupportedOperationException extends make('UnsupportedOperationException') {}
export class ValidationException extends make('ValidationException') {}
export class AccessDeniedException extends make('AccessDeniedException') {}
export class KMSInternalException extends make('KMSInternalException') {}
export class KMSInvalidSignatureException extends make('KMSInvalidSignatureException') {}
export class KMSInvalidMacException extends make('KMSInvalidMacException') {}
export class MalformedPolicyDocumentException extends make('MalformedPolicyDocumentException') {}
export class TagException extends make('TagException') {}
export class KeyUnavailableException extends make('KeyUnavailableException') {}
export class DependencyTimeoutException extends make('DependencyTimeoutException') {}
/** A CustomKeyStoreId that names no custom key store (ebsd has none). */
export class CustomKeyStoreNotFoundException extends make('CustomKeyStoreNotFoundException') {}
/** A DryRun request that would have succeeded: authorized, no effect. */
export class DryRunOperationException extends make('DryRunOperationException') {}
/** The operation name is not one the core knows (AWS answers `UnknownOperationException`). */
export class UnknownOperationException extends make('UnknownOperationException') {}

/**
 * The HSM's sealed domain could not be opened: wrong passphrase, missing or
 * tampered key-encryption-key file, tampered domain file. Raised at start-up;
 * nothing on disk is rewritten when it happens.
 */
export class HsmDomainError extends EbsdError {
  constructor(code: 'HSM_DOMAIN_UNSEAL_FAILED' | 'HSM_DOMAIN_CORRUPT' | 'HSM_KEK_MISSING' | 'HSM_KEK_SOURCE_MISMATCH', message: string) {
    super(code, message);
  }
}

/** Rebuild a KmsError from its wire form (worker -> main thread). */
export function kmsErrorFrom(awsName: string, message: string, code?: string): KmsError {
  return new KmsError(awsName, message, code === undefined ? {} : { code });
}
