/* exchange.h - one request/response exchange, the only object the loop
 * and a worker share. The loop creates it when a request head is complete
 * (with its own copy of the head, so the worker never reads connection
 * memory), feeds it the request body, and writes the output the worker
 * appends; the worker runs the app on it. Plain C: no Python here.
 *
 * Lifetime: an exchange is reference-counted. The loop holds one
 * reference for itself and the worker running the app: it drops it once
 * the worker has posted its final output (out_done) and the connection
 * has written it or gone away (conn == NULL). A wsgi.input object holds
 * one until the worker detaches it, and an app thread blocked in a read or
 * a write holds one while it waits, so a thread of the app that is still
 * reading when the response is done never touches freed memory. The last
 * release frees, on whatever thread that is.                            */
#ifndef YMO_EXCHANGE_H
#define YMO_EXCHANGE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "bucket.h"
#include "http_parser.h"
#include "queue.h"

struct ymo_conn;
struct ymo_server;
struct ymo_listener;
struct ymo_wsgi_worker;

/* dispatch_seq: the bits below this one number the exchanges of a turn. */
#define YMO_TURN_SHIFT 20
/* Below this place: an exchange not read in its turn (carried over: a
 * connection that waited for room, a pipelined request), queued in order
 * ahead of the turn's reads. */
#define YMO_TURN_CARRIED (1u << (YMO_TURN_SHIFT - 1))

typedef struct ymo_exchange {
    /* -- Immutable once the loop has dispatched the exchange. -- */
    int in_block;                  /* allocated YMO_EX_BLOCK bytes: the
                                    * loop may keep it for the next
                                    * (ymo_exchange_cache_begin) */
    ymo_http_request_t req;        /* pointers into head[] */
    struct ymo_server *server;
    const struct ymo_listener *listener;
    char remote_addr[64];          /* numeric address, "" for unix */
    int remote_port;               /* -1 for unix sockets */
    int trusted;                   /* from a trusted proxy: believe its
                                    * Forwarded / X-Forwarded-* fields */
    uint64_t seq;                  /* request number on its connection */
    uint64_t dispatch_seq;         /* its place in arrival order: set by
                                    * the loop before it is queued, read
                                    * with that queue's lock_in held. The
                                    * loop turn in the high bits, then its
                                    * place in the turn (see
                                    * ymo_server_dispatch) */
    double queued_at;              /* ymo_server_now() when it began to
                                    * wait for a worker (queue_timeout;
                                    * the worker reads the same clock
                                    * with ymo_monotonic_now) */

    /* -- Loop thread only. -- */
    struct ymo_conn *conn;         /* NULL once the connection is gone */
    struct ymo_wsgi_worker *assigned;  /* worker whose queue got it */
    int worker_done;               /* the worker's final post arrived */

    /* -- Set by the worker that dequeues it, before its first post; the
     * loop reads it only for exchanges that worker posted. -- */
    struct ymo_wsgi_worker *worker;

    /* -- Queue nodes of its own, used when a queue's pool is empty, so a
     * hand-off never allocates (see queue.h). node_in: whoever holds the
     * lock_in of the queue it is in; node_out: likewise with lock_out.
     * An exchange is in at most one input queue, and in an output queue
     * at most once (out_queued). -- */
    ymo_queue_node_t node_in;
    ymo_queue_node_t node_out;

    /* -- Any thread: see "Lifetime" above. -- */
    atomic_int refs;

    /* -- Shared: guarded by lock. -- */
    pthread_mutex_t lock;
    pthread_cond_t cond_in;        /* readers wait here for body bytes */
    pthread_cond_t cond_out;       /* writers wait here for the loop to
                                    * write what is buffered */
    int in_waiters;                /* threads waiting on cond_in */
    size_t in_want;                /* while in_waiters: the fewest bytes
                                    * a waiting reader needs buffered (or
                                    * the end, an error, a pause) before
                                    * it is worth waking */
    int out_waiters;               /* threads waiting on cond_out */
    int aborted;                   /* client gone or timed out: stop */
    int client_eof;                /* the client shut down its sending
                                    * side after the request */
    /* request body: loop appends, worker reads. One exception to the
     * lock: the loop read()s a Content-Length body straight into the
     * room of in_tail, data[len..cap), without the lock, and publishes
     * the bytes (len, in_buffered) under it (ymo_exchange_input_space
     * and _commit); the worker reads only data[off..len) and never frees
     * the tail while it has room and the body is not done. */
    ymo_bucket_t *in_head, *in_tail;
    size_t in_buffered;            /* bytes in the input chain */
    int in_done;                   /* whole body received */
    int in_error;                  /* body framing error status, or 0 */
    int in_paused;                 /* loop stopped reading (high water) */
    int in_started;                /* worker asked for the body */
    uint64_t in_received;          /* body bytes the loop delivered */
    /* response: worker appends, loop writes */
    ymo_bucket_t *out_head, *out_tail;
    size_t out_buffered;           /* appended and not yet written, with
                                    * the buckets' slack (bucket.h) */
    int out_started;               /* some output was appended (the head
                                    * may be out: too late for a 503) */
    int out_queued;                /* in the worker's queue_out */
    int out_complete;              /* the response is complete (set with
                                    * out_done too, or before it while
                                    * the app's close() runs): the app's
                                    * later reads and waits return at
                                    * once, as after out_done */
    int out_done;                  /* final output appended: the exchange
                                    * is over for the app (later posts,
                                    * reads and waits return at once) */
    int out_close;                 /* close the connection after it */
    int out_abort;                 /* abort: close without finishing */
    int out_reset;                 /* abort at once: drop queued output,
                                    * reset the connection */
    int out_to_close;              /* the body ends at the close (no
                                    * Content-Length, not chunked): a cut
                                    * must be a reset (conn_close_cut) */
    int out_whole;                 /* every byte of the response is
                                    * posted (its Content-Length reached,
                                    * or it has no body), though the app
                                    * may still run: the watchdog must
                                    * not reset it */
    int need_continue;             /* send "100 Continue" */
    int need_resume;               /* resume reading the body */

    /* -- Whoever reads wsgi.input, under the GIL. -- */
    uint64_t in_consumed;          /* body bytes handed to the app */

    size_t head_len;
    char head[];                   /* copy of the request head */
} ymo_exchange_t;

