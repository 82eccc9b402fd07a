/* wsgi_worker.h - the thread worker (see shared/seed/thread-worker.rst):
 * N threads that run the WSGI app, fed by the loop through an input queue
 * and a condition variable, answering through an output queue and an
 * ev_async watcher. This header is plain C so the loop can use it; only
 * wsgi_worker.c touches Python (one persistent thread state per worker).
 *
 * Locks: lock_in guards queue_in, running and poked; lock_out guards
 * queue_out. Each is held for a few pointer operations only and never while
 * waiting for anything else, so a worker may take them with the GIL held.
 * Neither is held together with another worker's lock, but for one case
 * below. watch_lock is the request watchdog's view of the worker (see
 * wsgi_watchdog.c).
 *
 * The one lock order: watch_lock, then an exchange's lock, then lock_out
 * (the watchdog answers a timed-out exchange holding watch_lock; a post
 * queues its exchange with the exchange's lock held; the loop takes an
 * exchange's lock only after releasing lock_out); and watch_lock, then
 * lock_in (the watchdog starts a spare slot's thread holding the stuck
 * worker's watch_lock: ymo_wsgi_worker_restart takes the spare's lock_in).
 * No thread ever holds two watch_locks: a spare slot's watchdog fields are
 * reset when the watchdog joins its last thread (wsgi_watchdog.c reap),
 * not when it starts the next one. (Resetting them in restart, under the
 * stuck worker's watch_lock, nested two watch_locks whose roles swap when
 * the replacement is stuck in turn: ThreadSanitizer reported that as a
 * lock-order inversion.)
 *
 * Slots: with a request timeout the server has twice `workers` slots;
 * the spares have no thread (unused, retired) until the watchdog starts
 * one in place of a stuck worker, which retires (exits) when it comes
 * back.                                                                  */
#ifndef YMO_WSGI_WORKER_H
#define YMO_WSGI_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "bucket.h"
#include "exchange.h"
#include "queue.h"

#define YMO_WSGI_WORKER_QUEUE_POOL_SIZE 256

typedef int ymo_status_t;            /* 0 or a negative errno */

struct ymo_server;

/* Slots of a worker's cache of header value strings, and as many again
 * for the environ keys of uncommon fields. */
#define YMO_WSGI_VALUE_CACHE_BITS 6
#define YMO_WSGI_VALUE_CACHE (1 << YMO_WSGI_VALUE_CACHE_BITS)
#define YMO_WSGI_STR_CACHE (2 * YMO_WSGI_VALUE_CACHE)

