/* wsgi_watchdog.c - the request watchdog, which kills nothing: a thread
 * that finds requests that have run in the app longer than the request
 * timeout, ends them for their clients (503, or a closed connection once
 * the response has begun), logs where their worker is, raises
 * yimmo.RequestTimeout in that worker, and gives a worker that stays stuck
 * (in C, where the exception cannot reach it) a replacement thread. The
 * other requests of the process go on untouched.
 *
 * Threads. The watchdog is a pthread with one Python thread state of its
 * own, attached (GIL held) only while it logs and raises, never while it
 * scans. It never touches a connection: it hands the answer to the loop
 * the way a worker does, as the exchange's final post. It reads the
 * worker slots under each worker's watch_lock (see wsgi_worker.h); the
 * worker keeps a reference on the exchange it runs while `current` points
 * to it, so the exchange outlives the watchdog's look even after the
 * watchdog's final post let the loop drop its own. It alone starts and
 * joins replacement threads while it runs (ymo_watchdog_stop comes before
 * the server's stop joins the workers).
 *
 * The exception is raised only while the timed-out exchange is still the
 * one its worker runs (checked, and raised, under watch_lock, which the
 * worker takes to leave the exchange: no GIL is needed for this, so it
 * holds as well on a free-threaded build), and the worker clears any
 * still pending when it leaves that exchange (ymo_watch_end), so it
 * never lands in a later request. PyThreadState_SetAsyncExc takes only
 * CPython's thread-list mutex (no stop-the-world), so calling it under
 * watch_lock cannot deadlock with a worker waiting, attached, for
 * watch_lock.
 *
 * Free-threaded builds: sys._current_frames() stops the world to take
 * the worker's innermost frame, and is called outside watch_lock (a
 * worker blocked on watch_lock while attached would hold the pause up).
 * Walking the f_back chain of that frame from here (format_stack), as
 * the GIL build does, would race with the worker while it runs Python:
 * its frames are materialised and taken over as they exit (frame.c
 * take_ownership, _PyFrame_ClearExceptCode), and .ci/tsan reported
 * exactly that. So on a free-threaded build the overrun line waits in
 * the worker's slot (overrun_head, under watch_lock) and the worker
 * writes it with its own stack, from the traceback of the RequestTimeout
 * (or of the read it made fail) once that reaches the server
 * (ymo_watch_report). When the worker is declared stuck instead (the
 * exception has not reached the server STUCK_AFTER later: blocked outside
 * Python, or the app caught it and runs on), its line goes out then,
 * without a stack: whether its frames stand still cannot be known from
 * here. An app that catches the exception and then leaves the request
 * gets its line written, without a stack, at that moment.
 *
 * yimmo's own epilogue after an app error (logging, which
 * runs the app's handlers, and the 500) runs paused (ymo_watch_pause):
 * the watchdog neither ends the exchange nor raises in it meanwhile.
 *
 * A stuck worker is replaced once: a retiring one stuck again is only
 * logged. One stuck when no replacement was left stays `stuck` and is
 * replaced by a later scan once a slot frees. The watchdog thread counts
 * as one of the server's (ymo_server_enter_worker_thread): a stop() from
 * a log handler it runs only begins the stop, which joins this thread. */
#include "wsgi.h"

#if PY_VERSION_HEX < 0x030B0000
#include <frameobject.h>        /* PyFrame_GetBack (3.9, 3.10) */
#endif

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "http_response.h"

/* Seconds a timed-out worker gets, after the exception, to leave the app
 * before it counts as stuck and is replaced: pure Python stops at once,
 * a blocking C call does not stop at all. */
#define STUCK_AFTER 1.0

/* Frames of a stack written to the log, innermost first. */
#define FRAMES_MAX 64

/* What the scan (GIL released) hands to the report (GIL held). */
typedef struct {
    size_t worker;
    uint64_t seq;
    unsigned long ident;
    double ran;
    int answer;                /* ymo_wsgi_worker_response_cut's result */
    int replacement;           /* slot started in its place, or one of: */
#define NO_REPLACEMENT (-1)    /*   at the cap, or no thread could start */
#define REPLACED_ALREADY (-2)  /*   a retiring worker: not replaced twice */
    size_t extra;              /* replacement threads running */
    char line[200];            /* request line, printable ASCII */
} overrun_t;

