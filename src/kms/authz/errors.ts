import {
  AccessDeniedException,
  MalformedPolicyDocumentException,
  NotFoundException,
  ValidationException,
} from '../errors.js';

/**
 * Short constructors for the KMS exceptions the authorization layer raises
 * most. The classes are the core's (`src/kms/errors.ts`): one `awsName` per
 * exception, stable `code`s; nobody branches on the message (docs/architecture.md §11.4).
 */
export const malformedPolicy = (msg: string): MalformedPolicyDocumentException => new MalformedPolicyDocumentException(msg);
export const validation = (msg: string): ValidationException => new ValidationException(msg);
export const accessDenied = (msg: string): AccessDeniedException => new AccessDeniedException(msg);
export const notFound = (msg: string): NotFoundException => new NotFoundException(msg);
