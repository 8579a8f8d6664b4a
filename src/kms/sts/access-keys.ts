/**
 * Long-term access keys of IAM users (`AKIA…`), as `aws iam
 * create-access-key` knows them. The secret is made inside the HSM and stored
 * only sealed under its domain key (README.md, "KMS over the network"); it is shown once,
 * in CreateAccessKey's answer, and never written anywhere in clear.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { EbsdError } from '../../util/errors.js';
import { atomicWrite } from '../../util/atomic-write.js';
import { readTextIfExists } from '../../util/read-if-exists.js';
import type { Hsm } from '../hsm/hsm-client.js';

export const ACCESS_KEYS_FILE = 'access-keys.json';
/** AWS allows two access keys per user. */
export const MAX_KEYS_PER_USER = 2;

export type AccessKeyStatus = 'Active' | 'Inactive';

export interface AccessKeyMetadata {
  UserName: string;
  AccessKeyId: string;
  Status: AccessKeyStatus;
  CreateDate: string;
}

interface Stored extends AccessKeyMetadata {
  /** base64 of the HSM seal ("ebsd/secret/v1", kind access-key, id = AccessKeyId). */
  Sealed: string;
}

/** IAM errors of the access-key operations, with AWS's names. */
export class AccessKeyError extends EbsdError {
  constructor(awsName: 'NoSuchEntityException' | 'LimitExceededException' | 'InvalidInputException', message: string) {
    super(`IAM_${awsName.replace(/Exception$/, '').replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase()}`, message, { awsName });
  }
}

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** `AKIA`/`ASIA` followed by 16 base-32 characters, the shape of AWS key ids. */
export function newAccessKeyId(prefix: 'AKIA' | 'ASIA'): string {
  const b = randomBytes(16);
  let s = prefix;
  for (const x of b) s += BASE32[x & 31];
  return s;
}

export class AccessKeyStore {
  private constructor(private readonly file: string, private readonly keys: Map<string, Stored>, private readonly hsm: Hsm) {}

  static async open(dir: string, hsm: Hsm): Promise<AccessKeyStore> {
    const file = join(dir, ACCESS_KEYS_FILE);
    const text = await readTextIfExists(file);
    const keys = new Map<string, Stored>();
    if (text !== undefined) {
      let doc: { AccessKeys?: Stored[] };
      try {
        doc = JSON.parse(text) as { AccessKeys?: Stored[] };
      } catch {
        throw new EbsdError('ACCESS_KEYS_CORRUPT', `${file} is not JSON`);
      }
      for (const k of doc.AccessKeys ?? []) keys.set(k.AccessKeyId, k);
    }
    return new AccessKeyStore(file, keys, hsm);
  }

  /** A new Active key for `userName`; the answer holds the secret, this once. */
  async create(userName: string): Promise<AccessKeyMetadata & { SecretAccessKey: string }> {
    if (this.list(userName).length >= MAX_KEYS_PER_USER) {
      throw new AccessKeyError('LimitExceededException', `Cannot exceed quota for AccessKeysPerUser: ${MAX_KEYS_PER_USER}`);
    }
    const id = newAccessKeyId('AKIA');
    const { secret, sealed } = await this.hsm.call({ op: 'newSecret', kind: 'access-key', id, context: new Uint8Array(0) });
    const rec: Stored = { UserName: userName, AccessKeyId: id, Status: 'Active', CreateDate: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'), Sealed: Buffer.from(sealed).toString('base64') };
    this.keys.set(id, rec);
    await this.save();
    return { UserName: rec.UserName, AccessKeyId: id, Status: rec.Status, SecretAccessKey: secret, CreateDate: rec.CreateDate };
  }

  list(userName?: string): AccessKeyMetadata[] {
    return [...this.keys.values()].filter((k) => userName === undefined || k.UserName === userName).map(meta);
  }

  /**
   * The SigV4 verifier's lookup, on every network request: the user and status, and the sealed
   * secret decoded only when a signing key must be derived (once per key and day), not per request.
   */
  forSigning(accessKeyId: string): { userName: string; active: boolean; sealed: () => Uint8Array } | undefined {
    const k = this.keys.get(accessKeyId);
    if (!k) return undefined;
    const text = k.Sealed;
    return { userName: k.UserName, active: k.Status === 'Active', sealed: () => Buffer.from(text, 'base64') };
  }

  get(accessKeyId: string): (AccessKeyMetadata & { sealed: Uint8Array }) | undefined {
    const k = this.keys.get(accessKeyId);
    return k && { ...meta(k), sealed: Buffer.from(k.Sealed, 'base64') };
  }

  async update(accessKeyId: string, status: AccessKeyStatus, userName?: string): Promise<void> {
    if (status !== 'Active' && status !== 'Inactive') throw new AccessKeyError('InvalidInputException', `Status must be Active or Inactive, not "${String(status)}"`);
    const k = this.find(accessKeyId, userName);
    k.Status = status;
    await this.save();
  }

  async delete(accessKeyId: string, userName?: string): Promise<void> {
    this.find(accessKeyId, userName);
    this.keys.delete(accessKeyId);
    await this.save();
  }

  /** Drop every key of a user that no longer exists. */
  async deleteUser(userName: string): Promise<void> {
    const before = this.keys.size;
    for (const [id, k] of this.keys) if (k.UserName === userName) this.keys.delete(id);
    if (this.keys.size !== before) await this.save();
  }

  private find(accessKeyId: string, userName: string | undefined): Stored {
    const k = this.keys.get(accessKeyId);
    if (!k || (userName !== undefined && k.UserName !== userName)) {
      throw new AccessKeyError('NoSuchEntityException', `The Access Key with id ${accessKeyId} cannot be found.`);
    }
    return k;
  }

  private async save(): Promise<void> {
    await atomicWrite(this.file, JSON.stringify({ AccessKeys: [...this.keys.values()] }, null, 1) + '\n', 0o600);
  }
}

function meta(k: Stored): AccessKeyMetadata {
  return { UserName: k.UserName, AccessKeyId: k.AccessKeyId, Status: k.Status, CreateDate: k.CreateDate };
}
