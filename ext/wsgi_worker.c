/* wsgi_worker.c - the thread worker (see wsgi_worker.h): the worker thread
 * with its one persistent Python thread state, the input queue it sleeps
 * on, stealing from busy peers, and the output queue back to the loop.  */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "wsgi_worker.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "conn.h"
#include "server.h"
#include "wsgi.h"

/* Loop thread: once per loop iteration, wake a worker that got work. */
static void
worker_on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    ymo_wsgi_worker_t *worker = w->data;
    ev_prepare_stop(loop, w);
    worker->notify_pending = 0;
    ymo_wsgi_worker_notify(worker);
}

/* Loop thread: the worker posted exchanges with output or requests. The
 * queue is drained in batches, each under one hold of lock_out. */
static void
worker_on_output(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    ymo_wsgi_worker_t *worker = w->data;
    for (;;) {
        ymo_exchange_t *batch[64];
        size_t n = 0;
        ymo_wsgi_worker_lock_out(worker);
        while (n < 64 && (batch[n] = ymo_queue_pop(&worker->queue_out))) {
            n++;
        }
        ymo_wsgi_worker_unlock_out(worker);
        for (size_t i = 0; i < n; i++) {
            ymo_conn_on_exchange(batch[i]);
        }
        if (n < 64) {
            break;
        }
    }
}

ymo_status_t
ymo_wsgi_worker_init(struct ev_loop *loop, size_t thread_id,
                     ymo_wsgi_worker_t *worker)
{
    worker->loop = loop;
    worker->id = thread_id;
    ymo_queue_init(&worker->queue_in, worker->pool_in,
                   YMO_WSGI_WORKER_QUEUE_POOL_SIZE);
    ymo_queue_init(&worker->queue_out, worker->pool_out,
                   YMO_WSGI_WORKER_QUEUE_POOL_SIZE);
    if (YMO_FI_FAIL("worker lock_in") ||
        pthread_mutex_init(&worker->lock_in, NULL) != 0) {
        return -ENOMEM;
    }
    if (YMO_FI_FAIL("worker lock_out") ||
        pthread_mutex_init(&worker->lock_out, NULL) != 0) {
        pthread_mutex_destroy(&worker->lock_in);
        return -ENOMEM;
    }
    if (YMO_FI_FAIL("worker ready_in") ||
        pthread_cond_init(&worker->ready_in, NULL) != 0) {
        pthread_mutex_destroy(&worker->lock_out);
        pthread_mutex_destroy(&worker->lock_in);
        return -ENOMEM;
    }
    if (YMO_FI_FAIL("worker watch_lock") ||
        pthread_mutex_init(&worker->watch_lock, NULL) != 0) {
        pthread_cond_destroy(&worker->ready_in);
        pthread_mutex_destroy(&worker->lock_out);
        pthread_mutex_destroy(&worker->lock_in);
        return -ENOMEM;
    }
    ev_prepare_init(&worker->prepare_watcher, worker_on_prepare);
    worker->prepare_watcher.data = worker;
    ev_async_init(&worker->event_out, worker_on_output);
    worker->event_out.data = worker;
    ev_async_start(loop, &worker->event_out);
    atomic_init(&worker->idle, 0);
    atomic_init(&worker->n_in, 0);
    atomic_init(&worker->head_seq, UINT64_MAX);
    atomic_init(&worker->in_app, 0);
    atomic_init(&worker->gil_wait_since, 0);
    atomic_init(&worker->retired, 0);
    atomic_init(&worker->unused, 0);
    atomic_init(&worker->exited, 0);
    worker->running = 1;
    worker->poked = 0;
    worker->started = 0;
    worker->assigned = 0;
    worker->notify_pending = 0;
    worker->push_turn = 0;
    worker->overrun_head = NULL;
    memset(worker->values, 0, sizeof(worker->values));
    worker->spare_sr = NULL;
    worker->thread_initialized = 1;
    return 0;
}

/* With `worker`'s lock_in held, after a push or pop: what others read of
 * its queue without the lock. */
static void
publish_in(ymo_wsgi_worker_t *worker)
{
    ymo_queue_node_t *head = worker->queue_in.head;
    atomic_store(&worker->head_seq,
                 head != NULL ? ((ymo_exchange_t *)head->item)->dispatch_seq
                              : UINT64_MAX);
    atomic_store(&worker->n_in, worker->queue_in.count);
}

/* Pop one exchange from `from`'s input queue for `self`. */
static ymo_exchange_t *
take_from(ymo_wsgi_worker_t *self, ymo_wsgi_worker_t *from)
{
    /* An empty queue is not locked: a worker looks at every peer's after
     * each exchange, and the locks cost more than the exchange's own.
     * The protocol of worker_next still holds: the loop stores n_in and
     * then loads `idle`, a worker stores `idle` and then loads n_in, all
     * seq_cst, so one of them sees the other's store. */
    if (atomic_load(&from->n_in) == 0) {
        return NULL;
    }
    ymo_wsgi_worker_lock_in(from);
    ymo_exchange_t *ex = ymo_queue_pop(&from->queue_in);
    if (ex != NULL) {
        ex->worker = self;
    }
    publish_in(from);
    ymo_wsgi_worker_unlock_in(from);
    return ex;
}

/* Take the oldest exchange waiting for a peer: an exchange queued behind a
 * busy worker must not wait while this one is idle. */
static ymo_exchange_t *
steal(ymo_wsgi_worker_t *self)
{
    ymo_server_t *s = self->server;
    for (size_t i = 1; i < s->n_workers; i++) {
        ymo_wsgi_worker_t *peer = ymo_server_worker_after(s, self->id, i);
        if (atomic_load_explicit(&peer->unused, memory_order_relaxed)) {
            /* A spare slot of the watchdog's with no thread: its queue
             * is empty, and not locking it keeps spares free. */
            continue;
        }
        ymo_exchange_t *ex = take_from(self, peer);
        if (ex != NULL) {
            return ex;
        }
    }
    return NULL;
}

