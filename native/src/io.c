/*
 * Non-blocking positioned I/O for the volume data path (docs/perf-notes.md §4).
 *
 * preadNowait(fd, buf, off, len, pos) is preadv2(2) with RWF_NOWAIT (Linux
 * 4.14+): it copies what the page cache already holds and never waits for
 * the disk. The daemon calls it on the event loop first and falls back to a
 * libuv pool read only when it returns -EAGAIN, so a page-cache hit costs one
 * memcpy instead of two thread hand-offs.
 *
 * pwriteNowait(fd, buf, off, len, pos) is pwritev2(2) with RWF_NOWAIT. Buffered
 * writes accept it on XFS and btrfs; ext4 answers EOPNOTSUPP (it cannot
 * promise not to block on buffered writes), and the caller then remembers that
 * the file does not support it.
 *
 * pwriteTimed(fd, buf, off, len, pos, stats) is a plain pwrite(2) that may
 * block (ext4 buffered writes: dirty throttling, journal, reclaim). It fills
 * stats (a Float64Array) with [0] the wall time in ns and [1] the voluntary
 * context switches of the calling thread during the call (getrusage
 * RUSAGE_THREAD): the watchdog that runs these on the event loop tells a
 * write that really slept in the kernel (>= 1 voluntary switch) from a thread
 * that was merely preempted on a busy machine (involuntary switches only).
 *
 * awaitLoopEvent(maxUs) busy-waits up to maxUs microseconds for the next
 * uv_async wake-up of the calling thread's event loop (a FUSE request handed
 * over by a libfuse thread, a pool job done): 1 if one arrived, 0 if one was
 * already pending (no wait), -1 if none came. The daemon calls it between two
 * requests of a sequential stream instead of letting the loop sleep in
 * epoll_wait, because waking a sleeping vCPU on these VMs costs more than the
 * gap (src/volume/native-io.ts, STREAM_POLL_US). It works on libuv's async
 * eventfd (loop->async_io_watcher.fd, one of uv.h's private fields): it is
 * exported only when, at load, the running libuv is the major.minor the addon
 * was built against and that fd is an eventfd (loop_event_fd). fuse-native's reply to every request
 * detaches a buffer, and Node's buffer finaliser posts a uv_async to this
 * very loop, so the fd is nearly always readable when we come to poll. The
 * count read (consumed) first says whether anything besides that one is
 * pending; after the wait it is written back, so libuv still runs every
 * handle it belongs to and no wake-up is lost.
 *
 * The first two are synchronous and cheap by construction; neither ever blocks on the
 * device. Expected "would block" outcomes are returned as negative errno
 * (-EAGAIN, -EOPNOTSUPP) instead of thrown, so the fast path allocates no
 * Error. Any other failure throws an Error with code = errno name, errno and
 * syscall, like node:fs. Offsets are doubles (docs/architecture.md §11.13: never uint32);
 * positions up to 2^53 are exact.
 */
#include "ebsd_native.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <uv.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

#define MAX_SAFE_INT 9007199254740991LL

/* Parses (fd, buf, off, len, pos); checks [off, off+len) lies inside buf. */
static int io_parse(napi_env env, napi_callback_info info, int *fd, uint8_t **p, size_t *len, off_t *pos) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) { ebsd_throw_napi(env, "napi_get_cb_info"); return 0; }
  if (argc < 5) { ebsd_throw(env, "ERR_ARG_TYPE", "expected (fd, buf, off, len, pos)"); return 0; }
  int64_t ifd, off, n, ipos;
  if (!ebsd_get_int(env, argv[0], "fd", 0, 2147483647LL, &ifd)) return 0;
  bool is_ta = false;
  if (napi_is_typedarray(env, argv[1], &is_ta) != napi_ok) { ebsd_throw_napi(env, "napi_is_typedarray"); return 0; }
  napi_typedarray_type type = napi_int8_array;
  size_t blen = 0;
  void *data = NULL;
  if (is_ta && napi_get_typedarray_info(env, argv[1], &type, &blen, &data, NULL, NULL) != napi_ok) {
    ebsd_throw_napi(env, "napi_get_typedarray_info");
    return 0;
  }
  if (!is_ta || type != napi_uint8_array) { ebsd_throw(env, "ERR_ARG_TYPE", "buf must be a Uint8Array or Buffer"); return 0; }
  if (data == NULL && blen != 0) { ebsd_throw(env, "ERR_ARG_TYPE", "buf is detached"); return 0; }
  if (!ebsd_get_int(env, argv[2], "off", 0, (int64_t)blen, &off)) return 0;
  if (!ebsd_get_int(env, argv[3], "len", 0, (int64_t)blen - off, &n)) return 0;
  if (!ebsd_get_int(env, argv[4], "pos", 0, MAX_SAFE_INT, &ipos)) return 0;
  *fd = (int)ifd;
  *p = (uint8_t *)data + off;
  *len = (size_t)n;
  *pos = (off_t)ipos;
  return 1;
}

