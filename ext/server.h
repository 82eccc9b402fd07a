/* server.h - one server: its libev loop (the I/O thread), listening
 * sockets, connections and workers, and the configuration they share.
 * Plain C: the loop never touches Python. The Python-facing side hands
 * over listening sockets it bound and an opaque app context for the
 * workers. */
#ifndef YMO_SERVER_H
#define YMO_SERVER_H

#include <ev.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <time.h>

#include "exchange.h"
#include "heartbeat.h"
#include "http_parser.h"
#include "trust.h"
#include "wsgi_worker.h"

struct ymo_conn;
struct ymo_wsgi_app;

/* Size of the loop's read buffer. */
#define YMO_SCRATCH_SIZE 65536

/* Read-only once the server starts. */
typedef struct ymo_config {
    ymo_http_limits_t limits;
    size_t workers;
    double header_timeout;     /* a request head must arrive within */
    double keepalive_timeout;  /* idle keep-alive connection; 0: no reuse */
    double body_timeout;       /* max gap between request body bytes */
    double write_timeout;      /* max stall writing to the client */
    size_t in_high_water;      /* buffered request body: stop reading */
    size_t out_high_water;     /* buffered response: the worker waits */
    size_t buffer_body;        /* bodies up to this many bytes arrive whole
                                * before a worker is engaged; 0: stream */
    double min_body_rate;      /* bytes/s a body must average over each
                                * YMO_RATE_WINDOW; 0: no minimum */
    size_t max_inflight;       /* exchanges handed to workers and not yet
                                * finished (workers + max_pending): at this
                                * many, no new request is parsed */
    double queue_timeout;      /* a request that waited longer for a worker
                                * gets 503; 0: no limit */
    ymo_trust_t trust;         /* peers whose Forwarded / X-Forwarded-*
                                * fields and PROXY headers are believed;
                                * the server frees it in destroy */
    unsigned proxy_headers;    /* which of a trusted peer's forwarding
                                * fields are believed: YMO_PH_* bits */
    int proxy_protocol;        /* trusted peers must open with a PROXY
                                * header (v1 or v2) */
    double request_timeout;    /* longest a request may run in the app
                                * before the watchdog steps in; 0: no
                                * watchdog (see wsgi_watchdog.c) */
    uint64_t max_requests;     /* after this many completed requests the
                                * process asks to be recycled; 0: never */
    int shared_listener;       /* other processes accept from the same
                                * listening sockets */
    int recycle_stops_accepting;   /* once it asked to be recycled for
                                    * max_requests, accept no more (the
                                    * listeners are shared: the others
                                    * and its successor take the new
                                    * clients) */
    int log_answers;           /* the loop's own answers are logged: it
                                * leaves a record of each in `answered` */
} ymo_config_t;

/* What the loop leaves for a worker to log (it cannot itself): a memory
 * bucket's data holds this and then head_len bytes of what the client
 * sent (the head as far as it came, at most YMO_ANSWER_HEAD_MAX bytes of
 * it). YMO_ANSWER_ACCESS: a request it answered alone, for the access
 * log (config.log_answers). YMO_ANSWER_SHORT_FILE: a response whose file
 * ended `missing` bytes before the length it was sent with, for the
 * error log (head: the request line). */
#define YMO_ANSWER_ACCESS 0
#define YMO_ANSWER_SHORT_FILE 1
typedef struct ymo_answer {
    int kind;
    int status;
    int remote_port;           /* -1 for a unix socket */
    size_t body_len;           /* of the answer */
    unsigned long long missing;
    double at;                 /* when (CLOCK_REALTIME seconds) */
    size_t head_len;
    char remote_addr[64];
} ymo_answer_t;
#define YMO_ANSWER_HEAD_MAX 8192
#define YMO_ANSWERS_MAX 1024
#define YMO_ANSWERS_BATCH 32

/* Seconds between two heartbeats of the loop. */
#define YMO_HEARTBEAT_INTERVAL 0.25

/* Seconds an idle connection is kept open once a stop began, or once its
 * response ended during a stop (its "last call"): a keep-alive client may
 * be sending its next request right now, and closing under it would fail
 * that request. A request that arrives in the window is answered with
 * Connection: close. No last call begins when the stop's deadline is
 * less than twice this away: a request that arrived would be cut off in
 * the app, after it ran, rather than refused before (ymo_conn_last_call). */
#define YMO_LAST_CALL 1.0

