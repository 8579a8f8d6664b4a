/**
 * The operations of the AWS KMS API (as @aws-sdk/client-kms models it) that this core does not
 * serve, each with the feature it belongs to. A call to one is refused with
 * UnsupportedOperationException ("a specified parameter is not supported or a specified resource
 * is not valid for this operation", KMS API reference, Errors) naming the operation: an SDK client
 * gets a typed KMS exception, HTTP 400, before anything runs. A name that is not a KMS operation
 * at all stays UnknownOperationException (docs/architecture.md §2.5).
 */
import { UnsupportedOperationException } from './errors.js';

const FEATURE: Readonly<Record<string, string>> = {
  ReplicateKey: 'multi-Region keys',
  UpdatePrimaryRegion: 'multi-Region keys',
  CreateCustomKeyStore: 'custom key stores',
  ConnectCustomKeyStore: 'custom key stores',
  DisconnectCustomKeyStore: 'custom key stores',
  DeleteCustomKeyStore: 'custom key stores',
  UpdateCustomKeyStore: 'custom key stores',
  GetParametersForImport: 'imported key material',
  ImportKeyMaterial: 'imported key material',
  DeleteImportedKeyMaterial: 'imported key material',
  DeriveSharedSecret: 'key agreement (KEY_AGREEMENT keys)',
  Encapsulate: 'key encapsulation (ML-KEM keys)',
  Decapsulate: 'key encapsulation (ML-KEM keys)',
  GetKeyLastUsage: 'key last-usage tracking',
};

/** The AWS KMS operations this core has no handler for. */
export const UNSERVED_OPERATIONS: ReadonlySet<string> = new Set(Object.keys(FEATURE));

/** The refusal of a call to an unserved AWS KMS operation. */
export function unservedOperation(operation: string): UnsupportedOperationException {
  return new UnsupportedOperationException(
    `${operation} is not supported by this KMS: ebsd does not implement ${FEATURE[operation]}.`,
    { code: 'KMS_OPERATION_UNSUPPORTED' },
  );
}