/* With the GIL, the attached worker (the only one running Python) takes
 * the oldest exchange queued to any worker, so that exchanges run in the
 * order they came: taking its own queue first, it ran the exchanges the
 * loop kept giving it while those queued to a worker waiting for the GIL
 * waited, and Django with 4 workers had twice the p99 of one worker. */
static ymo_exchange_t *
take_oldest(ymo_wsgi_worker_t *self)
{
    ymo_server_t *s = self->server;
    ymo_wsgi_worker_t *best = NULL;
    uint64_t best_seq = UINT64_MAX;
    for (size_t i = 0; i < s->n_workers; i++) {
        ymo_wsgi_worker_t *w = ymo_server_worker_after(s, self->id, i);
        if (w != self &&
            atomic_load_explicit(&w->unused, memory_order_relaxed)) {
            continue;           /* a spare slot: see steal */
        }
        uint64_t seq = atomic_load(&w->head_seq);
        if (seq < best_seq) {
            best = w;
            best_seq = seq;
        }
    }
    return best != NULL ? take_from(self, best) : NULL;
}

/* worker_next returns this (never run) when the worker woke only to
 * release the owners of freed reference buckets (bucket.h). */
static char release_only;
#define RELEASE_ONLY ((ymo_exchange_t *)(void *)&release_only)

/* With the GIL, a waking worker takes no exchange before it holds the
 * GIL: worker_next returns MAY_WORK when there is one to take, and the
 * worker takes it (or another) once attached. Taken before, an exchange
 * waited with the worker for the GIL, up to a switch interval (5 ms) and
 * behind exchanges queued after it that the GIL's holder ran meanwhile:
 * Django with 4 workers had a p99 of 19 ms against 6 ms with one. Left
 * in the queue, it is run by whichever worker holds the GIL first: the
 * holder steals it after its own exchange. Free-threaded, attaching does
 * not wait, and the exchange is taken at once, unless the GIL is back on
 * (PYTHON_GIL=1, -X gil=1, or an extension module imported without
 * Py_mod_gil): then it is the GIL's order again (note_gil). */
static char may_work;
#define MAY_WORK ((ymo_exchange_t *)(void *)&may_work)
#ifdef Py_GIL_DISABLED
#define TAKE_ATTACHED(w) \
    atomic_load_explicit(&(w)->server->gil_enabled, memory_order_relaxed)
#else
#define TAKE_ATTACHED(w) 1
#endif

int
ymo_wsgi_worker_gil_on(const ymo_server_t *s)
{
#ifdef Py_GIL_DISABLED
    return atomic_load_explicit(&s->gil_enabled, memory_order_relaxed);
#else
    (void)s;
    return 1;
#endif
}

/* Attached: record whether the GIL is on, for TAKE_ATTACHED. A
 * free-threaded build turns it on at run time when a module that does
 * not declare Py_mod_gil is imported, which an app may do in a request,
 * so a worker asks again after each exchange. (No C API tells; the call
 * of the function taken at import costs about 125 instructions.) */
static void
note_gil(ymo_server_t *s)
{
#ifdef Py_GIL_DISABLED
    int on = 1;                 /* not known: the order that is never
                                 * worse than one worker's */
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *fn = s->app->st->is_gil_enabled;
    PyObject *r = fn != NULL ? PyObject_CallNoArgs(fn) : NULL;
    if (r != NULL) {
        on = r != Py_False;
        Py_DECREF(r);
    }
    PyErr_Clear();
    PyErr_SetRaisedException(exc);
    atomic_store_explicit(&s->gil_enabled, on, memory_order_relaxed);
#else
    (void)s;
#endif
}

/* Is there an exchange this worker may take: in its own queue or, unless
 * it is retiring, a peer's? (A hint: taking it may still fail.) */
static int
work_visible(ymo_wsgi_worker_t *self)
{
    if (atomic_load(&self->n_in) > 0) {
        return 1;
    }
    if (self->retiring) {
        return 0;
    }
    ymo_server_t *s = self->server;
    for (size_t i = 1; i < s->n_workers; i++) {
        ymo_wsgi_worker_t *peer = ymo_server_worker_after(s, self->id, i);
        if (!atomic_load_explicit(&peer->unused, memory_order_relaxed) &&
            atomic_load(&peer->n_in) > 0) {
            return 1;
        }
    }
    return 0;
}

/* A worker woken to stand by has attached, gone idle or is leaving: the
 * next exchange left queued may call another (stand_by). */
static void
standby_done(ymo_server_t *s)
{
    if (atomic_load(&s->standby)) {
        atomic_store(&s->standby, 0);
    }
}

/* A worker that waited longer than this for the GIL (seconds) finds
 * another thread holding it busy, not a run of short exchanges: Python's
 * switch interval, after which a waiting thread takes the GIL from a busy
 * one, is 5 ms unless the app changes it. */
#define STANDBY_EAGER_WAIT 0.002

/* With the GIL, attached, after taking an exchange: if others are left
 * queued, one idle peer waits for the GIL behind this worker, so they run
 * if the app blocks (a query, a sleep: the GIL is released) while this
 * worker is in it; it takes them in order once attached, and calls the
 * next standby if some are still left. One is enough: only one worker
 * runs Python at a time, and each one woken costs a wake-up and a GIL
 * hand-off whether it finds work or not. The loop hands a turn's
 * exchanges to one worker and wakes no more than one standby either
 * (server.c, dispatch). Why no exchange waits while a worker is idle:
 * a standby clears `standby` (standby_done) before it looks at the
 * queues for the last time, when it attaches or goes idle; so whoever
 * reads 1 after queueing is sure of a worker that will look after the
 * push, all seq_cst. */
