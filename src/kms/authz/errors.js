import { AccessDeniedException, MalformedPolicyDocumentException, NotFoundException, ValidationException, } from '../errors.js';
/**
 * Short constructors for the KMS exceptions the authorization layer raises
 * most. The classes are the core's (`src/kms/errors.ts`): one `awsName` per
 * exception, stable `code`s; nobody branches on the message (STYLE §4).
 */
export const malformedPolicy = (msg) => new MalformedPolicyDocumentException(msg);
export const validation = (msg) => new ValidationException(msg);
export const accessDenied = (msg) => new AccessDeniedException(msg);
export const notFound = (msg) => new NotFoundException(msg);
//# sourceMappingURL=errors.js.map