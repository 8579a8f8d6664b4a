/*
 * transport-fuse: a minimal FUSE server in C for the transport ceiling study
 * (issue 19, docs/perf-notes.md §9). A benchmark, not product: it speaks the
 * kernel's FUSE protocol on /dev/fuse directly (no libfuse) and serves ONE
 * file of --size bytes at MOUNT/NAME, like scripts/bench/noop-fuse.mjs.
 *
 *   transport-fuse --mount DIR --size BYTES [--name vol-noop]
 *                  [--mode classic|uring] [--threads N] [--depth N]
 *                  [--backing FILE [--direct]] [--no-pin]
 *
 * --mode classic (default): --threads workers (default 4), each blocking in
 *   read(2) on its own /dev/fuse fd cloned with FUSE_DEV_IOC_CLONE.
 * --mode uring: FUSE over io_uring, one queue per CPU, each served by a
 *   thread pinned to that CPU with --depth ring entries (default 64); one
 *   classic reader stays for INIT and FORGET (--no-pin: queue threads float). Needs
 *   /sys/module/fuse/parameters/enable_uring = Y before the mount.
 * Both negotiate FUSE_ASYNC_DIO (libaio submissions stay asynchronous),
 * FUSE_MAX_PAGES with 1 MiB requests, and open the file with
 * FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES (direct writes to the one
 * file are not serialised on its inode lock).
 *
 * Work per request. Without --backing: none (reads return zeros, written
 * once per request as noop-fuse.mjs does; writes are dropped). With
 * --backing FILE (--size bytes, page cache, as the daemon opens its image):
 * the volume's data path, AES-256-XTS in 4096-byte data units with the
 * dm-crypt plain64 tweak counted in 512-byte sectors (LUKS2 sector_size
 * 4096, docs/architecture.md §3.5), through libgcrypt called exactly as
 * native/src/xts.c's xts_run does: a read is pread into a 4 KiB-aligned
 * buffer and decrypted in place, a write is encrypted into a 4 KiB-aligned
 * buffer and pwritten (classic: synchronously in the worker thread; uring:
 * in the payload buffer, the file I/O submitted on the queue's own ring, so
 * a queue thread keeps many requests in flight to the disk). The key is random per run, never printed, and wiped
 * at exit. Requests must be 4096-aligned in that mode (EINVAL otherwise).
 * --direct opens the backing file O_DIRECT instead (no page cache, as the
 * daemon's `direct` backing files; the buffers are page aligned for it).
 *
 * Prints "ready MOUNT/NAME" once the file answers a stat (in uring mode:
 * through the ring), then on SIGTERM/SIGINT unmounts and prints to stderr
 * how many requests each path served.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <gcrypt.h>
#include <getopt.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "fuse-uring.h"

#define PAGE 4096u
#define MAX_IO (1u << 20)            /* 1 MiB requests: FUSE_MAX_PAGES, 256 pages */
#define BUF_SZ (MAX_IO + 2 * PAGE)   /* a request: headers + up to MAX_IO of data */
#define XTS_UNIT 4096u
#define ROOT_ID 1
#define FILE_ID 2
#define NO_REPLY (-100000L)
#define MINOR_WANTED 42              /* io_uring arrived in 7.42 */
#define MAX_QUEUES 64

static struct {
  const char *mount;
  const char *name;
  uint64_t size;
  int uring;
  int threads;
  int depth;
  int devfd;
  int backing;                       /* -1: no-op */
  int direct;                        /* the backing file is O_DIRECT */
  int no_pin;                        /* uring: queue threads not pinned to their CPU */
  uint8_t key[64];
  struct timespec start;
  atomic_int initialized;            /* INIT answered */
  atomic_int queues_registered;
  atomic_int failed;
  atomic_ullong served_classic;
  atomic_ullong served_ring;
} S = {.name = "vol-noop", .threads = 4, .depth = 64, .backing = -1};