/* With the GIL, above this share of cut exchanges (cut_share, 1024ths:
 * more than half of the recent ones) the app is taken to block with the
 * GIL released, and the loop gives each exchange an idle worker of its
 * own (server.c, dispatch). Requests longer than the switch interval,
 * cut by forced switches, count too: for them every queued exchange
 * already gets a worker waiting for the GIL (wsgi_worker.c, stand_by's
 * eager case), so the loop waking them changes little (measured: p99
 * 206 ms against 212 for 15 ms requests on 16 connections). */
#define YMO_APP_BLOCKS 512

/* Seconds over which a request body's rate is measured. */
#define YMO_RATE_WINDOW 10.0

typedef struct ymo_listener {
    ev_io io;                  /* loop thread */
    struct ymo_server *server;
    int fd;                    /* owned by the server once init succeeded;
                                * -1 once closed (the stop began) */
    int is_unix;
    int nodelay_inherited;     /* TCP_NODELAY is set on the listener, so
                                * accepted sockets have it already (Linux
                                * copies it): no setsockopt per accept */
    unsigned nodelay_queued;   /* (loop thread) accepts that set it still:
                                * the accept queue's length when it was set
                                * on the listener (those sockets were
                                * created without it) */
    size_t index;              /* position in server->listeners */
} ymo_listener_t;

