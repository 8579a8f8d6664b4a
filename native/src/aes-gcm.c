/*
 * aesGcmEncryptInPlace(key, iv, aad, buf) -> tag: AES-256-GCM encryption (NIST
 * SP 800-38D §7.1, 96-bit IV, 128-bit tag) of `buf` in place, on libgcrypt;
 * returns the 16-byte tag in a new Buffer. The HSM seals key material tokens,
 * SigV4 secrets, Encrypt's and GenerateDataKey's ciphertexts and the domain
 * with it (src/kms/hsm/gcm-seal.ts): the plaintext is only ever in the
 * caller's buffer, which this turns into the ciphertext, and the key schedule
 * is in a handle closed (so wiped) before return, where node's Cipher keeps
 * OpenSSL's until the GC collects it (docs/architecture.md §6.5). If it fails
 * part-way, `buf` is zeroed: neither the plaintext nor a partial ciphertext
 * is left. `key`, `iv` and `aad` are not modified.
 *
 * aesGcmDecryptInPlace(key, iv, aad, buf, tag): AES-256-GCM decryption (NIST
 * SP 800-38D §7.2, 96-bit IV, 128-bit tag) of `buf` in place, on libgcrypt
 * (GCRY_CIPHER_AES256 in GCRY_CIPHER_MODE_GCM). Returns true when the tag
 * authenticates `aad` and the ciphertext; false otherwise, with `buf` zeroed:
 * GCM decrypts before it authenticates, so a failed `buf` would otherwise hold
 * the plaintext of a ciphertext opened under the wrong AAD.
 *
 * The HSM opens its key material tokens, sealed secrets and symmetric
 * ciphertexts with it (src/kms/hsm/engine.ts): the plaintext is written only
 * into the caller's buffer, which the caller wipes, whereas node's
 * Decipher.update copies its output to a buffer of the exact length and frees
 * the first one unwiped (docs/architecture.md §6.5). One handle per call:
 * gcry_cipher_close wipes it (key schedule, GHASH key and state) before
 * freeing it. `key`, `iv`, `aad` and `tag` are not modified.
 */
#include "ebsd_native.h"

#include <gcrypt.h>
#include <stdio.h>
#include <string.h>

#define GCM_KEY_LEN 32
#define GCM_IV_LEN 12
#define GCM_TAG_LEN 16

static napi_value aes_gcm_decrypt_in_place(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  char msg[160];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5) return ebsd_throw(env, "ERR_ARG_TYPE", "expected (key, iv, aad, buf, tag)");
  uint8_t *key, *iv, *aad, *buf, *tag;
  size_t klen, ivlen, aadlen, len, taglen;
  if (!ebsd_get_u8(env, argv[0], "key", GCM_KEY_LEN, &key, &klen)) return NULL;
  if (!ebsd_get_u8(env, argv[1], "iv", GCM_IV_LEN, &iv, &ivlen)) return NULL;
  if (!ebsd_get_u8(env, argv[2], "aad", 0, &aad, &aadlen)) return NULL;
  if (!ebsd_get_u8(env, argv[3], "buf", 0, &buf, &len)) return NULL;
  if (!ebsd_get_u8(env, argv[4], "tag", GCM_TAG_LEN, &tag, &taglen)) return NULL;
  if (ebsd_cipher_library() == NULL)
    return ebsd_throw(env, "AES_GCM_CIPHER", "libgcrypt at run time is older than the " GCRYPT_VERSION " the addon was built with");

  gcry_cipher_hd_t h = NULL;
  const char *what = "open";
  int authentic = 0;
  gcry_error_t err = gcry_cipher_open(&h, GCRY_CIPHER_AES256, GCRY_CIPHER_MODE_GCM, 0);
  if (!err) { what = "setkey"; err = gcry_cipher_setkey(h, key, klen); }
  if (!err) { what = "setiv"; err = gcry_cipher_setiv(h, iv, ivlen); }
  if (!err && aadlen > 0) { what = "authenticate"; err = gcry_cipher_authenticate(h, aad, aadlen); }
  if (!err && len > 0) { what = "decrypt"; err = gcry_cipher_decrypt(h, buf, len, NULL, 0); }
  if (!err) {
    gcry_error_t check = gcry_cipher_checktag(h, tag, taglen); /* constant-time compare */
    if (!check) authentic = 1;
    else if (gcry_err_code(check) != GPG_ERR_CHECKSUM) { what = "checktag"; err = check; }
  }
  gcry_cipher_close(h); /* wipes the key schedule and GHASH state; accepts NULL */
  /* Not authentic, or failed part-way: whatever was decrypted must not stay. buf is
   * JS-visible memory, so the compiler cannot drop this store; explicit_bzero says so anyway. */
  if (!authentic && len > 0) explicit_bzero(buf, len);
  if (err) {
    snprintf(msg, sizeof msg, "AES-256-GCM %s failed: %s", what, gcry_strerror(err));
    return ebsd_throw(env, "AES_GCM_CIPHER", msg);
  }
  napi_value result;
  NAPI_CALL(env, napi_get_boolean(env, authentic != 0, &result));
  return result;
}