/* The watchdog's clock: coarse is enough (milliseconds), and it costs
 * the worker next to nothing to read it for every exchange. */
static double
watch_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* -- The worker's side (GIL held) -- */

void
ymo_watch_begin(ymo_wsgi_worker_t *w, ymo_exchange_t *ex)
{
    if (w->server->config.request_timeout <= 0) {
        return;
    }
    /* The worker's own reference: once the watchdog has posted the final
     * answer, the loop may drop its reference while the app still runs. */
    ymo_exchange_retain(ex);
    double now = watch_now();
    pthread_mutex_lock(&w->watch_lock);
    w->current = ex;
    w->current_seq++;
    w->current_start = now;
    pthread_mutex_unlock(&w->watch_lock);
}

/* GIL held, on the worker: drop the RequestTimeout raised in this thread
 * and not delivered yet (it was blocked in C meanwhile), so that it does
 * not land in yimmo's own code or in a later request. */
static void
clear_pending(ymo_wsgi_worker_t *w)
{
#if PY_VERSION_HEX < 0x030D0000
    /* Only when one is pending: up to 3.12, PyThreadState_SetAsyncExc
     * signals the interpreter-wide eval breaker even to clear, and that
     * signal stays until some thread consumes an asynchronous exception
     * (every thread then takes the slow path at each check). The field is
     * this thread's own, read with the GIL held. */
    if (PyThreadState_Get()->async_exc == NULL) {
        return;
    }
#endif
    /* 3.13 and later keep the breaker bit per thread and reset it when
     * the thread next checks: clearing unconditionally is harmless. */
    PyThreadState_SetAsyncExc(w->thread_ident, NULL);
}

void
ymo_watch_pause(ymo_wsgi_worker_t *w)
{
    if (w->server->config.request_timeout <= 0) {
        return;
    }
    pthread_mutex_lock(&w->watch_lock);
    int timed_out = w->timed_out;
    w->current = NULL;
    pthread_mutex_unlock(&w->watch_lock);
    if (timed_out) {
        clear_pending(w);
    }
}

void
ymo_watch_resume(ymo_wsgi_worker_t *w, ymo_exchange_t *ex)
{
    if (w->server->config.request_timeout <= 0) {
        return;
    }
    /* The same exchange (same seq and start): the time spent paused
     * counts, only the watchdog could not end the exchange meanwhile. */
    pthread_mutex_lock(&w->watch_lock);
    w->current = ex;
    pthread_mutex_unlock(&w->watch_lock);
}

int
ymo_watch_end(ymo_wsgi_worker_t *w, ymo_exchange_t *ex)
{
    if (w->server->config.request_timeout <= 0) {
        /* Without a timeout the worker holds no reference of its own:
         * after an internal error's answer (wsgi_response.c) the loop may
         * have freed ex already. */
        return 0;
    }
    pthread_mutex_lock(&w->watch_lock);
    int timed_out = w->timed_out;
    int stuck = w->stuck;
    int replaced = w->replaced;
    w->current = NULL;
    w->timed_out = 0;
    w->stuck = 0;
    pthread_mutex_unlock(&w->watch_lock);
    ymo_exchange_release(ex);
    if (timed_out) {
        /* A RequestTimeout that the app never reached (it was blocked in
         * C until its end) must not surface in the next request, nor in
         * the log function the report below calls: cleared first (the
         * TSan run on 3.13t saw it raised inside yimmo._server's
         * _log_warning, "Exception ignored"). */
        clear_pending(w);
        /* An overrun line still waiting for the stack (free-threaded
         * builds): the exception never reached the server. */
        ymo_watch_report(w, NULL);
        if (replaced) {
            w->retiring = 1;    /* a new thread has its place */
        }
        else if (stuck) {
            /* No replacement was allowed: serve again. */
            atomic_store(&w->retired, 0);
        }
    }
    return timed_out;
}

int
ymo_watch_timed_out(ymo_wsgi_worker_t *w)
{
    pthread_mutex_lock(&w->watch_lock);
    int r = w->timed_out;
    pthread_mutex_unlock(&w->watch_lock);
    return r;
}

/* -- The watchdog's side -- */

