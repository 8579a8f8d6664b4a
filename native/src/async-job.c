/*
 * The promise plumbing of async-job.h: create the async work and the promise,
 * queue the work, and on completion settle the promise with what the job's
 * done callback reports. Every napi_status is checked (docs/architecture.md
 * §11.13).
 */
#include "async-job.h"

#include <stddef.h>

static void job_execute(napi_env env, void *data) {
  ebsd_async_job *job = (ebsd_async_job *)data;
  job->execute(job);
}

static void job_complete(napi_env env, napi_status status, void *data) {
  ebsd_async_job *job = (ebsd_async_job *)data;
  /* done frees the job: keep what is needed after it. */
  napi_async_work work = job->work;
  napi_deferred deferred = job->deferred;
  napi_value error = NULL;
  if (job->done(env, status, job, &error) == 0) {
    napi_value result;
    NAPI_CALL_GOTO(env, napi_get_undefined(env, &result), cleanup);
    NAPI_CALL_GOTO(env, napi_resolve_deferred(env, deferred, result), cleanup);
  } else if (error != NULL) {
    NAPI_CALL_GOTO(env, napi_reject_deferred(env, deferred, error), cleanup);
  }
cleanup:
  NAPI_CALL_GOTO(env, napi_delete_async_work(env, work), out);
out:
  return;
}

napi_value ebsd_async_job_queue(napi_env env, const char *name, ebsd_async_job *job) {
  napi_value promise = NULL, resource;
  const char *what;
  job->work = NULL;
  job->deferred = NULL;
  what = "napi_create_string_utf8";
  if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource) != napi_ok) goto fail;
  what = "napi_create_async_work";
  if (napi_create_async_work(env, NULL, resource, job_execute, job_complete, job, &job->work) != napi_ok) goto fail;
  what = "napi_create_promise";
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok) goto fail;
  what = "napi_queue_async_work";
  if (napi_queue_async_work(env, job->work) != napi_ok) goto fail;
  return promise;

fail:
  /* Throw first, while the last error info still describes the failed call. */
  ebsd_throw_napi(env, what);
  if (job->deferred != NULL) {
    /* The promise exists but will not be returned: settle it with the same error. */
    napi_value exc;
    if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) {
      napi_status s1 = napi_reject_deferred(env, job->deferred, exc);
      napi_status s2 = napi_throw(env, exc);
      (void)s1, (void)s2; /* nothing further to report to */
    }
  }
  /* Permitted with an exception pending (no JS runs). */
  if (job->work != NULL) { napi_status s = napi_delete_async_work(env, job->work); (void)s; }
  return NULL;
}
