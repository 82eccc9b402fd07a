/* server.c - the I/O thread: libev loop setup, accepting connections,
 * dispatching exchanges to workers, and the graceful stop. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stddef.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "conn.h"

/* Accept at most this many connections per readiness event, so a flood of
 * new connections cannot starve the ones already open. */
#define ACCEPT_BATCH 64

/* Shared listener: seconds a process with clearly more connections than a
 * sibling waits before it accepts; see listener_on_accept. */
#define ACCEPT_DEFER 0.001

/* At most this many connections taken from a listener's queue at a stop
 * (server_take_queued): a queue that a flood keeps full must not keep the
 * stop from going on. */
#define ACCEPT_QUEUED_MAX 4096

/* Seconds to stop accepting after running out of file descriptors. */
#define ACCEPT_PAUSE 0.1

/* Seconds past the stop deadline a worker inside the app still gets: the
 * deadline's abort wakes workers waiting for their client, and one that
 * is just leaving the app must not be given up on (and its server kept
 * for good). */
#define JOIN_SLACK 0.1

/* Seconds on CLOCK_MONOTONIC, the clock of the stop deadline: unlike the
 * loop's cached time, any thread can read it. */
static void server_publish_conns(ymo_server_t *s);
static void fork_fds_add(int fd);
static void fork_fds_remove(int fd);
static int server_sibling_less_loaded(const ymo_server_t *s);
static void server_update_recycle_pause(ymo_server_t *s);

/* A sibling whose last beat is older than this many heartbeat intervals
 * is left out of accept decisions: a stopped or stuck process keeps its
 * `accepting` flag until the supervisor notices (heartbeat_timeout), and
 * must neither slow down nor silence the live ones meanwhile. */
#define SIBLING_STALE_BEATS 4

double
ymo_monotonic_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

uint64_t
ymo_monotonic_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

void
ymo_server_now_update(ymo_server_t *s)
{
    ev_now_update(s->loop);
    s->now = ymo_monotonic_now();
}

/* libev's hook for running a turn's callbacks: the loop's clock is read
 * first (see ymo_server_now). */
static void
server_invoke_pending(struct ev_loop *loop)
{
    ymo_server_t *s = ev_userdata(loop);
    s->now = ymo_monotonic_now();
    ev_invoke_pending(loop);
}

static double
server_deadline(ymo_server_t *s)
{
    pthread_mutex_lock(&s->ctl_lock);
    double deadline = s->deadline;
    pthread_mutex_unlock(&s->ctl_lock);
    return deadline;
}

/* Accept one connection from l and make it the server's: 1; 0 when none
 * is waiting; -1 out of descriptors or memory (it waits in the
 * backlog). */
static int
listener_accept_one(ymo_listener_t *l)
{
    ymo_server_t *s = l->server;
    struct sockaddr_storage ss;
    socklen_t slen;
    int fd;
    do {
        slen = sizeof(ss);
        fd = accept4(l->fd, (struct sockaddr *)&ss, &slen,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    } while (fd < 0 && (errno == EINTR || errno == ECONNABORTED));
    if (fd < 0) {
        return errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
               errno == ENOMEM ? -1 : 0;
    }
    if (!l->is_unix && (!l->nodelay_inherited || l->nodelay_queued > 0)) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (l->nodelay_queued > 0) {
            l->nodelay_queued--;
        }
    }
    /* Trust is decided once, here, for the connection's life. */
    int trusted = l->is_unix ||
                  ymo_trust_match_sockaddr(&s->config.trust,
                                           (struct sockaddr *)&ss);
    if (ymo_conn_new(l, fd, (struct sockaddr *)&ss, trusted) == NULL) {
        close(fd);
    }
    server_publish_conns(s);
    return 1;
}

/* At a stop, the connections already waiting in the queue of a listener
 * no other process accepts from (a single server's, or a --reuse-port
 * socket of its own): taken, and served with the rest in the grace
 * period (when the deadline leaves room for it). Closing the listener
 * reset them: with --reuse-port, a few at every reload under load
 * (hostile review s23). A listener shared with other processes keeps its
 * queue for them. Called with drain_deadline set. */
static void
server_take_queued(ymo_server_t *s)
{
    if (s->config.shared_listener || !ymo_server_last_call_fits(s)) {
        /* Shared: the queue is the other processes'. A deadline too
         * close for last calls: they would be closed unanswered at once,
         * while with the listener (fd://, socket activation) another
         * process may still take them (C review s23). */
        return;
    }
    for (size_t i = 0; i < s->n_listeners; i++) {
        if (s->listeners[i].fd < 0) {
            continue;
        }
        for (int n = 0; n < ACCEPT_QUEUED_MAX; n++) {
            if (listener_accept_one(&s->listeners[i]) <= 0) {
                break;
            }
        }
    }
}

static void
listener_on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    ymo_listener_t *l = w->data;
    ymo_server_t *s = l->server;
    /* Processes sharing a listener: each new connection wakes every
     * process's loop, and the quickest takes it; with idle loops that is
     * the same process every time, which ends up with nearly every
     * connection (all of a pool of keep-alive clients that connect at
     * once, as a proxy's upstream pool does). So a process takes one
     * connection per wake-up, and one that has clearly more connections
     * than a sibling (their counts are in the heartbeat table) first
     * waits a moment, so that the sibling takes it. After the wait it
     * accepts whatever happens: a sibling that stopped (or a stale
     * count) only delays, never starves, new clients. */
    int batch = ACCEPT_BATCH;
    if (s->config.shared_listener) {
        batch = 1;
        if (!s->accept_deferred && server_sibling_less_loaded(s)) {
            s->accept_deferred = 1;
            for (size_t k = 0; k < s->n_listeners; k++) {
                ev_io_stop(s->loop, &s->listeners[k].io);
            }
            ev_timer_set(&s->accept_timer, ACCEPT_DEFER, 0.);
            ev_timer_start(s->loop, &s->accept_timer);
            return;
        }
        s->accept_deferred = 0;
    }
    for (int i = 0; i < batch; i++) {
        int r = listener_accept_one(l);
        if (r < 0) {
            /* Out of descriptors or memory: the connection waits in the
             * backlog. The listener stays readable, so stop watching it
             * for a moment instead of spinning. */
            for (size_t k = 0; k < s->n_listeners; k++) {
                ev_io_stop(s->loop, &s->listeners[k].io);
            }
            ev_timer_set(&s->accept_timer, ACCEPT_PAUSE, 0.);
            ev_timer_start(s->loop, &s->accept_timer);
            return;
        }
        if (r == 0) {
            return;             /* all taken */
        }
    }
}