/* Exchanges come and go with every request, tens of them in a turn of
 * the loop: past what glibc's per-thread cache keeps (7 of a size), each
 * went through the arena at both ends. Between these two calls (a loop
 * thread, around its run) the calling thread keeps the exchanges whose
 * last reference it drops itself, most of them (the loop drops its own
 * once the response is written), for the next it creates: up to
 * YMO_EX_CACHE_MAX of those with a head that fits YMO_EX_BLOCK bytes.
 * _end frees them. Not in a fault-injection build (every exchange is an
 * allocation to fail there). */
#define YMO_EX_BLOCK 2048
#define YMO_EX_CACHE_MAX 64
void ymo_exchange_cache_begin(void);
void ymo_exchange_cache_end(void);

/* Loop thread: new exchange with a copy of the parsed head in buf.
 * `req` points into buf; its pointers are rebased into the copy. */
ymo_exchange_t *ymo_exchange_new(const char *buf, size_t head_len,
                                 const ymo_http_request_t *req);

/* Any thread: take a reference (the caller must already hold one, or
 * know that one is held for it). */
void ymo_exchange_retain(ymo_exchange_t *ex);

/* Any thread: drop a reference; the last one frees the exchange (or,
 * on a thread between ymo_exchange_cache_begin and _end, keeps it for
 * that thread's next ymo_exchange_new). */
void ymo_exchange_release(ymo_exchange_t *ex);

/* Loop thread: append request body bytes (done: the body is complete).
 * Returns 1 when the input is above the high-water mark and the loop
 * should stop reading (in_paused is then set), 0 otherwise, -ENOMEM (then
 * part of data may have been appended, and the body is not done: the
 * caller fails the input). */
int (ymo_exchange_input_append)(ymo_exchange_t *ex, const char *data,
                                size_t len, int done, size_t high_water
                                YMO_SITE_PARAM);