#ifndef Py_GIL_DISABLED
/* (With the GIL only: see the top for free-threaded builds.) */
/* GIL held: the innermost frame of the thread `ident`, or NULL. */
static PyObject *
thread_frame(unsigned long ident)
{
    PyObject *fn = PySys_GetObject("_current_frames");   /* borrowed */
    if (fn == NULL) {
        return NULL;
    }
    PyObject *frames = PyObject_CallNoArgs(fn);
    PyObject *key = PyLong_FromUnsignedLong(ident);
    PyObject *frame = NULL;
    if (frames != NULL && key != NULL && PyDict_Check(frames)) {
        frame = PyDict_GetItemWithError(frames, key);
        Py_XINCREF(frame);
    }
    Py_XDECREF(frames);
    Py_XDECREF(key);
    PyErr_Clear();
    return frame;
}

/* GIL held: the stack from `frame` outwards, one line per frame as
 * faulthandler writes it: '  File "x.py", line 12 in loop'. */
static PyObject *
format_stack(PyObject *frame)
{
    PyObject *lines = PyList_New(0);
    if (lines == NULL) {
        return NULL;
    }
    PyFrameObject *f = (PyFrameObject *)frame;
    Py_XINCREF(f);
    for (int n = 0; f != NULL; n++) {
        PyObject *line;
        if (n == FRAMES_MAX) {
            line = PyUnicode_FromString("  ...");
        }
        else {
            PyCodeObject *code = PyFrame_GetCode(f);
            line = PyUnicode_FromFormat("  File \"%U\", line %d in %U",
                                        code->co_filename,
                                        PyFrame_GetLineNumber(f),
                                        code->co_name);
            Py_DECREF(code);
        }
        if (line == NULL || PyList_Append(lines, line) < 0) {
            Py_XDECREF(line);
            Py_DECREF(f);
            Py_DECREF(lines);
            return NULL;
        }
        Py_DECREF(line);
        if (n == FRAMES_MAX) {
            Py_DECREF(f);
            break;
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    if (PyList_GET_SIZE(lines) == 0) {
        Py_DECREF(lines);
        return PyUnicode_FromString("  (no Python frame: the worker is not"
                                    " running Python)");
    }
    PyObject *sep = PyUnicode_FromString("\n");
    PyObject *text = sep ? PyUnicode_Join(sep, lines) : NULL;
    Py_XDECREF(sep);
    Py_DECREF(lines);
    return text;
}

#endif

void
ymo_wsgi_log_warning(struct ymo_wsgi_app *app, PyObject *msg)
{
    PyObject *fn = app->log_warning ? app->log_warning : app->log_error;
    PyObject *r = NULL;
    if (msg != NULL && app->log_warning != NULL) {
        r = PyObject_CallOneArg(fn, msg);
    }
    else if (msg != NULL) {
        PyObject *args[2] = {msg, Py_None};
        r = PyObject_Vectorcall(fn, args, 2, NULL);
    }
    YMO_FORK_GUARD(app->server);    /* the app's log handlers ran */
    if (r == NULL) {
        PyErr_WriteUnraisable(fn);
    }
    Py_XDECREF(r);
}

/* Attaches to Python: raise RequestTimeout in the worker if it is still
 * in that exchange, and log the overrun with the worker's stack. */
#ifdef Py_GIL_DISABLED
/* The overrun line of a worker that got the RequestTimeout waits for the
 * worker's own stack (ymo_watch_report); otherwise it goes out now. The
 * running worker's frames are not walked from here (see the top). */
static void
report_overrun(ymo_server_t *s, ymo_wsgi_worker_t *w, const overrun_t *o,
               PyThreadState *ts)
{
    struct ymo_wsgi_app *app = s->app;
    static const char *answers[] = {
        "its response was already complete",
        "answered 503",
        "connection closed (the response had begun)",
    };
    char head[512];
    PyEval_RestoreThread(ts);
    int raised = 0;
    pthread_mutex_lock(&w->watch_lock);
    if (w->current != NULL && w->current_seq == o->seq && w->timed_out) {
        raised = PyThreadState_SetAsyncExc(o->ident,
                                           app->st->RequestTimeout) == 1;
    }
    snprintf(head, sizeof(head),
             "request timeout: \"%s\" ran %.1f s in the app (timeout %g s) "
             "on worker %zu; %s; %s. Stack of the worker (most recent call "
             "first):\n", o->line, o->ran, s->config.request_timeout,
             o->worker, answers[o->answer],
             raised ? "RequestTimeout raised in it"
                    : "it left the request meanwhile");
    char *pending = NULL;
    if (raised) {
        pending = strdup(head);
        if (pending != NULL) {
            free(w->overrun_head);
            w->overrun_head = pending;
        }
    }
    pthread_mutex_unlock(&w->watch_lock);
    if (pending == NULL) {
        PyObject *msg = PyUnicode_FromFormat(
            "%s  (not taken: %s)", head,
            raised ? "out of memory" : "the worker left the request");
        ymo_wsgi_log_warning(app, msg);
        Py_XDECREF(msg);
    }
    ts = PyEval_SaveThread();
    (void)ts;
}

/* The worker's stack from the traceback of the exception that left the
 * app, innermost frame first, one line each, as format_stack writes. */
static PyObject *
format_traceback(PyObject *exc)
{
    PyObject *lines = PyList_New(0);
    PyObject *tb = exc != NULL ? PyException_GetTraceback(exc) : NULL;
    while (lines != NULL && tb != NULL && tb != Py_None) {
        PyObject *frame = PyObject_GetAttrString(tb, "tb_frame");
        PyObject *lineno = PyObject_GetAttrString(tb, "tb_lineno");
        PyObject *line = NULL;
        if (frame != NULL && lineno != NULL && PyFrame_Check(frame)) {
            PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)frame);
            line = PyUnicode_FromFormat("  File \"%U\", line %ld in %U",
                                        code->co_filename,
                                        PyLong_AsLong(lineno),
                                        code->co_name);
            Py_DECREF(code);
        }
        Py_XDECREF(frame);
        Py_XDECREF(lineno);
        if (line == NULL || PyList_Append(lines, line) < 0) {
            Py_XDECREF(line);
            Py_CLEAR(lines);
            break;
        }
        Py_DECREF(line);
        PyObject *next = PyObject_GetAttrString(tb, "tb_next");
        Py_DECREF(tb);
        tb = next;
    }
    Py_XDECREF(tb);
    if (lines == NULL || PyList_Reverse(lines) < 0) {
        Py_XDECREF(lines);
        return NULL;
    }
    if (PyList_GET_SIZE(lines) > FRAMES_MAX) {
        PyObject *more = PyUnicode_FromString("  ...");
        if (more == NULL ||
            PyList_SetSlice(lines, FRAMES_MAX, PY_SSIZE_T_MAX, NULL) < 0 ||
            PyList_Append(lines, more) < 0) {
            Py_XDECREF(more);
            Py_DECREF(lines);
            return NULL;
        }
        Py_DECREF(more);
    }
    if (PyList_GET_SIZE(lines) == 0) {
        Py_DECREF(lines);
        return PyUnicode_FromString("  (no Python frame: the exception"
                                    " came from outside Python)");
    }
    PyObject *sep = PyUnicode_FromString("\n");
    PyObject *text = sep ? PyUnicode_Join(sep, lines) : NULL;
    Py_XDECREF(sep);
    Py_DECREF(lines);
    return text;
}
#else
static void
report_overrun(ymo_server_t *s, ymo_wsgi_worker_t *w, const overrun_t *o,
               PyThreadState *ts)
{
    struct ymo_wsgi_app *app = s->app;
    PyEval_RestoreThread(ts);
    /* The stack first: once raised, the exception unwinds it. */
    PyObject *frame = thread_frame(o->ident);
    int raised = 0;
    pthread_mutex_lock(&w->watch_lock);
    if (w->current != NULL && w->current_seq == o->seq && w->timed_out) {
        raised = PyThreadState_SetAsyncExc(o->ident,
                                           app->st->RequestTimeout) == 1;
    }
    pthread_mutex_unlock(&w->watch_lock);
    PyObject *stack = format_stack(frame);
    Py_XDECREF(frame);
    if (stack == NULL) {
        PyErr_Clear();
        stack = PyUnicode_FromString("  (stack unavailable)");
    }
    static const char *answers[] = {
        "its response was already complete",
        "answered 503",
        "connection closed (the response had begun)",
    };
    char head[512];
    snprintf(head, sizeof(head),
             "request timeout: \"%s\" ran %.1f s in the app (timeout %g s) "
             "on worker %zu; %s; %s. Stack of the worker (most recent call "
             "first):\n", o->line, o->ran, s->config.request_timeout,
             o->worker, answers[o->answer],
             raised ? "RequestTimeout raised in it"
                    : "it left the request meanwhile");
    PyObject *msg = stack ? PyUnicode_FromFormat("%s%U", head, stack)
                          : NULL;
    Py_XDECREF(stack);
    ymo_wsgi_log_warning(app, msg);
    Py_XDECREF(msg);
    ts = PyEval_SaveThread();
    (void)ts;
}
#endif

