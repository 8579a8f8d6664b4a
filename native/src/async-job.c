/*
 * The promise plumbing of async-job.h: create the async work and the promise,
 * queue the work, and on completion settle the promise with what the job's
 * done callback reports. Every napi_status is checked (docs/architecture.md
 * §11.13).
 */
#include "async-job.h"

#include <stdbool.h>
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
  int failed = job->done(env, status, job, &error);
  /*
   * An exception done left pending (building or decorating its Error failed) is
   * cleared here, or no settle call below could run: the promise rejects with
   * done's Error if it made one, else with what was thrown. It never stays
   * unsettled.
   */
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
    napi_value thrown;
    if (napi_get_and_clear_last_exception(env, &thrown) == napi_ok && error == NULL) error = thrown;
    failed = 1;
  }
  if (!failed) {
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
    /*
     * The promise exists but will not be returned, so nobody can handle it: resolve
     * it (a rejection would be an unhandled rejection, which ends the process) to
     * release its reference; the caller gets the thrown error.
     */
    napi_value exc, undef;
    if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) {
      napi_status s1 = napi_get_undefined(env, &undef);
      napi_status s2 = s1 == napi_ok ? napi_resolve_deferred(env, job->deferred, undef) : s1;
      napi_status s3 = napi_throw(env, exc);
      (void)s2, (void)s3; /* nothing further to report to */
    }
  }
  /* Permitted with an exception pending (no JS runs). */
  if (job->work != NULL) { napi_status s = napi_delete_async_work(env, job->work); (void)s; }
  return NULL;
}
