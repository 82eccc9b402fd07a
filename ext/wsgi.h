/* wsgi.h - declarations shared by the Python-facing C files: the module
 * state, the app context the workers run, and the per-request objects
 * (wsgi.input, start_response, wsgi.file_wrapper). */
#ifndef YMO_WSGI_H
#define YMO_WSGI_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "alloc.h"
#include "exchange.h"
#include "server.h"
#include "wsgi_worker.h"

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
Py_NewRef(PyObject *o)
{
    Py_INCREF(o);
    return o;
}

static inline PyObject *
Py_XNewRef(PyObject *o)
{
    Py_XINCREF(o);
    return o;
}
#endif

#if PY_VERSION_HEX < 0x030A0000
static inline int
PyModule_AddObjectRef(PyObject *mod, const char *name, PyObject *value)
{
    Py_INCREF(value);
    if (PyModule_AddObject(mod, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#endif

/* Critical sections (3.13+): on a free-threaded build they lock one
 * object's mutex, and are suspended, like the GIL, whenever the thread
 * detaches (blocks with Py_BEGIN_ALLOW_THREADS); with the GIL they do
 * nothing. Before 3.13 there is always a GIL: nothing to do either. */
#ifndef Py_BEGIN_CRITICAL_SECTION
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#define Py_BEGIN_CRITICAL_SECTION2(a, b) {
#define Py_END_CRITICAL_SECTION2() }
#endif

#ifndef Py_TPFLAGS_DISALLOW_INSTANTIATION
#define Py_TPFLAGS_DISALLOW_INSTANTIATION 0
#endif

#define YMO_COMMON_HEADER_KEYS 32
/* The longest name among them (Upgrade-Insecure-Requests). */
#define YMO_COMMON_HEADER_MAX_LEN 25

/* Interned environ keys and constant values, created once per module.
 * Ownership rule: written only by module_exec (one thread, before the
 * module is visible to anyone) and cleared only by module_clear/free
 * (when nothing else references the module, so no Core and no worker is
 * left); in between every field is read-only, and any thread may read
 * it without a lock, GIL or no GIL. Interned strings are immortal on the
 * free-threaded build, and their references are counted atomically on
 * every build that can run Python in parallel. */
typedef struct ymo_module_state {
    PyTypeObject *Core_type;
    PyTypeObject *Input_type;
    PyTypeObject *StartResponse_type;
    PyTypeObject *FileWrapper_type;
    PyObject *k_request_method, *k_script_name, *k_path_info,
        *k_query_string, *k_content_type, *k_content_length,
        *k_server_name, *k_server_port, *k_server_protocol,
        *k_server_software, *k_remote_addr, *k_remote_port, *k_raw_uri,
        *k_wsgi_version, *k_wsgi_url_scheme, *k_wsgi_input,
        *k_wsgi_errors, *k_wsgi_multithread, *k_wsgi_multiprocess,
        *k_wsgi_run_once, *k_wsgi_input_terminated, *k_wsgi_file_wrapper,
        *k_client_gone, *k_https;
    PyObject *ClientDisconnected;  /* yimmo.ClientDisconnected(OSError) */
    PyObject *RequestTimeout;  /* yimmo.RequestTimeout(BaseException) */
    PyObject *v_empty, *v_http, *v_http10, *v_http11, *v_version,
        *v_software, *v_get, *v_post, *v_head, *v_https, *v_on;
    PyObject *s_close, *s_fileno, *s_tell, *s_raw;
    /* io.FileIO, io.BufferedReader, io.BufferedRandom: the files whose
     * read() gives the bytes of their descriptor (send_file). */
    PyObject *io_fileio, *io_buffered_reader, *io_buffered_random;
    PyObject *header_keys[YMO_COMMON_HEADER_KEYS];  /* HTTP_HOST, ... */
    /* The common headers by the length of their names: the index of the
     * first of each length, then of the next of the same length; -1 for
     * none (wsgi_environ.c, common_index). */
    signed char header_by_len[YMO_COMMON_HEADER_MAX_LEN + 1];
    signed char header_next[YMO_COMMON_HEADER_KEYS];
    PyObject *is_gil_enabled;  /* sys._is_gil_enabled as it was when yimmo
                                * was imported (free-threaded builds; NULL
                                * otherwise): workers call this reference,
                                * not what sys holds then, which another
                                * thread may replace and free meanwhile */
} ymo_module_state;

/* Fill st->header_keys and the tables that find them; -1 with an
 * exception set. */
int ymo_environ_state_init(ymo_module_state *st);

/* What the workers need to run the app: owned by a Core object, read-only
 * while workers run (Python objects here are only read, or called).
 * Ownership rule: filled by Core_new before any worker exists, cleared by
 * Core_clear/Core_dealloc only once every worker has been joined (or the
 * Core is kept alive for good: see CoreObject.abandoned), so no lock is
 * needed to read it, GIL or no GIL. environ_template[i] is never mutated
 * after Core_new: each request gets PyDict_Copy of it, and copies made
 * by several workers at once only read it (on a free-threaded build
 * PyDict_Copy also takes the source dict's critical section). */
struct ymo_wsgi_app {
    ymo_module_state *st;
    ymo_server_t *server;
    PyObject *core;            /* the Core object this struct is part of
                                * (borrowed: it owns the struct). What the
                                * app may keep past its exchange and that
                                * reaches the server's memory (wsgi.input,
                                * start_response and its write callable)
                                * holds a strong reference to it, so the
                                * server is not freed under them (C review
                                * of 481a78b) */
    PyObject *app;
    PyObject *log_error;       /* callable(message, exc_info) */
    PyObject *log_access;      /* callable(environ, status, length,
                                * seconds, response_headers), or NULL */
    PyObject *log_warning;     /* callable(message): the watchdog's */
    PyObject *log_answer;      /* callable(head, remote_addr, remote_port,
                                * status, length, time) for a request the
                                * loop answered alone (server.h,
                                * `answered`), or NULL */
    PyObject *errors;          /* wsgi.errors */
    PyObject *file_wrapper;    /* the FileWrapper type */
    PyObject *multithread;     /* bools */
    PyObject *multiprocess;
    PyObject **server_name;    /* per listener; a unix listener's are
                                * not used (see wsgi_environ.c) */
    PyObject **server_port;
    PyObject **environ_template;   /* per listener: copied per request */
};

/* Attached (GIL held), any thread of the server's interpreter: release
 * the owners of the reference buckets waiting in s's release list (the
 * app's bytes the loop has written, see bucket.h) and free them. */
void ymo_wsgi_release_owners(struct ymo_server *s);

/* Attached, a worker between exchanges or the thread that stops the
 * server: log records the loop left in s->answered (server.h), oldest
 * first: a request the loop answered alone through app->log_answer, a
 * response it cut short as a warning (the app's logging: any Python code
 * may run); then one warning for the records that could not be kept.
 * One batch (YMO_ANSWERS_BATCH), or with `all` every record left. Two
 * workers logging batches at once may interleave their lines. */
void ymo_wsgi_log_answers(struct ymo_server *s, int all);

/* Any thread, at the stop: free every record waiting to be logged
 * instead of logging it, and return how many there were, the ones that
 * could not be kept included. For a stop that gave up on a worker while
 * it logged a batch: the app's handlers it is in may hold their locks
 * for good (a stalled stream), and logging through them would wait with
 * it. */
unsigned long ymo_wsgi_discard_answers(struct ymo_server *s);

/* GIL held: free a chain of output buckets at once, releasing the owners
 * of reference buckets here rather than through a release list (for
 * output that never reached the loop). */
void ymo_wsgi_free_chain(ymo_bucket_t *b);

/* In a fork of the process a server runs in (server.h, ymo_fork_gen), on
 * a thread coming back into that server: flush Python's stdout and
 * stderr, say so in one line on stderr and _exit as a multiprocessing
 * child ends: with the code of a SystemExit being raised, 1 (and the
 * traceback) for another exception, 0 otherwise. Attached or not. */
void ymo_wsgi_forked_exit(void) __attribute__((noreturn, cold));

/* At each way back from Python into a server s (before taking a lock a
 * thread of the parent may have held at the fork, or waiting for the
 * loop): a child the app forked does not serve. One load and compare. */
#define YMO_FORK_GUARD(s)                                                  \
    do {                                                                   \
        if (ymo_server_forked(s)) {                                        \
            ymo_wsgi_forked_exit();                                        \
        }                                                                  \
    } while (0)

/* Before a critical section on an object a thread of the parent may have
 * held at the fork: only on a free-threaded build (with the GIL it takes
 * no lock, and the guards of the ways on, build_head and the append,
 * suffice). */
#ifdef Py_GIL_DISABLED
#define YMO_FORK_GUARD_FT(s) YMO_FORK_GUARD(s)
#else
#define YMO_FORK_GUARD_FT(s) ((void)0)
#endif

/* At a worker's end, with its thread state attached: the StartResponse
 * object it kept for its next exchange, if any (worker->spare_sr). */
void ymo_wsgi_start_response_free(ymo_wsgi_worker_t *worker);

/* GIL held: run one exchange to completion (app call, body, close()). */
void ymo_wsgi_run_exchange(struct ymo_wsgi_app *app,
                           ymo_wsgi_worker_t *worker, ymo_exchange_t *ex);

/* GIL held (wsgi_watchdog.c): the worker's exchange enters the app, so
 * the watchdog watches it (nothing without a request timeout). */
void ymo_watch_begin(ymo_wsgi_worker_t *worker, ymo_exchange_t *ex);

/* What the watchdog did to a timed-out exchange: its response was
 * complete already, it answered 503, or it closed the connection. */
#define YMO_WATCH_COMPLETE 1
#define YMO_WATCH_503 2
#define YMO_WATCH_CLOSED 3

/* GIL held, on the worker: yimmo's own code (its error logging and
 * answer) runs between the app's parts: the watchdog cannot end the
 * exchange or raise in the worker until resume (a RequestTimeout still
 * pending is dropped). The time paused counts towards the timeout. */
void ymo_watch_pause(ymo_wsgi_worker_t *worker);
void ymo_watch_resume(ymo_wsgi_worker_t *worker, ymo_exchange_t *ex);

/* GIL held: the exchange has left the app (after close()). Returns 0, or
 * YMO_WATCH_* when the watchdog timed it out: its answer went out already
 * and a pending RequestTimeout has been cleared from this thread. The
 * worker must not touch ex afterwards (its reference is dropped). */
int ymo_watch_end(ymo_wsgi_worker_t *worker, ymo_exchange_t *ex);

/* GIL held, on the worker, no exception set: on a free-threaded build,
 * write the watchdog's pending overrun line for this worker with the
 * stack from exc's traceback (exc: the RequestTimeout, or the error it
 * caused, that left the app; NULL: none reached the server). Nothing
 * with the GIL, where the watchdog walks the stack itself. */
void ymo_watch_report(ymo_wsgi_worker_t *worker, PyObject *exc);

/* GIL held, on the worker: has the watchdog timed out its exchange? */
int ymo_watch_timed_out(ymo_wsgi_worker_t *worker);

/* GIL held: hand one line (a str; NULL: nothing) to the app's
 * log_warning, or to log_error as INFO without one (wsgi_watchdog.c). */
void ymo_wsgi_log_warning(struct ymo_wsgi_app *app, PyObject *msg);

/* GIL held: the dict each environ of a listener starts as a copy of:
 * every per-server key set, room for the per-request ones. A unix
 * listener's SERVER_NAME and SERVER_PORT are "localhost" and "80" here
 * (a request's host replaces them), a TCP listener's those it was given. */
PyObject *ymo_wsgi_environ_template(struct ymo_wsgi_app *app,
                                    size_t listener, int is_unix);

/* GIL held: a new environ dict for ex (wsgi.input still None). values:
 * the running worker's cache of header value and key strings (its
 * `values`, YMO_WSGI_STR_CACHE slots), or NULL for none. */
PyObject *ymo_wsgi_environ(struct ymo_wsgi_app *app, ymo_exchange_t *ex,
                           PyObject **values);

/* GIL held, on the worker that owns it: empty a cache of value and key
 * strings (YMO_WSGI_STR_CACHE slots). */
void ymo_wsgi_values_clear(PyObject **values);

/* Decimal digits of v at p (room for 20); returns the count. Cheaper
 * than printf on the per-request path. */
static inline size_t
ymo_put_decimal(char *p, unsigned long long v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++) {
        p[i] = tmp[n - 1 - i];
    }
    return n;
}

/* Type specs, defined next to their implementations. */
extern PyType_Spec ymo_input_spec;
extern PyType_Spec ymo_start_response_spec;
extern PyType_Spec ymo_file_wrapper_spec;

/* wsgi.input for ex (it keeps a reference to ex, and one to core, the
 * Core object whose server ex belongs to, for its life). GIL held. */
PyObject *ymo_input_new(ymo_module_state *st, PyObject *core,
                        ymo_exchange_t *ex, size_t low_water);

/* A wsgi.input object is callable: calling it is
 * environ["yimmo.client_gone"](). */

/* wsgi.file_wrapper objects */
typedef struct {
    PyObject_HEAD
    PyObject *filelike;
    Py_ssize_t blksize;
} ymo_file_wrapper_t;

/* PyMem_Malloc/PyMem_Calloc for the Python-facing files: sites of the
 * fault injector in a fault-injection build (see alloc.h), the plain
 * calls otherwise. */
#define ymo_pymem_malloc(n) (YMO_FI_FAIL(#n) ? NULL : PyMem_Malloc(n))
#define ymo_pymem_calloc(k, n)                                             \
    (YMO_FI_FAIL(#n) ? NULL : PyMem_Calloc((k), (n)))

#ifdef YMO_FAULT_INJECTION
/* wsgi_fault_injection.c: the module's private _fault_injection(), and
 * arming from YIMMO_FAULT_ALLOC at import (-1 with an exception set). */
extern PyMethodDef ymo_fault_injection_methods[];
int ymo_fault_injection_init(void);
#endif

#endif /* YMO_WSGI_H */
