/* bucket.h - the unit of response output handed from a worker to the loop:
 * a block of bytes (copied out of Python objects, or referenced in one
 * that a bucket keeps alive) or a slice of an open file to send with
 * sendfile(2). Buckets form singly linked chains.
 *
 * A reference bucket points into memory it does not own: `owner` keeps
 * it alive (for the WSGI side, a bytes object of the app's). Whoever
 * frees such a bucket may hold no right to release the owner (the loop
 * thread never touches Python), so ymo_bucket_free hands the bucket to
 * its release list instead, and a thread that may release owners takes
 * the whole list later (ymo_release_take).                              */
#ifndef YMO_BUCKET_H
#define YMO_BUCKET_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/types.h>

#include "alloc.h"

struct ymo_release;
struct ymo_spares;

typedef struct ymo_bucket {
    struct ymo_bucket *next;
    const char *ptr;  /* the bytes to send: data, or the owner's memory */
    void *owner;      /* reference bucket: keeps ptr alive; else NULL */
    struct ymo_release *rel;   /* reference bucket: where it goes when
                                * freed (see ymo_release_t) */
    size_t len;       /* bytes of data in this bucket (or of the file) */
    size_t off;       /* bytes already consumed: written by the loop
                       * (output), read by the worker under the
                       * exchange's lock (input) */
    size_t cap;       /* room in data[] (0 for a reference bucket) */
    int fd;           /* -1: memory bucket; else a file descriptor owned
                       * by the bucket (closed when freed) */
    unsigned from_ex : 1;  /* counts toward the exchange's out_buffered */
    struct ymo_spares *spares; /* where it goes back when freed, or NULL
                                * (see ymo_spares_t); set by the thread
                                * that takes it, fixed from then on */
    off_t file_off;   /* file offset of the first byte to send */
    char data[];
} ymo_bucket_t;

/* The memory a bucket of a response holds beyond its bytes: its header,
 * and in a memory bucket the room it does not fill (a 4 KB bucket may
 * carry one item of a byte: an app that streams small items, posted one
 * by one, to a client that reads nothing). An exchange's out_buffered
 * counts it with the bytes (from the worker's append until the loop
 * frees the bucket), so out_high_water bounds the memory a response
 * holds, not only its bytes. len + slack is fixed once the bucket is
 * handed over (merge_into_tail turns room into bytes, not the sum), so
 * what the loop takes back is what the worker counted. A file bucket
 * holds no memory for its bytes and counts only them. */
static inline size_t
ymo_bucket_slack(const ymo_bucket_t *b)
{
    if (b->fd >= 0) {
        return 0;
    }
    return sizeof(*b) + (b->owner == NULL ? b->cap - b->len : 0);
}

/* Whether n more bytes may be copied into b's data[]: a memory bucket
 * with that much room. A reference bucket has no data[] to copy into, and
 * a file bucket's len counts the file's bytes (its cap is 0: cap - len
 * wraps round, and a write() after a file_wrapper overflowed the bucket,
 * C review s24). */
static inline int
ymo_bucket_fits(const ymo_bucket_t *b, size_t n)
{
    return b->owner == NULL && b->fd < 0 && b->cap - b->len >= n;
}

/* The three allocate, and return NULL when out of memory. Each is called
 * through a macro of its name, which in a fault-injection build adds the
 * caller's site (see alloc.h): which bucket failed is the caller's
 * business, not this file's. */

/* A memory bucket with room for cap bytes, len 0. */
ymo_bucket_t *(ymo_bucket_new)(size_t cap YMO_SITE_PARAM);
#define ymo_bucket_new(cap) (ymo_bucket_new)((cap) YMO_SITE_HERE("bucket"))

/* Memory buckets of one size kept for reuse. A response is written into
 * buckets on a worker and they are freed on the loop thread, so glibc's
 * per-thread caches never hand a freed one back to the thread that wants
 * the next; and at 4 KB they are past the sizes those caches keep. Each
 * response paid a trip through the arena for its malloc and its free
 * (about 350 instructions and two more lock pairs). A bucket taken from
 * here goes back when freed, on any thread; past `max` it is freed. */
