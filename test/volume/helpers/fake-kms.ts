import { createCipheriv, createDecipheriv, randomBytes, randomUUID } from 'node:crypto';
import { EbsdError } from '../../../src/util/errors.js';
import type { Caller } from '../../../src/kms/types.js';
import type { KeyService, EncryptionContext } from '../../../src/volume/key-service.js';

/**
 * Stand-in KeyService, used only while the real KMS core is not in the tree
 * (see helpers/kms.ts). It keeps the semantics the volume layer relies on:
 * blobs bound to key and encryption context (AAD), grants with grantee,
 * EncryptionContextSubset and tokens, disabled keys, ViaService for users.
 */
class FakeKmsError extends EbsdError {
  constructor(awsName: string, msg: string) {
    super(`FAKE_${awsName}`, msg, { awsName });
  }
}

interface Grant { id: string; token: string; keyArn: string; grantee: string; retiring?: string; ops: string[]; subset?: EncryptionContext }

const ACCOUNT = '111122223333';
const canon = (c: EncryptionContext = {}) => Buffer.from(JSON.stringify(Object.keys(c).sort().map((k) => [k, c[k]])));

export class FakeKms implements KeyService {
  readonly keys = new Map<string, { material: Buffer; enabled: boolean; aliases: string[] }>();
  readonly grants = new Map<string, Grant>();
  down = false;
  calls: { op: string; caller: Caller; req: unknown }[] = [];

  createKey(alias?: string): string {
    const arn = `arn:aws:kms:us-east-1:${ACCOUNT}:key/${randomUUID()}`;
    this.keys.set(arn, { material: randomBytes(32), enabled: true, aliases: alias ? [alias] : [] });
    return arn;
  }
  setEnabled(arn: string, on: boolean): void {
    this.keys.get(arn)!.enabled = on;
  }
  revokeGrant(id: string): void {
    this.grants.delete(id);
  }
  private resolve(keyId: string): string {
    if (this.keys.has(keyId)) return keyId;
    for (const [arn, k] of this.keys) if (k.aliases.includes(keyId)) return arn;
    if (keyId === 'alias/aws/ebs') return this.createKey('alias/aws/ebs');
    throw new FakeKmsError('NotFoundException', `key ${keyId} not found`);
  }
  private enter(op: string, caller: Caller, req: unknown): void {
    this.calls.push({ op, caller, req });
    if (this.down) throw new FakeKmsError('KMSInternalException', 'KMS is down');
  }
  private usable(arn: string) {
    const k = this.keys.get(arn);
    if (!k) throw new FakeKmsError('NotFoundException', 'no such key');
    if (!k.enabled) throw new FakeKmsError('DisabledException', `${arn} is disabled.`);
    return k;
  }
  private userOnly(caller: Caller): void {
    if (!caller.viaService?.startsWith('ec2.')) throw new FakeKmsError('AccessDeniedException', 'only via EC2');
  }

  async generateDataKeyWithoutPlaintext(req: { KeyId: string; NumberOfBytes: number; EncryptionContext: EncryptionContext }, caller: Caller) {
    this.enter('GenerateDataKeyWithoutPlaintext', caller, req);
    this.userOnly(caller);
    const arn = this.resolve(req.KeyId);
    const k = this.usable(arn);
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', k.material, iv).setAAD(Buffer.concat([Buffer.from(arn), canon(req.EncryptionContext)]));
    const ct = Buffer.concat([c.update(randomBytes(req.NumberOfBytes)), c.final()]);
    const a = Buffer.from(arn);
    const blob = Buffer.concat([Buffer.from([a.length]), a, iv, c.getAuthTag(), ct]);
    return { CiphertextBlob: new Uint8Array(blob), KeyId: arn };
  }

  async decrypt(req: { CiphertextBlob: Uint8Array; KeyId?: string; EncryptionContext?: EncryptionContext; GrantTokens?: string[] }, caller: Caller) {
    this.enter('Decrypt', caller, req);
    const b = Buffer.from(req.CiphertextBlob);
    const arn = b.subarray(1, 1 + b[0]!).toString();
    if (req.KeyId && this.resolve(req.KeyId) !== arn) throw new FakeKmsError('IncorrectKeyException', 'wrong key');
    if (!caller.viaService) {
      const g = [...this.grants.values()].find((x) => req.GrantTokens?.includes(x.token) && x.grantee === caller.arn && x.keyArn === arn && x.ops.includes('Decrypt'));
      const ctx = req.EncryptionContext ?? {};
      if (!g || !Object.entries(g.subset ?? {}).every(([k, v]) => ctx[k] === v)) throw new FakeKmsError('AccessDeniedException', 'no grant allows this');
    }
    const k = this.usable(arn);
    const off = 1 + b[0]!;
    try {
      const d = createDecipheriv('aes-256-gcm', k.material, b.subarray(off, off + 12)).setAAD(Buffer.concat([Buffer.from(arn), canon(req.EncryptionContext)]));
      d.setAuthTag(b.subarray(off + 12, off + 28));
      return { Plaintext: new Uint8Array(Buffer.concat([d.update(b.subarray(off + 28)), d.final()])), KeyId: arn };
    } catch {
      throw new FakeKmsError('InvalidCiphertextException', 'cannot decrypt');
    }
  }

  async createGrant(req: { KeyId: string; GranteePrincipal: string; RetiringPrincipal?: string; Operations: string[]; Constraints?: { EncryptionContextSubset?: EncryptionContext } }, caller: Caller) {
    this.enter('CreateGrant', caller, req);
    this.userOnly(caller);
    const arn = this.resolve(req.KeyId);
    this.usable(arn);
    const g: Grant = { id: randomBytes(32).toString('hex'), token: randomBytes(48).toString('base64'), keyArn: arn, grantee: req.GranteePrincipal, ops: req.Operations, ...(req.RetiringPrincipal ? { retiring: req.RetiringPrincipal } : {}), ...(req.Constraints?.EncryptionContextSubset ? { subset: req.Constraints.EncryptionContextSubset } : {}) };
    this.grants.set(g.id, g);
    return { GrantId: g.id, GrantToken: g.token };
  }

  async retireGrant(req: { KeyId?: string; GrantId?: string; GrantToken?: string }, caller: Caller) {
    this.enter('RetireGrant', caller, req);
    const g = [...this.grants.values()].find((x) => x.id === req.GrantId || x.token === req.GrantToken);
    if (!g) throw new FakeKmsError('NotFoundException', 'no such grant');
    if (g.retiring !== caller.arn) throw new FakeKmsError('AccessDeniedException', 'not the retiring principal');
    this.grants.delete(g.id);
  }

  async describeKey(req: { KeyId: string }, caller: Caller) {
    this.enter('DescribeKey', caller, req);
    const arn = this.resolve(req.KeyId);
    return { KeyMetadata: { Arn: arn, Enabled: this.keys.get(arn)!.enabled, KeyState: this.keys.get(arn)!.enabled ? 'Enabled' : 'Disabled' } };
  }
}