static void die(const char *what) {
  fprintf(stderr, "transport-fuse: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void *page_alloc(size_t n) {
  void *p = NULL;
  if (posix_memalign(&p, PAGE, n)) { errno = ENOMEM; die("posix_memalign"); }
  memset(p, 0, n);
  return p;
}

/* ---- per-thread work -------------------------------------------------- */

typedef struct {
  gcry_cipher_hd_t hd;               /* NULL in no-op mode */
  uint8_t *scratch;                  /* MAX_IO, page aligned: the ciphertext of a write */
} work_ctx;

static void work_init(work_ctx *w) {
  memset(w, 0, sizeof *w);
  w->scratch = page_alloc(MAX_IO);
  if (S.backing < 0) return;
  gcry_error_t err = gcry_cipher_open(&w->hd, GCRY_CIPHER_AES256, GCRY_CIPHER_MODE_XTS, 0);
  if (!err) err = gcry_cipher_setkey(w->hd, S.key, sizeof S.key);
  if (err) { fprintf(stderr, "transport-fuse: AES-256-XTS key setup failed: %s\n", gcry_strerror(err)); exit(1); }
}

/* IEEE 1619-2018 XTS over whole 4096-byte units, tweak = byte offset / 512 as
   a little-endian u64 (dm-crypt plain64). src NULL: in place. */
static int xts(work_ctx *w, int enc, uint8_t *dst, const uint8_t *src, size_t len, uint64_t off) {
  for (size_t o = 0; o < len; o += XTS_UNIT) {
    uint8_t iv[16] = {0};
    uint64_t t = (off + o) / 512;
    for (int i = 0; i < 8; i++) iv[i] = (uint8_t)(t >> (8 * i));
    gcry_error_t err = gcry_cipher_setiv(w->hd, iv, sizeof iv);
    if (!err) {
      const uint8_t *in = src ? src + o : NULL;
      size_t inlen = src ? XTS_UNIT : 0;
      err = enc ? gcry_cipher_encrypt(w->hd, dst + o, XTS_UNIT, in, inlen)
                : gcry_cipher_decrypt(w->hd, dst + o, XTS_UNIT, in, inlen);
    }
    if (err) return -EIO;
  }
  return 0;
}

/* ---- the file system: one directory, one file --------------------------- */

static void fill_attr(struct fuse_attr *a, uint64_t ino) {
  memset(a, 0, sizeof *a);
  a->ino = ino;
  a->atime = a->mtime = a->ctime = (uint64_t)S.start.tv_sec;
  a->blksize = PAGE;
  if (ino == ROOT_ID) {
    a->mode = S_IFDIR | 0755;
    a->nlink = 2;
    a->size = PAGE;
  } else {
    a->mode = S_IFREG | 0600;
    a->nlink = 1;
    a->size = S.size;
    a->blocks = S.size / 512;
  }
}

static long reply_entry(uint8_t *out) {
  struct fuse_entry_out *e = (void *)out;
  memset(e, 0, sizeof *e);
  e->nodeid = FILE_ID;
  e->generation = 1;
  e->entry_valid = 3600;
  e->attr_valid = 3600;
  fill_attr(&e->attr, FILE_ID);
  return sizeof *e;
}

static long do_readdir(const struct fuse_read_in *ri, uint8_t *out) {
  const char *names[3] = {".", "..", S.name};
  const uint64_t inos[3] = {ROOT_ID, ROOT_ID, FILE_ID};
  size_t used = 0;
  for (uint64_t i = ri->offset; i < 3; i++) {
    size_t nl = strlen(names[i]);
    size_t rec = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + nl);
    if (used + rec > ri->size) break;
    struct fuse_dirent *d = (void *)(out + used);
    memset(d, 0, rec);
    d->ino = inos[i];
    d->off = i + 1;
    d->namelen = (uint32_t)nl;
    d->type = i < 2 ? (S_IFDIR >> 12) : (S_IFREG >> 12);
    memcpy(d->name, names[i], nl);
    used += rec;
  }
  return (long)used;
}