static void
server_on_accept_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    ymo_server_t *s = w->data;
    if (s->draining_loop || s->accept_paused) {
        return;
    }
    for (size_t i = 0; i < s->n_listeners; i++) {
        ev_io_start(loop, &s->listeners[i].io);
    }
}

static void
server_finish(ymo_server_t *s)
{
    s->stopped = 1;
    ev_timer_stop(s->loop, &s->grace_timer);
    if (ev_is_active(&s->heartbeat_timer)) {
        ev_ref(s->loop);        /* undo the unref of set_heartbeat */
        ev_timer_stop(s->loop, &s->heartbeat_timer);
    }
    ev_break(s->loop, EVBREAK_ALL);
}

void
ymo_server_conn_closed(ymo_server_t *s)
{
    s->n_conns--;
    server_publish_conns(s);
    if (s->draining_loop && s->n_conns == 0) {
        server_finish(s);
    }
}

static void
server_on_grace(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    ymo_server_t *s = w->data;
    /* Out of patience: abort what is left. Workers still running an app
     * find their exchange aborted at their next read or write. */
    s->cut_off = 1;
    ymo_conn_close_all(s);
    server_finish(s);
}

static void
server_on_stop(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)revents;
    ymo_server_t *s = w->data;
    pthread_mutex_lock(&s->ctl_lock);
    double deadline = s->deadline;
    int requested = s->stop_requested;
    pthread_mutex_unlock(&s->ctl_lock);
    if (!requested) {
        return;
    }
    /* For the last calls (conn.c); a later stop may have brought it
     * forward. The stop's deadline is on the loop's clock already. */
    ymo_server_now_update(s);
    s->drain_deadline = deadline;
    if (!s->draining_loop) {
        server_take_queued(s);
        s->draining_loop = 1;
        s->drain_started = ymo_server_now(s);
        if (s->heartbeat != NULL) {
            atomic_store(&s->heartbeat->accepting, 0);
        }
        atomic_store(&s->draining, 1);
        /* Closed now, not at exit: a client connecting during the grace
         * period is refused at once instead of waiting in the backlog to
         * be reset. */
        ymo_server_close_listeners(s);
        ev_timer_stop(loop, &s->accept_timer);
    }
    /* On every stop, not only the first: a later one may have brought the
     * deadline so close that the last calls the first gave no longer fit
     * (YMO_LAST_CALL). */
    ymo_conn_drain_all(s);
    if (s->n_conns == 0) {
        server_finish(s);
        return;
    }
    /* Armed for the absolute deadline, which a later stop() may only have
     * brought forward: re-arming for `grace` from now let every repeated
     * SIGTERM postpone the end. */
    ev_timer_stop(loop, &s->grace_timer);
    ymo_server_now_update(s);
    double left = deadline - ymo_server_now(s);
    if (isinf(left)) {
        return;                 /* stop(inf): wait as long as it takes */
    }
    ev_timer_set(&s->grace_timer, left > 0 ? left : 0., 0.);
    ev_timer_start(loop, &s->grace_timer);
}

/* Beat: the loop turned at least once since the last beat. */
static void
server_on_heartbeat(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    ymo_server_t *s = w->data;
    uint64_t ns = ymo_monotonic_ns();
    /* Relaxed: each field is read on its own; the supervisor needs no
     * ordering between them. */
    atomic_store_explicit(&s->heartbeat->beat_ns, ns, memory_order_relaxed);
    server_update_recycle_pause(s);
    atomic_store_explicit(&s->heartbeat->accepting,
                          !s->draining_loop && !s->accept_paused,
                          memory_order_relaxed);
}

/* Loop thread: publish the connection count (siblings balance on it). */
static void
server_publish_conns(ymo_server_t *s)
{
    if (s->heartbeat != NULL) {
        atomic_store_explicit(&s->heartbeat->conns, (uint32_t)s->n_conns,
                              memory_order_relaxed);
    }
}

/* Loop thread: whether a sibling that accepts from the same listeners has
 * clearly fewer connections: more than `workers` fewer (so connections
 * spread within about that many, while a flood of short connections,
 * whose counts jitter, is rarely held back). */
/* Whether sibling slot h accepts now: it says so and its loop beat
 * recently (now_ns: ymo_monotonic_ns()). */
static int
sibling_accepts(const ymo_server_t *s, const ymo_heartbeat_t *h,
                uint64_t now_ns)
{
    if (h == s->heartbeat ||
        !atomic_load_explicit(&h->accepting, memory_order_relaxed)) {
        return 0;
    }
    uint64_t beat = atomic_load_explicit(&h->beat_ns, memory_order_relaxed);
    uint64_t stale = (uint64_t)(SIBLING_STALE_BEATS *
                                YMO_HEARTBEAT_INTERVAL * 1e9);
    return beat != 0 && beat + stale >= now_ns;
}