typedef struct ymo_spares {
    pthread_mutex_t lock;      /* a leaf: nothing is taken while held. It
                                * is never destroyed: a bucket freed after
                                * ymo_spares_drain still takes it (a
                                * default mutex holds no resource). */
    ymo_kept_t kept;           /* lock: the spares (linked by next, the
                                * first field) */
    size_t max;                /* lock: 0 once drained */
    size_t cap;                /* fixed: their room in data[] */
    unsigned fork_gen;         /* fixed: ymo_fork_gen (server.h) at init.
                                * In a fork of the process the lock may
                                * be held by a thread that is gone: there
                                * buckets are malloc'd and freed. */
} ymo_spares_t;

/* Keep up to max spares of cap bytes each (none yet). */
void ymo_spares_init(ymo_spares_t *sp, size_t cap, size_t max);

/* Free the spares; from now on a bucket that comes back is freed. */
void ymo_spares_drain(ymo_spares_t *sp);

/* As ymo_bucket_new(cap), but when sp is not NULL and cap is its size, a
 * spare of sp's if it has one, and the bucket goes back to sp when freed
 * (any thread). The call counts as one allocation site either way. */
ymo_bucket_t *(ymo_bucket_new_from)(ymo_spares_t *sp,
                                    size_t cap YMO_SITE_PARAM);
#define ymo_bucket_new_from(sp, cap)                                       \
    (ymo_bucket_new_from)((sp), (cap) YMO_SITE_HERE("bucket"))

/* A memory bucket holding a copy of data[0..len). */
ymo_bucket_t *(ymo_bucket_copy)(const void *data, size_t len YMO_SITE_PARAM);
#define ymo_bucket_copy(data, len)                                         \
    (ymo_bucket_copy)((data), (len) YMO_SITE_HERE("bucket copy"))

/* A file bucket; takes ownership of fd when it succeeds (on failure the
 * caller still owns it). */
ymo_bucket_t *(ymo_bucket_file)(int fd, off_t off, size_t len YMO_SITE_PARAM);
#define ymo_bucket_file(fd, off, len)                                      \
    (ymo_bucket_file)((fd), (off), (len) YMO_SITE_HERE("file bucket"))

/* A reference bucket: ptr[0..len), kept alive by owner until the bucket
 * is freed and the owner released from `rel`. The caller's reference to
 * owner passes to the bucket when this succeeds. */
ymo_bucket_t *(ymo_bucket_ref)(const void *ptr, size_t len, void *owner,
                               struct ymo_release *rel YMO_SITE_PARAM);
#define ymo_bucket_ref(ptr, len, owner, rel)                               \
    (ymo_bucket_ref)((ptr), (len), (owner), (rel)                          \
                     YMO_SITE_HERE("reference bucket"))

/* Where freed reference buckets wait for their owners to be released: a
 * lock-free stack. Any thread pushes (ymo_bucket_free); a thread that
 * may release the owners takes the whole list at once, so a node is
 * never popped alone and the stack has no ABA problem. The push that
 * makes the list non-empty calls wake(wake_arg) (set before any push,
 * then read-only; NULL for none), so the owner of the list can see that
 * someone takes it soon. */
typedef struct ymo_release {
    _Atomic(ymo_bucket_t *) head;   /* any thread (seq_cst) */
    void (*wake)(void *arg);
    void *wake_arg;
} ymo_release_t;

/* An empty list that calls wake(arg) when it stops being empty. */
void ymo_release_init(ymo_release_t *r, void (*wake)(void *), void *arg);

/* Whether buckets wait in the list (a hint: one may be pushed just
 * after). Inline: workers ask after every exchange. */
static inline int
ymo_release_pending(ymo_release_t *r)
{
    return atomic_load(&r->head) != NULL;
}

/* Any thread: push b onto r (ymo_bucket_free does so with a reference
 * bucket, onto its own list; other lists carry buckets of their own
 * kind, see their owner). */
void ymo_release_push(ymo_release_t *r, ymo_bucket_t *b);

/* Take every bucket waiting in the list, linked by `next`, or NULL. The
 * caller releases each one's owner and frees it (ymo_bucket_free_taken). */
ymo_bucket_t *ymo_release_take(ymo_release_t *r);

/* Free a bucket taken from a release list, or any reference bucket whose
 * owner the caller has released: owner is not touched. */
void ymo_bucket_free_taken(ymo_bucket_t *b);

/* Free one bucket (closing its file, if any; a reference bucket goes to
 * its release list, a spare back to its ymo_spares_t). Any thread. */
void ymo_bucket_free(ymo_bucket_t *b);

/* Free a whole chain. */
void ymo_bucket_free_chain(ymo_bucket_t *b);

#endif /* YMO_BUCKET_H */
