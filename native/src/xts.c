/*
 * Batch AES-256-XTS (IEEE 1619-2018) over a run of data units, in place, on
 * libgcrypt (GCRY_CIPHER_AES256 in GCRY_CIPHER_MODE_XTS).
 *
 * A run is len/unit consecutive data units; unit i is processed with the
 * tweak firstTweak + i*step, stored as a little-endian u64 in a 16-byte
 * block, the upper 8 bytes zero (dm-crypt plain64; IEEE 1619-2018 §5.1 takes
 * the data unit sequence number little-endian).
 *
 * Why libgcrypt rather than node's own OpenSSL. Both are well kept and both
 * are among cryptsetup's crypto backends. On the CPUs here (VAES, AVX2,
 * AVX-512) OpenSSL 3.0 (node 20's, and Debian 12's) runs XTS on 128-bit
 * AES-NI, while libgcrypt 1.10 has a VAES/AVX2 XTS path: 128 KiB in 4096-byte
 * units takes about 22 µs here against 43 µs (docs/perf-notes.md §8). On the
 * FUSE data path that cipher time is on the event loop, per request.
 *
 * Context lifetime. createContext(key) opens and keys one handle for the sync
 * calls (JS thread only). A handle is not safe to share between threads and
 * libgcrypt has no handle copy, so each async run takes a handle of its own:
 * popped from a small free list, or opened and keyed from the context's copy
 * of the key. The free list is only touched on the JS thread (in the call and
 * in the complete callback), so it needs no lock; the worker thread touches
 * only the handle it was handed. One XTS handle serves both directions.
 *
 * Key material. The context holds the 64-byte key (to key handles for async
 * runs) and the handles hold libgcrypt's key schedules. destroyContext()
 * closes every idle handle (gcry_cipher_close wipes a handle's memory before
 * freeing it) and wipes the key copy at once; handles still lent to running
 * async work are closed when that work completes. The GC finalizer does the
 * same for contexts nobody destroyed. keyWiped(ctx) lets a test check the
 * copy. Memory is ordinary (not mlocked), as the key's JS buffer is.
 */
#include "async-job.h"

#include <gcrypt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XTS_KEY_LEN 64
#define XTS_POOL_MAX 8
#define XTS_MAX_UNIT (1u << 20)

/* Distinguishes our externals from any other napi_external (NAPI 8 type tags). */
static const napi_type_tag XTS_CTX_TAG = {0x6562736478747331ULL, 0x8b1d3c7e5a4f2901ULL};

typedef struct {
  gcry_cipher_hd_t sync;                   /* the sync calls' handle */
  gcry_cipher_hd_t pool[XTS_POOL_MAX];     /* idle handles for async runs */
  int npool;
  unsigned inflight;                       /* async runs holding a handle */
  int destroyed;                           /* destroyContext() or finalizer ran */
  int finalized;                           /* the JS external is gone */
  uint8_t key[XTS_KEY_LEN];                /* keys the handles of async runs */
} xts_ctx;

typedef struct {
  ebsd_async_job job;                      /* first: the job is the xts_job */
  xts_ctx *ctx;
  gcry_cipher_hd_t hd;
  uint8_t *data;
  size_t len;
  uint64_t tweak;
  size_t unit;
  uint64_t step;
  int enc;
  gcry_error_t err;
  napi_ref buf_ref;
  napi_ref ctx_ref;
} xts_job;

/* ---- libgcrypt ------------------------------------------------------------ */

static pthread_once_t gcry_once = PTHREAD_ONCE_INIT;
static const char *gcry_version; /* NULL: the runtime library is older than our header */

/* libgcrypt must be initialised once per process before any other call. Nothing
   else in node uses it; secure memory stays off (see "Key material"). */
static void gcry_init_once(void) {
  gcry_version = gcry_check_version(GCRYPT_VERSION);
  if (gcry_version == NULL) return;
  gcry_control(GCRYCTL_DISABLE_SECMEM, 0);
  gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
}

const char *ebsd_cipher_library(void) {
  pthread_once(&gcry_once, gcry_init_once);
  return gcry_version;
}

static void store_le64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static gcry_error_t handle_open(const uint8_t *key, gcry_cipher_hd_t *out) {
  gcry_cipher_hd_t h = NULL;
  gcry_error_t err = gcry_cipher_open(&h, GCRY_CIPHER_AES256, GCRY_CIPHER_MODE_XTS, 0);
  if (!err) err = gcry_cipher_setkey(h, key, XTS_KEY_LEN);
  if (err) {
    gcry_cipher_close(h); /* accepts NULL */
    return err;
  }
  *out = h;
  return 0;
}

/* The whole run on one handle. Thread-agnostic: no N-API in here. */
static gcry_error_t xts_run(gcry_cipher_hd_t h, int enc, uint8_t *data, size_t len, uint64_t tweak,
                            size_t unit, uint64_t step) {
  uint8_t iv[16];
  memset(iv, 0, sizeof iv);
  for (size_t off = 0; off < len; off += unit, tweak += step) {
    store_le64(iv, tweak);
    gcry_error_t err = gcry_cipher_setiv(h, iv, sizeof iv);
    if (!err) err = enc ? gcry_cipher_encrypt(h, data + off, unit, NULL, 0) : gcry_cipher_decrypt(h, data + off, unit, NULL, 0);
    if (err) return err;
  }
  return 0;
}