static int
server_sibling_less_loaded(const ymo_server_t *s)
{
    size_t mine = s->n_conns;
    uint64_t now_ns = ymo_monotonic_ns();
    for (size_t i = 0; i < s->n_siblings; i++) {
        const ymo_heartbeat_t *h = &s->siblings[i];
        if (!sibling_accepts(s, h, now_ns)) {
            continue;
        }
        size_t theirs = atomic_load_explicit(&h->conns,
                                             memory_order_relaxed);
        if (theirs + s->config.workers < mine) {
            return 1;
        }
    }
    return 0;
}

void
ymo_server_set_heartbeat(ymo_server_t *s, ymo_heartbeat_t *table,
                         size_t n_slots, size_t index, int notify_fd)
{
    ymo_heartbeat_t *hb = table != NULL ? &table[index] : NULL;
    s->heartbeat = hb;
    s->siblings = table;
    s->n_siblings = n_slots;
    s->notify_fd = notify_fd;
    if (hb != NULL) {
        /* The first beat as soon as the loop runs, then regularly. */
        ev_timer_set(&s->heartbeat_timer, 0., YMO_HEARTBEAT_INTERVAL);
        ev_timer_start(s->loop, &s->heartbeat_timer);
        /* Not a reason to keep the loop running once drained. */
        ev_unref(s->loop);
    }
}

static void
server_recycle(ymo_server_t *s, uint32_t reason)
{
    ymo_heartbeat_t *hb = s->heartbeat;
    if (hb == NULL) {
        return;
    }
    uint32_t expected = 0;
    /* The reason first, so a supervisor that sees the flag sees why. The
     * exchange on the flag makes the wake-up happen once. */
    if (atomic_load(&hb->recycle) != 0) {
        return;
    }
    atomic_store(&hb->reason, reason);
    if (atomic_compare_exchange_strong(&hb->recycle, &expected, 1) &&
        s->notify_fd >= 0) {
        /* A full pipe means the supervisor has a wake-up pending
         * already; it reads the flag, not the byte. */
        ssize_t r = write(s->notify_fd, "r", 1);
        (void)r;
    }
}

void
ymo_server_request_recycle(ymo_server_t *s)
{
    /* Core.recycle_requested reads this flag, with or without a
     * supervisor; the slot tells the supervisor. */
    atomic_store(&s->recycle_requested, 1);
    server_recycle(s, YMO_RECYCLE_REQUESTED);
}

void
ymo_server_request_done(ymo_server_t *s)
{
    s->requests_done++;
    if (s->heartbeat == NULL) {
        return;
    }
    atomic_store_explicit(&s->heartbeat->requests, s->requests_done,
                          memory_order_relaxed);
    if (s->config.max_requests > 0 &&
        s->requests_done >= s->config.max_requests && !s->recycle_due) {
        server_recycle(s, YMO_RECYCLE_MAX_REQUESTS);
        if (s->config.recycle_stops_accepting) {
            s->recycle_due = 1;
            server_update_recycle_pause(s);
        }
    }
}

/* Loop thread: a process that served its max_requests stops accepting
 * (new clients go to the other processes, while this one finishes what
 * it has and serves its keep-alive connections until the supervisor
 * drains it) - but only while a sibling accepts in its place that is not
 * itself waiting to be replaced and whose loop beats. Otherwise (its
 * successor is not ready yet, or cannot start at all, or the others are
 * at their max too) it goes on accepting: a paused listener nobody
 * accepts from leaves clients waiting in the backlog. Re-checked at each
 * beat. */
static void
server_update_recycle_pause(ymo_server_t *s)
{
    if (!s->recycle_due || s->draining_loop || s->heartbeat == NULL) {
        return;
    }
    int fresh_sibling = 0;
    uint64_t now_ns = ymo_monotonic_ns();
    for (size_t i = 0; i < s->n_siblings && !fresh_sibling; i++) {
        const ymo_heartbeat_t *h = &s->siblings[i];
        fresh_sibling = sibling_accepts(s, h, now_ns) &&
            !atomic_load_explicit(&h->recycle, memory_order_relaxed);
    }
    if (fresh_sibling && !s->accept_paused) {
        s->accept_paused = 1;
        atomic_store(&s->heartbeat->accepting, 0);
        ev_timer_stop(s->loop, &s->accept_timer);
        for (size_t i = 0; i < s->n_listeners; i++) {
            ev_io_stop(s->loop, &s->listeners[i].io);
        }
    }
    else if (!fresh_sibling && s->accept_paused) {
        s->accept_paused = 0;
        s->accept_deferred = 0;
        atomic_store(&s->heartbeat->accepting, 1);
        for (size_t i = 0; i < s->n_listeners; i++) {
            ev_io_start(s->loop, &s->listeners[i].io);
        }
    }
}

static void
server_on_wakeup(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    /* A signal arrived: return to Python so that its handler runs. */
    char buf[256];
    while (read(w->fd, buf, sizeof(buf)) > 0) {
    }
    ev_break(loop, EVBREAK_ALL);
}

/* The server whose loop this thread is running, if any (set by
 * ymo_server_run for its duration). */
static _Thread_local const ymo_server_t *loop_of;

/* Loop thread: owners wait in the release list. Only an attached thread
 * may release them, so a worker takes the list: one in the app does so
 * whenever it posts output and after each exchange, and when it leaves
 * the app it looks once more (it stores in_app = 0, then looks at the
 * list); an idle one looks before it sleeps (it stores idle = 1, then
 * looks). So it is enough to wake one idle worker, and when this finds
 * none (it looks at `idle` after the push, all seq_cst), each worker is
 * in the app or about to look. A worker that stays in the app for long
 * (a long poll) while the others are idle does not hold owners up: the
 * idle ones are woken. */
