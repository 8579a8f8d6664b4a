/*
 * aesCtrInPlace(key, counter, buf): AES-256 in CTR mode (NIST SP 800-38A §6.5,
 * the 128-bit counter block incremented big-endian) over `buf`, in place, on
 * libgcrypt (GCRY_CIPHER_AES256 in GCRY_CIPHER_MODE_CTR). The HSM's CTR_DRBG
 * draws its key streams with it (src/kms/hsm/drbg.ts): a zeroed `buf` becomes
 * the key stream, with no copy made (docs/architecture.md §6.5).
 *
 * Why libgcrypt: its AES runs on AES-NI where the CPU has it (a table-free,
 * constant-time AES), and it encrypts in place, whereas node's Cipher.update
 * copies its output to a buffer of the exact length and frees the first one
 * unwiped. One handle per call, opened, keyed, used and closed here:
 * gcry_cipher_close wipes the handle (key schedule and counter) before freeing
 * it. Nothing is kept between calls; `key` and `counter` are not modified.
 */
#include "ebsd_native.h"

#include <gcrypt.h>
#include <stdio.h>

#define CTR_KEY_LEN 32
#define CTR_BLOCK 16

static napi_value aes_ctr_in_place(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  char msg[160];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3) return ebsd_throw(env, "ERR_ARG_TYPE", "expected (key, counter, buf)");
  uint8_t *key, *ctr, *buf;
  size_t klen, clen, len;
  if (!ebsd_get_u8(env, argv[0], "key", CTR_KEY_LEN, &key, &klen)) return NULL;
  if (!ebsd_get_u8(env, argv[1], "counter", CTR_BLOCK, &ctr, &clen)) return NULL;
  if (!ebsd_get_u8(env, argv[2], "buf", 0, &buf, &len)) return NULL;
  if (ebsd_cipher_library() == NULL)
    return ebsd_throw(env, "AES_CTR_CIPHER", "libgcrypt at run time is older than the " GCRYPT_VERSION " the addon was built with");

  gcry_cipher_hd_t h = NULL;
  const char *what = "open";
  gcry_error_t err = gcry_cipher_open(&h, GCRY_CIPHER_AES256, GCRY_CIPHER_MODE_CTR, 0);
  if (!err) { what = "setkey"; err = gcry_cipher_setkey(h, key, klen); }
  if (!err) { what = "setctr"; err = gcry_cipher_setctr(h, ctr, clen); }
  if (!err && len > 0) { what = "encrypt"; err = gcry_cipher_encrypt(h, buf, len, NULL, 0); }
  gcry_cipher_close(h); /* wipes the key schedule and counter; accepts NULL */
  if (err) {
    snprintf(msg, sizeof msg, "AES-256-CTR %s failed: %s", what, gcry_strerror(err));
    return ebsd_throw(env, "AES_CTR_CIPHER", msg);
  }
  napi_value undef;
  NAPI_CALL(env, napi_get_undefined(env, &undef));
  return undef;
}

napi_status ebsd_init_aes_ctr(napi_env env, napi_value exports) {
  napi_value fn;
  napi_status st = napi_create_function(env, "aesCtrInPlace", NAPI_AUTO_LENGTH, aes_ctr_in_place, NULL, &fn);
  if (st != napi_ok) return st;
  return napi_set_named_property(env, exports, "aesCtrInPlace", fn);
}
