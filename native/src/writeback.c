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
#include "async-job.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SAFE_INT 9007199254740991LL

typedef struct {
  ebsd_async_job job; /* first: the job is the wb_job */
  int fd;
  off_t pos;
  off_t len;
  int err;
} wb_job;

static void wb_execute(ebsd_async_job *job) {
  wb_job *j = (wb_job *)job;
  int r;
  do r = sync_file_range(j->fd, j->pos, j->len, SYNC_FILE_RANGE_WRITE); while (r < 0 && errno == EINTR);
  j->err = r < 0 ? errno : 0;
}

static int wb_done(napi_env env, napi_status status, ebsd_async_job *job, napi_value *error) {
  wb_job *j = (wb_job *)job;
  int err = status == napi_ok ? j->err : ECANCELED;
  free(j);
  if (err == 0) return 0;
  const char *code = err == EBADF ? "EBADF" : err == EINVAL ? "EINVAL" : err == EIO ? "EIO" : err == ENOMEM ? "ENOMEM"
                   : err == ENOSPC ? "ENOSPC" : err == ESPIPE ? "ESPIPE" : err == ECANCELED ? "ECANCELED" : "EUNKNOWN";
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s, sync_file_range", code, strerror(err));
  napi_value e = ebsd_make_error(env, code, msg);
  if (e == NULL) { ebsd_throw_napi(env, "ebsd_make_error"); return 1; }
  *error = e; /* rejected with, even if a property below cannot be set */
  napi_value jerr, jsys;
  NAPI_CALL_GOTO(env, napi_create_int32(env, -err, &jerr), out);
  NAPI_CALL_GOTO(env, napi_set_named_property(env, e, "errno", jerr), out);
  NAPI_CALL_GOTO(env, napi_create_string_utf8(env, "sync_file_range", NAPI_AUTO_LENGTH, &jsys), out);
  NAPI_CALL_GOTO(env, napi_set_named_property(env, e, "syscall", jsys), out);
out:
  return 1;
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
  j->job.execute = wb_execute;
  j->job.done = wb_done;
  j->fd = (int)fd;
  j->pos = (off_t)pos;
  j->len = (off_t)len;
  napi_value promise = ebsd_async_job_queue(env, "ebsd:writeback", &j->job);
  if (promise == NULL) free(j);
  return promise;
}

napi_status ebsd_init_writeback(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"startWriteback", NULL, start_writeback, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