static void
server_release_poke(ymo_server_t *s)
{
    if (!ymo_server_owed(s)) {
        return;
    }
    for (size_t i = 0; i < s->n_workers; i++) {
        ymo_wsgi_worker_t *wk = &s->workers[i];
        if (atomic_load(&wk->retired) || atomic_load(&wk->unused)) {
            continue;
        }
        if (atomic_load(&wk->idle)) {
            ymo_wsgi_worker_notify(wk);
            return;
        }
    }
}

/* Loop thread, before it sleeps: after the pushes of this iteration. */
static void
server_on_release_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    ev_prepare_stop(loop, w);
    server_release_poke(w->data);
}

/* Loop thread: another thread pushed (see server_release_wake). */
static void
server_on_release(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    server_release_poke(w->data);
}

/* Any thread: the release list stopped being empty. On the loop thread
 * (nearly every push: a written bucket, a closed connection) the check
 * waits for the end of the iteration, once however many were pushed;
 * from another thread the loop is told. */
static void
server_release_wake(void *arg)
{
    ymo_server_t *s = arg;
    if (loop_of == s) {
        if (!ev_is_active(&s->release_prepare)) {
            ev_prepare_start(s->loop, &s->release_prepare);
        }
    }
    else {
        ev_async_send(s->loop, &s->release_watcher);
    }
}

/* libev's ev_syserr calls this, where a system call it cannot go on
 * without failed; with no callback it prints and abort()s, which is what
 * happens here too unless the failing call is one the thread has armed
 * syserr_jump around (async_start_or_errno): then it jumps back there.
 * Both are this thread's own. The callback is the process's (set once):
 * another user of the shared libev in the same process (rare: gevent
 * builds its own copy in) that sets one too replaces it, or has it
 * replaced; each of them then sees the other's behaviour. libev keeps
 * nothing half made where it calls it from evpipe_init, the only call
 * armed (C review s23). */
static _Thread_local jmp_buf *syserr_jump;
static _Thread_local int syserr_errno;
static pthread_once_t syserr_once = PTHREAD_ONCE_INIT;

static void
on_libev_syserr(const char *msg)
{
    if (syserr_jump != NULL) {
        syserr_errno = errno;
        longjmp(*syserr_jump, 1);
    }
    perror(msg);
    abort();
}

static void
set_syserr_cb(void)
{
    ev_set_syserr_cb(on_libev_syserr);
}

/* ev_async_start, the loop's first: libev makes its wake-up descriptor
 * then, and out of descriptors it could not. 0, or the errno. A probe
 * eventfd made and closed first was not enough: another thread (a
 * free-threaded build's, or any without the GIL) took the slot in
 * between (C review s23). */
static int
async_start_or_errno(struct ev_loop *loop, ev_async *w)
{
    jmp_buf jump;
    pthread_once(&syserr_once, set_syserr_cb);
    if (setjmp(jump) != 0) {
        syserr_jump = NULL;
        return syserr_errno != 0 ? syserr_errno : EIO;
    }
    syserr_jump = &jump;
    ev_async_start(loop, w);
    syserr_jump = NULL;
    return 0;
}

