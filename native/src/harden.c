/*
 * Process hardening for the daemon (docs/architecture.md §5.10).
 *
 * disableCoreDumps() -> { coreLimit: 0, dumpable: 0 }
 *   setrlimit(RLIMIT_CORE, {0, 0}), then prctl(PR_SET_DUMPABLE, 0): no core
 *   file whatever the signal, and no ptrace attach or /proc/<pid>/{mem,environ,
 *   maps,fd} by another process of the same uid, only with CAP_SYS_PTRACE
 *   (prctl(2), PR_SET_DUMPABLE; proc(5), /proc/pid). Both read back, so the
 *   caller logs what the kernel holds, not what was asked. Throws (code
 *   ERR_HARDEN, errno, syscall) when either call fails.
 *
 * setIoFlusher() -> { ioFlusher: 0 | 1, errno: 0 | e }
 *   prctl(PR_SET_IO_FLUSHER, 1) on the calling thread (Linux >= 5.6, needs
 *   CAP_SYS_RESOURCE), read back with PR_GET_IO_FLUSHER. The flag
 *   (PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE) is per thread and inherited by the
 *   threads it creates afterwards. `errno` is why it was refused (EPERM: no
 *   CAP_SYS_RESOURCE; EINVAL: kernel older than 5.6); never throws for that.
 *
 * setIoFlusherOnPool(n) -> Promise<{ threads, errno }>
 *   The same on the libuv pool's threads, which an ES module entry has started
 *   before any of our code runs: n jobs, each sets the flag on the pool thread
 *   running it and then waits (5 s at most) until all n are running, so n jobs
 *   occupy n distinct threads. `threads`: distinct pool threads on which the
 *   flag now holds; `errno`: the first refusal, or 0.
 *
 * scrubEnv(name) -> boolean
 *   Overwrite the value of environment variable `name` with zero bytes in
 *   place, then unsetenv(3) it: the string getenv(3) points at is the one the
 *   kernel copied onto the stack at execve (or setenv's copy), which unsetenv
 *   alone leaves in memory and in /proc/<pid>/environ. False when unset.
 */
#include "ebsd_native.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* <linux/prctl.h> of older build hosts lacks them; the values are ABI. */
#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif
#ifndef PR_GET_IO_FLUSHER
#define PR_GET_IO_FLUSHER 58
#endif

static napi_value throw_errno(napi_env env, const char *syscall, int e) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s failed: %s", syscall, strerror(e));
  napi_value err = ebsd_make_error(env, "ERR_HARDEN", msg);
  if (err == NULL) { ebsd_throw_napi(env, "ebsd_make_error"); return NULL; }
  napi_value jerrno, jsys;
  NAPI_CALL(env, napi_create_int32(env, e, &jerrno));
  NAPI_CALL(env, napi_set_named_property(env, err, "errno", jerrno));
  NAPI_CALL(env, napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &jsys));
  NAPI_CALL(env, napi_set_named_property(env, err, "syscall", jsys));
  NAPI_CALL(env, napi_throw(env, err));
  return NULL;
}

static napi_value disable_core_dumps(napi_env env, napi_callback_info info) {
  struct rlimit none = { 0, 0 };
  if (setrlimit(RLIMIT_CORE, &none) != 0) return throw_errno(env, "setrlimit(RLIMIT_CORE, 0)", errno);
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return throw_errno(env, "prctl(PR_SET_DUMPABLE, 0)", errno);
  struct rlimit now;
  if (getrlimit(RLIMIT_CORE, &now) != 0) return throw_errno(env, "getrlimit(RLIMIT_CORE)", errno);
  int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
  if (dumpable < 0) return throw_errno(env, "prctl(PR_GET_DUMPABLE)", errno);

  napi_value out, limit, dump;
  NAPI_CALL(env, napi_create_object(env, &out));
  NAPI_CALL(env, napi_create_double(env, now.rlim_cur == RLIM_INFINITY ? -1.0 : (double)now.rlim_cur, &limit));
  NAPI_CALL(env, napi_create_int32(env, dumpable, &dump));
  NAPI_CALL(env, napi_set_named_property(env, out, "coreLimit", limit));
  NAPI_CALL(env, napi_set_named_property(env, out, "dumpable", dump));
  return out;
}

