/*
 * flockExclusive(fd) -> true when this open file description now holds an
 * exclusive flock(2) lock, false when another one holds it (EWOULDBLOCK).
 * Non-blocking (LOCK_EX | LOCK_NB). The kernel drops the lock when the last
 * descriptor of the open file description closes, so a daemon that dies by
 * SIGKILL leaves nothing to clean up (Linux flock(2)). The daemon holds one
 * for its whole life on <state-dir>/ebsd.lock (docs/format.md "State dir").
 */
#include "ebsd_native.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>

static napi_value flock_exclusive(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return ebsd_throw(env, "ERR_ARG_TYPE", "fd must be a non-negative integer");
  int64_t fd;
  if (!ebsd_get_int(env, argv[0], "fd", 0, INT32_MAX, &fd)) return NULL;

  int rc;
  do {
    rc = flock((int)fd, LOCK_EX | LOCK_NB);
  } while (rc != 0 && errno == EINTR);
  napi_value out;
  if (rc == 0) {
    NAPI_CALL(env, napi_get_boolean(env, true, &out));
    return out;
  }
  int e = errno;
  if (e == EWOULDBLOCK) {
    NAPI_CALL(env, napi_get_boolean(env, false, &out));
    return out;
  }
  char msg[160];
  snprintf(msg, sizeof msg, "flock(LOCK_EX|LOCK_NB) on fd %d failed: %s", (int)fd, strerror(e));
  napi_value err = ebsd_make_error(env, "ERR_FLOCK", msg);
  if (err == NULL) { ebsd_throw_napi(env, "ebsd_make_error"); return NULL; }
  napi_value jerrno, jsys;
  NAPI_CALL(env, napi_create_int32(env, e, &jerrno));
  NAPI_CALL(env, napi_set_named_property(env, err, "errno", jerrno));
  NAPI_CALL(env, napi_create_string_utf8(env, "flock", NAPI_AUTO_LENGTH, &jsys));
  NAPI_CALL(env, napi_set_named_property(env, err, "syscall", jsys));
  NAPI_CALL(env, napi_throw(env, err));
  return NULL;
}

napi_status ebsd_init_flock(napi_env env, napi_value exports) {
  napi_value fn;
  napi_status st = napi_create_function(env, "flockExclusive", NAPI_AUTO_LENGTH, flock_exclusive, NULL, &fn);
  if (st != napi_ok) return st;
  return napi_set_named_property(env, exports, "flockExclusive", fn);
}