typedef struct ymo_server {
    struct ev_loop *loop;
    ymo_config_t config;
    ymo_listener_t *listeners;
    size_t n_listeners;
    ymo_wsgi_worker_t *workers;
    size_t n_workers;          /* slots: config.workers, plus as many
                                * spares for the watchdog's replacement
                                * threads when request_timeout is set
                                * (those start retired and unused) */
    struct ymo_wsgi_app *app;  /* opaque to the loop; workers use it */
    int listeners_forked_away; /* the listeners are in server.c's
                                * fork_fds (from the first start of the
                                * workers; the starting thread's) */
    unsigned fork_gen;         /* ymo_fork_gen when the workers started:
                                * written by the thread starting them,
                                * before it creates them; read-only
                                * after (ymo_server_forked) */
    unsigned loop_fork_gen;    /* ymo_fork_gen the loop's kernel state
                                * (epoll, the async eventfd) belongs to:
                                * written at init and by the thread
                                * starting the workers, before them */

    /* Loop thread only. */
    char *scratch;             /* connections read into this; a connection
                                * keeps a copy only of what is left over */
    ymo_bucket_t *scratch_bucket;  /* scratch is its data: an exchange may
                                    * take it over as an input bucket
                                    * (conn_feed_body_at), and the server
                                    * gets a new one */
    ymo_http_header_t *headers;    /* parser output, max_header_count long,
                                    * shared by all connections */
    struct ymo_conn *conns;    /* doubly linked list of the connections
                                * that are not idle (conn.c) */
    struct ymo_conn *idle_head[2];  /* idle connections, oldest first, by
                                     * the timeout that applies: [0] no */
    struct ymo_conn *idle_tail[2];  /* request yet, [1] kept alive */
    ev_timer idle_timer;       /* the first idle connection's timeout: one
                                * timer for all of them (conn.c) */
    ev_tstamp idle_timer_at;   /* when it fires, while active */
    double now;                /* the loop's clock (ymo_server_now) */
    size_t n_conns;            /* open connections, idle or not */
    size_t n_exchanges;        /* handed to workers, not yet finished */
    uint64_t turn;             /* loop turns that dispatched so far,
                                * the current one's included (loop) */
    unsigned int turn_iteration;    /* ev_iteration() of that turn */
    uint32_t turn_dispatched;  /* exchanges dispatched in it (loop) */
    uint32_t turn_carried;     /* of which not read in it (loop) */
    int dispatch_read;         /* loop: dispatching from a connection's
                                * read callback (conn_on_io), whose calls
                                * libev makes newest first in a turn */
    struct ymo_conn *stalled_head;  /* connections with a request waiting */
    struct ymo_conn *stalled_tail;  /* for room (max_inflight), in order */
    size_t next_worker;        /* round-robin start for dispatch */
    int draining_loop;         /* stop requested: no accepts, wind down */
    int cut_off;               /* the grace period ran out: what is left
                                * is aborted by the server, not a client */
    int stopped;               /* drained: ev_run returns for good */
    int accept_paused;         /* recycle_stops_accepting took effect */
    int recycle_due;           /* served max_requests: pauses accepting
                                * while a fresh sibling accepts (see
                                * server_update_recycle_pause) */
    int accept_deferred;       /* shared listener: waited once already
                                * (see listener_on_accept) */
    ev_io wakeup_watcher;      /* signal wakeup fd (main thread only) */
    ev_timer grace_timer;
    ev_timer accept_timer;     /* resumes accepting after EMFILE */
    ev_async stop_watcher;     /* any thread -> loop: stop */
    ev_tstamp drain_started;   /* loop time the stop began */
    ev_tstamp drain_deadline;  /* loop time in-flight work is cut off
                                * (`deadline`, read in the loop; INFINITY
                                * for stop(inf)), set with drain_started */
    uint64_t requests_done;    /* completed requests */
    ev_timer heartbeat_timer;  /* beats into `heartbeat` */

    ev_async release_watcher;  /* any thread -> loop: owners wait in
                                * `release` (server_release_wake) */
    ev_prepare release_prepare;    /* loop: owners were pushed in this
                                    * iteration; wake an idle worker */

    /* Shared. */
    atomic_size_t workers_attached;    /* workers and the watchdog that
                                * have made their thread state (each adds
                                * 1 once, at its start, restarts
                                * included); the thread that starts the
                                * workers waits for it
                                * (ymo_server_wait_workers_attached) */
    atomic_int draining;       /* loop writes; workers read (close conns) */
    atomic_int gil_enabled;    /* one worker runs Python at a time, so
                                * workers take the oldest exchange once
                                * attached (wsgi_worker.c). 1 until a
                                * worker of a free-threaded build has
                                * asked sys._is_gil_enabled(); workers
                                * write it while attached (at start and
                                * after each exchange) and read it;
                                * relaxed: a stale value only changes
                                * which exchange runs first */
    atomic_int standby;        /* with the GIL: 1 while a worker woken
                                * to stand by (wait for the GIL behind
                                * the one running Python, for exchanges
                                * left queued if that one blocks) has
                                * not yet attached or gone back to
                                * sleep. Set by whoever wakes it (the
                                * loop, or a worker: CAS 0 -> 1), cleared
                                * by any worker that attaches, goes idle
                                * or exits; seq_cst (wsgi_worker.c,
                                * stand_by). It can stay 1 with nobody
                                * woken (no idle peer was found; or the
                                * one the loop chose woke on its own and
                                * attached first) until a worker next
                                * attaches or goes idle: a wake-up may be
                                * skipped meanwhile, but a worker going
                                * idle clears it before its last look */
    /* The GIL hand-over (wsgi_worker.c, handover_due): with the GIL, a
     * worker that has waited for it long enough to force a switch in the
     * middle of a request gets it between two exchanges instead. */
    atomic_uint gil_waiters;   /* workers waiting for the GIL to take
                                * queued exchanges, each stamped in its
                                * gil_wait_since: each adds and removes
                                * itself; holders read it to skip looking
                                * at the stamps; relaxed (a hint) */
    atomic_ulong gil_turns;    /* incremented by every worker as it takes
                                * the GIL in worker_main and as it starts
                                * an exchange with the GIL: a worker that
                                * handed the GIL over waits for it to
                                * move, and one whose exchange saw it move
                                * by another was cut; seq_cst
                                * (handover_wait) */
    _Atomic uint64_t gil_attached_at;  /* when a worker last took the GIL
                                * in worker_main (CLOCK_MONOTONIC ns):
                                * each stores it, holders read it;
                                * relaxed (a hint) */
    atomic_uint cut_share;     /* share of the recent exchanges run with
                                * the GIL that it changed hands in (cut:
                                * the app blocked, a sleep or a query,
                                * and another worker ran meanwhile; or a
                                * forced switch), 1024ths: workers update
                                * it after each, the loop reads it
                                * (dispatch); relaxed (a hint, racing
                                * updates lose one) */
    atomic_uint handover_missed;   /* share of the recent hand-overs
                                * between exchanges that no worker took
                                * (1024ths): workers update it after one;
                                * relaxed (a hint, racing updates lose
                                * one) */
    _Atomic uint64_t handover_paused_until;  /* no hand-over between
                                * exchanges before then (ns): stored by a
                                * worker whose hand-over no worker took,
                                * read by holders; relaxed (a hint) */
    _Atomic uint64_t cut_handover_at;  /* when a holder last handed the
                                * GIL over after a cut exchange: holders
                                * store and read it; relaxed (a hint) */
    atomic_int handover_waiting;   /* workers in handover_wait; seq_cst */
    pthread_mutex_t handover_lock; /* guards no field: handover_cond's
                                    * mutex, held for a few instructions
                                    * (also while attached) */
    pthread_cond_t handover_cond;  /* CLOCK_MONOTONIC: a worker attached */
    atomic_ulong handovers;    /* counts, for tests and benchmarks; */
    atomic_ulong handover_timeouts;  /* workers write, relaxed */
    ymo_kept_t busy_spares;    /* loop: busy parts of connections kept
                                * for reuse (conn.c, conn_busy_new) */
    ymo_spares_t spares;       /* response buckets of YMO_SPARE_BUCKET
                                * bytes for reuse (bucket.h): any thread,
                                * under its own lock */
    ymo_release_t release;     /* freed reference buckets (bucket.h):
                                * pushed by any thread, taken by workers
                                * (attached: they release the owners)
                                * after each exchange, and by the thread
                                * that stops the server; lock-free */
    /* The requests the loop answers alone (a malformed head's 400, a 408,
     * 413, 414, 431 or 501, a 503 for a connection that waited too long
     * for room), for their access-log lines (config.log_answers), and the
     * responses it cut short because their file was shorter than said,
     * for the error log: one record each (ymo_answer_t in a memory
     * bucket), pushed by the loop, taken by workers attached after each
     * exchange (not, as `release` is, also while they post output: the
     * logging is the app's code), woken for them as for `release`, and
     * by the thread that stops the server. Each take logs its records
     * oldest first; two workers taking at once may interleave theirs. At
     * most YMO_ANSWERS_MAX wait (so they may wait behind long requests:
     * each keeps the time it was answered for its line): beyond that,
     * and when a record cannot be allocated, they are counted in
     * answers_dropped instead. */
    ymo_release_t answered;
    atomic_int answers_waiting;    /* records no logger has taken yet
                                    * (in `answered` or answers_head):
                                    * the loop adds, a logger subtracts
                                    * those it takes; seq_cst */
    /* Records taken from `answered` (a stack) oldest first, for loggers to
     * take YMO_ANSWERS_BATCH at a time: a worker logs one batch between
     * two exchanges, so a flood of them delays its queued requests by a
     * batch at most. answers_lock guards both pointers: workers and the
     * stopping thread, for a few instructions (never while logging). */
    pthread_mutex_t answers_lock;
    ymo_bucket_t *answers_head, *answers_tail;
    atomic_ulong answers_dropped;  /* the loop adds, the taker takes
                                    * (exchange to 0); seq_cst */
    atomic_int answers_logging;    /* records a logger has taken and not
                                    * logged yet: it adds a batch as it
                                    * takes it (under answers_lock) and
                                    * subtracts each once logged; read
                                    * after a stop that gave up on
                                    * workers (Core.answers_unlogged);
                                    * seq_cst */
    pthread_mutex_t ctl_lock;  /* guards stop_requested and deadline */
    int stop_requested;
    double deadline;           /* CLOCK_MONOTONIC seconds when in-flight
                                * work is cut off: set by the first stop,
                                * only ever moved earlier */

    /* The request watchdog's thread (wsgi_watchdog.c). watchdog_lock
     * guards watchdog_quit; the rest is the starting/joining thread's
     * (GIL held to start, released to join). */
    pthread_mutex_t watchdog_lock;
    pthread_cond_t watchdog_cond;  /* on CLOCK_MONOTONIC */
    int watchdog_quit;
    int watchdog_started;
    pthread_t watchdog_thread;
    sigset_t worker_sigmask;   /* the mask workers start with (set when
                                * the watchdog starts; then read-only) */
    /* Any thread: a recycle of the whole process was asked for (the
     * watchdog ran out of replacement threads). */
    atomic_int recycle_requested;

    ymo_heartbeat_t *heartbeat;    /* the supervisor's slot, or NULL (one
                                    * process); set before the loop runs,
                                    * then fixed. Fields: see heartbeat.h */
    ymo_heartbeat_t *siblings;     /* the whole table (heartbeat is one of
                                    * its entries), n_siblings long; the
                                    * loop thread reads the others' conns
                                    * and accepting */
    size_t n_siblings;
    int notify_fd;             /* non-blocking pipe to the supervisor, or
                                * -1: a byte "r" when a recycle is first
                                * asked for. Fixed once the loop runs. */
} ymo_server_t;