/* The handles and the key copy, gone at once; the struct stays for in-flight work. */
static void release_key(xts_ctx *x) {
  gcry_cipher_close(x->sync);
  x->sync = NULL;
  for (int i = 0; i < x->npool; i++) gcry_cipher_close(x->pool[i]);
  x->npool = 0;
  explicit_bzero(x->key, sizeof x->key);
}

static void ctx_free(xts_ctx *x) {
  explicit_bzero(x, sizeof *x);
  free(x);
}

static void ctx_finalize(napi_env env, void *data, void *hint) {
  xts_ctx *x = (xts_ctx *)data;
  release_key(x);
  x->destroyed = 1;
  x->finalized = 1;
  if (x->inflight == 0) ctx_free(x);
}

/* "AES-256-XTS encrypt failed: <libgcrypt's reason>" */
static void cipher_message(char *msg, size_t n, const char *what, gcry_error_t err) {
  snprintf(msg, n, "AES-256-XTS %s failed: %s", what, gcry_strerror(err));
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
  if (!ebsd_get_u8(env, argv[1], "data", 0, &a->data, &a->len)) return 0;
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

/* Whether K1 = K2, in time independent of where they differ. */
static int halves_equal(const uint8_t *key) {
  uint8_t diff = 0;
  for (int i = 0; i < XTS_KEY_LEN / 2; i++) diff |= (uint8_t)(key[i] ^ key[i + XTS_KEY_LEN / 2]);
  return diff == 0;
}

static napi_value create_context(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  char msg[160];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return ebsd_throw(env, "ERR_ARG_TYPE", "key must be a Uint8Array or Buffer");
  uint8_t *key;
  size_t klen;
  if (!ebsd_get_u8(env, argv[0], "key", 0, &key, &klen)) return NULL;
  if (klen != XTS_KEY_LEN) return ebsd_throw(env, "XTS_BAD_KEY_LENGTH", "key must be 64 bytes (K1 || K2)");
  /* IEEE 1619-2018 §5.1 / SP 800-38E: K1 and K2 must differ. */
  if (halves_equal(key)) return ebsd_throw(env, "XTS_WEAK_KEY", "key halves K1 and K2 must differ");
  if (ebsd_cipher_library() == NULL)
    return ebsd_throw(env, "XTS_CIPHER", "libgcrypt at run time is older than the " GCRYPT_VERSION " the addon was built with");

  xts_ctx *x = (xts_ctx *)calloc(1, sizeof *x);
  if (x == NULL) return ebsd_throw(env, "ERR_NO_MEMORY", "out of memory");
  gcry_error_t err = handle_open(key, &x->sync);
  if (err) {
    ctx_free(x);
    cipher_message(msg, sizeof msg, "key set-up", err);
    return ebsd_throw(env, "XTS_CIPHER", msg);
  }
  memcpy(x->key, key, XTS_KEY_LEN);
  napi_value ext;
  napi_status st = napi_create_external(env, x, ctx_finalize, NULL, &ext);
  if (st != napi_ok) {
    release_key(x);
    ctx_free(x);
    ebsd_throw_napi(env, "napi_create_external");
    return NULL;
  }
  /* From here the finalizer owns x. */
  NAPI_CALL(env, napi_type_tag_object(env, ext, &XTS_CTX_TAG));
  return ext;
}

/* The one argument of destroyContext / keyWiped: a context. 0 (thrown) if it is not one. */
static int only_ctx_arg(napi_env env, napi_callback_info info, xts_ctx **x) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) { ebsd_throw_napi(env, "napi_get_cb_info"); return 0; }
  if (argc < 1) { ebsd_throw(env, "ERR_ARG_TYPE", "ctx must be a context from createContext()"); return 0; }
  return get_ctx(env, argv[0], x);
}

static napi_value destroy_context(napi_env env, napi_callback_info info) {
  xts_ctx *x;
  if (!only_ctx_arg(env, info, &x)) return NULL;
  release_key(x);
  x->destroyed = 1;
  napi_value undef;
  NAPI_CALL(env, napi_get_undefined(env, &undef));
  return undef;
}

/* For tests: whether the context's key copy is all zero (true once destroyed). */
static napi_value key_wiped(napi_env env, napi_callback_info info) {
  xts_ctx *x;
  if (!only_ctx_arg(env, info, &x)) return NULL;
  uint8_t any = 0;
  for (int i = 0; i < XTS_KEY_LEN; i++) any |= x->key[i];
  napi_value r;
  NAPI_CALL(env, napi_get_boolean(env, any == 0 && x->sync == NULL && x->npool == 0, &r));
  return r;
}

/* ---- sync ---------------------------------------------------------------- */

