import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import type { Caller } from '../kms/types.js';
import { ArgRangeError } from '../util/errors.js';
import { parseIamPrincipalArn, type IamPrincipalArn } from '../util/aws-names.js';

/**
 * Who a host is to a remote KMS, beside what STS answers (src/volume/aws-key-service.ts,
 * README "A fleet"): the STS endpoint the SDK would ask, and the host principal
 * `--host-principal-arn` gives, checked against STS's answer.
 */

/** AWS's own endpoints (`kms.us-east-1.amazonaws.com`, China's `.amazonaws.com.cn`, dual-stack `.api.aws`). */
export function isAwsHost(hostname: string): boolean {
  return /(^|\.)(amazonaws\.com|amazonaws\.com\.cn|api\.aws)\.?$/i.test(hostname);
}

/**
 * Where an STS client with `config` sends GetCallerIdentity, as the SDK resolves it: AWS_ENDPOINT_URL_STS,
 * AWS_ENDPOINT_URL, the profile's `services` section or `endpoint_url` (unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS),
 * else AWS's endpoint for the region. The SDK itself resolves it: a throwaway client with a placeholder
 * credential (so the credential chain, which may call STS itself, is not run) builds the request, which is
 * stopped before it is signed or sent. Undefined when it cannot be resolved (no region, say): the real call says why.
 */
export async function resolvedStsEndpoint(config: ConstructorParameters<typeof STSClient>[0]): Promise<URL | undefined> {
  const probe = new STSClient({ ...config, credentials: { accessKeyId: 'placeholder', secretAccessKey: 'placeholder' } });
  let at: URL | undefined;
  const cmd = new GetCallerIdentityCommand({});
  cmd.middlewareStack.add(
    () => async (args: { request?: unknown }) => {
      const r = args.request as { protocol?: string; hostname?: string; port?: number };
      at = new URL(`${r.protocol ?? 'https:'}//${r.hostname}${r.port ? `:${r.port}` : ''}`);
      throw new Error('ebsd: STS endpoint resolved, request not sent');
    },
    // Built (endpoint resolved) and not yet signed, retried or sent.
    { step: 'build', priority: 'low', name: 'ebsdStsEndpointProbe' },
  );
  try {
    await probe.send(cmd);
  } catch {
    // the stop above, or a resolution failure (at stays undefined)
  } finally {
    probe.destroy();
  }
  return at;
}

/** An assumed-role session as STS names it: partition, account, role name (no path), session name. */
export const SESSION_RE = /^arn:([\w-]+):sts::(\d{12}):assumed-role\/([^/]+)\/[^/]+$/;

export { parseIamPrincipalArn, type IamPrincipalArn };

/**
 * The host principal `--host-principal-arn` gives, if it is who STS says the
 * host is: for an assumed-role session, a role of the same partition and
 * account whose last path segment is the session's role name; for an IAM user,
 * the user's ARN as STS gives it (with its path). Refused otherwise, naming both.
 */
export function checkGivenPrincipal(given: IamPrincipalArn, stsArn: string, account: string): Caller {
  const session = SESSION_RE.exec(stsArn);
  const user = parseIamPrincipalArn(stsArn);
  const matches = session
    ? given.type === 'role' && given.partition === session[1] && given.account === account && given.name === session[3]
    : user?.type === 'user' && given.arn === stsArn;
  if (!matches) {
    const expect = session
      ? `a role ARN arn:${session[1]}:iam::${account}:role/[PATH/]${session[3]}`
      : user?.type === 'user' ? stsArn : 'nothing: --host-principal-arn names an IAM role or user, and this identity is neither';
    throw new ArgRangeError('--host-principal-arn', `${given.arn} is not this host: STS GetCallerIdentity says ${stsArn}, which --host-principal-arn may only name as ${expect}`);
  }
  return { arn: given.arn, accountId: account, type: given.type === 'role' ? 'Role' : 'IAMUser' };
}
