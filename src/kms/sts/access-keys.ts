/**
 * Long-term access keys of IAM users (`AKIA…`), as `aws iam
 * create-access-key` knows them. The secret is made inside the HSM and stored
 * only sealed under its domain key (README.md, "KMS over the network"); it is shown once,
 * in CreateAccessKey's answer, and never written anywhere in clear.
 *
 * A key belongs to the user it was made for, named by the user's unique id (UserId, AIDA…) as
 * well as by name: a key whose user has been deleted, or deleted and created again under the
 * name (a new id), is nobody's. It signs for no one, is not listed, not counted against the
 * quota, and is dropped when the store is next opened (unique ids are never reused). DeleteUser
 * is refused while the user has keys (`assertNoKeys`), as IAM refuses it, so such a key is left
 * only by a file written before that rule or by a crash between the two files' writes.
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
  /**
   * The unique id (AIDA…) of the user the key was made for. Absent only in a file written before
   * it: bound when the file is opened, to the user then of that name ('' if there is none: nobody's).
   */
  UserId: string;
  /** base64 of the HSM seal ("ebsd/secret/v1", kind access-key, id = AccessKeyId). */
  Sealed: string;
}

/** What the store needs from the identity store (src/kms/authz/identities.ts implements it). */
export interface UserDirectory {
  /** The unique id (UserId, AIDA…) of the user named `userName`, or undefined if there is none. */
  userId(userName: string): string | undefined;
}