static void
stand_by(ymo_wsgi_worker_t *self)
{
    ymo_server_t *s = self->server;
    int eager = self->eager;
    size_t want = 1;
    self->eager = 0;
    if (eager) {
        /* It waited long for the GIL while exchanges were queued: another
         * thread keeps the GIL busy (a long request, a thread of the
         * app), and a standby woken only now would in turn wait a switch
         * interval (5 ms) for it, once per exchange. Every exchange
         * still queued gets a worker waiting for the GIL at once, as if
         * each had been given to an idle worker. */
        want = 0;
        for (size_t i = 0; i < s->n_workers; i++) {
            ymo_wsgi_worker_t *w = &s->workers[i];
            if (!atomic_load_explicit(&w->unused, memory_order_relaxed)) {
                want += atomic_load(&w->n_in);
            }
        }
        if (want == 0) {
            return;
        }
        atomic_store(&s->standby, 1);
    }
    else if (atomic_load(&s->standby) || !work_visible(self)) {
        return;
    }
    for (size_t i = 1; i < s->n_workers && want > 0; i++) {
        ymo_wsgi_worker_t *peer = ymo_server_worker_after(s, self->id, i);
        if (atomic_load(&peer->retired) || atomic_load(&peer->unused) ||
            !atomic_load(&peer->idle)) {
            continue;
        }
        int none = 0;
        if (!eager && !atomic_compare_exchange_strong(&s->standby, &none,
                                                      1)) {
            return;             /* another one stands by already */
        }
        ymo_wsgi_worker_notify(peer);
        want--;
    }
}

/* The next exchange to run: with the GIL the oldest queued to any worker
 * (take_oldest), free-threaded its own queue first, then peers' (a
 * retiring worker: its own queue only). With `block`, sleep
 * until there is one (GIL released); NULL then means stop, RELEASE_ONLY
 * that owners wait in the server's release list, MAY_WORK that there is
 * an exchange to take once attached (TAKE_ATTACHED). */
static ymo_exchange_t *
worker_next(ymo_wsgi_worker_t *self, int block)
{
    int peek = block && TAKE_ATTACHED(self);
    for (;;) {
        ymo_exchange_t *ex;
        if (peek) {
            ex = work_visible(self) ? MAY_WORK : NULL;
        }
        else {
            int gil = TAKE_ATTACHED(self);
            ex = gil && !self->retiring ? take_oldest(self)
                                        : take_from(self, self);
            if (ex == NULL && !self->retiring) {
                /* (A retiring worker takes only what was queued to it:
                 * under load, stealing would keep it from ever
                 * leaving.) */
                ex = steal(self);
            }
            if (ex != NULL && gil && !block) {
                stand_by(self);
            }
        }
        if (ex != NULL || !block || self->retiring) {
            /* A retiring worker (the watchdog replaced it while it was
             * stuck) leaves once nothing is left for it. */
            return ex;
        }
        /* Announce idleness, then look once more: the loop checks `idle`
         * after queueing to a busy worker, so either it sees the flag and
         * pokes us, or this second look sees its exchange. */
        standby_done(self->server);
        atomic_store(&self->idle, 1);
        ex = peek ? (work_visible(self) ? MAY_WORK : NULL) : steal(self);
        if (ex != NULL) {
            atomic_store(&self->idle, 0);
            return ex;
        }
        if (ymo_server_owed(self->server)) {
            /* Poked by the loop for them (server_on_release). */
            atomic_store(&self->idle, 0);
            return RELEASE_ONLY;
        }
        ymo_wsgi_worker_lock_in(self);
        while (self->queue_in.count == 0 && !self->poked && self->running) {
            pthread_cond_wait(&self->ready_in, &self->lock_in);
        }
        int running = self->running;
        int queued = self->queue_in.count > 0;
        self->poked = 0;
        ymo_wsgi_worker_unlock_in(self);
        atomic_store(&self->idle, 0);
        if (!running && !queued) {
            return NULL;
        }
    }
}

/* The GIL hand-over. Python makes a thread that has waited a switch
 * interval for the GIL (5 ms unless the app changes it) force the holder
 * to drop it wherever the holder is: in the middle of a request, which
 * then waits for every worker that runs meanwhile. With the standby
 * waiting behind a busy worker that happened to most requests: Django
 * with 4 workers had a p99 of 35 ms against 13 ms with one. So the
 * holder hands the GIL over between two exchanges instead (handover_due):
 *
 * - A worker that waits in worker_main for the GIL to take queued
 *   exchanges stamps since when (gil_wait_since). The holder, after an
 *   exchange it ran, hands the GIL over once the oldest such waiter has
 *   waited handover_ns (a fifth of the interval) while exchanges are
 *   queued; the wait counts from the last time the GIL changed hands in
 *   worker_main (gil_attached_at) if that was later, because a change of
 *   holder keeps Python from forcing a switch for a full interval.
 * - A worker waiting for the GIL inside an exchange is not stamped: one
 *   whose request was cut by a forced switch (a request longer than the
 *   interval, or a holder the system descheduled), or one back from I/O.
 *   With every worker in an exchange, no one is stamped, and cut workers
 *   would go on cutting each other. So a holder whose exchange was cut
 *   (another worker started an exchange or attached in worker_main
 *   meanwhile: gil_turns moved; a worker that takes the GIL back inside
 *   its own long exchange does not move it) hands the GIL over too when
 *   another worker is in an exchange, once per CUT_HANDOVER_EVERY
 *   intervals at most, and goes back to worker_main, where it stamps.
 *   (An exchange that waited for I/O while another started counts as
 *   cut as well: hence the rate.)
 *
 * Which thread takes the GIL is the system's choice; it is enough that
 * another does, which handover_wait waits for (bounded: it may be a
 * thread the server does not know of). Per server: another server in the
 * process, or the app's own threads, still force switches as before. */

/* Worker thread, attached, at its start: the hand-over's times from the
 * app's switch interval (read once: apps set it at import). Python keeps
 * whole microseconds: below 1 us getswitchinterval() says 0, read as the
 * default. */