static napi_value run_sync(napi_env env, napi_callback_info info, int enc) {
  run_args a;
  char msg[160];
  if (!parse_run(env, info, &a)) return NULL;
  gcry_error_t err = xts_run(a.ctx->sync, enc, a.data, a.len, a.tweak, a.unit, a.step);
  if (err) {
    cipher_message(msg, sizeof msg, enc ? "encrypt" : "decrypt", err);
    return ebsd_throw(env, "XTS_CIPHER", msg);
  }
  napi_value undef;
  NAPI_CALL(env, napi_get_undefined(env, &undef));
  return undef;
}

static napi_value encrypt_sync(napi_env env, napi_callback_info info) { return run_sync(env, info, 1); }
static napi_value decrypt_sync(napi_env env, napi_callback_info info) { return run_sync(env, info, 0); }

/* ---- async (libuv thread pool) ------------------------------------------- */

static gcry_error_t pool_take(xts_ctx *x, gcry_cipher_hd_t *out) {
  if (x->npool > 0) {
    *out = x->pool[--x->npool];
    return 0;
  }
  return handle_open(x->key, out);
}

static void pool_give(xts_ctx *x, gcry_cipher_hd_t h) {
  if (!x->destroyed && x->npool < XTS_POOL_MAX) x->pool[x->npool++] = h;
  else gcry_cipher_close(h);
}

static void job_execute(ebsd_async_job *job) {
  xts_job *j = (xts_job *)job;
  j->err = xts_run(j->hd, j->enc, j->data, j->len, j->tweak, j->unit, j->step);
}

static int job_done(napi_env env, napi_status status, ebsd_async_job *job, napi_value *error) {
  xts_job *j = (xts_job *)job;
  xts_ctx *x = j->ctx;
  char msg[160];
  pool_give(x, j->hd);
  j->hd = NULL;
  x->inflight--;
  if (x->finalized && x->inflight == 0) ctx_free(x);

  int failed = status != napi_ok || j->err;
  if (failed) {
    if (status == napi_cancelled) snprintf(msg, sizeof msg, "async XTS run was cancelled");
    else if (status != napi_ok) snprintf(msg, sizeof msg, "async XTS run failed (napi_status %d)", (int)status);
    else cipher_message(msg, sizeof msg, j->enc ? "encrypt" : "decrypt", j->err);
    *error = ebsd_make_error(env, status == napi_cancelled ? "XTS_CANCELLED" : "XTS_CIPHER", msg);
    if (*error == NULL) ebsd_throw_napi(env, "ebsd_make_error");
  }
  /* Release the buffer and the context only now: the worker is done with both. */
  if (j->buf_ref != NULL) NAPI_CALL_GOTO(env, napi_delete_reference(env, j->buf_ref), out2);
out2:
  if (j->ctx_ref != NULL) NAPI_CALL_GOTO(env, napi_delete_reference(env, j->ctx_ref), out3);
out3:
  free(j);
  return failed;
}

static napi_value run_async(napi_env env, napi_callback_info info, int enc) {
  run_args a;
  char msg[160];
  if (!parse_run(env, info, &a)) return NULL;
  xts_job *j = (xts_job *)calloc(1, sizeof *j);
  if (j == NULL) return ebsd_throw(env, "ERR_NO_MEMORY", "out of memory");
  j->job.execute = job_execute;
  j->job.done = job_done;
  j->ctx = a.ctx;
  j->data = a.data;
  j->len = a.len;
  j->tweak = a.tweak;
  j->unit = a.unit;
  j->step = a.step;
  j->enc = enc;
  gcry_error_t err = pool_take(a.ctx, &j->hd);
  if (err) {
    free(j);
    cipher_message(msg, sizeof msg, "key set-up", err);
    return ebsd_throw(env, "XTS_CIPHER", msg);
  }
  a.ctx->inflight++;

  napi_value promise = NULL;
  /* Keep the data buffer and the context alive until job_done. */
  if (napi_create_reference(env, a.buf_val, 1, &j->buf_ref) != napi_ok) { ebsd_throw_napi(env, "napi_create_reference(data)"); goto fail; }
  if (napi_create_reference(env, a.ctx_val, 1, &j->ctx_ref) != napi_ok) { ebsd_throw_napi(env, "napi_create_reference(ctx)"); goto fail; }
  promise = ebsd_async_job_queue(env, "ebsd:xts", &j->job);
  if (promise != NULL) return promise;

fail:
  /* An exception is pending; these calls are permitted with one (no JS runs). */
  if (j->buf_ref != NULL) { napi_status s = napi_delete_reference(env, j->buf_ref); (void)s; }
  if (j->ctx_ref != NULL) { napi_status s = napi_delete_reference(env, j->ctx_ref); (void)s; }
  pool_give(a.ctx, j->hd);
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
      {"keyWiped", NULL, key_wiped, NULL, NULL, NULL, napi_enumerable, NULL},
      {"encryptSync", NULL, encrypt_sync, NULL, NULL, NULL, napi_enumerable, NULL},
      {"decryptSync", NULL, decrypt_sync, NULL, NULL, NULL, napi_enumerable, NULL},
      {"encrypt", NULL, encrypt_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"decrypt", NULL, decrypt_async, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