/** IAM errors of the access-key operations, with AWS's names. */
export class AccessKeyError extends EbsdError {
  constructor(awsName: 'NoSuchEntityException' | 'LimitExceededException' | 'InvalidInputException' | 'DeleteConflictException', message: string) {
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
  /** Creates under way (the HSM draws the secret), per user id: each holds a slot of the user's quota. */
  private readonly creating = new Map<string, number>();
  /** Saves chained in call order, each writing the state as it is when its turn comes (Identities does the same). */
  private writing: Promise<void> = Promise.resolve();

  private constructor(private readonly file: string, private readonly keys: Map<string, Stored>, private readonly hsm: Hsm, private readonly users: UserDirectory) {}

  /**
   * `users`: the account's identities, which keys are bound to. A key stored without its user's id
   * (a file written before ids) is bound now, to the user of its name; a key whose user id is no
   * longer any user's is dropped. Either way the file is written back once.
   */
  static async open(dir: string, hsm: Hsm, users: UserDirectory): Promise<AccessKeyStore> {
    const file = join(dir, ACCESS_KEYS_FILE);
    const text = await readTextIfExists(file);
    const keys = new Map<string, Stored>();
    let changed = false;
    if (text !== undefined) {
      let doc: { AccessKeys?: Stored[] };
      try {
        doc = JSON.parse(text) as { AccessKeys?: Stored[] };
      } catch {
        throw new EbsdError('ACCESS_KEYS_CORRUPT', `${file} is not JSON`);
      }
      for (const k of doc.AccessKeys ?? []) {
        if (typeof k.UserId !== 'string') {
          k.UserId = users.userId(k.UserName) ?? '';
          changed = true;
        }
        if (k.UserId === '' || users.userId(k.UserName) !== k.UserId) { changed = true; continue; }
        keys.set(k.AccessKeyId, k);
      }
    }
    const store = new AccessKeyStore(file, keys, hsm, users);
    if (changed) await store.save();
    return store;
  }

  /** A new Active key for `userName`; the answer holds the secret, this once. */
  async create(userName: string): Promise<AccessKeyMetadata & { SecretAccessKey: string }> {
    const userId = this.users.userId(userName);
    if (userId === undefined) throw new AccessKeyError('NoSuchEntityException', `The user with name ${userName} cannot be found.`);
    // Precondition: the slot is taken before the HSM call awaits, so concurrent creates cannot all pass the check.
    const pending = this.creating.get(userId) ?? 0;
    if (this.list(userName).length + pending >= MAX_KEYS_PER_USER) {
      throw new AccessKeyError('LimitExceededException', `Cannot exceed quota for AccessKeysPerUser: ${MAX_KEYS_PER_USER}`);
    }
    this.creating.set(userId, pending + 1);
    const id = newAccessKeyId('AKIA');
    let secret: string;
    let rec: Stored;
    try {
      const made = await this.hsm.call({ op: 'newSecret', kind: 'access-key', id, context: new Uint8Array(0) });
      secret = made.secret;
      rec = { UserName: userName, UserId: userId, AccessKeyId: id, Status: 'Active', CreateDate: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'), Sealed: Buffer.from(made.sealed).toString('base64') };
      // In the same turn as the release below: the slot passes from the reservation to the key.
      this.keys.set(id, rec);
    } finally {
      const left = this.creating.get(userId)! - 1;
      if (left === 0) this.creating.delete(userId);
      else this.creating.set(userId, left);
    }
    await this.save();
    return { UserName: rec.UserName, AccessKeyId: id, Status: rec.Status, SecretAccessKey: secret, CreateDate: rec.CreateDate };
  }

  /** The keys of `userName` (of every user when absent); a key of a deleted user is nobody's and not listed. */
  list(userName?: string): AccessKeyMetadata[] {
    return [...this.keys.values()].filter((k) => (userName === undefined || k.UserName === userName) && this.owned(k)).map(meta);
  }

  /**
   * DeleteUser's precondition (IAM API Reference, DeleteUser: a user's access keys are deleted
   * first): a user who has a key, or whose key is being created, cannot be deleted.
   */
  assertNoKeys(userName: string): void {
    const userId = this.users.userId(userName);
    if (this.list(userName).length > 0 || (userId !== undefined && this.creating.has(userId))) {
      throw new AccessKeyError('DeleteConflictException', 'Cannot delete entity, must delete access keys first.');
    }
  }

  /**
   * The SigV4 verifier's lookup, on every network request: the user (name and unique id) and
   * status, and the sealed secret decoded only when a signing key must be derived (once per key
   * and day), not per request.
   */
  forSigning(accessKeyId: string): { userName: string; userId: string; active: boolean; sealed: () => Uint8Array } | undefined {
    const k = this.keys.get(accessKeyId);
    if (!k || !this.owned(k)) return undefined;
    const text = k.Sealed;
    return { userName: k.UserName, userId: k.UserId, active: k.Status === 'Active', sealed: () => Buffer.from(text, 'base64') };
  }

  get(accessKeyId: string): (AccessKeyMetadata & { sealed: Uint8Array }) | undefined {
    const k = this.keys.get(accessKeyId);
    return k && this.owned(k) ? { ...meta(k), sealed: Buffer.from(k.Sealed, 'base64') } : undefined;
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

  /** The key's user still exists with the id the key was made for. */
  private owned(k: Stored): boolean {
    return k.UserId !== '' && this.users.userId(k.UserName) === k.UserId;
  }

  private find(accessKeyId: string, userName: string | undefined): Stored {
    const k = this.keys.get(accessKeyId);
    if (!k || !this.owned(k) || (userName !== undefined && k.UserName !== userName)) {
      throw new AccessKeyError('NoSuchEntityException', `The Access Key with id ${accessKeyId} cannot be found.`);
    }
    return k;
  }

  /**
   * Postcondition: once a save resolves, the file holds the state as it was when that save was
   * called or later, never earlier. Writes are chained: two overlapping atomicWrites could rename
   * in either order, and an older snapshot landing last would bring back a deleted key. Each
   * write serializes the state when its turn comes, so the last one holds the latest state.
   */
  private save(): Promise<void> {
    const next = this.writing.catch(() => {}).then(() => atomicWrite(this.file, JSON.stringify({ AccessKeys: [...this.keys.values()] }, null, 1) + '\n', 0o600));
    this.writing = next;
    return next;
  }
}

function meta(k: Stored): AccessKeyMetadata {
  return { UserName: k.UserName, AccessKeyId: k.AccessKeyId, Status: k.Status, CreateDate: k.CreateDate };
}