/* Any thread: answers wait to be logged (ymo_wsgi_log_answers), or a
 * count of those dropped (a hint, as below). */
static inline int
ymo_server_answers_owed(ymo_server_t *s)
{
    return atomic_load(&s->answers_waiting) != 0 ||
           atomic_load(&s->answers_dropped) != 0;
}

/* Any thread: owners wait to be released, or answers to be logged, by a
 * worker (a hint: one may be pushed just after). */
static inline int
ymo_server_owed(ymo_server_t *s)
{
    return ymo_release_pending(&s->release) || ymo_server_answers_owed(s);
}

/* The room of the response buckets the server keeps for reuse, and how
 * many it keeps at most (256 KB): about a turn's worth of responses. */
#define YMO_SPARE_BUCKET 4096
#define YMO_SPARES_MAX 64

/* The slot `i` places after slot `from` in the ring of the server's
 * workers (both below n_workers): the walks over the workers that every
 * request makes (dispatch, a worker looking for work) step with a compare,
 * as a division (`%`) costs tens of cycles per slot. */
static inline ymo_wsgi_worker_t *
ymo_server_worker_after(ymo_server_t *s, size_t from, size_t i)
{
    size_t j = from + i;
    return &s->workers[j < s->n_workers ? j : j - s->n_workers];
}

