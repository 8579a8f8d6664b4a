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
 * scrubEnv(name) -> boolean
 *   Overwrite the value of environment variable `name` with zero bytes in
 *   place, then unsetenv(3) it: the string getenv(3) points at is the one the
 *   kernel copied onto the stack at execve (or setenv's copy), which unsetenv
 *   alone leaves in memory and in /proc/<pid>/environ. False when unset.
 */
#include "ebsd_native.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

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
  st = napi_create_function(env, "scrubEnv", NAPI_AUTO_LENGTH, scrub_env, NULL, &fn);
  if (st != napi_ok) return st;
  return napi_set_named_property(env, exports, "scrubEnv", fn);
}
