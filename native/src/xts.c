/*
 * Batch AES-256-XTS (IEEE 1619-2018) over a run of data units, in place, on
 * OpenSSL's EVP_aes_256_xts (Node exports OpenSSL's symbols; no -lcrypto).
 *
 * A run is len/unit consecutive data units; unit i is processed with the
 * tweak firstTweak + i*step, stored as a little-endian u64 in a 16-byte
 * block, the upper 8 bytes zero (dm-crypt plain64; IEEE 1619-2018 §5.1 takes
 * the data unit sequence number little-endian).
 *
 * Context lifetime. createContext(key) keys one encrypt and one decrypt
 * EVP_CIPHER_CTX ("templates") once; every unit afterwards only re-inits the
 * IV. The sync calls use the templates directly on the JS thread. An EVP
 * context is not safe to share between threads, so each async run gets its
 * own context: popped from a small per-direction free list, or copied from
 * the template (EVP_CIPHER_CTX_copy duplicates the key schedule, no re-keying).
 * The free list is only touched on the JS thread (in the call and in the
 * complete callback), so it needs no lock; the worker thread touches only the
 * context it was handed. Concurrent async runs on one key are therefore safe
 * and, once the list is warm, allocation-free.
 *
 * Key material. The addon never copies the key: OpenSSL reads it from the JS
 * buffer during createContext and keeps only its key schedule inside the EVP
 * contexts. EVP_CIPHER_CTX_free cleanses those (the provider frees its
 * context with OPENSSL_clear_free). destroyContext() frees the templates and
 * the free list at once; contexts still lent to running async work are freed
 * when that work completes. The GC finalizer does the same for contexts
 * nobody destroyed.
 */
#include "ebsd_native.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XTS_KEY_LEN 64
#define XTS_POOL_MAX 8
#define XTS_MAX_UNIT (1u << 20)

/* Distinguishes our externals from any other napi_external (NAPI 8 type tags). */
static const napi_type_tag XTS_CTX_TAG = {0x6562736478747331ULL, 0x8b1d3c7e5a4f2901ULL};

typedef struct {
  EVP_CIPHER_CTX *tmpl[2];                 /* [0] decrypt, [1] encrypt: keyed once */
  EVP_CIPHER_CTX *pool[2][XTS_POOL_MAX];   /* idle copies for async runs */
  int npool[2];
  unsigned inflight;                       /* async runs holding a copy */
  int destroyed;                           /* destroyContext() or finalizer ran */
  int finalized;                           /* the JS external is gone */
} xts_ctx;

typedef struct {
  xts_ctx *ctx;
  EVP_CIPHER_CTX *evp;
  uint8_t *data;
  size_t len;
  uint64_t tweak;
  size_t unit;
  uint64_t step;
  int enc;
  int ok;
  napi_ref buf_ref;
  napi_ref ctx_ref;
  napi_deferred deferred;
  napi_async_work work;
} xts_job;

static void store_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* The whole run on one EVP context. Thread-agnostic: no N-API in here. */
static int xts_run(EVP_CIPHER_CTX *c, int enc, uint8_t *data, size_t len, uint64_t tweak,
                   size_t unit, uint64_t step) {
  uint8_t iv[16];
  memset(iv, 0, sizeof iv);
  for (size_t off = 0; off < len; off += unit, tweak += step) {
    store_le64(iv, tweak);
    /* cipher and key NULL: keep the key schedule, set only the tweak. The
       _ex2 form (OpenSSL 3) skips the ENGINE bookkeeping of EVP_CipherInit_ex. */
    int outl = 0;
    if (!EVP_CipherInit_ex2(c, NULL, NULL, iv, enc, NULL) ||
        !EVP_CipherUpdate(c, data + off, &outl, data + off, (int)unit) || (size_t)outl != unit) {
      /* Leave no stale entries on this thread's OpenSSL error queue: node's own
         crypto shares it on the main thread. */
      ERR_clear_error();
      return 0;
    }
  }
  return 1;
}

static void free_evp_all(xts_ctx *x) {
  for (int d = 0; d < 2; d++) {
    if (x->tmpl[d] != NULL) EVP_CIPHER_CTX_free(x->tmpl[d]);
    x->tmpl[d] = NULL;
    for (int i = 0; i < x->npool[d]; i++) EVP_CIPHER_CTX_free(x->pool[d][i]);
    x->npool[d] = 0;
  }
}

static void ctx_finalize(napi_env env, void *data, void *hint) {
  xts_ctx *x = (xts_ctx *)data;
  free_evp_all(x);
  x->destroyed = 1;
  x->finalized = 1;
  if (x->inflight == 0) {
    OPENSSL_cleanse(x, sizeof *x);
    free(x);
  }
}