static napi_value aes_gcm_encrypt_in_place(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  char msg[160];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) return ebsd_throw(env, "ERR_ARG_TYPE", "expected (key, iv, aad, buf)");
  uint8_t *key, *iv, *aad, *buf;
  size_t klen, ivlen, aadlen, len;
  if (!ebsd_get_u8(env, argv[0], "key", GCM_KEY_LEN, &key, &klen)) return NULL;
  if (!ebsd_get_u8(env, argv[1], "iv", GCM_IV_LEN, &iv, &ivlen)) return NULL;
  if (!ebsd_get_u8(env, argv[2], "aad", 0, &aad, &aadlen)) return NULL;
  if (!ebsd_get_u8(env, argv[3], "buf", 0, &buf, &len)) return NULL;
  if (ebsd_cipher_library() == NULL)
    return ebsd_throw(env, "AES_GCM_CIPHER", "libgcrypt at run time is older than the " GCRYPT_VERSION " the addon was built with");

  /* The tag's Buffer is made before the cipher runs: once `buf` holds ciphertext, nothing
   * may fail and leave the caller a buffer that is neither its plaintext nor a sealed one. */
  napi_value result;
  void *tag;
  NAPI_CALL(env, napi_create_buffer(env, GCM_TAG_LEN, &tag, &result));

  gcry_cipher_hd_t h = NULL;
  const char *what = "open";
  gcry_error_t err = gcry_cipher_open(&h, GCRY_CIPHER_AES256, GCRY_CIPHER_MODE_GCM, 0);
  if (!err) { what = "setkey"; err = gcry_cipher_setkey(h, key, klen); }
  if (!err) { what = "setiv"; err = gcry_cipher_setiv(h, iv, ivlen); }
  if (!err && aadlen > 0) { what = "authenticate"; err = gcry_cipher_authenticate(h, aad, aadlen); }
  if (!err && len > 0) { what = "encrypt"; err = gcry_cipher_encrypt(h, buf, len, NULL, 0); }
  if (!err) { what = "gettag"; err = gcry_cipher_gettag(h, tag, GCM_TAG_LEN); }
  gcry_cipher_close(h); /* wipes the key schedule and GHASH state; accepts NULL */
  if (err) {
    /* buf may hold part plaintext, part ciphertext: the caller gets neither. */
    if (len > 0) explicit_bzero(buf, len);
    snprintf(msg, sizeof msg, "AES-256-GCM %s failed: %s", what, gcry_strerror(err));
    return ebsd_throw(env, "AES_GCM_CIPHER", msg);
  }
  return result;
}

napi_status ebsd_init_aes_gcm(napi_env env, napi_value exports) {
  napi_value fn;
  napi_status st = napi_create_function(env, "aesGcmDecryptInPlace", NAPI_AUTO_LENGTH, aes_gcm_decrypt_in_place, NULL, &fn);
  if (st != napi_ok) return st;
  st = napi_set_named_property(env, exports, "aesGcmDecryptInPlace", fn);
  if (st != napi_ok) return st;
  st = napi_create_function(env, "aesGcmEncryptInPlace", NAPI_AUTO_LENGTH, aes_gcm_encrypt_in_place, NULL, &fn);
  if (st != napi_ok) return st;
  return napi_set_named_property(env, exports, "aesGcmEncryptInPlace", fn);
}