/* Set up the loop, listeners and workers (not started). The server takes
 * config->trust over (and frees it in destroy), on failure too. listen_fds
 * are bound, listening, non-blocking sockets. On success the server owns them
 * (it closes them when a stop begins, or in destroy); on failure they
 * are still the caller's. */
int ymo_server_init(ymo_server_t *s, const ymo_config_t *config,
                    const int *listen_fds, const int *is_unix, size_t n,
                    struct ymo_wsgi_app *app);

/* Before the worker threads start, with the GIL (or the Core's critical
 * section) held, as others read what it writes then (ymo_server_forked,
 * the listeners a fork's child lets go of): the server is this process's
 * from now on. */
void ymo_server_prepare_workers(ymo_server_t *s);
/* Start the worker threads (the GIL need not be held; see
 * ymo_wsgi_worker_start). */
int ymo_server_start_workers(ymo_server_t *s);
/* Wait until the workers ymo_server_start_workers started have each made
 * their Python thread state. Called without the GIL (they need it). */
void ymo_server_wait_workers_attached(ymo_server_t *s);
/* Whether stop() was asked for (any thread). */
int ymo_server_stop_requested(ymo_server_t *s);

/* Run the loop on the calling thread until the server has stopped (returns
 * 1) or the wakeup fd became readable (returns 0; call again). SIGPIPE is
 * blocked on the calling thread meanwhile; the caller's mask is restored
 * on return. GIL released. */
int ymo_server_run(ymo_server_t *s, int wakeup_fd);

/* Ask the loop to stop: no new connections, in-flight exchanges get
 * until the deadline, which the first stop sets to now + `grace` seconds
 * (<= 0: none; a NaN counts as 0) and a later one may only bring
 * forward. Any thread. */
void ymo_server_stop(ymo_server_t *s, double grace);

/* Stop accepting and close the listening sockets (once; later calls do
 * nothing). Loop thread, or any thread while no loop runs: before the
 * first ymo_server_run, or after the last. */
void ymo_server_close_listeners(ymo_server_t *s);

/* After ymo_server_run returned 1: stop and join the workers, free what
 * they left. Waits for workers still running the app until the stop's
 * deadline (the one the loop kept, re-read so that a later stop can
 * bring it forward; plus a moment for idle workers to exit), or for ever
 * with `forever`; returns how many are still running then (their memory,
 * and the server's, must then stay allocated). Returns early with
 * *interrupted set when wakeup_fd (if >= 0) becomes readable; call again
 * to go on. GIL released. */
size_t ymo_server_join_workers(ymo_server_t *s, int forever, int wakeup_fd,
                               int *interrupted);

/* Worker thread, once at its start: mark the calling thread as one of
 * s's workers. */
void ymo_server_enter_worker_thread(const ymo_server_t *s);

/* Whether the calling thread is one of s's workers. Any thread. */
int ymo_server_on_worker_thread(const ymo_server_t *s);

