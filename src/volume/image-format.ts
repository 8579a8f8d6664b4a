import type { Logger } from 'pino';
import type { Caller } from '../kms/types.js';
import type { XtsEngine } from '../crypto/xts.js';
import { wipe } from '../util/wipe.js';
import { openBackingFile } from './backing-file.js';
import { EncryptedBlockDevice } from './encrypted-block-device.js';
import { PlainBlockDevice } from './plain-block-device.js';
import { KeyCache, type ImpairedEvent, type KeyCacheOptions } from './key-cache.js';
import type { CallOptions, KeyService } from './key-service.js';
import { buildLuks2Json, LUKS2_DATA_OFFSET, verifyVolumeKey, type Luks2Volume } from './luks2-json.js';
import { createLuks2, readLuks2, updateLuks2 } from './luks2-header.js';
import { createPlainImage, readPlainImage, resizePlainImage } from './plain-image.js';
import { VolumeError } from './errors.js';

/**
 * The two image formats behind one strategy (docs/architecture.md §4): a
 * LUKS2 container with a KMS-wrapped key (every real volume), and the
 * measurement-only plaintext image (`--cipher none`). What differs per format
 * (create, read the header, grow, bring the device up at attach) lives here;
 * the VolumeManager and Attachments hold no per-format branches beyond asking
 * `measurementOnly` whether the daemon's permission is needed.
 */
export interface ImageFormat {
  readonly name: 'luks2' | 'plaintext';
  /** A plaintext image: created and attached only by a daemon started with --allow-unencrypted. */
  readonly measurementOnly: boolean;
  /** The data size and offset the image header records. */
  readHeader(path: string): Promise<{ size: number; dataOffset: number }>;
  /** ModifyVolume: the caller grew the file already; record `size` in the header. */
  resize(path: string, size: number): Promise<void>;
  /** AttachVolume / resume: check the header against the volume, unwrap its key (if any), serve a device. */
  open(o: OpenImageOptions): Promise<OpenedImage>;
}

export interface OpenImageOptions {
  path: string;
  volumeId: string;
  /** The catalog's size: the header may say more (a grow), never less. */
  size: number;
  /**
   * Get the grant the key is unwrapped through (CreateGrant at attach, the
   * recorded one at resume); `v` is the validated header. Not called for a
   * format with no key.
   */
  grant: (v: Luks2Volume) => Promise<{ grantId: string; grantToken: string }>;
  keyService: KeyService;
  /** Decrypts as the host through the grant. */
  host: Caller;
  xtsEngine: XtsEngine;
  keyCacheTtlMs?: number;
  keyCacheMaxStaleMs?: number;
  /** More key-cache options once the key and grant are known (the host's shared key check, clock, jitter source). */
  keyCacheExtras?: (keyArn: string, grantId: string) => Partial<KeyCacheOptions>;
  onImpaired: (ev: ImpairedEvent) => void;
  log: Logger;
}

export interface OpenedImage {
  device: EncryptedBlockDevice | PlainBlockDevice;
  /** Started; null for a format with no key. */
  keyCache: KeyCache | null;
  /** '' for a format with no key. */
  keyArn: string;
}

/** The format of a catalog record. */
export function formatOf(rec: { unencrypted?: true }): ImageFormat {
  return rec.unencrypted ? PLAINTEXT : LUKS2;
}

/** The image of a new LUKS2 volume: the header with the wrapped key and its digest, a sparse data segment. */
export async function createLuks2Image(path: string, o: { volumeId: string; size: number; key: Uint8Array; blob: Uint8Array; keyArn: string }): Promise<void> {
  const ctx = { 'aws:ebs:id': o.volumeId };
  const json = buildLuks2Json({
    size: o.size,
    volumeKey: o.key,
    token: { key_arn: o.keyArn, ciphertext_blob: Buffer.from(o.blob).toString('base64'), encryption_context: ctx, volume_id: o.volumeId },
  });
  await createLuks2(path, { json, size: o.size, dataOffset: LUKS2_DATA_OFFSET, label: o.volumeId });
}

export { createPlainImage };