static long do_init(const struct fuse_init_in *in, uint8_t *out) {
  struct fuse_init_out *o = (void *)out;
  memset(o, 0, sizeof *o);
  o->major = FUSE_KERNEL_VERSION;
  o->minor = in->minor < MINOR_WANTED ? in->minor : MINOR_WANTED;
  if (in->major != FUSE_KERNEL_VERSION) return sizeof *o; /* the kernel answers with its own major */
  uint64_t offered = in->flags | ((in->flags & FUSE_INIT_EXT) ? (uint64_t)in->flags2 << 32 : 0);
  uint64_t want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_ASYNC_DIO | FUSE_MAX_PAGES |
                  FUSE_PARALLEL_DIROPS | FUSE_INIT_EXT;
  if (S.uring) {
    if (!(offered & FUSE_OVER_IO_URING)) {
      fprintf(stderr, "transport-fuse: INIT: the kernel did not offer FUSE_OVER_IO_URING "
                      "(kernel protocol 7.%u; is /sys/module/fuse/parameters/enable_uring Y?)\n", in->minor);
      atomic_store(&S.failed, 1);
    }
    want |= FUSE_OVER_IO_URING;
  }
  uint64_t flags = offered & want;
  o->flags = (uint32_t)flags;
  o->flags2 = (uint32_t)(flags >> 32);
  o->max_readahead = in->max_readahead;
  o->max_background = 256;            /* async DIO requests are background requests */
  o->congestion_threshold = 192;
  o->max_write = MAX_IO;
  o->time_gran = 1;
  o->max_pages = MAX_IO / PAGE;
  fprintf(stderr, "transport-fuse: INIT 7.%u, negotiated flags 0x%llx%s%s%s\n", o->minor,
          (unsigned long long)flags, (flags & FUSE_ASYNC_DIO) ? " ASYNC_DIO" : "",
          (flags & FUSE_MAX_PAGES) ? " MAX_PAGES" : "", (flags & FUSE_OVER_IO_URING) ? " OVER_IO_URING" : "");
  return sizeof *o;
}

static long do_read(work_ctx *w, const struct fuse_read_in *ri, uint8_t *out) {
  if (ri->offset >= S.size) return 0;
  size_t n = ri->size;
  if (n > MAX_IO) n = MAX_IO;
  if (n > S.size - ri->offset) n = S.size - ri->offset;
  if (S.backing < 0) { memset(out, 0, n); return (long)n; }
  if ((ri->offset | n) % XTS_UNIT) return -EINVAL;
  ssize_t got = pread(S.backing, out, n, (off_t)ri->offset);
  if (got != (ssize_t)n) return -EIO;
  int err = xts(w, 0, out, NULL, n, ri->offset);
  return err ? err : (long)n;
}

static long do_write(work_ctx *w, const struct fuse_write_in *wi, const uint8_t *data, size_t have, uint8_t *out) {
  size_t n = wi->size;
  if (n > have) return -EINVAL;
  if (wi->offset >= S.size) return -ENOSPC;
  if (n > S.size - wi->offset) n = S.size - wi->offset;
  if (S.backing >= 0) {
    if ((wi->offset | n) % XTS_UNIT) return -EINVAL;
    int err = xts(w, 1, w->scratch, data, n, wi->offset);
    if (err) return err;
    if (pwrite(S.backing, w->scratch, n, (off_t)wi->offset) != (ssize_t)n) return -EIO;
  }
  struct fuse_write_out *o = (void *)out;
  memset(o, 0, sizeof *o);
  o->size = (uint32_t)n;
  return sizeof *o;
}

/*
 * One request. `op` is the op's own struct; `in`/`in_len` what follows it
 * (write data, a lookup's name); the reply payload goes to `out` (page
 * aligned, MAX_IO + PAGE long; may be the same memory as `in`, so `in` is
 * read before `out` is written). Returns the payload length, -errno, or
 * NO_REPLY.
 */