static void
handover_times(ymo_wsgi_worker_t *self)
{
    double interval = 0.005;
    PyObject *fn = PySys_GetObject("getswitchinterval");    /* borrowed */
    PyObject *r = fn != NULL ? PyObject_CallNoArgs(fn) : NULL;
    if (r != NULL) {
        double v = PyFloat_AsDouble(r);
        Py_DECREF(r);
        if (v > 0) {
            interval = v < 1.0 ? v : 1.0;   /* (also: inf, NaN is not > 0) */
        }
    }
    PyErr_Clear();
    /* A fifth: the 1 ms that measured best at the default 5 ms (0.2 ms
     * switched too often), but no less than 0.5 ms unless the interval
     * is shorter than 1 ms. */
    double after = interval / 5;
    double least = interval / 2 < 0.0005 ? interval / 2 : 0.0005;
    after = after < least ? least : after;
    self->handover_ns = (uint64_t)(after * 1e9);
    self->switch_ns = (uint64_t)(interval * 1e9);
}

/* With the GIL, attached: the GIL changed hands (this worker attached in
 * worker_main, or is starting an exchange). Wakes a worker that handed
 * the GIL over and waits for another to take it; returns whether one was
 * waiting. Why no wake-up is lost: this adds to gil_turns then loads
 * handover_waiting, handover_wait adds to handover_waiting then loads
 * gil_turns, all seq_cst, and the broadcast is made under the lock that
 * waiter holds from its look to its wait. Returns gil_turns before. */
static unsigned long
gil_turn(ymo_server_t *s, int *waiter)
{
    unsigned long turns = atomic_fetch_add(&s->gil_turns, 1);
    *waiter = atomic_load(&s->handover_waiting) != 0;
    if (*waiter) {
        pthread_mutex_lock(&s->handover_lock);
        pthread_cond_broadcast(&s->handover_cond);
        pthread_mutex_unlock(&s->handover_lock);
    }
    return turns;
}

/* Is another worker in an exchange (running the app, or waiting inside
 * it: for I/O, or for the GIL), or about to take the GIL for one (in_app
 * covers worker_main's wait for the GIL, and a hand-over's wait)? */
static int
other_in_app(ymo_wsgi_worker_t *self)
{
    ymo_server_t *s = self->server;
    for (size_t i = 0; i < s->n_workers; i++) {
        ymo_wsgi_worker_t *w = &s->workers[i];
        if (w != self &&
            !atomic_load_explicit(&w->unused, memory_order_relaxed) &&
            atomic_load_explicit(&w->in_app, memory_order_relaxed)) {
            return 1;
        }
    }
    return 0;
}

/* A share in 1024ths, as a moving average over about 8 events, after one
 * more event that `hit` or not. From 0 it stays within 0..1024 (hits
 * only: 128, 240, ... up to 1024, where share / 8 equals what one adds). */
static unsigned
share_step(unsigned share, int hit)
{
    return share - share / 8 + (hit ? 128 : 0);
}

/* With the GIL, after an exchange: update the share of cut ones
 * (share_step; server.c, dispatch, reads it). Stored only when it
 * changes: an app that never blocks leaves it at 0 without a write to the
 * shared line per request. */
static void
note_cut(ymo_server_t *s, int cut)
{
    unsigned share = atomic_load_explicit(&s->cut_share,
                                          memory_order_relaxed);
    unsigned next = share_step(share, cut);
    if (next != share) {
        atomic_store_explicit(&s->cut_share, next, memory_order_relaxed);
    }
}

/* A hand-over after a cut exchange comes at most once per this many
 * switch intervals. The other worker in an exchange may be in I/O rather
 * than waiting for the GIL (a query), and then the hand-over only delays
 * this worker's next request behind it: with one every interval, an app
 * that waits 5 ms for I/O and runs 0.5 ms of Python lost 9% of its
 * throughput on 4 workers; cut workers still stop cutting each other
 * within 50 ms. */
#define CUT_HANDOVER_EVERY 10

/* After a hand-over between exchanges that no worker took (a thread of
 * the app, or a worker waiting for the GIL inside a long request, has
 * it), none for a while: 2 switch intervals, or 100 while more than a
 * quarter of the recent ones went so (handover_missed). A thread that
 * keeps the GIL does so a whole interval, until Python forces a switch,
 * while a worker handed it keeps it a fifth: each hand-over offered the
 * GIL to it again, and with an app thread busy in Python or in C, 320
 * requests of 2 ms on 4 workers took 1.3-1.9 times as long as with no
 * hand-over (1.02-1.04 times with the pause). */
#define HANDOVER_PAUSE_SHORT 2
#define HANDOVER_PAUSE_LONG 100

/* After a hand-over between exchanges: update the share of missed ones
 * (share_step), and pause if it missed. */
static void
handover_note(ymo_wsgi_worker_t *self, int missed)
{
    ymo_server_t *s = self->server;
    unsigned share = atomic_load_explicit(&s->handover_missed,
                                          memory_order_relaxed);
    share = share_step(share, missed);
    atomic_store_explicit(&s->handover_missed, share, memory_order_relaxed);
    if (missed) {
        uint64_t pause = share > 256 ? HANDOVER_PAUSE_LONG
                                     : HANDOVER_PAUSE_SHORT;
        atomic_store_explicit(&s->handover_paused_until,
                              ymo_monotonic_ns() + pause * self->switch_ns,
                              memory_order_relaxed);
    }
}

/* Nanoseconds from `then` to `now` (0 if `then` is later: another
 * thread's clock read). */
static uint64_t
since_ns(uint64_t now, uint64_t then)
{
    return now > then ? now - then : 0;
}

/* With the GIL, attached, after an exchange this hold ran (`cut`: the GIL
 * changed hands while it ran), not retiring: should it hand the GIL over?
 * 0: no; else how long handover_wait may wait for another worker to take
 * it. (Without an exchange run first, a worker that has just attached
 * could hand the GIL on without doing anything.) */