static napi_value io_result(napi_env env, ssize_t r, int err, const char *syscall, int soft_eopnotsupp) {
  napi_value out;
  if (r >= 0) {
    NAPI_CALL(env, napi_create_double(env, (double)r, &out));
    return out;
  }
  if (err == EAGAIN || (soft_eopnotsupp && err == EOPNOTSUPP)) {
    NAPI_CALL(env, napi_create_int32(env, -err, &out));
    return out;
  }
  /* A real I/O error: throw it the way node:fs does (code, errno, syscall). */
  const char *code = err == EIO ? "EIO" : err == EBADF ? "EBADF" : err == EINVAL ? "EINVAL" : err == ENOSPC ? "ENOSPC"
                   : err == EDQUOT ? "EDQUOT" : err == EFBIG ? "EFBIG" : err == EFAULT ? "EFAULT" : err == EOPNOTSUPP ? "EOPNOTSUPP"
                   : err == EINTR ? "EINTR" : "EUNKNOWN";
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s, %s", code, strerror(err), syscall);
  napi_value e = ebsd_make_error(env, code, msg);
  if (e == NULL) { ebsd_throw_napi(env, "ebsd_make_error"); return NULL; }
  napi_value jerr, jsys;
  NAPI_CALL(env, napi_create_int32(env, -err, &jerr));
  NAPI_CALL(env, napi_set_named_property(env, e, "errno", jerr));
  NAPI_CALL(env, napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &jsys));
  NAPI_CALL(env, napi_set_named_property(env, e, "syscall", jsys));
  NAPI_CALL(env, napi_throw(env, e));
  return NULL;
}

/* preadv2 / pwritev2 with RWF_NOWAIT of (fd, buf, off, len, pos). */
static napi_value io_nowait(napi_env env, napi_callback_info info, int write) {
  int fd;
  uint8_t *p;
  size_t len;
  off_t pos;
  if (!io_parse(env, info, &fd, &p, &len, &pos)) return NULL;
  struct iovec iov = {p, len};
  ssize_t r;
  do r = write ? pwritev2(fd, &iov, 1, pos, RWF_NOWAIT) : preadv2(fd, &iov, 1, pos, RWF_NOWAIT);
  while (r < 0 && errno == EINTR);
  /* Kernels before 4.14 reject the flag with EOPNOTSUPP: report it like a miss. */
  int err = errno;
  return io_result(env, r, err, write ? "pwritev2" : "preadv2", 1);
}

static napi_value pread_nowait(napi_env env, napi_callback_info info) { return io_nowait(env, info, 0); }
static napi_value pwrite_nowait(napi_env env, napi_callback_info info) { return io_nowait(env, info, 1); }

static napi_value pwrite_timed(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 6) return ebsd_throw(env, "ERR_ARG_TYPE", "expected (fd, buf, off, len, pos, stats)");
  bool is_ta = false;
  NAPI_CALL(env, napi_is_typedarray(env, argv[5], &is_ta));
  napi_typedarray_type type = napi_int8_array;
  size_t slen = 0;
  void *sp = NULL;
  if (is_ta) NAPI_CALL(env, napi_get_typedarray_info(env, argv[5], &type, &slen, &sp, NULL, NULL));
  if (!is_ta || type != napi_float64_array || slen < 2 || sp == NULL)
    return ebsd_throw(env, "ERR_ARG_TYPE", "stats must be a Float64Array of length >= 2");
  double *stats = (double *)sp;
  /* io_parse reads the first five arguments again; it is cheap. */
  int fd;
  uint8_t *p;
  size_t len;
  off_t pos;
  if (!io_parse(env, info, &fd, &p, &len, &pos)) return NULL;
  struct rusage r0, r1;
  struct timespec t0, t1;
  int have_ru = getrusage(RUSAGE_THREAD, &r0) == 0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ssize_t r;
  do r = pwrite(fd, p, len, pos); while (r < 0 && errno == EINTR);
  int err = errno;
  clock_gettime(CLOCK_MONOTONIC, &t1);
  have_ru = have_ru && getrusage(RUSAGE_THREAD, &r1) == 0;
  stats[0] = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
  /* Unknown (getrusage failed): count it as slept, the safe side for the watchdog. */
  stats[1] = have_ru ? (double)(r1.ru_nvcsw - r0.ru_nvcsw) : 1.0;
  return io_result(env, r, err, "pwrite", 0);
}

