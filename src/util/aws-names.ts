/**
 * AWS names whose form can be checked without asking anyone: a region name, an IAM role or user
 * ARN. Here, below every layer, so that `ebsd daemon` refuses a malformed flag value before it
 * starts (src/daemon/config.ts, checkDaemonFlags) with the same rule the KMS and the host's
 * identity check use later.
 */

/** `us-east-1`, `eu-central-2`, `us-gov-west-1`. */
export const REGION_RE = /^[a-z]{2}(-[a-z]+)+-\d+$/;

export function isRegionName(v: string): boolean {
  return REGION_RE.test(v);
}

export interface IamPrincipalArn {
  arn: string;
  partition: string;
  account: string;
  type: 'role' | 'user';
  /** The last segment: the role's or user's name. */
  name: string;
}

/**
 * `arn:PARTITION:iam::ACCOUNT:role/PATH/NAME` (or `user/`), PATH optional: IAM's
 * path is `/`-separated printable ASCII, a role's or user's name at most 64 of
 * [A-Za-z0-9+=,.@_-]; undefined for anything else.
 */
export function parseIamPrincipalArn(v: string): IamPrincipalArn | undefined {
  if (typeof v !== 'string' || v.length > 2048) return undefined;
  const m = /^arn:([a-z][a-z0-9-]*):iam::(\d{12}):(role|user)\/(?:[\x21-\x7e]{1,510}\/)?([\w+=,.@-]{1,64})$/.exec(v);
  return m ? { arn: v, partition: m[1]!, account: m[2]!, type: m[3] as 'role' | 'user', name: m[4]! } : undefined;
}