static uint64_t
handover_due(ymo_wsgi_worker_t *self, int cut)
{
    ymo_server_t *s = self->server;
    int stamped = atomic_load_explicit(&s->gil_waiters,
                                       memory_order_relaxed) != 0;
    if (!stamped && !cut) {
        return 0;               /* the usual case: one load */
    }
    uint64_t now = ymo_monotonic_ns();
    uint64_t from = atomic_load_explicit(&s->gil_attached_at,
                                         memory_order_relaxed);
    if (stamped && since_ns(now, from) >= self->handover_ns &&
        now >= atomic_load_explicit(&s->handover_paused_until,
                                    memory_order_relaxed)) {
        uint64_t oldest = UINT64_MAX;
        for (size_t i = 0; i < s->n_workers; i++) {
            uint64_t since = atomic_load_explicit(
                &s->workers[i].gil_wait_since, memory_order_relaxed);
            oldest = since != 0 && since < oldest ? since : oldest;
        }
        from = from > oldest ? from : oldest;
        if (oldest != UINT64_MAX && since_ns(now, from) >= self->handover_ns &&
            work_visible(self)) {
            return self->switch_ns;
        }
    }
    if (cut &&
        since_ns(now, atomic_load_explicit(&s->cut_handover_at,
                                           memory_order_relaxed)) >=
            CUT_HANDOVER_EVERY * self->switch_ns &&
        work_visible(self) && other_in_app(self)) {
        /* (Racing workers may both hand over: no harm.) */
        atomic_store_explicit(&s->cut_handover_at, now,
                              memory_order_relaxed);
        /* The other may be in I/O, not waiting for the GIL: a short
         * wait, ended by any worker taking the GIL. */
        return self->handover_ns;
    }
    return 0;
}

/* GIL released, after a hand-over: wait until another worker has taken
 * the GIL (gil_turns moved from `seen`, read while this one still had
 * it), for at most `bound` ns (a thread the server does not know of may
 * have taken it); returns whether none did. Without the wait this
 * worker, back in the line for the GIL at once, could take it straight
 * back: take_gil gives it to whoever asks while it is free, not to the
 * waiter it signalled. */
static int
handover_wait(ymo_wsgi_worker_t *self, unsigned long seen, uint64_t bound)
{
    ymo_server_t *s = self->server;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    uint64_t ns = (uint64_t)until.tv_nsec + bound;
    until.tv_sec += (time_t)(ns / 1000000000u);
    until.tv_nsec = (long)(ns % 1000000000u);
    int timed_out = 0;
    pthread_mutex_lock(&s->handover_lock);
    atomic_fetch_add(&s->handover_waiting, 1);
    while (atomic_load(&s->gil_turns) == seen && !timed_out) {
        timed_out = pthread_cond_timedwait(&s->handover_cond,
                                           &s->handover_lock,
                                           &until) == ETIMEDOUT;
    }
    timed_out = atomic_load(&s->gil_turns) == seen;
    atomic_fetch_sub(&s->handover_waiting, 1);
    pthread_mutex_unlock(&s->handover_lock);
    atomic_fetch_add_explicit(&s->handovers, 1, memory_order_relaxed);
    if (timed_out) {
        atomic_fetch_add_explicit(&s->handover_timeouts, 1,
                                  memory_order_relaxed);
    }
    return timed_out;
}