void
ymo_watch_report(ymo_wsgi_worker_t *w, PyObject *exc)
{
#ifdef Py_GIL_DISABLED
    pthread_mutex_lock(&w->watch_lock);
    char *head = w->overrun_head;
    w->overrun_head = NULL;
    pthread_mutex_unlock(&w->watch_lock);
    if (head == NULL) {
        return;
    }
    PyObject *saved = PyErr_GetRaisedException();
    PyObject *stack = exc != NULL ? format_traceback(exc) : NULL;
    if (stack == NULL) {
        PyErr_Clear();
        stack = PyUnicode_FromString(
            exc != NULL ? "  (stack unavailable)"
                        : "  (not taken: the RequestTimeout did not reach "
                          "the server: the app caught it, or it came as "
                          "the app returned)");
    }
    PyObject *msg = stack != NULL ? PyUnicode_FromFormat("%s%U", head, stack)
                                  : NULL;
    free(head);
    Py_XDECREF(stack);
    ymo_wsgi_log_warning(w->server->app, msg);
    Py_XDECREF(msg);
    PyErr_SetRaisedException(saved);
#else
    (void)w;
    (void)exc;
#endif
}

/* Attaches to Python: one warning line about a worker that is stuck, or
 * (late) that a slot freed up for one stuck with no replacement. */
