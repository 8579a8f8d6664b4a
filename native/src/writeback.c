/*
 * Early writeback for a file written once, front to back, and made durable at
 * the end (a volume restored from a snapshot, docs/architecture.md §14.4).
 *
 * startWriteback(fd, pos, len) runs sync_file_range(2) with
 * SYNC_FILE_RANGE_WRITE on the libuv pool and returns a promise: the kernel
 * starts writing the range's dirty pages to the device and the call returns
 * without waiting for them. It is no durability promise (no metadata, no
 * device cache flush: the final fdatasync still does that); it only moves the
 * disk's work from the end of the restore to the time the CPU stages run, so
 * the final fdatasync finds little left to write. On the pool, not the event
 * loop: the call can block while the device's request queue is full.
 *
 * A failure rejects with an Error whose code is the errno name, errno and
 * syscall, like node:fs. Offsets are doubles (docs/architecture.md §11.13).
 */
#include "ebsd_native.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SAFE_INT 9007199254740991LL

typedef struct {
  int fd;
  off_t pos;
  off_t len;
  int err;
  napi_deferred deferred;
  napi_async_work work;
} wb_job;

static void wb_execute(napi_env env, void *data) {
  wb_job *j = (wb_job *)data;
  int r;
  do r = sync_file_range(j->fd, j->pos, j->len, SYNC_FILE_RANGE_WRITE); while (r < 0 && errno == EINTR);
  j->err = r < 0 ? errno : 0;
}

static void wb_complete(napi_env env, napi_status status, void *data) {
  wb_job *j = (wb_job *)data;
  napi_value result = NULL;
  if (status == napi_ok && j->err == 0) {
    NAPI_CALL_GOTO(env, napi_get_undefined(env, &result), cleanup);
    NAPI_CALL_GOTO(env, napi_resolve_deferred(env, j->deferred, result), cleanup);
  } else {
    int err = status == napi_ok ? j->err : ECANCELED;
    const char *code = err == EBADF ? "EBADF" : err == EINVAL ? "EINVAL" : err == EIO ? "EIO" : err == ENOMEM ? "ENOMEM"
                     : err == ENOSPC ? "ENOSPC" : err == ESPIPE ? "ESPIPE" : err == ECANCELED ? "ECANCELED" : "EUNKNOWN";
    char msg[160];
    snprintf(msg, sizeof msg, "%s: %s, sync_file_range", code, strerror(err));
    result = ebsd_make_error(env, code, msg);
    if (result == NULL) { ebsd_throw_napi(env, "ebsd_make_error"); goto cleanup; }
    napi_value jerr, jsys;
    NAPI_CALL_GOTO(env, napi_create_int32(env, -err, &jerr), reject);
    NAPI_CALL_GOTO(env, napi_set_named_property(env, result, "errno", jerr), reject);
    NAPI_CALL_GOTO(env, napi_create_string_utf8(env, "sync_file_range", NAPI_AUTO_LENGTH, &jsys), reject);
    NAPI_CALL_GOTO(env, napi_set_named_property(env, result, "syscall", jsys), reject);
  reject:
    NAPI_CALL_GOTO(env, napi_reject_deferred(env, j->deferred, result), cleanup);
  }
cleanup:
  NAPI_CALL_GOTO(env, napi_delete_async_work(env, j->work), out);
out:
  free(j);
}

static napi_value start_writeback(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3) return ebsd_throw(env, "ERR_ARG_TYPE", "expected (fd, pos, len)");
  int64_t fd, pos, len;
  if (!ebsd_get_int(env, argv[0], "fd", 0, 2147483647LL, &fd)) return NULL;
  if (!ebsd_get_int(env, argv[1], "pos", 0, MAX_SAFE_INT, &pos)) return NULL;
  if (!ebsd_get_int(env, argv[2], "len", 0, MAX_SAFE_INT - pos, &len)) return NULL;
  wb_job *j = (wb_job *)calloc(1, sizeof *j);
  if (j == NULL) return ebsd_throw(env, "ERR_NO_MEMORY", "out of memory");
  j->fd = (int)fd;
  j->pos = (off_t)pos;
  j->len = (off_t)len;
  napi_value promise = NULL, name;
  const char *what = "napi_create_string_utf8";
  if (napi_create_string_utf8(env, "ebsd:writeback", NAPI_AUTO_LENGTH, &name) != napi_ok) goto fail;
  what = "napi_create_async_work";
  if (napi_create_async_work(env, NULL, name, wb_execute, wb_complete, j, &j->work) != napi_ok) goto fail;
  what = "napi_create_promise";
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok) goto fail;
  what = "napi_queue_async_work";
  if (napi_queue_async_work(env, j->work) != napi_ok) goto fail;
  return promise;
fail:
  ebsd_throw_napi(env, what);
  if (j->deferred != NULL) {
    /* The promise exists but will not be returned: settle it with the same error. */
    napi_value exc;
    if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) {
      napi_status s1 = napi_reject_deferred(env, j->deferred, exc);
      napi_status s2 = napi_throw(env, exc);
      (void)s1, (void)s2;
    }
  }
  if (j->work != NULL) { napi_status s = napi_delete_async_work(env, j->work); (void)s; }
  free(j);
  return NULL;
}

napi_status ebsd_init_writeback(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"startWriteback", NULL, start_writeback, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