static void *
worker_main(void *arg)
{
    ymo_wsgi_worker_t *self = arg;
    /* Created with every signal blocked (so none lands here before the
     * thread is set up); from now on the worker has the mask of the thread
     * that started the server. Processes the app starts inherit this
     * thread's mask, and Popen.terminate() or Ctrl-C must reach them. The
     * server routes no signal through the workers: Python's handler may
     * run on any thread and wakes the loop through the wakeup fd. */
    pthread_sigmask(SIG_SETMASK, &self->sigmask, NULL);
    /* So that a stop() the app calls knows not to wait for itself. */
    ymo_server_enter_worker_thread(self->server);
    /* The one thread state this worker has for its whole life, so
     * threading.local() data survives between requests. Ownership rule:
     * ts is this thread's alone; it is attached only between
     * PyEval_RestoreThread and PyEval_SaveThread below, around the
     * exchanges run back to back, and detached whenever the worker
     * waits (worker_next's condition wait, and inside an exchange every
     * wait for the loop: wsgi.input reads, back-pressure on output). With
     * the GIL that releases the GIL; on a free-threaded build it detaches
     * the thread state, so a waiting worker never holds up a
     * stop-the-world pause (the GC, sys._current_frames) of the others:
     * only pthread locks held for a few instructions are taken while
     * attached (lock_in/lock_out, an exchange's lock, watch_lock). */
    PyGILState_STATE gstate = PyGILState_Ensure();
    self->thread_ident = PyThread_get_thread_ident();
    note_gil(self->server);
    handover_times(self);
    ymo_server_t *s = self->server;
    PyThreadState *ts = PyEval_SaveThread();
    /* The server's start waits for this (ymo_server_wait_workers_attached)
     * so that it returns with every thread state made: on a free-threaded
     * build, making one may stop the world (CPython 3.13 grows its QSBR
     * array so), and a fork by the app meanwhile left the child with that
     * lock held for ever: it hung at its first collection, at exit. */
    atomic_fetch_add(&s->workers_attached, 1);
    ymo_exchange_t *ex;
    while ((ex = worker_next(self, 1)) != NULL) {
        do {
            atomic_store(&self->in_app, 1);
            int gil = TAKE_ATTACHED(self);
            /* Waiting to take queued exchanges: holders may hand the GIL
             * over to it (handover_due). */
            int stamped = gil && ex != RELEASE_ONLY && !self->retiring;
            uint64_t asked = gil ? ymo_monotonic_ns() : 0;
            if (stamped) {
                atomic_store_explicit(&self->gil_wait_since, asked,
                                      memory_order_relaxed);
                atomic_fetch_add_explicit(&s->gil_waiters, 1,
                                          memory_order_relaxed);
            }
            PyEval_RestoreThread(ts);
            if (stamped) {
                atomic_store_explicit(&self->gil_wait_since, 0,
                                      memory_order_relaxed);
                atomic_fetch_sub_explicit(&s->gil_waiters, 1,
                                          memory_order_relaxed);
            }
            uint64_t now = 0;
            int handed = 0;
            if (gil) {
                now = ymo_monotonic_ns();
                atomic_store_explicit(&s->gil_attached_at, now,
                                      memory_order_relaxed);
                gil_turn(s, &handed);
            }
            standby_done(s);
            if (gil) {
                /* Handed the GIL, it waited for the runs of exchanges that
                 * hand-overs allow, not for a thread that keeps it. */
                self->eager =
                    !handed && now - asked > STANDBY_EAGER_WAIT * 1e9;
                if (ex != RELEASE_ONLY && ex != MAY_WORK) {
                    /* Taken before attaching: the GIL was off when this
                     * worker went to sleep, and is on now (an import). */
                    stand_by(self);
                }
            }
            /* Run everything that is queued under this one GIL hold,
             * releasing the owners of the output the loop has written
             * after each exchange (the app's bytes, see bucket.h). */
            int ran = 0;
            int cut = 0;
            uint64_t handover = 0;
            while (ex != NULL) {
                if (ex != RELEASE_ONLY && ex != MAY_WORK) {
                    int on = TAKE_ATTACHED(self);
                    int unused;
                    unsigned long turns = on ? gil_turn(s, &unused) : 0;
                    ymo_wsgi_run_exchange(s->app, self, ex);
                    /* Its last references may have run the app's code (a
                     * __del__, a weakref callback, the GC). */
                    YMO_FORK_GUARD(s);
                    cut = on && atomic_load_explicit(
                                    &s->gil_turns,
                                    memory_order_relaxed) != turns + 1;
                    if (on) {
                        note_cut(s, cut);
                    }
                    ran = 1;
                }
                ymo_wsgi_release_owners(s);
                if (ymo_server_answers_owed(s)) {
                    ymo_wsgi_log_answers(s, 0);
                }
                /* The exchange may have turned the GIL on (an import). */
                note_gil(s);
                if (ran && !self->retiring && TAKE_ATTACHED(self) &&
                    (handover = handover_due(self, cut)) != 0) {
                    break;
                }
                ex = worker_next(self, 0);
            }
            /* Read attached: the GIL changes hands after the release. */
            unsigned long turns = atomic_load(&s->gil_turns);
            ts = PyEval_SaveThread();
            if (handover) {
                int missed = handover_wait(self, turns, handover);
                if (handover == self->switch_ns) {
                    handover_note(self, missed);    /* between exchanges */
                }
                /* Back in the line for the GIL, behind the worker it was
                 * handed to, it is the standby (it clears this and looks
                 * at the queues, attached or going idle): the loop need
                 * not wake another worker for that. */
                int none = 0;
                atomic_compare_exchange_strong(&s->standby, &none, 1);
            }
            /* Out of the app, then a last look at the release list: the
             * loop wakes only idle workers for it (server_release_poke),
             * and this one is not idle yet. Both seq_cst. */
            atomic_store(&self->in_app, 0);
            ex = ymo_server_owed(self->server) ? RELEASE_ONLY : NULL;
        } while (ex != NULL);
    }
    standby_done(self->server);
    PyEval_RestoreThread(ts);
    ymo_wsgi_values_clear(self->values);
    ymo_wsgi_start_response_free(self);
    PyGILState_Release(gstate);
    /* Last: the watchdog may join this thread and reuse the slot. */
    atomic_store(&self->exited, 1);
    return NULL;
}

ymo_status_t
ymo_wsgi_worker_start(ymo_wsgi_worker_t *worker)
{
    /* The thread starts with every signal blocked and restores the
     * creator's mask itself (see worker_main). */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &worker->sigmask);
    int r = pthread_create(&worker->thread, NULL, worker_main, worker);
    pthread_sigmask(SIG_SETMASK, &worker->sigmask, NULL);
    if (r != 0) {
        return -r;
    }
    worker->started = 1;
    return 0;
}

ymo_status_t
ymo_wsgi_worker_restart(ymo_wsgi_worker_t *worker, const sigset_t *mask)
{
    ymo_wsgi_worker_lock_in(worker);
    worker->running = 1;
    worker->poked = 0;
    ymo_wsgi_worker_unlock_in(worker);
    worker->retiring = 0;
    /* The watchdog fields (watch_lock) were reset when the slot's last
     * thread was joined (wsgi_watchdog.c reap): taking watch_lock here
     * would nest it in the stuck worker's (see the lock order in
     * wsgi_worker.h). */
    atomic_store(&worker->exited, 0);
    atomic_store(&worker->in_app, 0);
    atomic_store(&worker->idle, 0);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    worker->sigmask = *mask;
    int r = pthread_create(&worker->thread, NULL, worker_main, worker);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        atomic_store(&worker->exited, 1);
        return -r;
    }
    worker->started = 1;
    /* Peers steal from it, then the loop dispatches to it. */
    atomic_store(&worker->unused, 0);
    atomic_store(&worker->retired, 0);
    return 0;
}