/* ---- argument helpers ---------------------------------------------------- */

static int get_ctx(napi_env env, napi_value v, xts_ctx **out) {
  napi_valuetype t;
  bool tagged = false;
  if (napi_typeof(env, v, &t) != napi_ok) { ebsd_throw_napi(env, "napi_typeof"); return 0; }
  if (t != napi_external) { ebsd_throw(env, "ERR_ARG_TYPE", "ctx must be a context from createContext()"); return 0; }
  if (napi_check_object_type_tag(env, v, &XTS_CTX_TAG, &tagged) != napi_ok) {
    ebsd_throw_napi(env, "napi_check_object_type_tag");
    return 0;
  }
  if (!tagged) { ebsd_throw(env, "ERR_ARG_TYPE", "ctx must be a context from createContext()"); return 0; }
  void *p = NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) { ebsd_throw_napi(env, "napi_get_value_external"); return 0; }
  *out = (xts_ctx *)p;
  return 1;
}

static int get_bytes(napi_env env, napi_value v, const char *name, uint8_t **data, size_t *len) {
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
      *data = (uint8_t *)p;
      *len = n;
      if (*data == NULL && n != 0) { ebsd_throw(env, "ERR_ARG_TYPE", "buffer is detached"); return 0; }
      return 1;
    }
  }
  snprintf(msg, sizeof msg, "%s must be a Uint8Array or Buffer", name);
  ebsd_throw(env, "ERR_ARG_TYPE", msg);
  return 0;
}

static int get_u64_bigint(napi_env env, napi_value v, const char *name, uint64_t *out) {
  napi_valuetype t;
  char msg[96];
  if (napi_typeof(env, v, &t) != napi_ok) { ebsd_throw_napi(env, "napi_typeof"); return 0; }
  if (t != napi_bigint) {
    snprintf(msg, sizeof msg, "%s must be a BigInt", name);
    ebsd_throw(env, "ERR_ARG_TYPE", msg);
    return 0;
  }
  bool lossless = false;
  if (napi_get_value_bigint_uint64(env, v, out, &lossless) != napi_ok) {
    ebsd_throw_napi(env, "napi_get_value_bigint_uint64");
    return 0;
  }
  if (!lossless) {
    snprintf(msg, sizeof msg, "%s must be in [0, 2^64)", name);
    ebsd_throw(env, "XTS_TWEAK_OVERFLOW", msg);
    return 0;
  }
  return 1;
}

/* Parses (ctx, buf, firstTweak, unitSize, tweakStep) and checks the run. */
typedef struct {
  xts_ctx *ctx;
  napi_value ctx_val, buf_val;
  uint8_t *data;
  size_t len;
  uint64_t tweak, step;
  size_t unit;
} run_args;

static int parse_run(napi_env env, napi_callback_info info, run_args *a) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) { ebsd_throw_napi(env, "napi_get_cb_info"); return 0; }
  if (argc < 5) { ebsd_throw(env, "ERR_ARG_TYPE", "expected (ctx, data, firstTweak, unitSize, tweakStep)"); return 0; }
  int64_t unit, step;
  if (!get_ctx(env, argv[0], &a->ctx)) return 0;
  if (!get_bytes(env, argv[1], "data", &a->data, &a->len)) return 0;
  if (!get_u64_bigint(env, argv[2], "firstTweak", &a->tweak)) return 0;
  if (!ebsd_get_int(env, argv[3], "unitSize", 16, XTS_MAX_UNIT, &unit)) return 0;
  if (!ebsd_get_int(env, argv[4], "tweakStep", 0, 0xffffffffLL, &step)) return 0;
  if (unit % 16 != 0) { ebsd_throw(env, "XTS_BAD_UNIT_SIZE", "unitSize must be a multiple of 16"); return 0; }
  if (a->len % (size_t)unit != 0) {
    ebsd_throw(env, "XTS_PARTIAL_UNIT", "data length must be a whole number of units");
    return 0;
  }
  a->unit = (size_t)unit;
  a->step = (uint64_t)step;
  uint64_t n = a->len / a->unit;
  if (n > 0) {
    /* Last unit's tweak = tweak + (n-1)*step must stay below 2^64. */
    unsigned __int128 last = (unsigned __int128)a->tweak + (unsigned __int128)(n - 1) * a->step;
    if (last > (unsigned __int128)UINT64_MAX) {
      ebsd_throw(env, "XTS_TWEAK_OVERFLOW", "the last unit's tweak would be 2^64 or more");
      return 0;
    }
  }
  if (a->ctx->destroyed) { ebsd_throw(env, "XTS_DESTROYED", "context was destroyed"); return 0; }
  a->ctx_val = argv[0];
  a->buf_val = argv[1];
  return 1;
}