static long handle(work_ctx *w, const struct fuse_in_header *ih, const void *op, const uint8_t *in,
                   size_t in_len, uint8_t *out) {
  uint64_t node = ih->nodeid;
  switch (ih->opcode) {
  case FUSE_INIT: return do_init(op, out);
  case FUSE_LOOKUP: {
    if (node != ROOT_ID) return -ENOENT;
    size_t nl = strlen(S.name);
    if (in_len < nl + 1 || memcmp(in, S.name, nl + 1) != 0) return -ENOENT;
    return reply_entry(out);
  }
  case FUSE_GETATTR: {
    if (node != ROOT_ID && node != FILE_ID) return -ENOENT;
    struct fuse_attr_out *a = (void *)out;
    memset(a, 0, sizeof *a);
    a->attr_valid = 3600;
    fill_attr(&a->attr, node);
    return sizeof *a;
  }
  case FUSE_SETATTR: {
    const struct fuse_setattr_in *sa = op;
    if ((sa->valid & FATTR_SIZE) && sa->size != S.size) return -EPERM;
    struct fuse_attr_out *a = (void *)out;
    memset(a, 0, sizeof *a);
    fill_attr(&a->attr, node);
    return sizeof *a;
  }
  case FUSE_OPEN:
  case FUSE_OPENDIR: {
    struct fuse_open_out *o = (void *)out;
    memset(o, 0, sizeof *o);
    o->fh = 1;
    if (ih->opcode == FUSE_OPEN) o->open_flags = FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES;
    return sizeof *o;
  }
  case FUSE_READ: return do_read(w, op, out);
  case FUSE_WRITE: return do_write(w, op, in, in_len, out);
  case FUSE_READDIR: return do_readdir(op, out);
  case FUSE_STATFS: {
    struct fuse_statfs_out *s = (void *)out;
    memset(s, 0, sizeof *s);
    s->st.bsize = s->st.frsize = PAGE;
    s->st.namelen = 255;
    return sizeof *s;
  }
  case FUSE_FSYNC:
    if (S.backing >= 0 && fdatasync(S.backing)) return -errno;
    return 0;
  case FUSE_FLUSH:
  case FUSE_RELEASE:
  case FUSE_RELEASEDIR:
  case FUSE_FSYNCDIR:
  case FUSE_ACCESS:
    return 0;
  case FUSE_FORGET:
  case FUSE_BATCH_FORGET:
  case FUSE_INTERRUPT:
    return NO_REPLY;
  case FUSE_DESTROY:
    return 0;
  default:
    return -ENOSYS;
  }
}

/* ---- classic: read(2) / writev(2) on cloned fds ------------------------- */

static int clone_fd(void) {
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) die("open /dev/fuse (clone)");
  uint32_t master = (uint32_t)S.devfd;
  if (ioctl(fd, FUSE_DEV_IOC_CLONE, &master)) die("FUSE_DEV_IOC_CLONE");
  return fd;
}

static void *classic_worker(void *arg) {
  int fd = (int)(intptr_t)arg;
  uint8_t *buf = page_alloc(BUF_SZ), *out = page_alloc(MAX_IO + PAGE);
  work_ctx w;
  work_init(&w);
  for (;;) {
    ssize_t n = read(fd, buf, BUF_SZ);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
      if (errno == ENODEV) break; /* unmounted */
      perror("transport-fuse: read /dev/fuse");
      break;
    }
    const struct fuse_in_header *ih = (void *)buf;
    if ((size_t)n < sizeof *ih || ih->len != (uint32_t)n) continue;
    const uint8_t *body = buf + sizeof *ih;
    size_t body_len = (size_t)n - sizeof *ih;
    size_t op_len = ih->opcode == FUSE_WRITE ? sizeof(struct fuse_write_in) : 0;
    if (op_len > body_len) op_len = body_len;
    long r = handle(&w, ih, body, body + op_len, body_len - op_len, out);
    if (r == NO_REPLY) continue;
    struct fuse_out_header oh = {.unique = ih->unique};
    struct iovec iov[2] = {{&oh, sizeof oh}, {out, r > 0 ? (size_t)r : 0}};
    if (r < 0) oh.error = (int32_t)r;
    oh.len = (uint32_t)(sizeof oh + iov[1].iov_len);
    if (writev(fd, iov, r > 0 ? 2 : 1) < 0 && errno != ENOENT) {
      if (errno == ENODEV) break;
      perror("transport-fuse: write /dev/fuse");
    }
    /* The kernel has the INIT reply once writev returns: REGISTER may go now. */
    if (ih->opcode == FUSE_INIT) atomic_store(&S.initialized, 1);
    atomic_fetch_add_explicit(&S.served_classic, 1, memory_order_relaxed);
  }
  return NULL;
}

/* ---- io_uring: raw syscalls, no liburing -------------------------------- */

typedef struct {
  int fd;
  unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
  unsigned *cq_head, *cq_tail, *cq_mask;
  uint8_t *sqes;                     /* 128-byte SQEs (IORING_SETUP_SQE128) */
  struct io_uring_cqe *cqes;
  unsigned to_submit;
} ring;