static void
report_stuck(ymo_server_t *s, const overrun_t *o, int late,
             PyThreadState *ts)
{
    char text[512];
    if (late) {
        snprintf(text, sizeof(text),
                 "worker %zu is still in \"%s\"; a thread has retired "
                 "since no replacement was left: worker %d started in its "
                 "place (%zu replacement thread(s) running)",
                 o->worker, o->line, o->replacement, o->extra);
    }
    else if (o->replacement >= 0) {
        snprintf(text, sizeof(text),
                 "worker %zu is still in \"%s\" %.1f s after its "
                 "RequestTimeout (blocked outside Python, or it caught the "
                 "exception and went on): worker %d started in its place "
                 "(%zu replacement thread(s) running)",
                 o->worker, o->line, STUCK_AFTER, o->replacement, o->extra);
    }
    else if (o->replacement == REPLACED_ALREADY) {
        snprintf(text, sizeof(text),
                 "worker %zu is still in \"%s\" %.1f s after its "
                 "RequestTimeout (blocked outside Python, or it caught the "
                 "exception and went on); it was replaced already and "
                 "retires when it comes back",
                 o->worker, o->line, STUCK_AFTER);
    }
    else {
        snprintf(text, sizeof(text),
                 "worker %zu is still in \"%s\" %.1f s after its "
                 "RequestTimeout (blocked outside Python, or it caught the "
                 "exception and went on), and no replacement thread is "
                 "left (%zu running, at most --workers): asking for this "
                 "process to be recycled",
                 o->worker, o->line, STUCK_AFTER, o->extra);
    }
    PyEval_RestoreThread(ts);
#ifdef Py_GIL_DISABLED
    /* Its RequestTimeout has not reached the server: the overrun line
     * still waits for a stack, which cannot be taken safely from here
     * (see the top): it goes out without one. */
    ymo_wsgi_worker_t *w = &s->workers[o->worker];
    pthread_mutex_lock(&w->watch_lock);
    char *head = w->overrun_head;
    w->overrun_head = NULL;
    pthread_mutex_unlock(&w->watch_lock);
    if (head != NULL) {
        PyObject *msg = PyUnicode_FromFormat(
            "%s  (not taken: the RequestTimeout has not reached the server;"
            " on a free-threaded build the stack of a worker still in the"
            " app is not read from another thread)", head);
        free(head);
        ymo_wsgi_log_warning(s->app, msg);
        Py_XDECREF(msg);
    }
#endif
    PyObject *msg = PyUnicode_FromString(text);
    ymo_wsgi_log_warning(s->app, msg);
    Py_XDECREF(msg);
    PyEval_SaveThread();
}