int
ymo_server_init(ymo_server_t *s, const ymo_config_t *config,
                const int *listen_fds, const int *is_unix, size_t n,
                struct ymo_wsgi_app *app)
{
    memset(s, 0, sizeof(*s));
    s->config = *config;
    s->app = app;
    s->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    if (s->loop == NULL) {
        ymo_trust_free(&s->config.trust);
        return -ENOMEM;
    }
    /* libev makes its wake-up descriptor (an eventfd, else a pipe) at the
     * first ev_async_start and abort()s the process when it cannot: out
     * of descriptors (ulimit -n), the server died of SIGABRT instead of
     * saying so (hostile review s22). That start comes first, where its
     * failure can be caught (see async_start_or_errno). */
    ev_async_init(&s->stop_watcher, server_on_stop);
    s->stop_watcher.data = s;
    int err = async_start_or_errno(s->loop, &s->stop_watcher);
    if (err != 0) {
        ev_loop_destroy(s->loop);
        s->loop = NULL;
        ymo_trust_free(&s->config.trust);
        return -err;
    }
    s->loop_fork_gen = ymo_fork_gen;
    ev_set_userdata(s->loop, s);
    ev_set_invoke_pending_cb(s->loop, server_invoke_pending);
    s->now = ymo_monotonic_now();
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
    pthread_mutex_init(&s->ctl_lock, NULL);
    pthread_mutex_init(&s->watchdog_lock, NULL);
    pthread_cond_init(&s->watchdog_cond, &monotonic);
    atomic_init(&s->workers_attached, 0);
    atomic_init(&s->draining, 0);
    atomic_init(&s->gil_enabled, 1);
    atomic_init(&s->standby, 0);
    atomic_init(&s->gil_waiters, 0);
    atomic_init(&s->gil_turns, 0);
    atomic_init(&s->gil_attached_at, 0);
    atomic_init(&s->cut_handover_at, 0);
    atomic_init(&s->handover_paused_until, 0);
    atomic_init(&s->handover_missed, 0);
    atomic_init(&s->cut_share, 0);
    atomic_init(&s->handover_waiting, 0);
    atomic_init(&s->handovers, 0);
    atomic_init(&s->handover_timeouts, 0);
    pthread_mutex_init(&s->handover_lock, NULL);
    pthread_cond_init(&s->handover_cond, &monotonic);
    pthread_condattr_destroy(&monotonic);
    atomic_init(&s->recycle_requested, 0);
    ymo_release_init(&s->release, server_release_wake, s);
    ymo_release_init(&s->answered, server_release_wake, s);
    atomic_init(&s->answers_waiting, 0);
    atomic_init(&s->answers_dropped, 0);
    atomic_init(&s->answers_logging, 0);
    pthread_mutex_init(&s->answers_lock, NULL);
    s->answers_head = s->answers_tail = NULL;
    ymo_spares_init(&s->spares, YMO_SPARE_BUCKET, YMO_SPARES_MAX);
    /* With a watchdog, room for as many replacement threads as workers
     * (see wsgi_watchdog.c). */
    size_t slots = config->workers * (config->request_timeout > 0 ? 2 : 1);
    s->listeners = ymo_calloc(n ? n : 1, sizeof(*s->listeners));
    s->workers = ymo_calloc(slots, sizeof(*s->workers));
    s->headers = ymo_calloc(config->limits.max_header_count + 1,
                            sizeof(*s->headers));
    s->scratch_bucket = ymo_bucket_new(YMO_SCRATCH_SIZE);
    s->scratch = s->scratch_bucket != NULL ? s->scratch_bucket->data : NULL;
    if (s->listeners == NULL || s->workers == NULL || s->headers == NULL ||
        s->scratch == NULL) {
        ymo_server_destroy(s);
        return -ENOMEM;
    }
    for (size_t i = 0; i < slots; i++) {
        int r = ymo_wsgi_worker_init(s->loop, i, &s->workers[i]);
        if (r < 0) {
            ymo_server_destroy(s);
            return r;
        }
        s->workers[i].server = s;
        if (i >= config->workers) {
            /* A spare: no thread until the watchdog starts one. */
            atomic_store(&s->workers[i].retired, 1);
            atomic_store(&s->workers[i].unused, 1);
        }
        s->n_workers = i + 1;
    }
    /* Last, as nothing can fail after it: the listening sockets become
     * the server's only when init succeeds (destroy closes those it
     * has). */
    s->n_listeners = n;
    for (size_t i = 0; i < n; i++) {
        ymo_listener_t *l = &s->listeners[i];
        l->server = s;
        l->fd = listen_fds[i];
        l->is_unix = is_unix[i];
        /* Accepting must never wait: a listener handed over in blocking
         * mode hung the loop in accept4 once the queue was empty, and a
         * stop was never seen (C review s20). */
        int fl = fcntl(l->fd, F_GETFL);
        if (fl >= 0 && (fl & O_NONBLOCK) == 0) {
            fcntl(l->fd, F_SETFL, fl | O_NONBLOCK);
        }
        if (!l->is_unix) {
            int one = 1;
            l->nodelay_inherited = setsockopt(l->fd, IPPROTO_TCP, TCP_NODELAY,
                                              &one, sizeof(one)) == 0;
            /* The connections already in the accept queue were created
             * without it (systemd socket activation: the one that started
             * us; a supervisor's children loading the app): as many
             * accepts as the queue holds now set it themselves. For a
             * listening socket, tcpi_unacked is the accept queue's length. */
            struct tcp_info ti;
            socklen_t tlen = sizeof(ti);
            if (l->nodelay_inherited &&
                getsockopt(l->fd, IPPROTO_TCP, TCP_INFO, &ti, &tlen) == 0 &&
                tlen >= offsetof(struct tcp_info, tcpi_sacked)) {
                l->nodelay_queued = ti.tcpi_unacked;
            }
            else {
                l->nodelay_inherited = 0;   /* unknown: set per accept */
            }
        }
        l->index = i;
        ev_io_init(&l->io, listener_on_accept, l->fd, EV_READ);
        l->io.data = l;
        ev_io_start(s->loop, &l->io);
    }
    ev_async_init(&s->release_watcher, server_on_release);
    s->release_watcher.data = s;
    ev_async_start(s->loop, &s->release_watcher);
    ev_prepare_init(&s->release_prepare, server_on_release_prepare);
    s->release_prepare.data = s;
    ev_init(&s->grace_timer, server_on_grace);
    s->grace_timer.data = s;
    ev_init(&s->accept_timer, server_on_accept_timer);
    s->accept_timer.data = s;
    ev_init(&s->idle_timer, ymo_conn_idle_on_timer);
    s->idle_timer.data = s;
    ev_init(&s->wakeup_watcher, server_on_wakeup);
    s->wakeup_watcher.data = s;
    ev_init(&s->heartbeat_timer, server_on_heartbeat);
    s->heartbeat_timer.data = s;
    s->notify_fd = -1;
    return 0;
}

void
ymo_server_prepare_workers(ymo_server_t *s)
{
    /* Before the threads: they read it (ymo_server_forked). */
    s->fork_gen = ymo_fork_gen;
    if (s->loop_fork_gen != ymo_fork_gen) {
        /* Created in another process and forked: the epoll instance and
         * the eventfd are shared with it, and two children serving one
         * server by hand answered nothing (operations review s20). libev
         * makes them anew at the loop's next turn (and looks at every
         * async watcher then, so a worker's send before it is not lost). */
        ev_loop_fork(s->loop);
        s->loop_fork_gen = ymo_fork_gen;
    }
    if (!s->listeners_forked_away) {
        /* Serving from now on: a fork's child lets go of the listeners
         * (fork_fds). Not at init: a program may create a server, fork,
         * and serve it in the child. */
        s->listeners_forked_away = 1;
        for (size_t i = 0; i < s->n_listeners; i++) {
            if (s->listeners[i].fd >= 0) {
                fork_fds_add(s->listeners[i].fd);
            }
        }
    }
}

int
ymo_server_start_workers(ymo_server_t *s)
{
    for (size_t i = 0; i < s->config.workers && i < s->n_workers; i++) {
        if (!s->workers[i].started) {
            int r = ymo_wsgi_worker_start(&s->workers[i]);
            if (r < 0) {
                return r;
            }
        }
    }
    return 0;
}