/* Set PR_SET_IO_FLUSHER on the calling thread: 0, or the errno that refused it. */
static int io_flusher_here(void) {
  if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0) return errno;
  int got = prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0);
  if (got < 0) return errno;
  return got == 1 ? 0 : EPERM;
}

static napi_value set_io_flusher(napi_env env, napi_callback_info info) {
  int e = io_flusher_here();
  int now = prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0);
  napi_value out, jset, jerr;
  NAPI_CALL(env, napi_create_object(env, &out));
  NAPI_CALL(env, napi_create_int32(env, now == 1 ? 1 : 0, &jset));
  NAPI_CALL(env, napi_create_int32(env, e, &jerr));
  NAPI_CALL(env, napi_set_named_property(env, out, "ioFlusher", jset));
  NAPI_CALL(env, napi_set_named_property(env, out, "errno", jerr));
  return out;
}

#define POOL_MAX 1024 /* libuv's MAX_THREADPOOL_SIZE */

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int n, arrived, completed, first_errno;
  pid_t set_tids[POOL_MAX]; /* threads on which the flag holds */
  int nset;
  napi_deferred deferred;
} pool_batch;

typedef struct {
  pool_batch *b;
  napi_async_work work;
} pool_job;

static void pool_execute(napi_env env, void *data) {
  pool_batch *b = ((pool_job *)data)->b;
  int e = io_flusher_here();
  pid_t tid = (pid_t)syscall(SYS_gettid);
  pthread_mutex_lock(&b->mu);
  if (e == 0) {
    int seen = 0;
    for (int i = 0; i < b->nset; i++) seen |= b->set_tids[i] == tid;
    if (!seen && b->nset < POOL_MAX) b->set_tids[b->nset++] = tid;
  } else if (b->first_errno == 0) {
    b->first_errno = e;
  }
  if (++b->arrived >= b->n) {
    pthread_cond_broadcast(&b->cv);
  } else {
    /* Hold this thread until all n jobs run, each on a thread of its own. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    while (b->arrived < b->n) {
      if (pthread_cond_timedwait(&b->cv, &b->mu, &until) == ETIMEDOUT) break;
    }
  }
  pthread_mutex_unlock(&b->mu);
}

static void pool_complete(napi_env env, napi_status status, void *data) {
  pool_job *job = (pool_job *)data;
  pool_batch *b = job->b;
  napi_async_work work = job->work;
  free(job);
  napi_delete_async_work(env, work);
  if (++b->completed < b->n) return;
  napi_value out, jn, je;
  if (napi_create_object(env, &out) != napi_ok ||
      napi_create_int32(env, b->nset, &jn) != napi_ok ||
      napi_create_int32(env, b->first_errno, &je) != napi_ok ||
      napi_set_named_property(env, out, "threads", jn) != napi_ok ||
      napi_set_named_property(env, out, "errno", je) != napi_ok) {
    napi_value msg, err;
    napi_create_string_utf8(env, "setIoFlusherOnPool: building the result failed", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, NULL, msg, &err);
    napi_reject_deferred(env, b->deferred, err);
  } else {
    napi_resolve_deferred(env, b->deferred, out);
  }
  pthread_cond_destroy(&b->cv);
  pthread_mutex_destroy(&b->mu);
  free(b);
}

static napi_value set_io_flusher_on_pool(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return ebsd_throw(env, "ERR_ARG_TYPE", "n must be a number");
  int64_t n;
  if (!ebsd_get_int(env, argv[0], "n", 1, POOL_MAX, &n)) return NULL;
  pool_batch *b = calloc(1, sizeof *b);
  if (b == NULL) return ebsd_throw(env, "ERR_NO_MEMORY", "setIoFlusherOnPool: out of memory");
  pthread_mutex_init(&b->mu, NULL);
  pthread_cond_init(&b->cv, NULL);
  b->n = (int)n;
  napi_value promise, name;
  if (napi_create_promise(env, &b->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "ebsd.setIoFlusherOnPool", NAPI_AUTO_LENGTH, &name) != napi_ok) {
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b); /* a promise made here is unreachable from JS: leaked, once, on a failing N-API */
    ebsd_throw_napi(env, "napi_create_promise");
    return NULL;
  }
  /* All n queued, or none: a batch short of jobs would hold its threads for the 5 s timeout. */
  pool_job *jobs[POOL_MAX];
  int made = 0;
  for (; made < b->n; made++) {
    pool_job *job = calloc(1, sizeof *job);
    if (job == NULL) break;
    job->b = b;
    if (napi_create_async_work(env, NULL, name, pool_execute, pool_complete, job, &job->work) != napi_ok) { free(job); break; }
    jobs[made] = job;
  }
  if (made < b->n) {
    for (int i = 0; i < made; i++) { napi_delete_async_work(env, jobs[i]->work); free(jobs[i]); }
    napi_value err, msg;
    NAPI_CALL(env, napi_create_string_utf8(env, "setIoFlusherOnPool: creating the jobs failed", NAPI_AUTO_LENGTH, &msg));
    NAPI_CALL(env, napi_create_error(env, NULL, msg, &err));
    NAPI_CALL(env, napi_reject_deferred(env, b->deferred, err));
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b);
    return promise;
  }
  for (int i = 0; i < b->n; i++) {
    if (napi_queue_async_work(env, jobs[i]->work) != napi_ok) {
      /* Cannot happen short of a broken env; the queued ones stop waiting after 5 s. */
      pthread_mutex_lock(&b->mu);
      b->n = i; /* the batch settles once the queued ones complete */
      pthread_cond_broadcast(&b->cv);
      pthread_mutex_unlock(&b->mu);
      for (int j = i; j < (int)n; j++) { napi_delete_async_work(env, jobs[j]->work); free(jobs[j]); }
      if (i == 0) {
        napi_value err, msg;
        NAPI_CALL(env, napi_create_string_utf8(env, "setIoFlusherOnPool: queueing failed", NAPI_AUTO_LENGTH, &msg));
        NAPI_CALL(env, napi_create_error(env, NULL, msg, &err));
        NAPI_CALL(env, napi_reject_deferred(env, b->deferred, err));
        pthread_cond_destroy(&b->cv);
        pthread_mutex_destroy(&b->mu);
        free(b);
      }
      break;
    }
  }
  return promise;
}