/* ---- createContext / destroyContext -------------------------------------- */

static napi_value create_context(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return ebsd_throw(env, "ERR_ARG_TYPE", "key must be a Uint8Array or Buffer");
  uint8_t *key;
  size_t klen;
  if (!get_bytes(env, argv[0], "key", &key, &klen)) return NULL;
  if (klen != XTS_KEY_LEN) return ebsd_throw(env, "XTS_BAD_KEY_LENGTH", "key must be 64 bytes (K1 || K2)");
  /* IEEE 1619-2018 §5.1 / SP 800-38E: K1 and K2 must differ (OpenSSL refuses too). */
  if (CRYPTO_memcmp(key, key + 32, 32) == 0) return ebsd_throw(env, "XTS_WEAK_KEY", "key halves K1 and K2 must differ");

  xts_ctx *x = (xts_ctx *)calloc(1, sizeof *x);
  if (x == NULL) return ebsd_throw(env, "ERR_NO_MEMORY", "out of memory");
  const EVP_CIPHER *cipher = EVP_aes_256_xts();
  for (int d = 0; d < 2; d++) {
    x->tmpl[d] = EVP_CIPHER_CTX_new();
    if (x->tmpl[d] == NULL || !EVP_CipherInit_ex(x->tmpl[d], cipher, NULL, key, NULL, d)) {
      ERR_clear_error();
      free_evp_all(x);
      free(x);
      return ebsd_throw(env, "XTS_OPENSSL", "EVP_CipherInit_ex(aes-256-xts) failed");
    }
  }
  napi_value ext;
  napi_status st = napi_create_external(env, x, ctx_finalize, NULL, &ext);
  if (st != napi_ok) {
    free_evp_all(x);
    free(x);
    ebsd_throw_napi(env, "napi_create_external");
    return NULL;
  }
  /* From here the finalizer owns x. */
  NAPI_CALL(env, napi_type_tag_object(env, ext, &XTS_CTX_TAG));
  return ext;
}

static napi_value destroy_context(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return ebsd_throw(env, "ERR_ARG_TYPE", "ctx must be a context from createContext()");
  xts_ctx *x;
  if (!get_ctx(env, argv[0], &x)) return NULL;
  free_evp_all(x);
  x->destroyed = 1;
  napi_value undef;
  NAPI_CALL(env, napi_get_undefined(env, &undef));
  return undef;
}

/* ---- sync ---------------------------------------------------------------- */

static napi_value run_sync(napi_env env, napi_callback_info info, int enc) {
  run_args a;
  if (!parse_run(env, info, &a)) return NULL;
  if (!xts_run(a.ctx->tmpl[enc], enc, a.data, a.len, a.tweak, a.unit, a.step))
    return ebsd_throw(env, "XTS_OPENSSL", enc ? "EVP encrypt failed" : "EVP decrypt failed");
  napi_value undef;
  NAPI_CALL(env, napi_get_undefined(env, &undef));
  return undef;
}

static napi_value encrypt_sync(napi_env env, napi_callback_info info) { return run_sync(env, info, 1); }
static napi_value decrypt_sync(napi_env env, napi_callback_info info) { return run_sync(env, info, 0); }

/* ---- async (libuv thread pool) ------------------------------------------- */

static EVP_CIPHER_CTX *pool_take(xts_ctx *x, int enc) {
  if (x->npool[enc] > 0) return x->pool[enc][--x->npool[enc]];
  EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
  if (c == NULL) return NULL;
  if (!EVP_CIPHER_CTX_copy(c, x->tmpl[enc])) {
    ERR_clear_error();
    EVP_CIPHER_CTX_free(c);
    return NULL;
  }
  return c;
}

static void pool_give(xts_ctx *x, int enc, EVP_CIPHER_CTX *c) {
  if (!x->destroyed && x->npool[enc] < XTS_POOL_MAX) x->pool[enc][x->npool[enc]++] = c;
  else EVP_CIPHER_CTX_free(c);
}

static void job_execute(napi_env env, void *data) {
  xts_job *j = (xts_job *)data;
  j->ok = xts_run(j->evp, j->enc, j->data, j->len, j->tweak, j->unit, j->step);
}