void
ymo_server_wait_workers_attached(ymo_server_t *s)
{
    /* Once per server, for about the time it takes to start the threads:
     * a short sleep rather than a condition variable the workers would
     * all have to signal. Each worker attaches unconditionally right at
     * its start (PyGILState_Ensure), so this ends. */
    size_t started = s->watchdog_started ? 1 : 0;     /* it makes one */
    for (size_t i = 0; i < s->config.workers && i < s->n_workers; i++) {
        started += s->workers[i].started ? 1 : 0;
    }
    while (atomic_load(&s->workers_attached) < started) {
        struct timespec pause = {0, 100000};
        nanosleep(&pause, NULL);
    }
}

int
ymo_server_run(ymo_server_t *s, int wakeup_fd)
{
    if (s->stopped) {
        return 1;
    }
    if (wakeup_fd >= 0) {
        ev_io_set(&s->wakeup_watcher, wakeup_fd, EV_READ);
        ev_io_start(s->loop, &s->wakeup_watcher);
    }
    /* sendfile(2) to a client that reset the connection raises SIGPIPE
     * (it takes no MSG_NOSIGNAL), and where the process left SIGPIPE at
     * SIG_DFL (an embedding program, a CLI that restores it) that kills
     * every thread. Block it on this thread while the loop runs, which
     * costs two calls per run() rather than two per sendfile, then discard
     * what our writes left pending before the old mask lets it through.
     * Whatever is pending, not only after a failed call: sendfile can
     * raise it and still return the bytes it sent before the reset. */
    sigset_t pipe_set, old_mask;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);
    /* While it runs the loop, this thread is SCHED_BATCH: its wake-ups
     * (a worker's output, a client's bytes) do not preempt the thread
     * that has the CPU. Sharing a core with a worker, the loop then runs
     * when the worker has finished what it holds (or at the end of its
     * time slice) and writes all those responses in one pass, instead of
     * preempting it once per response: with a Flask app on one core,
     * 3.5 context switches per request became 0.1 and the CPU per request
     * fell by a quarter (bench/README.md). With a core of its own it runs
     * at once, as before: the policy changes only what happens when the
     * loop must take a core from another thread. Only from the default
     * policy (a real-time or idle policy chosen by the user is left
     * alone); restored before returning, as this thread may be the
     * program's own (serve() runs the loop on the caller's thread); a
     * failure (a sandbox refusing the call) changes nothing. Threads
     * inherit the policy of their creator, but the workers and the
     * watchdog are started before the loop runs and by other threads. */
    struct sched_param sched_old;
    int batch = sched_getscheduler(0) == SCHED_OTHER &&
                sched_getparam(0, &sched_old) == 0;
    if (batch) {
        struct sched_param zero = {.sched_priority = 0};
        batch = sched_setscheduler(0, SCHED_BATCH, &zero) == 0;
    }
    const ymo_server_t *outer = loop_of;
    loop_of = s;
    ymo_exchange_cache_begin();
    ev_run(s->loop, 0);
    ymo_exchange_cache_end();
    loop_of = outer;
    if (batch) {
        sched_setscheduler(0, SCHED_OTHER, &sched_old);
    }
    static const struct timespec no_wait = {0, 0};
    while (sigtimedwait(&pipe_set, NULL, &no_wait) == SIGPIPE) {
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
    ev_io_stop(s->loop, &s->wakeup_watcher);
    return s->stopped ? 1 : 0;
}

void
ymo_server_close_listeners(ymo_server_t *s)
{
    for (size_t i = 0; i < s->n_listeners; i++) {
        ymo_listener_t *l = &s->listeners[i];
        if (l->fd < 0) {
            continue;
        }
        ev_io_stop(s->loop, &l->io);
        fork_fds_remove(l->fd);
        /* close() of this process's descriptor, never shutdown() of the
         * socket: with several processes on one listening socket (a
         * supervisor that forks servers and reloads them), shutdown()
         * would stop it listening for all of them, while close() only
         * drops ours, so a supervisor holding its own copy keeps the port
         * open across a reload. */
        close(l->fd);
        l->fd = -1;
    }
}

void
ymo_server_stop(ymo_server_t *s, double grace)
{
    double deadline = ymo_monotonic_now() + (grace > 0 ? grace : 0.);
    pthread_mutex_lock(&s->ctl_lock);
    if (!s->stop_requested || deadline < s->deadline) {
        s->deadline = deadline;
    }
    s->stop_requested = 1;
    pthread_mutex_unlock(&s->ctl_lock);
    ev_async_send(s->loop, &s->stop_watcher);
}

int
ymo_server_stop_requested(ymo_server_t *s)
{
    pthread_mutex_lock(&s->ctl_lock);
    int requested = s->stop_requested;
    pthread_mutex_unlock(&s->ctl_lock);
    return requested;
}

size_t
ymo_server_join_workers(ymo_server_t *s, int forever, int wakeup_fd,
                        int *interrupted)
{
    *interrupted = 0;
    /* First the watchdog, which may start threads in worker slots: from
     * here on, this thread alone starts and joins them. */
    ymo_watchdog_stop(s);
    for (size_t i = 0; i < s->n_workers; i++) {
        ymo_wsgi_worker_stop(&s->workers[i]);
    }
    size_t busy;
    for (;;) {
        busy = 0;
        size_t in_app = 0;
        for (size_t i = 0; i < s->n_workers; i++) {
            if (ymo_wsgi_worker_join(&s->workers[i], 0) != 0) {
                busy++;
                in_app += atomic_load(&s->workers[i].in_app) != 0;
            }
        }
        if (busy == 0) {
            break;
        }
        /* The loop's deadline, not a grace period of its own: counting
         * the grace again from here gave a stuck request twice as long.
         * Re-read between short waits, so a later stop() that brings it
         * forward takes effect. Only a worker inside the app is given up
         * on, and only JOIN_SLACK after the deadline: one that is not in
         * the app exits as soon as it has the GIL (stop(0) on an idle
         * server must not leave its workers behind). */
        if (!forever && busy == in_app &&
            ymo_monotonic_now() >= server_deadline(s) + JOIN_SLACK) {
            break;
        }
        /* Nap, but wake for a signal: its Python handler (a second
         * Ctrl-C) may want to cut the wait short. */
        struct pollfd pfd = {wakeup_fd, POLLIN, 0};
        if (poll(&pfd, wakeup_fd >= 0 ? 1 : 0, 20) > 0) {
            char buf[256];
            while (read(wakeup_fd, buf, sizeof(buf)) > 0) {
            }
            *interrupted = 1;
            return busy;
        }
    }
    if (busy == 0) {
        /* Final posts of exchanges whose connections were aborted: the
         * workers are gone, so run their output callbacks once more. */
        ev_run(s->loop, EVRUN_NOWAIT);
    }
    return busy;
}