/* The loop awaitLoopEvent may poll and its wake-up eventfd, both verified at load. */
static struct uv_loop_s *polled_loop = NULL;
static int polled_fd = -1;

/*
 * libuv's uv_async wake-up eventfd of `loop` (Linux), shared by every
 * uv_async_t of the loop, or -1 when it cannot be trusted. The field is one of
 * uv.h's private ones, so it is read only when the libuv running is the
 * major.minor the addon was compiled against (the struct layout may change
 * between minors), and the descriptor found there is accepted only if the
 * kernel says it is an eventfd. Anything else: no awaitLoopEvent (the daemon
 * then lets the loop sleep in epoll_wait, slower but correct).
 */
static int loop_event_fd(struct uv_loop_s *loop) {
  if ((uv_version() >> 8) != (UV_VERSION_HEX >> 8)) return -1;
  int fd = loop->async_io_watcher.fd;
  if (fd < 0) return -1;
  char path[64], target[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, target, sizeof target - 1);
  if (n <= 0) return -1;
  target[n] = '\0';
  return strcmp(target, "anon_inode:[eventfd]") == 0 ? fd : -1;
}

static napi_value await_loop_event(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return ebsd_throw(env, "ERR_ARG_TYPE", "expected (maxUs)");
  int64_t max_us;
  if (!ebsd_get_int(env, argv[0], "maxUs", 0, 1000000LL, &max_us)) return NULL;
  struct uv_loop_s *loop = NULL;
  NAPI_CALL(env, napi_get_uv_event_loop(env, &loop));
  /* Only the loop whose wake-up fd was verified at load (see loop_event_fd). */
  if (loop != polled_loop) return ebsd_throw(env, "ERR_LOOP_POLL", "awaitLoopEvent: not the event loop verified at load");
  int fd = polled_fd;
  uint64_t taken = 0;
  if (read(fd, &taken, sizeof taken) != (ssize_t)sizeof taken) taken = 0;
  int result = 0;
  if (taken < 2) {
    struct pollfd pfd = {fd, POLLIN, 0};
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    result = -1;
    for (;;) {
      if (poll(&pfd, 1, 0) > 0) { result = 1; break; }
      clock_gettime(CLOCK_MONOTONIC, &t);
      if ((t.tv_sec - t0.tv_sec) * 1000000LL + (t.tv_nsec - t0.tv_nsec) / 1000 >= max_us) break;
    }
  }
  /* Give back what we took, so libuv still runs the handles it belongs to. */
  if (taken > 0) {
    ssize_t w;
    do w = write(fd, &taken, sizeof taken); while (w < 0 && errno == EINTR);
  }
  napi_value out;
  NAPI_CALL(env, napi_create_int32(env, result, &out));
  return out;
}

napi_status ebsd_init_io(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"preadNowait", NULL, pread_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
      {"pwriteNowait", NULL, pwrite_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
      {"pwriteTimed", NULL, pwrite_timed, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_status st = napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  if (st != napi_ok) return st;
  /* The libuv these headers describe, for the loader's own check against process.versions.uv. */
  char built[32];
  snprintf(built, sizeof built, "%d.%d.%d", UV_VERSION_MAJOR, UV_VERSION_MINOR, UV_VERSION_PATCH);
  napi_value jbuilt;
  st = napi_create_string_utf8(env, built, NAPI_AUTO_LENGTH, &jbuilt);
  if (st != napi_ok) return st;
  st = napi_set_named_property(env, exports, "libuvBuiltAgainst", jbuilt);
  if (st != napi_ok) return st;
  /* awaitLoopEvent only on the main thread's loop, and only when its wake-up fd checks out. */
  struct uv_loop_s *loop = NULL;
  st = napi_get_uv_event_loop(env, &loop);
  if (st != napi_ok) return st;
  if (loop != uv_default_loop() || polled_loop != NULL) return napi_ok;
  int fd = loop_event_fd(loop);
  if (fd < 0) return napi_ok;
  polled_loop = loop;
  polled_fd = fd;
  napi_property_descriptor poll_prop = {"awaitLoopEvent", NULL, await_loop_event, NULL, NULL, NULL, napi_enumerable, NULL};
  return napi_define_properties(env, exports, 1, &poll_prop);
}
