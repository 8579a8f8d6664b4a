/*
 * peerCred(fd) -> { pid, uid, gid } of the process at the other end of a
 * connected AF_UNIX socket, via getsockopt(SO_PEERCRED) (Linux socket(7)).
 * The daemon identifies control-socket callers by this uid (docs/architecture.md §5.1).
 *
 * tcpPeerUid(clientAddr, clientPort, serverAddr, serverPort) -> the uid owning
 * the client's socket of a local TCP connection; -1 when the kernel has no
 * such connected socket (closed, or a TIME_WAIT stub), -2 when netlink could
 * not be asked (e.g. a seccomp filter refusing AF_NETLINK): one exact sock_diag lookup (netlink NETLINK_SOCK_DIAG,
 * sock_diag(7)), no table dump. Loopback listeners count connections per
 * local user with it (src/daemon/loopback-peers.ts).
 */
#include "ebsd_native.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

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

/* Parses `text` as IPv4 (family AF_INET, 4 bytes) or IPv6 (AF_INET6, 16 bytes) into `out`; 0 when it is neither. */
static int parse_addr(const char *text, uint8_t out[16]) {
  memset(out, 0, 16);
  if (inet_pton(AF_INET, text, out) == 1) return AF_INET;
  if (inet_pton(AF_INET6, text, out) == 1) return AF_INET6;
  return 0;
}

/* The socket whose local end is src:sport and remote end dst:dport (network order ports); its uid, -1 if none, -2 on a netlink error. */
static int64_t diag_uid(int family, const uint8_t src[16], uint16_t sport, const uint8_t dst[16], uint16_t dport) {
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0) return -2;
  struct {
    struct nlmsghdr nlh;
    struct inet_diag_req_v2 r;
  } req;
  memset(&req, 0, sizeof req);
  req.nlh.nlmsg_len = sizeof req;
  req.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.nlh.nlmsg_flags = NLM_F_REQUEST; /* one socket, looked up by its four-tuple: no dump */
  req.r.sdiag_family = (uint8_t)family;
  req.r.sdiag_protocol = IPPROTO_TCP;
  req.r.idiag_states = ~0U;
  req.r.id.idiag_sport = sport;
  req.r.id.idiag_dport = dport;
  memcpy(req.r.id.idiag_src, src, family == AF_INET ? 4 : 16);
  memcpy(req.r.id.idiag_dst, dst, family == AF_INET ? 4 : 16);
  req.r.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  req.r.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  struct sockaddr_nl kernel;
  memset(&kernel, 0, sizeof kernel);
  kernel.nl_family = AF_NETLINK;
  int64_t uid = -2;
  if (sendto(fd, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) == (ssize_t)sizeof req) {
    union {
      struct nlmsghdr h;
      char bytes[8192];
    } buf;
    ssize_t n = recv(fd, buf.bytes, sizeof buf.bytes, 0);
    struct nlmsghdr *h = &buf.h;
    if (n > 0 && NLMSG_OK(h, (size_t)n)) {
      if (h->nlmsg_type == SOCK_DIAG_BY_FAMILY && h->nlmsg_len >= NLMSG_LENGTH(sizeof(struct inet_diag_msg))) {
        const struct inet_diag_msg *m = NLMSG_DATA(h);
        /* Only the connected socket asked for, still owned by a file: the exact lookup falls back to a
           listening socket on that port (another user's), and a socket its owner closed (a time-wait or
           orphaned one, inode 0) reports uid 0, not its owner's. */
        int full = m->idiag_state != 10 /* TCP_LISTEN */ && m->idiag_inode != 0;
        uid = full && m->id.idiag_sport == sport && m->id.idiag_dport == dport ? (int64_t)m->idiag_uid : -1;
      } else {
        uid = -1; /* NLMSG_ERROR: ENOENT when no such socket */
      }
    }
  }
  close(fd);
  return uid;
}

static napi_value tcp_peer_uid(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) return ebsd_throw(env, "ERR_ARG_TYPE", "tcpPeerUid(clientAddr, clientPort, serverAddr, serverPort)");
  char caddr[64], saddr[64];
  size_t len;
  uint32_t cport, sport;
  if (napi_get_value_string_utf8(env, argv[0], caddr, sizeof caddr, &len) != napi_ok
      || napi_get_value_string_utf8(env, argv[2], saddr, sizeof saddr, &len) != napi_ok
      || napi_get_value_uint32(env, argv[1], &cport) != napi_ok || napi_get_value_uint32(env, argv[3], &sport) != napi_ok
      || cport > 65535 || sport > 65535) {
    return ebsd_throw(env, "ERR_ARG_TYPE", "tcpPeerUid(clientAddr, clientPort, serverAddr, serverPort): two addresses and two ports");
  }
  uint8_t c[16], s[16];
  int cf = parse_addr(caddr, c), sf = parse_addr(saddr, s);
  if (cf == 0 || sf == 0 || cf != sf) return ebsd_throw(env, "ERR_ARG_RANGE", "tcpPeerUid: addresses of one family expected");
  int64_t uid = diag_uid(cf, c, htons((uint16_t)cport), s, htons((uint16_t)sport));
  /* A v4-mapped pair (a dual-stack listener): the client's socket may be an IPv4 one. */
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (uid == -1 && cf == AF_INET6 && memcmp(c, mapped, 12) == 0 && memcmp(s, mapped, 12) == 0) {
    uint8_t c4[16] = {0}, s4[16] = {0};
    memcpy(c4, c + 12, 4);
    memcpy(s4, s + 12, 4);
    uid = diag_uid(AF_INET, c4, htons((uint16_t)cport), s4, htons((uint16_t)sport));
  }
  napi_value out;
  NAPI_CALL(env, napi_create_int64(env, uid, &out));
  return out;
}

napi_status ebsd_init_peercred(napi_env env, napi_value exports) {
  napi_value fn;
  napi_status st = napi_create_function(env, "peerCred", NAPI_AUTO_LENGTH, peer_cred, NULL, &fn);
  if (st != napi_ok) return st;
  st = napi_set_named_property(env, exports, "peerCred", fn);
  if (st != napi_ok) return st;
  st = napi_create_function(env, "tcpPeerUid", NAPI_AUTO_LENGTH, tcp_peer_uid, NULL, &fn);
  if (st != napi_ok) return st;
  return napi_set_named_property(env, exports, "tcpPeerUid", fn);
}