void
ymo_wsgi_worker_add_exchange(ymo_wsgi_worker_t *worker,
                             ymo_exchange_t *exchange)
{
    /* In arrival order: see ymo_server_dispatch. */
    uint64_t turn = exchange->dispatch_seq >> YMO_TURN_SHIFT;
    ymo_wsgi_worker_lock_in(worker);
    if (turn != worker->push_turn) {
        ymo_queue_mark(&worker->queue_in);
        worker->push_turn = turn;
    }
    uint32_t place = (uint32_t)(exchange->dispatch_seq &
                                ((1u << YMO_TURN_SHIFT) - 1));
    if (place < YMO_TURN_CARRIED) {
        ymo_queue_push_carried(&worker->queue_in, exchange,
                               &exchange->node_in);
    }
    else {
        ymo_queue_push_turn(&worker->queue_in, exchange, &exchange->node_in);
    }
    publish_in(worker);
    ymo_wsgi_worker_unlock_in(worker);
    if (!worker->notify_pending) {
        worker->notify_pending = 1;
        ev_prepare_start(worker->loop, &worker->prepare_watcher);
    }
}

/* Copy the chain's leading memory buckets into the room left in the last
 * bucket the loop has not taken yet, freeing them; returns what is left
 * of the chain. An app that streams small items posts each in a bucket of
 * its own (4 KB, mostly room); while the loop has not taken the previous
 * one they share it instead, so the items the loop finds waiting cost
 * their bytes, not a bucket each, toward out_high_water. The tail's
 * charge (its len and slack, see ymo_bucket_slack) is the same after: its
 * bytes grow by what its room shrinks. Exchange's lock held. */
static ymo_bucket_t *
merge_into_tail(ymo_exchange_t *exchange, ymo_bucket_t *chain)
{
    ymo_bucket_t *tail = exchange->out_tail;
    if (tail == NULL) {
        return chain;
    }
    while (chain != NULL && chain->owner == NULL && chain->fd < 0 &&
           chain->from_ex == tail->from_ex && chain->off == 0 &&
           ymo_bucket_fits(tail, chain->len)) {
        ymo_bucket_t *next = chain->next;
        memcpy(tail->data + tail->len, chain->data, chain->len);
        tail->len += chain->len;
        chain->next = NULL;
        ymo_bucket_free(chain);
        chain = next;
    }
    return chain;
}

/* response_body_append with the exchange's lock held (and left held). */
static int
append_locked(ymo_exchange_t *exchange, ymo_bucket_t *body_item, int done)
{
    ymo_wsgi_worker_t *worker = exchange->worker;
    if (exchange->out_done) {
        /* A thread of the app (a background reader) asking for more body
         * after the final post, or the worker after the watchdog ended
         * the exchange: it is over. */
        ymo_bucket_free_chain(body_item);
        return YMO_OUT_ABORTED;
    }
    if (body_item != NULL) {
        exchange->out_started = 1;
        body_item = merge_into_tail(exchange, body_item);
    }
    if (done & YMO_OUT_TO_CLOSE) {
        exchange->out_to_close = 1;
    }
    if (done & YMO_OUT_WHOLE) {
        exchange->out_whole = 1;
    }
    if (body_item != NULL) {
        /* Each bucket's bytes and the memory around them: the loop
         * takes back the bytes as it writes them and the rest when it
         * frees the bucket (conn_flush). */
        ymo_bucket_t *last = body_item;
        exchange->out_buffered += last->len + ymo_bucket_slack(last);
        while (last->next != NULL) {
            last = last->next;
            exchange->out_buffered += last->len + ymo_bucket_slack(last);
        }
        if (exchange->out_tail != NULL) {
            exchange->out_tail->next = body_item;
        }
        else {
            exchange->out_head = body_item;
        }
        exchange->out_tail = last;
    }
    if (done & YMO_DONE) {
        exchange->out_done = 1;
        exchange->out_close = (done & YMO_DONE_CLOSE) != 0;
        exchange->out_abort = (done & YMO_DONE_ABORT) != 0;
        exchange->out_reset = (done & YMO_DONE_RESET) != 0;
    }
    if (done & (YMO_DONE | YMO_OUT_COMPLETE)) {
        /* Threads of the app still reading the body or waiting to write
         * must not wait for a response that is complete. */
        exchange->out_complete = 1;
        ymo_exchange_wake_all(exchange);
    }
    int flags = exchange->aborted ? YMO_OUT_ABORTED : 0;
    if (exchange->out_buffered > worker->server->config.out_high_water) {
        flags |= YMO_OUT_HIGH_WATER;
    }
    if (!exchange->out_queued) {
        /* Queued with the exchange's lock held (lock order: exchange,
         * then lock_out; the loop never holds lock_out while it takes an
         * exchange's lock): the loop cannot see the final post, free the
         * exchange and let the server go before a concurrent post from an
         * app thread has finished with the queue. The push cannot fail:
         * the exchange brings its own node. */
        exchange->out_queued = 1;
        ymo_wsgi_worker_lock_out(worker);
        ymo_queue_push(&worker->queue_out, exchange, &exchange->node_out);
        int first = worker->queue_out.count == 1;
        ymo_wsgi_worker_unlock_out(worker);
        if (first) {
            /* The loop drains the whole queue per wake-up, so only the
             * empty -> non-empty transition needs one. */
            ev_async_send(worker->loop, &worker->event_out);
        }
    }
    return flags;
}

int
ymo_wsgi_worker_response_body_append(ymo_exchange_t *exchange,
                                     ymo_bucket_t *body_item, int done)
{
    YMO_FORK_GUARD(exchange->server);
    pthread_mutex_lock(&exchange->lock);
    int flags = append_locked(exchange, body_item, done);
    pthread_mutex_unlock(&exchange->lock);
    /* After the unlock the loop may already be taking (and, when done,
     * releasing) the exchange. */
    return flags;
}