/* The request line of ex, made printable for the log. */
static void
request_line(const ymo_exchange_t *ex, char *dst, size_t size)
{
    const ymo_http_request_t *req = &ex->req;
    int n = snprintf(dst, size, "%.*s %.*s HTTP/1.%d",
                     (int)(req->method_len < 32 ? req->method_len : 32),
                     req->method,
                     (int)(req->target_len < 150 ? req->target_len : 150),
                     req->target, req->minor_version);
    for (int i = 0; i < n && (size_t)i < size - 1; i++) {
        unsigned char c = (unsigned char)dst[i];
        if (c < 0x20 || c >= 0x7f || c == '"') {
            dst[i] = '?';
        }
    }
}

/* Join the threads of workers that retired, so their slots can serve
 * again as spares. Returns the threads still running. */
static size_t
reap(ymo_server_t *s)
{
    size_t live = 0;
    for (size_t i = 0; i < s->n_workers; i++) {
        ymo_wsgi_worker_t *w = &s->workers[i];
        if (!w->started) {
            continue;
        }
        if (atomic_load(&w->exited) && ymo_wsgi_worker_join(w, 1) == 0) {
            /* Ready for the next thread, here where no other lock is
             * held: ymo_wsgi_worker_restart runs under the stuck
             * worker's watch_lock and must not take this one. */
            pthread_mutex_lock(&w->watch_lock);
            w->current = NULL;
            w->timed_out = 0;
            w->stuck = 0;
            w->replaced = 0;
            free(w->overrun_head);
            w->overrun_head = NULL;
            pthread_mutex_unlock(&w->watch_lock);
            atomic_store(&w->unused, 1);
            continue;
        }
        live++;
    }
    return live;
}

/* watch_lock of the stuck worker held (and no other): start a thread in a
 * free slot, whose watchdog fields reap reset. Returns its
 * index, or -1 when at the cap (as many extra threads as workers) or
 * when the thread cannot be created. */
static int
replace(ymo_server_t *s, size_t *live, const sigset_t *mask)
{
    if (*live >= 2 * s->config.workers) {
        return -1;
    }
    for (size_t i = 0; i < s->n_workers; i++) {
        ymo_wsgi_worker_t *w = &s->workers[i];
        if (!w->started && atomic_load(&w->unused)) {
            if (ymo_wsgi_worker_restart(w, mask) < 0) {
                return -1;
            }
            (*live)++;
            return (int)i;
        }
    }
    return -1;
}

static void
scan(ymo_server_t *s, PyThreadState *ts, const sigset_t *mask)
{
    double timeout = s->config.request_timeout;
    size_t live = reap(s);
    for (size_t i = 0; i < s->n_workers; i++) {
        ymo_wsgi_worker_t *w = &s->workers[i];
        if (atomic_load_explicit(&w->unused, memory_order_relaxed)) {
            continue;
        }
        overrun_t o;
        int action = 0;
        pthread_mutex_lock(&w->watch_lock);
        ymo_exchange_t *ex = w->current;
        double now = watch_now();
        if (ex != NULL && !w->timed_out &&
            now - w->current_start >= timeout) {
            /* The worker's reference keeps ex alive while `current`
             * points to it, and it cannot move on while we hold the
             * lock. */
            o.worker = i;
            o.seq = w->current_seq;
            o.ident = w->thread_ident;
            o.ran = now - w->current_start;
            request_line(ex, o.line, sizeof(o.line));
            int head = ex->req.method_len == 4 &&
                       memcmp(ex->req.method, "HEAD", 4) == 0;
            o.answer = ymo_wsgi_worker_response_cut(
                ex, ymo_http_error_bucket(503, head));
            w->timed_out = YMO_WATCH_COMPLETE + o.answer;
            w->timed_out_at = now;
            action = 1;
        }
        else if (ex != NULL && w->timed_out && !w->stuck &&
                 now - w->timed_out_at >= STUCK_AFTER) {
            w->stuck = 1;
            o.worker = i;
            o.ident = w->thread_ident;
            request_line(ex, o.line, sizeof(o.line));
            if (w->replaced) {
                /* A retiring worker, stuck in an exchange that was queued
                 * to it: its place is taken already. */
                o.replacement = REPLACED_ALREADY;
            }
            else {
                /* Under the lock, so the worker cannot come back between
                 * the decision and the flags it reads when it does. */
                o.replacement = replace(s, &live, mask);
                if (o.replacement >= 0) {
                    w->replaced = 1;
                    atomic_store(&w->retired, 1);
                }
            }
            o.extra = live > s->config.workers ? live - s->config.workers
                                               : 0;
            action = 2;
        }
        else if (ex != NULL && w->stuck && !w->replaced &&
                 live < 2 * s->config.workers) {
            /* Stuck when no replacement was left: one thread has retired
             * since, so its slot can serve in this one's place. */
            o.worker = i;
            request_line(ex, o.line, sizeof(o.line));
            o.replacement = replace(s, &live, mask);
            if (o.replacement >= 0) {
                w->replaced = 1;
                atomic_store(&w->retired, 1);
                o.extra = live > s->config.workers
                              ? live - s->config.workers : 0;
                action = 3;
            }
        }
        pthread_mutex_unlock(&w->watch_lock);
        if (action == 1) {
            report_overrun(s, w, &o, ts);
        }
        else if (action == 2 || action == 3) {
            if (o.replacement == NO_REPLACEMENT) {
                ymo_server_request_recycle(s);
            }
            report_stuck(s, &o, action == 3, ts);
        }
    }
}