typedef struct ymo_wsgi_worker {
    ymo_queue_t queue_in;            /* exchanges to run; lock_in */
    ymo_queue_t queue_out;           /* exchanges with news; lock_out */
    ymo_queue_node_t pool_in[YMO_WSGI_WORKER_QUEUE_POOL_SIZE];
    ymo_queue_node_t pool_out[YMO_WSGI_WORKER_QUEUE_POOL_SIZE];

    /* Loop thread: signals the worker once per loop iteration, however
     * many exchanges the iteration queued. */
    ev_prepare prepare_watcher;

    /* Output data is signalled to the evloop using an async watcher: */
    ev_async event_out;
    pthread_mutex_t lock_out;

    /* Inbound data is signalled using a condition var: */
    pthread_mutex_t lock_in;
    pthread_cond_t ready_in;

    /* And the thread itself: */
    pthread_t thread;
    size_t id;
    int running;                     /* lock_in; cleared to stop */

    int poked;                       /* lock_in: look for work to steal */
    atomic_size_t n_in;              /* queue_in.count, stored (seq_cst)
                                      * with lock_in held after each push
                                      * and pop; read without the lock to
                                      * skip an empty queue (take_from) */
    _Atomic uint64_t head_seq;       /* seq of queue_in's first exchange,
                                      * UINT64_MAX when empty: stored with
                                      * n_in; read without the lock to find
                                      * the oldest queued (take_oldest) */
    atomic_int idle;                 /* worker: about to sleep; any reads */
    atomic_int in_app;               /* worker: has exchanges to run (from
                                      * taking the GIL for them to giving
                                      * it back); the joiner reads it to
                                      * tell a stuck worker from one that
                                      * is exiting */
    struct ev_loop *loop;            /* the loop that owns event_out */
    struct ymo_server *server;       /* read-only after start */
    int started;                     /* creator thread only */
    sigset_t sigmask;                /* the creator's signal mask: set
                                      * before the thread starts, then
                                      * read-only */
    int thread_initialized;          /* init succeeded; creator only */
    size_t assigned;                 /* loop only: dispatched, not done */
    int notify_pending;              /* loop only: prepare will notify */
    uint64_t push_turn;              /* loop only: the turn (server.h) of
                                      * the last push to queue_in */

    /* -- The request watchdog (wsgi_watchdog.c), only with a timeout.
     * watch_lock guards the fields under it; the worker takes it with the
     * GIL held, twice per exchange, and the watchdog holds it only for a
     * few pointer operations and one hand-off to the loop (the detach),
     * never while waiting for the GIL. Lock order: watch_lock, then an
     * exchange's lock, then lock_out. -- */
    pthread_mutex_t watch_lock;
    ymo_exchange_t *current;         /* watch_lock: the exchange in the
                                      * app (the worker holds a reference
                                      * on it until it clears this) */
    uint64_t current_seq;            /* watch_lock: exchanges begun, so a
                                      * new exchange at the same address is
                                      * not mistaken for the old one */
    double current_start;            /* watch_lock: when it began
                                      * (ymo_watch_now) */
    int timed_out;                   /* watch_lock: the watchdog detached
                                      * `current`: YMO_WATCH_* (wsgi.h),
                                      * 0 while it has not */
    double timed_out_at;             /* watch_lock */
    int stuck;                       /* watch_lock: still in the app after
                                      * the RequestTimeout had its chance
                                      * (reported; if not `replaced`, the
                                      * watchdog replaces it once a slot
                                      * frees) */
    int replaced;                    /* watch_lock: a new thread took this
                                      * one's place: retire when back;
                                      * never replaced twice */
    char *overrun_head;              /* watch_lock: free-threaded builds
                                      * only: the watchdog's overrun line
                                      * (malloc'd), waiting for the stack
                                      * the worker takes from its own
                                      * RequestTimeout (wsgi_watchdog.c);
                                      * NULL when none is pending */
    unsigned long thread_ident;      /* worker sets it before its first
                                      * exchange; read under watch_lock
                                      * while `current` is set */
    int retiring;                    /* worker thread only: drain the queue
                                      * and exit */
    _Atomic uint64_t gil_wait_since; /* worker writes, holders of the GIL
                                      * read (relaxed: a hint): when it
                                      * began to wait for the GIL to take
                                      * queued exchanges (CLOCK_MONOTONIC
                                      * ns); 0 when it is not waiting so */
    uint64_t handover_ns;            /* worker thread only: hand the GIL to
                                      * a worker that has waited this long
                                      * (from sys.getswitchinterval()) */
    uint64_t switch_ns;              /* worker thread only: the switch
                                      * interval, bounding handover_wait */
    int eager;                       /* worker thread only: it waited long
                                      * for the GIL just now (stand_by) */
    atomic_int retired;              /* watchdog/worker write, loop reads:
                                      * dispatch nothing here (stuck, or no
                                      * thread) */
    atomic_int unused;               /* no thread and an empty queue:
                                      * peers need not look at it. Written
                                      * by whoever starts or joins the
                                      * slot's thread, read by peers */
    atomic_int exited;               /* the thread has returned (set by it,
                                      * last); the watchdog joins it */
    struct _object *values[YMO_WSGI_STR_CACHE];
                                     /* worker thread only, attached: the
                                      * str of recent header values, then
                                      * of recent environ keys, to reuse
                                      * when a request repeats them
                                      * (wsgi_environ.c value_str); cleared
                                      * by the thread before `exited` */
    struct _object *spare_sr;        /* worker thread only, attached: the
                                      * StartResponse of an exchange that
                                      * nothing held at its end, for the
                                      * next (GIL builds: wsgi_response.c,
                                      * start_response_new); cleared with
                                      * `values` */
} ymo_wsgi_worker_t;

/* Initialize a worker thread (not started). Loop thread. */
ymo_status_t ymo_wsgi_worker_init(struct ev_loop *loop, size_t thread_id,
                                  ymo_wsgi_worker_t *worker);

/* Start a worker thread. Called with the GIL held: the thread creates its
 * thread state and waits for the GIL. */
ymo_status_t ymo_wsgi_worker_start(ymo_wsgi_worker_t *worker);

/* Start a thread for a slot whose thread has exited or never ran (a
 * replacement started by the watchdog), with the signal mask `mask` (the
 * one the first workers were started with). Any thread, GIL not
 * needed. */
ymo_status_t ymo_wsgi_worker_restart(ymo_wsgi_worker_t *worker,
                                     const sigset_t *mask);

static inline int
ymo_wsgi_worker_lock_in(ymo_wsgi_worker_t *worker)
{
    return pthread_mutex_lock(&worker->lock_in);
}

static inline int
ymo_wsgi_worker_unlock_in(ymo_wsgi_worker_t *worker)
{
    return pthread_mutex_unlock(&worker->lock_in);
}