static napi_value scrub_env(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  napi_valuetype t = napi_undefined;
  if (argc >= 1) NAPI_CALL(env, napi_typeof(env, argv[0], &t));
  if (t != napi_string) return ebsd_throw(env, "ERR_ARG_TYPE", "name must be a string");
  char name[256];
  size_t len = 0;
  NAPI_CALL(env, napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len));
  if (len == 0 || len >= sizeof name - 1 || strchr(name, '=') != NULL) {
    return ebsd_throw(env, "ERR_ARG_RANGE", "name must be 1 to 254 bytes without '='");
  }
  char *v = getenv(name);
  napi_value out;
  if (v == NULL) {
    NAPI_CALL(env, napi_get_boolean(env, false, &out));
    return out;
  }
  /* explicit_bzero: a plain memset of memory nobody reads afterwards may be dropped by the compiler. */
  explicit_bzero(v, strlen(v));
  if (unsetenv(name) != 0) return throw_errno(env, "unsetenv", errno);
  NAPI_CALL(env, napi_get_boolean(env, true, &out));
  return out;
}

napi_status ebsd_init_harden(napi_env env, napi_value exports) {
  napi_value fn;
  napi_status st = napi_create_function(env, "disableCoreDumps", NAPI_AUTO_LENGTH, disable_core_dumps, NULL, &fn);
  if (st != napi_ok) return st;
  st = napi_set_named_property(env, exports, "disableCoreDumps", fn);
  if (st != napi_ok) return st;
  st = napi_create_function(env, "setIoFlusher", NAPI_AUTO_LENGTH, set_io_flusher, NULL, &fn);
  if (st != napi_ok) return st;
  st = napi_set_named_property(env, exports, "setIoFlusher", fn);
  if (st != napi_ok) return st;
  st = napi_create_function(env, "setIoFlusherOnPool", NAPI_AUTO_LENGTH, set_io_flusher_on_pool, NULL, &fn);
  if (st != napi_ok) return st;
  st = napi_set_named_property(env, exports, "setIoFlusherOnPool", fn);
  if (st != napi_ok) return st;
  st = napi_create_function(env, "scrubEnv", NAPI_AUTO_LENGTH, scrub_env, NULL, &fn);
  if (st != napi_ok) return st;
  return napi_set_named_property(env, exports, "scrubEnv", fn);
}