static int ring_setup(ring *r, unsigned entries) {
  struct io_uring_params p;
  unsigned tries[] = {IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                      IORING_SETUP_SQE128};
  int fd = -1;
  for (unsigned i = 0; i < 2 && fd < 0; i++) {
    memset(&p, 0, sizeof p);
    p.flags = tries[i];
    fd = (int)syscall(__NR_io_uring_setup, entries, &p);
  }
  if (fd < 0) return -errno;
  if (!(p.features & IORING_FEAT_SINGLE_MMAP)) return -ENOSYS;
  size_t sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  size_t cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  size_t sz = sq_sz > cq_sz ? sq_sz : cq_sz;
  uint8_t *q = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
  if (q == MAP_FAILED) return -errno;
  r->sqes = mmap(NULL, p.sq_entries * 128u, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
  if (r->sqes == MAP_FAILED) return -errno;
  r->fd = fd;
  r->sq_head = (void *)(q + p.sq_off.head);
  r->sq_tail = (void *)(q + p.sq_off.tail);
  r->sq_mask = (void *)(q + p.sq_off.ring_mask);
  r->sq_array = (void *)(q + p.sq_off.array);
  r->cq_head = (void *)(q + p.cq_off.head);
  r->cq_tail = (void *)(q + p.cq_off.tail);
  r->cq_mask = (void *)(q + p.cq_off.ring_mask);
  r->cqes = (void *)(q + p.cq_off.cqes);
  r->to_submit = 0;
  return 0;
}

/* The next SQE, zeroed; published by the tail store in ring_enter's caller. */
static struct io_uring_sqe *ring_sqe(ring *r) {
  unsigned tail = *r->sq_tail + r->to_submit;
  unsigned idx = tail & *r->sq_mask;
  struct io_uring_sqe *sqe = (void *)(r->sqes + (size_t)idx * 128u);
  memset(sqe, 0, 128);
  r->sq_array[idx] = idx;
  r->to_submit++;
  return sqe;
}

static int ring_enter(ring *r, unsigned wait) {
  __atomic_store_n(r->sq_tail, *r->sq_tail + r->to_submit, __ATOMIC_RELEASE);
  unsigned n = r->to_submit;
  r->to_submit = 0;
  for (;;) {
    long rc = syscall(__NR_io_uring_enter, r->fd, n, wait, wait ? IORING_ENTER_GETEVENTS : 0, NULL, 0);
    if (rc >= 0) return 0;
    if (errno == EINTR) { n = 0; continue; } /* the kernel took what it consumed */
    return -errno;
  }
}

typedef struct {
  struct fuse_uring_req_header *hdr;
  uint8_t *payload;
  struct iovec iov[2];
  /* A READ or WRITE waiting for its backing-file I/O (XTS mode): */
  struct fuse_in_header ih;
  uint64_t commit_id, offset;
  uint32_t len;
} ring_ent;

#define UD_BACKING (1ULL << 32)      /* user_data: a backing-file I/O, not a FUSE command */

static void ent_cmd(ring *r, ring_ent *e, unsigned idx, int qid, uint32_t op, uint64_t commit_id) {
  struct io_uring_sqe *sqe = ring_sqe(r);
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = S.devfd;
  sqe->cmd_op = op;
  sqe->addr = (uint64_t)(uintptr_t)e->iov;
  sqe->len = 2;
  sqe->user_data = idx;
  struct fuse_uring_cmd_req *req = (void *)sqe->cmd;
  req->qid = (uint16_t)qid;
  req->commit_id = commit_id;
}

/* The reply (payload length res, or -errno) to the entry's request, and the
   fetch of its next one, in one COMMIT_AND_FETCH. */
static void ent_commit(ring *r, ring_ent *e, unsigned idx, int qid, uint64_t unique, uint64_t commit_id, long res) {
  struct fuse_out_header oh = {.unique = unique, .error = res < 0 ? (int32_t)res : 0};
  oh.len = (uint32_t)(sizeof oh + (res > 0 ? (size_t)res : 0));
  memcpy(e->hdr->in_out, &oh, sizeof oh);
  e->hdr->ring_ent_in_out.payload_sz = res > 0 ? (uint32_t)res : 0;
  ent_cmd(r, e, idx, qid, FUSE_IO_URING_CMD_COMMIT_AND_FETCH, commit_id);
  atomic_fetch_add_explicit(&S.served_ring, 1, memory_order_relaxed);
}

/*
 * XTS mode on the ring: a READ or WRITE does its backing-file I/O through the
 * same ring, so one queue thread keeps many requests in flight to the disk
 * (a synchronous pread would hold the thread, and with it the queue, for a
 * whole disk round trip). READ: read into the payload, decrypt in place on
 * completion. WRITE: encrypt the payload in place, write it. Returns 1 when
 * the I/O was submitted (the commit follows its completion), else the reply.
 */
static long backing_start(ring *r, work_ctx *w, ring_ent *e, unsigned idx) {
  const struct fuse_read_in *ri = (void *)e->hdr->op_in;
  uint64_t off;
  size_t n;
  if (e->ih.opcode == FUSE_READ) {
    off = ri->offset;
    if (off >= S.size) return 0;
    n = ri->size;
  } else {
    const struct fuse_write_in *wi = (void *)e->hdr->op_in;
    off = wi->offset;
    n = wi->size;
    if (n > e->hdr->ring_ent_in_out.payload_sz) return -EINVAL;
    if (off >= S.size) return -ENOSPC;
  }
  if (n > MAX_IO) n = MAX_IO;
  if (n > S.size - off) n = S.size - off;
  if ((off | n) % XTS_UNIT) return -EINVAL;
  if (n == 0) return 0;
  if (e->ih.opcode == FUSE_WRITE) {
    int err = xts(w, 1, e->payload, NULL, n, off);
    if (err) return err;
  }
  e->offset = off;
  e->len = (uint32_t)n;
  struct io_uring_sqe *sqe = ring_sqe(r);
  sqe->opcode = e->ih.opcode == FUSE_READ ? IORING_OP_READ : IORING_OP_WRITE;
  sqe->fd = S.backing;
  sqe->addr = (uint64_t)(uintptr_t)e->payload;
  sqe->len = (uint32_t)n;
  sqe->off = off;
  sqe->user_data = idx | UD_BACKING;
  return 1;
}

/* The backing I/O of entry e completed with res: the reply. */
static long backing_done(work_ctx *w, ring_ent *e, int res) {
  if (res != (int)e->len) return -EIO; /* short or failed: the volume has no partial sectors */
  if (e->ih.opcode == FUSE_READ) {
    int err = xts(w, 0, e->payload, NULL, e->len, e->offset);
    return err ? err : (long)e->len;
  }
  struct fuse_write_out *o = (void *)e->payload;
  memset(o, 0, sizeof *o);
  o->size = e->len;
  return sizeof *o;
}

static void *uring_queue(void *arg) {
  int qid = (int)(intptr_t)arg;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(qid, &set);
  if (!S.no_pin) pthread_setaffinity_np(pthread_self(), sizeof set, &set); /* best effort: the kernel picks the queue by CPU */
  ring r;
  int err = ring_setup(&r, (unsigned)S.depth);
  if (err) {
    fprintf(stderr, "transport-fuse: io_uring_setup (queue %d, SQE128): %s\n", qid, strerror(-err));
    atomic_store(&S.failed, 1);
    return NULL;
  }
  work_ctx w;
  work_init(&w);
  ring_ent *ents = calloc((size_t)S.depth, sizeof *ents);
  for (int i = 0; i < S.depth; i++) {
    ents[i].hdr = page_alloc(PAGE);
    ents[i].payload = page_alloc(MAX_IO + PAGE);
    ents[i].iov[0] = (struct iovec){ents[i].hdr, sizeof *ents[i].hdr};
    ents[i].iov[1] = (struct iovec){ents[i].payload, MAX_IO + PAGE};
  }
  /* REGISTER needs the INIT reply processed (the kernel answers EAGAIN before). */
  while (!atomic_load(&S.initialized)) usleep(1000);
  for (int i = 0; i < S.depth; i++) ent_cmd(&r, &ents[i], (unsigned)i, qid, FUSE_IO_URING_CMD_REGISTER, 0);
  if ((err = ring_enter(&r, 0))) {
    fprintf(stderr, "transport-fuse: io_uring_enter (REGISTER, queue %d): %s\n", qid, strerror(-err));
    atomic_store(&S.failed, 1);
    return NULL;
  }
  atomic_fetch_add(&S.queues_registered, 1);
  for (;;) {
    if ((err = ring_enter(&r, 1))) {
      fprintf(stderr, "transport-fuse: io_uring_enter (queue %d): %s\n", qid, strerror(-err));
      break;
    }
    unsigned head = *r.cq_head, tail = __atomic_load_n(r.cq_tail, __ATOMIC_ACQUIRE);
    int stop = 0;
    for (; head != tail; head++) {
      struct io_uring_cqe *cqe = &r.cqes[head & *r.cq_mask];
      unsigned idx = (unsigned)cqe->user_data;
      ring_ent *e = &ents[idx];
      if (cqe->user_data & UD_BACKING) {
        ent_commit(&r, e, idx, qid, e->ih.unique, e->commit_id, backing_done(&w, e, cqe->res));
        continue;
      }
      if (cqe->res == -EAGAIN) { /* the connection is not initialised yet: register again */
        ent_cmd(&r, e, idx, qid, FUSE_IO_URING_CMD_REGISTER, 0);
        continue;
      }
      if (cqe->res < 0) {
        /* ENOTCONN / ECANCELED: the mount is going away; anything else is a protocol failure. */
        if (cqe->res != -ENOTCONN && cqe->res != -ECANCELED && cqe->res != -ECONNABORTED) {
          fprintf(stderr, "transport-fuse: ring entry %u on queue %d completed with %s\n", idx, qid, strerror(-cqe->res));
          atomic_store(&S.failed, 1);
        }
        stop = 1;
        continue;
      }
      memcpy(&e->ih, e->hdr->in_out, sizeof e->ih);
      e->commit_id = e->hdr->ring_ent_in_out.commit_id;
      long res;
      if (S.backing >= 0 && (e->ih.opcode == FUSE_READ || e->ih.opcode == FUSE_WRITE)) {
        res = backing_start(&r, &w, e, idx);
        if (res == 1) continue;
      } else {
        res = handle(&w, &e->ih, e->hdr->op_in, e->payload, e->hdr->ring_ent_in_out.payload_sz, e->payload);
        if (res == NO_REPLY) res = 0; /* never through the ring; a reply keeps the entry cycling */
      }
      ent_commit(&r, e, idx, qid, e->ih.unique, e->commit_id, res);
    }
    __atomic_store_n(r.cq_head, head, __ATOMIC_RELEASE);
    if (stop) break;
  }
  return NULL;
}

/* ---- main --------------------------------------------------------------- */

static uint64_t parse_size(const char *s) {
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (!strcmp(end, "") || !strcmp(end, "B")) return v;
  if (!strcasecmp(end, "K") || !strcasecmp(end, "KiB")) return v << 10;
  if (!strcasecmp(end, "M") || !strcasecmp(end, "MiB")) return v << 20;
  if (!strcasecmp(end, "G") || !strcasecmp(end, "GiB")) return v << 30;
  fprintf(stderr, "transport-fuse: --size: cannot parse '%s'\n", s);
  exit(2);
}

static void usage(void) {
  fprintf(stderr, "usage: transport-fuse --mount DIR --size BYTES [--name NAME] [--mode classic|uring]\n"
                  "                      [--threads N] [--depth N] [--backing FILE [--direct]] [--no-pin]\n");
  exit(2);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"mount", required_argument, 0, 'm'}, {"size", required_argument, 0, 's'},
      {"name", required_argument, 0, 'n'},  {"mode", required_argument, 0, 'o'},
      {"threads", required_argument, 0, 't'}, {"depth", required_argument, 0, 'd'},
      {"backing", required_argument, 0, 'b'}, {"direct", no_argument, 0, 'D'},
      {"no-pin", no_argument, 0, 'P'}, {0, 0, 0, 0}};
  const char *backing = NULL;
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'm': S.mount = optarg; break;
    case 's': S.size = parse_size(optarg); break;
    case 'n': S.name = optarg; break;
    case 'o':
      if (!strcmp(optarg, "uring")) S.uring = 1;
      else if (strcmp(optarg, "classic")) usage();
      break;
    case 't': S.threads = atoi(optarg); break;
    case 'd': S.depth = atoi(optarg); break;
    case 'b': backing = optarg; break;
    case 'D': S.direct = 1; break;
    case 'P': S.no_pin = 1; break;
    default: usage();
    }
  }
  if (!S.mount || !S.size || S.threads < 1 || S.threads > 64 || S.depth < 1 || S.depth > 4096 ||
      strlen(S.name) > 200 || strchr(S.name, '/'))
    usage();
  if (S.size % XTS_UNIT) { fprintf(stderr, "transport-fuse: --size must be a multiple of 4096\n"); exit(2); }
  clock_gettime(CLOCK_REALTIME, &S.start);

  if (backing) {
    if (!gcry_check_version(GCRYPT_VERSION)) { fprintf(stderr, "transport-fuse: libgcrypt too old\n"); exit(1); }
    gcry_control(GCRYCTL_DISABLE_SECMEM, 0);
    gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
    S.backing = open(backing, O_RDWR | O_CLOEXEC | O_NOFOLLOW | (S.direct ? O_DIRECT : 0));
    if (S.backing < 0) die(backing);
    struct stat st;
    if (fstat(S.backing, &st)) die("fstat backing");
    if ((uint64_t)st.st_size < S.size) { fprintf(stderr, "transport-fuse: %s is smaller than --size\n", backing); exit(2); }
    do {
      if (getrandom(S.key, sizeof S.key, 0) != (ssize_t)sizeof S.key) die("getrandom");
    } while (!memcmp(S.key, S.key + 32, 32)); /* XTS wants two different halves */
  }

  /* Every thread inherits the blocked set; main takes the signals with sigwait. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);

  S.devfd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (S.devfd < 0) die("open /dev/fuse");
  char data[256];
  snprintf(data, sizeof data, "fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions,max_read=%u",
           S.devfd, MAX_IO);
  if (mount("ebsd-transport", S.mount, "fuse.ebsd-transport", MS_NOSUID | MS_NODEV, data)) die("mount");

  pthread_t tid;
  int nq = 0;
  if (S.uring) {
    /* One classic reader for INIT and FORGET; one pinned queue thread per CPU. */
    pthread_create(&tid, NULL, classic_worker, (void *)(intptr_t)S.devfd);
    nq = (int)sysconf(_SC_NPROCESSORS_CONF);
    if (nq > MAX_QUEUES) nq = MAX_QUEUES;
    for (int q = 0; q < nq; q++) pthread_create(&tid, NULL, uring_queue, (void *)(intptr_t)q);
    while (atomic_load(&S.queues_registered) < nq && !atomic_load(&S.failed)) usleep(1000);
  } else {
    for (int i = 0; i < S.threads; i++)
      pthread_create(&tid, NULL, classic_worker, (void *)(intptr_t)(i == 0 ? S.devfd : clone_fd()));
  }

  char path[4096];
  snprintf(path, sizeof path, "%s/%s", S.mount, S.name);
  struct stat st;
  int ok = !atomic_load(&S.failed) && stat(path, &st) == 0 && (uint64_t)st.st_size == S.size;
  if (ok && S.uring && atomic_load(&S.served_ring) == 0) {
    fprintf(stderr, "transport-fuse: the stat was not served through the ring\n");
    ok = 0;
  }
  if (ok && !atomic_load(&S.failed)) {
    printf("ready %s\n", path);
    fflush(stdout);
    int sig;
    sigwait(&sigs, &sig);
  } else {
    fprintf(stderr, "transport-fuse: not ready (%s mode)\n", S.uring ? "uring" : "classic");
  }
  int failed = atomic_load(&S.failed) || !ok;
  if (umount2(S.mount, MNT_DETACH)) perror("transport-fuse: umount2");
  explicit_bzero(S.key, sizeof S.key);
  fprintf(stderr, "transport-fuse: unmounted; served classic %llu, ring %llu\n",
          (unsigned long long)atomic_load(&S.served_classic), (unsigned long long)atomic_load(&S.served_ring));
  _exit(failed ? 1 : 0);
}