static inline int
ymo_wsgi_worker_lock_out(ymo_wsgi_worker_t *worker)
{
    return pthread_mutex_lock(&worker->lock_out);
}

static inline int
ymo_wsgi_worker_unlock_out(ymo_wsgi_worker_t *worker)
{
    return pthread_mutex_unlock(&worker->lock_out);
}

/* Loop thread: add an exchange to the worker's input queue (this cannot
 * fail: the exchange brings a queue node of its own). The worker is
 * signalled from prepare_watcher, once per loop iteration. */
void ymo_wsgi_worker_add_exchange(ymo_wsgi_worker_t *worker,
                                  ymo_exchange_t *exchange);

/* Flags for `done` below: the final output, and what follows it. */
#define YMO_DONE 1
#define YMO_DONE_CLOSE 2           /* close the connection after it */
#define YMO_DONE_ABORT 4           /* the response is incomplete: close */
#define YMO_DONE_RESET 8           /* with ABORT: drop what is still queued
                                    * and reset the connection (the
                                    * watchdog cut a begun response, or
                                    * an app error one that ends at the
                                    * close) */
#define YMO_OUT_COMPLETE 16        /* without YMO_DONE: the last bytes of
                                    * the response. The loop writes them;
                                    * the exchange (and the connection's
                                    * next request) waits for the done
                                    * post, made once the iterable's
                                    * close() has returned */
#define YMO_OUT_TO_CLOSE 32        /* with any post once the head is in:
                                    * the body ends at the close */
#define YMO_OUT_WHOLE 64           /* with a post: every byte of the
                                    * response is in (out_whole) */

/* What response_body_append reports back. */
#define YMO_OUT_ABORTED 1          /* the client is gone: stop */
#define YMO_OUT_HIGH_WATER 2       /* wait for the loop to write */

/* Worker thread (or an app thread holding a reference): append a bucket
 * chain (may be NULL; the exchange takes it) to the exchange's response
 * and tell the loop; `done` (YMO_DONE | ...) marks the final output.
 * After a post with done the worker must not touch the exchange again
 * (except through a reference of its own); later posts are refused
 * (YMO_OUT_ABORTED, the chain freed). Never fails: returns YMO_OUT_*
 * flags. */
int ymo_wsgi_worker_response_body_append(ymo_exchange_t *exchange,
                                         ymo_bucket_t *body_item, int done);

/* Any thread, while a reference is held: end the exchange from outside
 * the app (the request watchdog). Unless its final output is in already
 * (returns 0; when the response is complete but not done, the app being
 * in close(), the connection closes after it, so its next request never
 * waits on an app that overran), the client gets `error` (a complete response, taken) when
 * no output was appended yet (returns 1), otherwise the connection closes
 * on what it has (returns 2); the app's later reads and writes fail as
 * for a client that went away, and its later posts are refused. */
int ymo_wsgi_worker_response_cut(ymo_exchange_t *exchange,
                                 ymo_bucket_t *error);

/* Worker thread (or an app thread holding a reference): tell the loop to
 * look at the exchange's flags (need_continue, need_resume) without new
 * output. */
void ymo_wsgi_worker_post(ymo_exchange_t *exchange);

/* Signals across thread boundaries to notify a worker that input data is
 * available for processing. The loop thread, or a worker waking a peer to
 * stand by (wsgi_worker.c). */
ymo_status_t ymo_wsgi_worker_notify(ymo_wsgi_worker_t *worker);

/* Does one worker run Python at a time (a GIL build, or a free-threaded
 * one with the GIL back on)? Then the loop hands a turn's exchanges to
 * one worker and wakes at most one more to stand by (server.c dispatch).
 * Any thread; relaxed (server.h, gil_enabled). */
int ymo_wsgi_worker_gil_on(const struct ymo_server *s);

/* Ask the worker to exit once its queue is empty. Any thread. */
void ymo_wsgi_worker_stop(ymo_wsgi_worker_t *worker);

/* Join the worker thread: wait for it to end (wait != 0), or only take
 * it if it has (0: EBUSY while it still runs). 0 once joined. Call with
 * the GIL released. */
int ymo_wsgi_worker_join(ymo_wsgi_worker_t *worker, int wait);

/* Free what init allocated (after join, or if never started). */
void ymo_wsgi_worker_destroy(ymo_wsgi_worker_t *worker);

/* The request watchdog (wsgi_watchdog.c): a thread that finds requests
 * running longer than config.request_timeout in the app. Start it with
 * the GIL held, after the workers (nothing happens without a timeout);
 * stop it with the GIL released: it is joined (repeated calls are
 * harmless). 0 or a negative errno. */
int ymo_watchdog_start(struct ymo_server *s);
void ymo_watchdog_stop(struct ymo_server *s);

#endif /* YMO_WSGI_WORKER_H */