/* The server this thread is a worker of, NULL on any other thread. Each
 * worker thread writes its own copy once, at its start, and only it reads
 * it, so it needs no lock; nor does it cost anything per request. */
static _Thread_local const ymo_server_t *worker_of;

void
ymo_server_enter_worker_thread(const ymo_server_t *s)
{
    worker_of = s;
}

int
ymo_server_on_worker_thread(const ymo_server_t *s)
{
    return worker_of == s;
}

/* Forks of this process: incremented in each child, by its only thread
 * (the forking one), before it can start another; read by any thread. A
 * server records it when it starts (ymo_server_t.fork_gen). */
unsigned ymo_fork_gen;

/* The listening descriptors of this process's servers (fd + 1; 0: a free
 * slot), for a child the app forks to let go of: kept open there (a
 * background job, a multiprocessing pool), a listener outlived its server.
 * After a stop new clients waited in its backlog instead of being
 * refused, and a restart could not bind; with --reuse-port the kernel
 * went on handing part of the new connections to it after a reload
 * (hostile review of processes, s18). Any thread; lock-free, as the child
 * reads it on the one thread it has, whatever the others were doing at
 * the fork. A listener is taken out before it is closed, so the child
 * never replaces a descriptor number the parent has reused. */
#define FORK_FDS_MAX 256
static atomic_int fork_fds[FORK_FDS_MAX];

/* What the child puts in their place: a descriptor opened once, in the
 * parent (a child out of descriptors, or in a chroot without /dev/null,
 * could open none and kept the listeners), close-on-exec. */
static atomic_int fork_placeholder = -1;

static void
fork_fds_add(int fd)
{
    if (atomic_load(&fork_placeholder) < 0) {
        int p = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (p < 0) {
            p = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        }
        int none = -1;
        if (p >= 0 && !atomic_compare_exchange_strong(&fork_placeholder,
                                                      &none, p)) {
            close(p);           /* another thread's came first */
        }
    }
    for (size_t i = 0; i < FORK_FDS_MAX; i++) {
        int free_slot = 0;
        if (atomic_compare_exchange_strong(&fork_fds[i], &free_slot,
                                           fd + 1)) {
            return;
        }
    }
    /* Full (256 listeners in one process): this one stays in children,
     * as every listener did before. */
}

static void
fork_fds_remove(int fd)
{
    for (size_t i = 0; i < FORK_FDS_MAX; i++) {
        int mine = fd + 1;
        if (atomic_compare_exchange_strong(&fork_fds[i], &mine, 0)) {
            return;
        }
    }
}

static void
server_after_fork_child(void)
{
    ymo_fork_gen++;
    /* The child's copies of the listeners become the placeholder
     * (/dev/null): closed, their numbers could be reused and then closed
     * again by the child's own objects that still hold them (a Python
     * socket). Async-signal-safe calls only (a fork from a multi-threaded
     * process); errno as fork() left it. */
    int saved = errno;
    int null = atomic_load(&fork_placeholder);
    for (size_t i = 0; i < FORK_FDS_MAX; i++) {
        int v = atomic_exchange(&fork_fds[i], 0);
        if (v > 0 && null >= 0) {
            (void)dup3(null, v - 1, O_CLOEXEC);
        }
    }
    errno = saved;
}

static void
server_register_atfork(void)
{
    /* Fails only for lack of memory at import; forks then go uncounted
     * (the behaviour before this guard), which is not worth failing the
     * import for. */
    (void)pthread_atfork(NULL, NULL, server_after_fork_child);
}

void
ymo_server_watch_forks(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, server_register_atfork);
}

void
ymo_server_destroy(ymo_server_t *s)
{
    if (s->loop != NULL && ev_is_active(&s->heartbeat_timer)) {
        ev_ref(s->loop);
        ev_timer_stop(s->loop, &s->heartbeat_timer);
    }
    if (s->loop != NULL) {
        ymo_conn_close_all(s);
    }
    ymo_conn_busy_drain(s);
    /* What is freed from now on waits for the caller's last take (no
     * worker or loop is left to wake). */
    s->release.wake = NULL;
    /* Answers no thread logged (the stopping thread logs what was left
     * when the workers were joined: these came later, or it never ran). */
    s->answered.wake = NULL;
    ymo_bucket_free_chain(ymo_release_take(&s->answered));
    ymo_bucket_free_chain(s->answers_head);
    s->answers_head = s->answers_tail = NULL;
    for (size_t i = 0; i < s->n_workers; i++) {
        ymo_wsgi_worker_destroy(&s->workers[i]);
    }
    if (s->loop != NULL) {
        ymo_server_close_listeners(s);
        ev_loop_destroy(s->loop);
        s->loop = NULL;
        pthread_mutex_destroy(&s->ctl_lock);
        pthread_cond_destroy(&s->watchdog_cond);
        pthread_mutex_destroy(&s->watchdog_lock);
        pthread_cond_destroy(&s->handover_cond);
        pthread_mutex_destroy(&s->handover_lock);
        pthread_mutex_destroy(&s->answers_lock);
    }
    free(s->listeners);
    free(s->workers);
    free(s->headers);
    if (s->scratch_bucket != NULL) {
        ymo_bucket_free(s->scratch_bucket);
    }
    s->scratch_bucket = NULL;
    /* No loop or worker is left to take or free one. A bucket of theirs
     * still out (the pending output of a StartResponse the app keeps) is
     * freed when it comes back, which may be after this: the lock stays. */
    ymo_spares_drain(&s->spares);
    ymo_trust_free(&s->config.trust);
    s->headers = NULL;
    s->scratch = NULL;
    s->listeners = NULL;
    s->n_listeners = 0;
    s->workers = NULL;
    s->n_workers = 0;
}