const LUKS2: ImageFormat = {
  name: 'luks2',
  measurementOnly: false,

  async readHeader(path) {
    const v = (await readLuks2(path)).volume;
    return { size: v.size, dataOffset: v.dataOffset };
  },

  async resize(path, size) {
    await updateLuks2(path, (j) => {
      for (const s of Object.values(j.segments)) s.size = String(size);
    });
  },

  async open(o) {
    const h = await readLuks2(o.path);
    const v = h.volume;
    const ctx = { 'aws:ebs:id': o.volumeId };
    // Precondition: the token names this volume and binds the blob to it, and the header
    // covers the catalog's size. A refused image is IncorrectState (docs/format.md, "What a reader refuses").
    if (v.token.volume_id !== o.volumeId) {
      throw refused('VOLUME_TOKEN_MISMATCH', `the image of ${o.volumeId} carries the token of ${v.token.volume_id}`);
    }
    if (!sameContext(v.token.encryption_context, ctx)) {
      throw refused('VOLUME_TOKEN_MISMATCH', `the token in the image of ${o.volumeId} binds its key to the encryption context ${JSON.stringify(v.token.encryption_context)}, not ${JSON.stringify(ctx)}`);
    }
    if (v.size < o.size) throw smallerThanCatalog(o.volumeId, v.size, o.size);
    const { grantId, grantToken } = await o.grant(v);
    const blob = Buffer.from(v.token.ciphertext_blob, 'base64');
    const unwrap = async (opts?: CallOptions): Promise<Uint8Array> =>
      (await o.keyService.decrypt({ CiphertextBlob: blob, KeyId: v.token.key_arn, EncryptionContext: ctx, GrantTokens: [grantToken] }, o.host, opts)).Plaintext;
    const backing = await openBackingFile(o.path);
    let key: Uint8Array | undefined;
    let device: EncryptedBlockDevice;
    try {
      key = await unwrap();
      verifyVolumeKey(v, key); // Precondition of any I/O: the key matches the LUKS2 digest.
      device = new EncryptedBlockDevice({ volumeId: o.volumeId, size: v.size, dataOffset: v.dataOffset, backing, logger: o.log, xts: o.xtsEngine.createContext(key) });
    } catch (e) {
      await backing.close().catch(() => {});
      throw e;
    } finally {
      wipe(key);
    }
    const keyCache = new KeyCache(device, {
      volumeId: o.volumeId,
      ...(o.keyCacheTtlMs !== undefined ? { ttlMs: o.keyCacheTtlMs } : {}),
      ...(o.keyCacheMaxStaleMs !== undefined ? { maxStaleMs: o.keyCacheMaxStaleMs } : {}),
      refresh: unwrap,
      verify: (k) => verifyVolumeKey(v, k),
      logger: o.log,
      ...(o.keyCacheExtras?.(v.token.key_arn, grantId) ?? {}),
      onImpaired: o.onImpaired,
    });
    keyCache.start();
    return { device, keyCache, keyArn: v.token.key_arn };
  },
};

const PLAINTEXT: ImageFormat = {
  name: 'plaintext',
  measurementOnly: true,

  async readHeader(path) {
    const p = await readPlainImage(path);
    return { size: p.size, dataOffset: p.dataOffset };
  },

  resize: resizePlainImage,

  async open(o) {
    // Measurement only (plain-image.ts): no key, no grant, no key cache.
    const p = await readPlainImage(o.path);
    if (p.volumeId !== o.volumeId) throw refused('VOLUME_TOKEN_MISMATCH', `the plaintext image of ${o.volumeId} names ${p.volumeId}`);
    if (p.size < o.size) throw smallerThanCatalog(o.volumeId, p.size, o.size);
    const backing = await openBackingFile(o.path);
    return { device: new PlainBlockDevice({ volumeId: o.volumeId, size: p.size, dataOffset: p.dataOffset, backing, logger: o.log }), keyCache: null, keyArn: '' };
  },
};

/** An image the attach cannot use as it is: EC2's IncorrectState (exit 6), not a service failure. */
function refused(code: 'VOLUME_TOKEN_MISMATCH' | 'VOLUME_IMAGE_CORRUPT', message: string): VolumeError {
  return new VolumeError(code, message, { awsName: 'IncorrectState' });
}

function smallerThanCatalog(volumeId: string, header: number, catalog: number): VolumeError {
  return refused('VOLUME_IMAGE_CORRUPT', `the image header of ${volumeId} records ${header} data bytes, fewer than the ${catalog} the catalog records`);
}

function sameContext(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
}
