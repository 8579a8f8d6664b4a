import { ArgRangeError } from './errors.js';

/**
 * `raw` as an error may show it: without a `user:password@` before the host, whether or not it
 * parses as a URL (`https://u:p@host:99999`, an invalid port; `u:p@host`, no scheme, which URL
 * reads as the scheme `u:`). Used wherever a refused --kms-endpoint is quoted back.
 */
export function shownEndpoint(raw: string): string {
  return raw.replace(/^((?:[A-Za-z][A-Za-z0-9+.-]*:)?\/\/)?[^/?#]*@/, '$1');
}

/**
 * The error for a --kms-endpoint given with user:password@ in it. Refused (config.ts before the
 * daemon starts, and the KMS client itself), and not echoed: the error shows the URL without them.
 * Nothing would use them (the host signs with SigV4 from the AWS credential chain), while the
 * endpoint is shown as given in the log, `ebsd status` and the ebsd_kms_remote_reachable{endpoint}
 * label of /metrics, which has no access control (README "Running in production").
 */
export function endpointUserinfo(u: URL): ArgRangeError {
  const shown = new URL(u.href);
  shown.username = '';
  shown.password = '';
  return new ArgRangeError('--kms-endpoint', `"${shown.href}" was given with a user name or password in it: not used (the host authenticates with SigV4 from the AWS credential chain), and the endpoint is shown in the log, ebsd status and /metrics; leave them out`);
}
