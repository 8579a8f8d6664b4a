/*
 * peerCred(fd) -> { pid, uid, gid } of the process at the other end of a
 * connected AF_UNIX socket, via getsockopt(SO_PEERCRED) (Linux socket(7)).
 * The daemon identifies control-socket callers by this uid (docs/architecture.md §5.1).
 */
#include "ebsd_native.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

static napi_value peer_cred(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  napi_valuetype t;
  if (argc < 1) return ebsd_throw(env, "ERR_ARG_TYPE", "fd must be a non-negative integer");
  NAPI_CALL(env, napi_typeof(env, argv[0], &t));
  if (t != napi_number) return ebsd_throw(env, "ERR_ARG_TYPE", "fd must be a non-negative integer");
  int32_t fd;
  NAPI_CALL(env, napi_get_value_int32(env, argv[0], &fd));
  if (fd < 0) return ebsd_throw(env, "ERR_ARG_RANGE", "fd must be a non-negative integer");

  struct ucred cred;
  socklen_t len = sizeof cred;
  memset(&cred, 0, sizeof cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    int e = errno;
    char msg[160];
    snprintf(msg, sizeof msg, "getsockopt(SO_PEERCRED) on fd %d failed: %s", (int)fd, strerror(e));
    napi_value err = ebsd_make_error(env, "ERR_PEERCRED", msg);
    if (err == NULL) { ebsd_throw_napi(env, "ebsd_make_error"); return NULL; }
    napi_value jerrno, jsys;
    NAPI_CALL(env, napi_create_int32(env, e, &jerrno));
    NAPI_CALL(env, napi_set_named_property(env, err, "errno", jerrno));
    NAPI_CALL(env, napi_create_string_utf8(env, "getsockopt", NAPI_AUTO_LENGTH, &jsys));
    NAPI_CALL(env, napi_set_named_property(env, err, "syscall", jsys));
    NAPI_CALL(env, napi_throw(env, err));
    return NULL;
  }
  napi_value out, pid, uid, gid;
  NAPI_CALL(env, napi_create_object(env, &out));
  NAPI_CALL(env, napi_create_int64(env, (int64_t)cred.pid, &pid));
  NAPI_CALL(env, napi_create_uint32(env, (uint32_t)cred.uid, &uid));
  NAPI_CALL(env, napi_create_uint32(env, (uint32_t)cred.gid, &gid));
  NAPI_CALL(env, napi_set_named_property(env, out, "pid", pid));
  NAPI_CALL(env, napi_set_named_property(env, out, "uid", uid));
  NAPI_CALL(env, napi_set_named_property(env, out, "gid", gid));
  return out;
}

napi_status ebsd_init_peercred(napi_env env, napi_value exports) {
  napi_value fn;
  napi_status st = napi_create_function(env, "peerCred", NAPI_AUTO_LENGTH, peer_cred, NULL, &fn);
  if (st != napi_ok) return st;
  return napi_set_named_property(env, exports, "peerCred", fn);
}