int
ymo_wsgi_worker_response_cut(ymo_exchange_t *exchange, ymo_bucket_t *error)
{
    YMO_FORK_GUARD(exchange->server);
    pthread_mutex_lock(&exchange->lock);
    if (exchange->out_done) {
        pthread_mutex_unlock(&exchange->lock);
        ymo_bucket_free_chain(error);
        return 0;
    }
    /* The app's later reads and writes fail as if the client had gone:
     * the answer is not the app's any more. */
    exchange->aborted = 1;
    if (!exchange->in_done && exchange->in_error == 0) {
        exchange->in_error = -1;
    }
    int r;
    if (exchange->out_complete || exchange->out_whole) {
        /* The client has the whole response; the app overran in close()
         * (or in a generator past its Content-Length: a reset dropped
         * what the kernel still held; C review s24).
         * The connection closes after it: its next request must not wait
         * for an app that may never come back. */
        ymo_bucket_free_chain(error);
        append_locked(exchange, NULL, YMO_DONE | YMO_DONE_CLOSE);
        r = 0;
    }
    else if (exchange->out_started || error == NULL) {
        /* Part of the response may be out: only a close tells the client
         * it is incomplete, and at once (a reset, dropping what is still
         * queued): a slow reader would otherwise go on receiving the
         * cut-off body until the write timeout. */
        ymo_bucket_free_chain(error);
        append_locked(exchange, NULL, YMO_DONE | YMO_DONE_ABORT |
                                      YMO_DONE_RESET);
        r = 2;
    }
    else {
        error->from_ex = 1;
        append_locked(exchange, error, YMO_DONE | YMO_DONE_CLOSE);
        r = 1;
    }
    pthread_mutex_unlock(&exchange->lock);
    return r;
}

/* The exit status a SystemExit asks for (as Python's own exit does):
 * its code, None for 0, anything else printed and 1. */
static int
system_exit_status(PyObject *exc)
{
    int status = 1;
    PyObject *code = PyObject_GetAttrString(exc, "code");
    if (code == NULL || code == Py_None) {
        status = code == NULL ? 1 : 0;
    }
    else if (PyLong_Check(code)) {
        status = (int)PyLong_AsLong(code);
    }
    else {
        /* Held: str(code) is the app's code, and may rebind sys.stderr
         * (freeing the stream before the newline, C review s20). */
        PyObject *f = PySys_GetObject("stderr");
        Py_XINCREF(f);
        if (f != NULL && f != Py_None &&
            PyFile_WriteObject(code, f, Py_PRINT_RAW) == 0) {
            PyFile_WriteString("\n", f);
        }
        Py_XDECREF(f);
    }
    PyErr_Clear();
    Py_XDECREF(code);
    return status;
}

void
ymo_wsgi_forked_exit(void)
{
    /* Attached or not (it may come back through a wait that detached it),
     * the calling thread may run Python here: the forking thread held the
     * GIL at the fork, and the child has no other thread that could. */
    PyGILState_Ensure();
    int status = 0;
    if (PyErr_Occurred()) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (value != NULL && tb != NULL) {
            PyException_SetTraceback(value, tb);
        }
        if (value != NULL &&
            PyErr_GivenExceptionMatches(value, PyExc_SystemExit)) {
            status = system_exit_status(value);
        }
        else {
            /* The traceback, as for an uncaught exception; not through
             * sys.excepthook, which could raise SystemExit and have
             * Python exit() (atexit handlers, the parent's). */
            if (value != NULL) {
                PyErr_Display(type, value, tb);
            }
            status = 1;
        }
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        PyErr_Clear();
    }
    static const char *const streams[] = {"stdout", "stderr"};
    for (size_t i = 0; i < 2; i++) {
        PyObject *f = PySys_GetObject(streams[i]);     /* borrowed */
        PyObject *r = f != NULL && f != Py_None
                          ? PyObject_CallMethod(f, "flush", NULL)
                          : NULL;
        Py_XDECREF(r);
        PyErr_Clear();
    }
    fflush(stderr);
    char msg[200];
    int n = snprintf(msg, sizeof(msg),
                     "yimmo: a process the app forked came back into the "
                     "server; it exits (status %d) and serves nothing (end "
                     "such a child with os._exit())\n", status);
    if (n > 0) {
        ssize_t unused = write(2, msg, (size_t)n < sizeof(msg)
                                           ? (size_t)n : sizeof(msg) - 1);
        (void)unused;
    }
    _exit(status);
}

void
ymo_wsgi_worker_post(ymo_exchange_t *exchange)
{
    ymo_wsgi_worker_response_body_append(exchange, NULL, 0);
}

ymo_status_t
ymo_wsgi_worker_notify(ymo_wsgi_worker_t *worker)
{
    ymo_wsgi_worker_lock_in(worker);
    worker->poked = 1;
    ymo_wsgi_worker_unlock_in(worker);
    /* Signalled after the unlock: a worker woken with lock_in still held
     * here would at once block on it again (two more futex calls, and on
     * a busy core a switch back to the loop and one more to the worker).
     * The worker re-checks poked under the lock, so none is lost, and
     * the condition variable lives as long as the worker. */
    pthread_cond_signal(&worker->ready_in);
    return 0;
}

void
ymo_wsgi_worker_stop(ymo_wsgi_worker_t *worker)
{
    ymo_wsgi_worker_lock_in(worker);
    worker->running = 0;
    pthread_cond_signal(&worker->ready_in);
    ymo_wsgi_worker_unlock_in(worker);
}

int
ymo_wsgi_worker_join(ymo_wsgi_worker_t *worker, int wait)
{
    if (!worker->started) {
        return 0;
    }
    int r = wait ? pthread_join(worker->thread, NULL)
                 : pthread_tryjoin_np(worker->thread, NULL);
    if (r == 0) {
        worker->started = 0;
    }
    return r;
}

void
ymo_wsgi_worker_destroy(ymo_wsgi_worker_t *worker)
{
    if (!worker->thread_initialized) {
        return;
    }
    ev_async_stop(worker->loop, &worker->event_out);
    ev_prepare_stop(worker->loop, &worker->prepare_watcher);
    free(worker->overrun_head);
    worker->overrun_head = NULL;
    pthread_mutex_destroy(&worker->watch_lock);
    pthread_cond_destroy(&worker->ready_in);
    pthread_mutex_destroy(&worker->lock_out);
    pthread_mutex_destroy(&worker->lock_in);
    worker->thread_initialized = 0;
}
