/*
 * ebsd native addon entry point: batch AES-256-XTS over runs of data units
 * (xts.c, on libgcrypt), in-place AES-256-CTR for the HSM's DRBG (aes-ctr.c),
 * in-place AES-256-GCM encryption and decryption for the HSM (aes-gcm.c),
 * control-socket peer credentials (peercred.c), non-blocking positioned I/O for the volume data path (io.c), the daemon's state-dir lock
 * (flock.c) and early writeback of a restored image (writeback.c).
 */
#include "ebsd_native.h"

#include <stdio.h>

void ebsd_throw_napi(napi_env env, const char *call) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return;
  const napi_extended_error_info *info = NULL;
  char msg[256];
  if (napi_get_last_error_info(env, &info) == napi_ok && info != NULL && info->error_message != NULL)
    snprintf(msg, sizeof msg, "N-API call failed: %s (%s)", call, info->error_message);
  else
    snprintf(msg, sizeof msg, "N-API call failed: %s", call);
  napi_throw_error(env, "ERR_NAPI", msg);
}

napi_value ebsd_make_error(napi_env env, const char *code, const char *msg) {
  napi_value jcode, jmsg, err;
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &jcode) != napi_ok) return NULL;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &jmsg) != napi_ok) return NULL;
  if (napi_create_error(env, jcode, jmsg, &err) != napi_ok) return NULL;
  return err;
}

napi_value ebsd_throw(napi_env env, const char *code, const char *msg) {
  /* napi_throw_error sets err.code for us. Its own failure leaves nothing to
     report to: the caller returns NULL either way, and N-API then surfaces
     whatever is pending. */
  napi_status st = napi_throw_error(env, code, msg);
  (void)st;
  return NULL;
}

/* A JS number that is an integer in [min, max] (ERR_ARG_TYPE / ERR_ARG_RANGE otherwise). */
int ebsd_get_int(napi_env env, napi_value v, const char *name, int64_t min, int64_t max, int64_t *out) {
  napi_valuetype t;
  char msg[112];
  if (napi_typeof(env, v, &t) != napi_ok) { ebsd_throw_napi(env, "napi_typeof"); return 0; }
  if (t != napi_number) {
    snprintf(msg, sizeof msg, "%s must be an integer", name);
    ebsd_throw(env, "ERR_ARG_TYPE", msg);
    return 0;
  }
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) { ebsd_throw_napi(env, "napi_get_value_double"); return 0; }
  if (!(d >= (double)min && d <= (double)max) || d != (double)(int64_t)d) {
    snprintf(msg, sizeof msg, "%s must be an integer in [%lld, %lld]", name, (long long)min, (long long)max);
    ebsd_throw(env, "ERR_ARG_RANGE", msg);
    return 0;
  }
  *out = (int64_t)d;
  return 1;
}

/* A Uint8Array (or Buffer) argument named `name`, of exactly `want` bytes unless want is 0
 * (ERR_ARG_TYPE when it is not one or is detached, ERR_ARG_RANGE for another length). */
int ebsd_get_u8(napi_env env, napi_value v, const char *name, size_t want, uint8_t **data, size_t *len) {
  bool is_ta = false;
  char msg[96];
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok) { ebsd_throw_napi(env, "napi_is_typedarray"); return 0; }
  if (is_ta) {
    napi_typedarray_type type;
    size_t n;
    void *p;
    if (napi_get_typedarray_info(env, v, &type, &n, &p, NULL, NULL) != napi_ok) {
      ebsd_throw_napi(env, "napi_get_typedarray_info");
      return 0;
    }
    if (type == napi_uint8_array) {
      if (p == NULL && n != 0) { ebsd_throw(env, "ERR_ARG_TYPE", "buffer is detached"); return 0; }
      if (want != 0 && n != want) {
        snprintf(msg, sizeof msg, "%s must be %zu bytes", name, want);
        ebsd_throw(env, "ERR_ARG_RANGE", msg);
        return 0;
      }
      *data = (uint8_t *)p;
      *len = n;
      return 1;
    }
  }
  snprintf(msg, sizeof msg, "%s must be a Uint8Array or Buffer", name);
  ebsd_throw(env, "ERR_ARG_TYPE", msg);
  return 0;
}

static napi_value init(napi_env env, napi_value exports) {
  /* "libgcrypt 1.10.1", or null when the library at run time is too old. */
  napi_value lib;
  const char *v = ebsd_cipher_library();
  char name[64];
  snprintf(name, sizeof name, "libgcrypt %s", v != NULL ? v : "");
  if (v != NULL) NAPI_CALL(env, napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &lib));
  else NAPI_CALL(env, napi_get_null(env, &lib));
  NAPI_CALL(env, napi_set_named_property(env, exports, "cipherLibrary", lib));
  NAPI_CALL(env, ebsd_init_xts(env, exports));
  NAPI_CALL(env, ebsd_init_aes_ctr(env, exports));
  NAPI_CALL(env, ebsd_init_aes_gcm(env, exports));
  NAPI_CALL(env, ebsd_init_peercred(env, exports));
  NAPI_CALL(env, ebsd_init_io(env, exports));
  NAPI_CALL(env, ebsd_init_flock(env, exports));
  NAPI_CALL(env, ebsd_init_writeback(env, exports));
  NAPI_CALL(env, ebsd_init_harden(env, exports));
  return exports;
}

NAPI_MODULE_INIT() { return init(env, exports); }
