/*
 * ebsd native addon: shared helpers.
 *
 * Every napi_status is checked (docs/architecture.md §11.13). A failed N-API call throws a JS
 * Error (code ERR_NAPI) unless an exception is already pending, and the
 * calling function returns NULL.
 */
#ifndef EBSD_NATIVE_H
#define EBSD_NATIVE_H

#define NAPI_VERSION 8
#include <node_api.h>
#include <stdint.h>
#include <stddef.h>

void ebsd_throw_napi(napi_env env, const char *call);
/* Throw `new Error(msg)` with `code` set; returns NULL for convenience. */
napi_value ebsd_throw(napi_env env, const char *code, const char *msg);
/* Build (not throw) an Error with `code`; NULL if even that failed. */
napi_value ebsd_make_error(napi_env env, const char *code, const char *msg);
/* Read a JS number that must be an integer in [min, max] into *out; on failure
 * throws ERR_ARG_TYPE / ERR_ARG_RANGE naming `name` and returns 0. */
int ebsd_get_int(napi_env env, napi_value v, const char *name, int64_t min, int64_t max, int64_t *out);
/* Read a Uint8Array (or Buffer) of exactly `want` bytes (any length if want is 0) into
 * *data, *len (addon.c); on failure throws ERR_ARG_TYPE / ERR_ARG_RANGE naming `name`
 * and returns 0. */
int ebsd_get_u8(napi_env env, napi_value v, const char *name, size_t want, uint8_t **data, size_t *len);

#define NAPI_CALL(env, call)                                                   \
  do {                                                                         \
    napi_status status_ = (call);                                              \
    if (status_ != napi_ok) {                                                  \
      ebsd_throw_napi((env), #call);                                           \
      return NULL;                                                             \
    }                                                                          \
  } while (0)

/* For callbacks that return void: jump to a cleanup label instead. */
#define NAPI_CALL_GOTO(env, call, label)                                       \
  do {                                                                         \
    napi_status status_ = (call);                                              \
    if (status_ != napi_ok) {                                                  \
      ebsd_throw_napi((env), #call);                                           \
      goto label;                                                              \
    }                                                                          \
  } while (0)

napi_status ebsd_init_xts(napi_env env, napi_value exports);
/* aesCtrInPlace (aes-ctr.c), on the same libgcrypt. */
napi_status ebsd_init_aes_ctr(napi_env env, napi_value exports);
/* aesGcmDecryptInPlace (aes-gcm.c), on the same libgcrypt. */
napi_status ebsd_init_aes_gcm(napi_env env, napi_value exports);
/* libgcrypt's version once initialised (xts.c), NULL if older than our header. */
const char *ebsd_cipher_library(void);
napi_status ebsd_init_peercred(napi_env env, napi_value exports);
napi_status ebsd_init_io(napi_env env, napi_value exports);
napi_status ebsd_init_flock(napi_env env, napi_value exports);
napi_status ebsd_init_writeback(napi_env env, napi_value exports);
napi_status ebsd_init_harden(napi_env env, napi_value exports);

#endif