void
ymo_server_dispatch(ymo_server_t *s, ymo_exchange_t *ex)
{
    /* A worker waiting for work first (round robin among them, so load
     * spreads); otherwise the one with the fewest exchanges in hand.
     * With the GIL, only one runs Python at a time: an idle worker this
     * turn of the loop already wakes takes the turn's other exchanges
     * too, and calls a standby if the app blocks (wsgi_worker.c,
     * stand_by), rather than each waking another worker to wait for the
     * GIL. Unless most recent exchanges were cut (YMO_APP_BLOCKS: the app
     * blocks with the GIL released): then each exchange gets an idle
     * worker of its own, as free-threaded, since the standbys, woken one
     * after another as each exchange blocks, would start the turn's last
     * exchange a chain of wake-ups late (64 connections to an app that
     * sleeps 10 ms: p99 11.9 ms one after another, 11.3 each woken at
     * once). */
    int gil = ymo_wsgi_worker_gil_on(s) &&
              atomic_load_explicit(&s->cut_share, memory_order_relaxed) <=
                  YMO_APP_BLOCKS;
    ymo_wsgi_worker_t *best = NULL;
    ymo_wsgi_worker_t *idle = NULL;
    size_t n = s->n_workers;
    for (size_t i = 0; i < n; i++) {
        ymo_wsgi_worker_t *w = ymo_server_worker_after(s, s->next_worker, i);
        if (atomic_load_explicit(&w->retired, memory_order_relaxed)) {
            /* Stuck in the app (the watchdog replaced it), or a spare
             * slot with no thread. */
            continue;
        }
        if (atomic_load(&w->idle)) {
            if (!gil || w->notify_pending) {
                idle = w;
                break;
            }
            if (idle == NULL) {
                idle = w;
            }
            continue;
        }
        if (best == NULL || w->assigned < best->assigned) {
            best = w;
        }
    }
    if (idle != NULL) {
        best = idle;
    }
    if (best == NULL) {
        /* Every thread is stuck and no replacement was allowed: queue
         * behind one that is not a spare, to run when it comes back. */
        for (size_t i = 0; i < n && best == NULL; i++) {
            ymo_wsgi_worker_t *w =
                ymo_server_worker_after(s, s->next_worker, i);
            if (!atomic_load(&w->unused)) {
                best = w;
            }
        }
        if (best == NULL) {
            best = &s->workers[0];
        }
    }
    /* libev runs a turn's callbacks in the reverse of the order in
     * which epoll reported their sockets, so within a turn the requests
     * read come here newest first: they are numbered down from the top
     * of the turn's range, and queued back to front (ymo_queue_push_turn),
     * so that the oldest runs first and, with queue_timeout, is not the
     * one that waited longest for nothing. Those taken up again from
     * other callbacks (a connection that waited for room, a pipelined
     * request) come oldest first: numbered up from the bottom, queued in
     * order ahead of the reads (ymo_queue_push_carried). */
    unsigned int iteration = ev_iteration(s->loop);
    if (s->turn == 0 || iteration != s->turn_iteration) {
        s->turn++;
        s->turn_iteration = iteration;
        s->turn_dispatched = 0;
        s->turn_carried = 0;
    }
    uint32_t place;
    if (s->dispatch_read) {
        uint32_t top = (1u << YMO_TURN_SHIFT) - 1;
        uint32_t k = s->turn_dispatched;
        place = k < YMO_TURN_CARRIED - 1 ? top - k : YMO_TURN_CARRIED;
        s->turn_dispatched++;
    }
    else {
        /* Not libev's order: dispatched oldest first already. */
        uint32_t k = s->turn_carried;
        place = k < YMO_TURN_CARRIED - 1 ? k : YMO_TURN_CARRIED - 1;
        s->turn_carried++;
    }
    ex->dispatch_seq = (s->turn << YMO_TURN_SHIFT) | place;
    ymo_wsgi_worker_add_exchange(best, ex);
    s->n_exchanges++;
    s->next_worker = best->id + 1 < n ? best->id + 1 : 0;
    ex->assigned = best;
    best->assigned++;
    if (!atomic_load(&best->idle)) {
        /* Queued behind work in progress. A worker that is idle, or about
         * to be (it may have finished since), must not watch: wake it and
         * it steals the exchange (see worker_next in wsgi_worker.c). With
         * the GIL one is enough, and none while a standby has yet to look
         * (it clears `standby` before it looks: stand_by). */
        if (gil && atomic_load(&s->standby)) {
            return;
        }
        for (size_t i = 0; i < n; i++) {
            ymo_wsgi_worker_t *w = &s->workers[i];
            if (w == best || !atomic_load(&w->idle)) {
                continue;
            }
            if (gil && w->notify_pending) {
                return;         /* woken at the end of this turn */
            }
            if (!w->notify_pending) {
                int none = 0;
                if (gil && !atomic_compare_exchange_strong(&s->standby,
                                                           &none, 1)) {
                    return;     /* a worker stands by since the look */
                }
                w->notify_pending = 1;
                ev_prepare_start(s->loop, &w->prepare_watcher);
                if (gil) {
                    return;
                }
            }
        }
    }
}
