/*
 * FUSE-over-io_uring wire definitions (FUSE protocol 7.42, the kernel's
 * include/uapi/linux/fuse.h since Linux 6.14), for build hosts whose
 * installed <linux/fuse.h> is older (Debian 12 ships 7.38). Each one is
 * guarded, so a newer header wins.
 *
 * The exchange (docs/perf-notes.md §9):
 *   - INIT (read from /dev/fuse as usual) offers FUSE_OVER_IO_URING when the
 *     fuse module's enable_uring parameter is on; the reply must set it too.
 *   - Each ring entry is one IORING_OP_URING_CMD SQE on a /dev/fuse fd, on a
 *     ring set up with IORING_SETUP_SQE128 (the command below does not fit a
 *     64-byte SQE). sqe->addr points at two iovecs: a fuse_uring_req_header
 *     and a payload buffer at least max(max_write, max_pages * page) long.
 *   - REGISTER parks the entry on queue `qid` (one per possible CPU; the
 *     kernel queues a request on the queue of the CPU its task runs on); the
 *     CQE arrives when a request has been copied into the entry:
 *     in_out = fuse_in_header, op_in = the op's own struct, payload = the rest
 *     (write data, a lookup's name), ring_ent_in_out.payload_sz its length.
 *   - COMMIT_AND_FETCH (commit_id = ring_ent_in_out.commit_id) hands back the
 *     reply: in_out = fuse_out_header, payload = reply data, payload_sz its
 *     length; and parks the entry for the next request.
 *   - The ring is used once every queue has an entry registered; until then
 *     requests wait. FORGET and INTERRUPT still come through read(2).
 */
#ifndef TRANSPORT_FUSE_URING_H
#define TRANSPORT_FUSE_URING_H

#include <stdint.h>
#include <linux/fuse.h>

#ifndef FUSE_OVER_IO_URING
#define FUSE_OVER_IO_URING (1ULL << 41)
#endif

#ifndef FUSE_URING_IN_OUT_HEADER_SZ
#define FUSE_URING_IN_OUT_HEADER_SZ 128
#define FUSE_URING_OP_IN_OUT_SZ 128

struct fuse_uring_ent_in_out {
  uint64_t flags;
  uint64_t commit_id;
  uint32_t payload_sz;
  uint32_t padding;
  uint64_t reserved;
};

struct fuse_uring_req_header {
  char in_out[FUSE_URING_IN_OUT_HEADER_SZ];
  char op_in[FUSE_URING_OP_IN_OUT_SZ];
  struct fuse_uring_ent_in_out ring_ent_in_out;
};

enum fuse_uring_cmd {
  FUSE_IO_URING_CMD_INVALID = 0,
  FUSE_IO_URING_CMD_REGISTER = 1,
  FUSE_IO_URING_CMD_COMMIT_AND_FETCH = 2,
};

struct fuse_uring_cmd_req {
  uint64_t flags;
  uint64_t commit_id;
  uint16_t qid;
  uint8_t padding[6];
};
#endif

/* FOPEN_PARALLEL_DIRECT_WRITES is in 7.38; kept for older headers. */
#ifndef FOPEN_PARALLEL_DIRECT_WRITES
#define FOPEN_PARALLEL_DIRECT_WRITES (1 << 6)
#endif

#endif