/* Forks made by an app. In the child of a fork() only the forking thread
 * runs, and the loop, the workers, the watchdog and any lock they held at
 * the fork are gone (a thread of the app, or one the child starts, may
 * still hold a parent's request objects). Such a thread coming back into
 * a server of the parent (returning from the app, yielding a chunk,
 * reading wsgi.input, a log handler returning to the watchdog) must not
 * serve, or wait for a loop that is not there: each way back checks
 * YMO_FORK_GUARD(s) first (wsgi.h). Incremented in each child, before it
 * can start a thread; read by any thread. */
extern unsigned ymo_fork_gen;

/* Once per process (module import): count forks (pthread_atfork). */
void ymo_server_watch_forks(void);

/* Whether this process is a fork of the one s was started in. Any
 * thread; one load and compare. */
#define ymo_server_forked(s)                                               \
    __builtin_expect((s)->fork_gen != ymo_fork_gen, 0)

/* Free everything (workers joined or never started). */
void ymo_server_destroy(ymo_server_t *s);

/* Loop thread: give an exchange to a worker (cannot fail). */
void ymo_server_dispatch(ymo_server_t *s, ymo_exchange_t *ex);

/* config.proxy_headers: the forwarding fields a trusted peer's word is
 * taken from (--proxy-headers). Forwarded and the X-Forwarded-* fields
 * are never both on: the client's own copy of the family the proxy does
 * not manage would pass it unchecked. */
#define YMO_PH_XFF 1u          /* X-Forwarded-For */
#define YMO_PH_XFP 2u          /* X-Forwarded-Proto */
#define YMO_PH_XFH 4u          /* X-Forwarded-Host */
#define YMO_PH_FORWARDED 8u    /* Forwarded (RFC 7239) */
#define YMO_PH_DEFAULT (YMO_PH_XFF | YMO_PH_XFP)

/* Seconds on CLOCK_MONOTONIC (the stop deadline's clock). Any thread. */
double ymo_monotonic_now(void);

/* Loop thread: the loop's clock, in which every timeout and deadline of
 * the loop is kept: ymo_monotonic_now() read once per turn of the loop,
 * before the turn's callbacks (ymo_server_now_update reads it again).
 * Not ev_now(): that is the wall clock, which steps (`date -s`, NTP at
 * boot, a virtual machine resumed), and a step back by an hour turned
 * every timeout off for an hour. */
static inline double
ymo_server_now(const ymo_server_t *s)
{
    return s->now;
}

void ymo_server_now_update(ymo_server_t *s);

/* Loop thread, stopping: may a connection idle from now on get a last
 * call? Not when the stop's deadline would cut off, in the app, a request
 * that arrived in it (see YMO_LAST_CALL). */
static inline int
ymo_server_last_call_fits(const ymo_server_t *s)
{
    return s->drain_deadline - ymo_server_now(s) >= 2 * YMO_LAST_CALL;
}

/* Seconds an ev_timer is armed past the deadline it stands for: libev
 * counts a timer from its own reading of the monotonic clock, taken a
 * little before the loop's (ymo_server_now), so a timer armed for exactly
 * the rest fired a few microseconds short of the deadline, and its
 * callback armed it again for those, one more turn of the loop. Any
 * thread (a constant). */
#define YMO_TIMER_PAD 0.001

/* The same clock in nanoseconds (heartbeat slots, the GIL hand-over). */
uint64_t ymo_monotonic_ns(void);

/* Before the first ymo_server_run: beat into table[index] (the table
 * must outlive the server) every YMO_HEARTBEAT_INTERVAL from the loop
 * thread, publish the connection count there, read the siblings' in the
 * rest of the table, and tell notify_fd (if >= 0) when a recycle is
 * asked for. */
void ymo_server_set_heartbeat(ymo_server_t *s, ymo_heartbeat_t *table,
                              size_t n_slots, size_t index, int notify_fd);

/* Ask the supervisor to replace this process gracefully (its successor
 * starts first, then this one drains). Sets the "recycle me" flag in the
 * heartbeat slot and wakes the supervisor; does nothing without a
 * supervisor (one process) or after the first call. Any thread,
 * async-signal-safe, no lock. */
void ymo_server_request_recycle(ymo_server_t *s);

/* Loop thread: a request's response is complete (counts it; max_requests
 * asks for a recycle). */
void ymo_server_request_done(ymo_server_t *s);

/* Loop thread: a connection closed (for draining). */
void ymo_server_conn_closed(ymo_server_t *s);

#endif /* YMO_SERVER_H */