static void *
watchdog_main(void *arg)
{
    ymo_server_t *s = arg;
    sigset_t mask = s->worker_sigmask;
    /* The app's log handlers run on this thread when it reports: a stop()
     * they call must only begin the stop, as from a worker, since the
     * stop joins this thread. */
    ymo_server_enter_worker_thread(s);
    PyGILState_STATE gstate = PyGILState_Ensure();
    PyThreadState *ts = PyEval_SaveThread();
    atomic_fetch_add(&s->workers_attached, 1);     /* see worker_main */
    /* Often enough that an overrun is caught within a tenth of the
     * timeout (and a quarter second at most). */
    double tick = s->config.request_timeout / 10;
    tick = tick < 0.01 ? 0.01 : tick > 0.25 ? 0.25 : tick;
    pthread_mutex_lock(&s->watchdog_lock);
    while (!s->watchdog_quit) {
        struct timespec until;  /* watchdog_cond waits on this clock */
        clock_gettime(CLOCK_MONOTONIC, &until);
        double t = (double)until.tv_nsec / 1e9 + tick;
        until.tv_sec += (time_t)t;
        until.tv_nsec = (long)((t - (double)(time_t)t) * 1e9);
        pthread_cond_timedwait(&s->watchdog_cond, &s->watchdog_lock,
                               &until);
        if (s->watchdog_quit) {
            break;
        }
        pthread_mutex_unlock(&s->watchdog_lock);
        scan(s, ts, &mask);
        pthread_mutex_lock(&s->watchdog_lock);
    }
    pthread_mutex_unlock(&s->watchdog_lock);
    PyEval_RestoreThread(ts);
    PyGILState_Release(gstate);
    return NULL;
}

int
ymo_watchdog_start(ymo_server_t *s)
{
    if (s->config.request_timeout <= 0 || s->watchdog_started) {
        return 0;
    }
    /* Replacement workers get the mask the first ones got (that of the
     * thread starting the server: see worker_main); the watchdog itself
     * takes no signal. */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &s->worker_sigmask);
    s->watchdog_quit = 0;
    int r = pthread_create(&s->watchdog_thread, NULL, watchdog_main, s);
    pthread_sigmask(SIG_SETMASK, &s->worker_sigmask, NULL);
    if (r != 0) {
        return -r;
    }
    s->watchdog_started = 1;
    return 0;
}

void
ymo_watchdog_stop(ymo_server_t *s)
{
    if (!s->watchdog_started) {
        return;
    }
    pthread_mutex_lock(&s->watchdog_lock);
    s->watchdog_quit = 1;
    pthread_cond_signal(&s->watchdog_cond);
    pthread_mutex_unlock(&s->watchdog_lock);
    pthread_join(s->watchdog_thread, NULL);
    s->watchdog_started = 0;
}