#define ymo_exchange_input_append(ex, data, len, done, high_water)         \
    (ymo_exchange_input_append)((ex), (data), (len), (done),               \
                                (high_water) YMO_SITE_HERE("body bucket"))

/* Loop thread: room at the end of the input chain to receive body bytes
 * straight into (no copy), *room bytes of it; left: body bytes still to
 * come (a new bucket is no bigger). The room is the loop's until it
 * commits it: the worker never reads or frees past the bytes committed.
 * NULL when out of memory (the caller fails the input). */
char *(ymo_exchange_input_space)(ymo_exchange_t *ex, uint64_t left,
                                 size_t *room YMO_SITE_PARAM);
#define ymo_exchange_input_space(ex, left, room)                           \
    (ymo_exchange_input_space)((ex), (left), (room)                        \
                               YMO_SITE_HERE("body bucket"))

/* Loop thread: n bytes were received into the room input_space gave
 * (done: the body is complete). Returns what ymo_exchange_input_append
 * does, never -ENOMEM. */
int ymo_exchange_input_commit(ymo_exchange_t *ex, size_t n, int done,
                              size_t high_water);

/* Loop thread: append b, a memory bucket holding body bytes from b->off
 * to b->len, to the input chain, which owns it from now on (its room past
 * len is the loop's, as input_space's is). Returns what
 * ymo_exchange_input_commit does. */
int ymo_exchange_input_adopt(ymo_exchange_t *ex, ymo_bucket_t *b, int done,
                             size_t high_water);

/* Loop thread: the body cannot complete (status: 400/413, or -1 when the
 * client went away). Wakes a waiting worker. */
void ymo_exchange_input_fail(ymo_exchange_t *ex, int status);

/* *status of a read whose body was cut off because the server stopped
 * (its grace period ran out), not because the client left. */
#define YMO_READ_STOPPED (-3)

/* Loop thread: the client is gone or timed out (reason -1), or the server
 * stopped before the exchange could finish (YMO_READ_STOPPED); the worker
 * stops at its next read or write. */
void ymo_exchange_abort(ymo_exchange_t *ex, int reason);

/* Loop thread: the client shut down its sending side after a complete
 * request (it may still be reading: the response goes on). */
void ymo_exchange_client_eof(ymo_exchange_t *ex);

/* Any thread holding a reference: has the client reset, timed out or
 * closed (best effort: a client that only shut down its sending side
 * counts as closed)? */
int ymo_exchange_client_gone(ymo_exchange_t *ex);

/* Any thread, lock held: wake every thread waiting to read or to write
 * (the exchange is over for them: aborted, or its final post arrived). */
void ymo_exchange_wake_all(ymo_exchange_t *ex);

/* Loop thread: n bytes of the exchange's output were written. */
void ymo_exchange_output_written(ymo_exchange_t *ex, size_t n,
                                 size_t low_water);

/* *status of a read that failed because the response was already
 * complete (the app's thread read after the exchange ended). */
#define YMO_READ_FINISHED (-2)

/* Worker or an app thread, GIL released (it may block), holding a
 * reference: copy n body bytes to dst, fewer only at the end of the body
 * or before a failure (which the next call reports), stopping after a
 * '\n' when `line`. Returns bytes copied, 0 at the end of the body, -1
 * when the body failed (*status: 400/408/413/500, -1 when the client went
 * away, YMO_READ_FINISHED once the response is complete and nothing is
 * left).
 * Asks for "100 Continue" and for more input as needed, through
 * ymo_wsgi_worker_post(). */
long ymo_exchange_read(ymo_exchange_t *ex, char *dst, size_t n, int line,
                       size_t low_water, int *status);

/* Worker or an app thread, GIL released, holding a reference: wait until
 * the loop has written the output down to low_water bytes. Returns 1 when
 * the client is gone or the response is already complete (stop writing),
 * 0 otherwise. */
int ymo_exchange_wait_drain(ymo_exchange_t *ex, size_t low_water);

#endif /* YMO_EXCHANGE_H */
