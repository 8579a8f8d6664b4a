/*
 * A promise settled by work on the libuv pool: the napi_async_work and
 * napi_deferred plumbing shared by the addon's asynchronous calls (xts.c's
 * encrypt/decrypt, writeback.c's startWriteback).
 *
 * A job struct embeds an ebsd_async_job, sets execute and done, and hands it
 * to ebsd_async_job_queue, which returns the promise. The promise resolves to
 * undefined or rejects with the Error that done builds.
 */
#ifndef EBSD_ASYNC_JOB_H
#define EBSD_ASYNC_JOB_H

#include "ebsd_native.h"

typedef struct ebsd_async_job ebsd_async_job;

struct ebsd_async_job {
  /* On a pool thread: the work itself. No N-API calls. */
  void (*execute)(ebsd_async_job *job);
  /*
   * On the JS thread, once, after execute (status napi_ok) or instead of it
   * (napi_cancelled, or another failure status). Releases everything the job
   * holds, the job itself included, and returns 0 to resolve the promise or
   * nonzero to reject it with *error. An exception left pending (building
   * the Error failed) is cleared and the promise rejects with *error if set,
   * else with the exception: it is always settled.
   */
  int (*done)(napi_env env, napi_status status, ebsd_async_job *job, napi_value *error);
  /* Owned by async-job.c. */
  napi_async_work work;
  napi_deferred deferred;
};

/*
 * Queues the job on the libuv pool as async resource `name` and returns its
 * promise. On failure it throws (a promise already made, which nobody can
 * see, is resolved to release it), returns NULL, and the job is the caller's
 * again to release: done is never called for it.
 */
napi_value ebsd_async_job_queue(napi_env env, const char *name, ebsd_async_job *job);

#endif