static void job_complete(napi_env env, napi_status status, void *data) {
  xts_job *j = (xts_job *)data;
  xts_ctx *x = j->ctx;
  pool_give(x, j->enc, j->evp);
  j->evp = NULL;
  x->inflight--;
  if (x->finalized && x->inflight == 0) {
    OPENSSL_cleanse(x, sizeof *x);
    free(x);
  }

  napi_value result = NULL;
  int ok = (status == napi_ok) && j->ok;
  if (ok) {
    NAPI_CALL_GOTO(env, napi_get_undefined(env, &result), cleanup);
    NAPI_CALL_GOTO(env, napi_resolve_deferred(env, j->deferred, result), cleanup);
  } else {
    const char *code = status == napi_cancelled ? "XTS_CANCELLED" : "XTS_OPENSSL";
    const char *msg = status == napi_cancelled ? "async XTS run was cancelled"
                      : j->enc                 ? "EVP encrypt failed"
                                               : "EVP decrypt failed";
    result = ebsd_make_error(env, code, msg);
    if (result == NULL) { ebsd_throw_napi(env, "ebsd_make_error"); goto cleanup; }
    NAPI_CALL_GOTO(env, napi_reject_deferred(env, j->deferred, result), cleanup);
  }
cleanup:
  /* Release the buffer and the context only now: the worker is done with both. */
  if (j->buf_ref != NULL) NAPI_CALL_GOTO(env, napi_delete_reference(env, j->buf_ref), out2);
out2:
  if (j->ctx_ref != NULL) NAPI_CALL_GOTO(env, napi_delete_reference(env, j->ctx_ref), out3);
out3:
  NAPI_CALL_GOTO(env, napi_delete_async_work(env, j->work), out4);
out4:
  free(j);
}

static napi_value run_async(napi_env env, napi_callback_info info, int enc) {
  run_args a;
  if (!parse_run(env, info, &a)) return NULL;
  xts_job *j = (xts_job *)calloc(1, sizeof *j);
  if (j == NULL) return ebsd_throw(env, "ERR_NO_MEMORY", "out of memory");
  j->ctx = a.ctx;
  j->data = a.data;
  j->len = a.len;
  j->tweak = a.tweak;
  j->unit = a.unit;
  j->step = a.step;
  j->enc = enc;
  j->evp = pool_take(a.ctx, enc);
  if (j->evp == NULL) {
    free(j);
    return ebsd_throw(env, "XTS_OPENSSL", "EVP_CIPHER_CTX_copy failed");
  }
  a.ctx->inflight++;

  napi_value promise = NULL, name;
  const char *what;
  /* Keep the data buffer and the context alive until job_complete. */
  what = "napi_create_reference(data)";
  if (napi_create_reference(env, a.buf_val, 1, &j->buf_ref) != napi_ok) goto fail;
  what = "napi_create_reference(ctx)";
  if (napi_create_reference(env, a.ctx_val, 1, &j->ctx_ref) != napi_ok) goto fail;
  what = "napi_create_string_utf8";
  if (napi_create_string_utf8(env, "ebsd:xts", NAPI_AUTO_LENGTH, &name) != napi_ok) goto fail;
  what = "napi_create_async_work";
  if (napi_create_async_work(env, NULL, name, job_execute, job_complete, j, &j->work) != napi_ok) goto fail;
  what = "napi_create_promise";
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok) goto fail;
  what = "napi_queue_async_work";
  if (napi_queue_async_work(env, j->work) != napi_ok) goto fail;
  return promise;

fail:
  /* Throw first, while the last error info still describes the failed call. */
  ebsd_throw_napi(env, what);
  if (j->deferred != NULL) {
    /* The promise exists but will not be returned: settle it with the same error. */
    napi_value exc;
    if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) {
      napi_status s1 = napi_reject_deferred(env, j->deferred, exc);
      napi_status s2 = napi_throw(env, exc);
      (void)s1, (void)s2; /* nothing further to report to */
    }
  }
  /* Cleanup calls below are permitted with an exception pending (no JS runs). */
  if (j->work != NULL) { napi_status s = napi_delete_async_work(env, j->work); (void)s; }
  if (j->buf_ref != NULL) { napi_status s = napi_delete_reference(env, j->buf_ref); (void)s; }
  if (j->ctx_ref != NULL) { napi_status s = napi_delete_reference(env, j->ctx_ref); (void)s; }
  pool_give(a.ctx, enc, j->evp);
  a.ctx->inflight--;
  free(j);
  return NULL;
}

static napi_value encrypt_async(napi_env env, napi_callback_info info) { return run_async(env, info, 1); }
static napi_value decrypt_async(napi_env env, napi_callback_info info) { return run_async(env, info, 0); }

napi_status ebsd_init_xts(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"createContext", NULL, create_context, NULL, NULL, NULL, napi_enumerable, NULL},
      {"destroyContext", NULL, destroy_context, NULL, NULL, NULL, napi_enumerable, NULL},
      {"encryptSync", NULL, encrypt_sync, NULL, NULL, NULL, napi_enumerable, NULL},
      {"decryptSync", NULL, decrypt_sync, NULL, NULL, NULL, napi_enumerable, NULL},
      {"encrypt", NULL, encrypt_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"decrypt", NULL, decrypt_async, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
