/* module.c - the yimmo._yimmo extension module: module state (interned
 * environ keys, heap types), multi-phase initialisation, and the Core type
 * that owns one server (loop, listeners, workers) for the Python side.  */
#include "wsgi.h"

#include <math.h>
#include <stdio.h>
#include <sys/socket.h>
#include <string.h>
#include <strings.h>

/* Lock for the int fields below: the Core's critical section (taken by
 * run(), stop() and the getters; with the GIL it compiles to nothing and
 * the GIL covers them). run() and stop() may be called from different
 * threads (stop() from a signal handler, another thread, or the app); the
 * critical section is suspended while run() waits for the loop with its
 * thread detached, as the GIL is released there, so stop() is never kept
 * waiting for run(). server is the C server's (its own locks and atomics,
 * see server.h); app is read-only while workers run (see wsgi.h);
 * n_listeners is immutable. initialized is written only by Core_new and
 * Core_dealloc (no other thread can reach the object then). */
typedef struct {
    PyObject_HEAD
    ymo_server_t server;
    struct ymo_wsgi_app app;
    size_t n_listeners;
    int initialized;           /* server set up */
    int running;               /* run() in progress, or core_shutdown's
                                * loop and join */
    int shutting_down;         /* core_shutdown's loop and join */
    int workers_started;
    int starting;              /* the threads are being created, with the
                                * GIL (or the critical section) let go:
                                * others wait (core_start_workers_locked) */
    unsigned starting_gen;     /* ymo_fork_gen then: in a child forked
                                * meanwhile no one is creating them */
    int finished;              /* stopped and workers joined */
    size_t abandoned;          /* workers still in the app after the
                                * grace period: this object then keeps
                                * its own reference for good, as they
                                * use it */
    unsigned long answers_discarded;  /* records of the server's own
                                * answers freed unlogged at a stop that
                                * gave up on a worker logging a batch
                                * (ymo_wsgi_discard_answers) */
    Py_buffer heartbeat;       /* the supervisor's slot (heartbeat.h),
                                * held for the Core's life so the memory
                                * stays mapped; .obj NULL without one */
} CoreObject;

static ymo_module_state *
get_state(PyObject *module)
{
    return (ymo_module_state *)PyModule_GetState(module);
}

static double
get_double(PyObject *o, const char *name, double min)
{
    double v = PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) {
        return -1.0;
    }
    if (v < min || v != v) {
        /* (PyErr_Format has no %g: the message once showed it as is.) */
        char text[32];
        snprintf(text, sizeof(text), "%g", min);
        PyErr_Format(PyExc_ValueError, "%s must be >= %s", name, text);
        return -1.0;
    }
    return v;
}

/* The trusted proxies from a sequence of "ADDR[/PREFIX]" or "*" strings
 * (None: the default, the loopback addresses). 0, or -1 with an exception
 * set and nothing allocated. */
static int
build_trust(ymo_trust_t *t, PyObject *allow_ips)
{
    static const char *const loopback[] = {"127.0.0.1", "::1"};
    memset(t, 0, sizeof(*t));
    if (allow_ips == NULL || allow_ips == Py_None) {
        for (size_t i = 0; i < 2; i++) {
            if (ymo_trust_add(t, loopback[i], strlen(loopback[i])) < 0) {
                ymo_trust_free(t);
                PyErr_NoMemory();
                return -1;
            }
        }
        return 0;
    }
    /* A bare str is a sequence too (of one-character strings): "*" must
     * not be read as a list of networks. */
    if (!PyList_Check(allow_ips) && !PyTuple_Check(allow_ips)) {
        PyErr_Format(PyExc_TypeError,
                     "forwarded_allow_ips must be a list or a tuple, not %s",
                     Py_TYPE(allow_ips)->tp_name);
        return -1;
    }
    /* A tuple: a snapshot (a list's items borrowed from the list itself
     * could be freed by another thread of a free-threaded build changing
     * it meanwhile: C review 2 of s18). */
    PyObject *seq = PySequence_Tuple(allow_ips);
    if (seq == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq); i++) {
        PyObject *item = PyTuple_GET_ITEM(seq, i);
        Py_ssize_t len;
        const char *text = PyUnicode_Check(item)
                               ? PyUnicode_AsUTF8AndSize(item, &len)
                               : NULL;
        if (text == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError,
                                "forwarded_allow_ips items must be str");
            }
            goto fail;
        }
        int r = ymo_trust_add(t, text, (size_t)len);
        if (r == -ENOMEM) {
            PyErr_NoMemory();
            goto fail;
        }
        if (r < 0) {
            PyErr_Format(PyExc_ValueError,
                         "forwarded_allow_ips: bad address or network %R",
                         item);
            goto fail;
        }
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    ymo_trust_free(t);
    return -1;
}

/* config.proxy_headers from a list or tuple of field names (any case);
 * None: the default. */
static int
build_proxy_headers(unsigned *mask, PyObject *names)
{
    static const struct {
        const char *name;
        unsigned bit;
    } fields[] = {
        {"x-forwarded-for", YMO_PH_XFF},
        {"x-forwarded-proto", YMO_PH_XFP},
        {"x-forwarded-host", YMO_PH_XFH},
        {"forwarded", YMO_PH_FORWARDED},
    };
    *mask = YMO_PH_DEFAULT;
    if (names == NULL || names == Py_None) {
        return 0;
    }
    if (!PyList_Check(names) && !PyTuple_Check(names)) {
        PyErr_Format(PyExc_TypeError,
                     "proxy_headers must be a list or a tuple, not %s",
                     Py_TYPE(names)->tp_name);
        return -1;
    }
    PyObject *seq = PySequence_Tuple(names);   /* a snapshot, as above */
    if (seq == NULL) {
        return -1;
    }
    *mask = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(seq); i++) {
        PyObject *item = PyTuple_GET_ITEM(seq, i);
        Py_ssize_t n = 0;
        const char *s = PyUnicode_Check(item)
                            ? PyUnicode_AsUTF8AndSize(item, &n) : NULL;
        size_t k = 0;
        while (s != NULL && k < sizeof(fields) / sizeof(fields[0]) &&
               ((size_t)n != strlen(fields[k].name) ||
                strncasecmp(s, fields[k].name, (size_t)n) != 0)) {
            k++;
        }
        if (s == NULL || k == sizeof(fields) / sizeof(fields[0])) {
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_ValueError,
                             "proxy_headers: unknown field %R (expected "
                             "X-Forwarded-For, X-Forwarded-Proto, "
                             "X-Forwarded-Host or Forwarded)", item);
            }
            Py_DECREF(seq);
            return -1;
        }
        *mask |= fields[k].bit;
    }
    Py_DECREF(seq);
    if ((*mask & YMO_PH_FORWARDED) && (*mask & ~YMO_PH_FORWARDED)) {
        PyErr_SetString(PyExc_ValueError,
                        "proxy_headers: Forwarded cannot be believed "
                        "together with X-Forwarded-* fields (list the "
                        "family your proxy sets)");
        return -1;
    }
    return 0;
}

static PyObject *
Core_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "app", "listeners", "log_error", "errors", "workers",
        "limit_request_line", "limit_request_fields",
        "limit_request_field_size", "limit_request_head_size",
        "max_body_size", "header_timeout", "keepalive_timeout",
        "body_timeout", "write_timeout", "log_access", "multiprocess",
        "buffer_body", "min_body_rate", "max_pending", "queue_timeout",
        "forwarded_allow_ips", "proxy_protocol", "timeout", "log_warning",
        "heartbeat", "notify_fd", "max_requests", "shared_listener",
        "heartbeat_slot", "proxy_headers", "log_answer", NULL,
    };
    PyObject *app, *listeners, *log_error, *errors;
    Py_ssize_t workers = 8, line = 4094, fields = 100, field_size = 8190,
               head_size = 65536;
    unsigned long long max_body = 0;
    PyObject *t_header = NULL, *t_keepalive = NULL, *t_body = NULL,
             *t_write = NULL, *log_access = Py_None;
    int multiprocess = 0;
    Py_ssize_t buffer_body = 65536, max_pending = -1;
    PyObject *min_rate = NULL, *t_queue = NULL, *allow_ips = NULL,
             *t_request = NULL, *log_warning = Py_None, *heartbeat = Py_None;
    int proxy_protocol = 0;
    int notify_fd = -1;
    unsigned long long max_requests = 0;
    int shared_listener = 0;
    Py_ssize_t heartbeat_slot = 0;
    PyObject *proxy_headers = NULL;
    PyObject *log_answer = Py_None;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOOO|$nnnnnKOOOOOpnOnOOpOOOiKpnOO:Core", kwlist,
            &app, &listeners, &log_error, &errors, &workers, &line, &fields,
            &field_size, &head_size, &max_body, &t_header, &t_keepalive,
            &t_body, &t_write, &log_access, &multiprocess, &buffer_body,
            &min_rate, &max_pending, &t_queue, &allow_ips,
            &proxy_protocol, &t_request, &log_warning, &heartbeat,
            &notify_fd, &max_requests, &shared_listener, &heartbeat_slot,
            &proxy_headers, &log_answer)) {
        return NULL;
    }
    if (buffer_body < 0) {
        PyErr_SetString(PyExc_ValueError, "buffer_body must be >= 0");
        return NULL;
    }
    PyObject *module = PyType_GetModule(type);
    if (module == NULL) {
        return NULL;
    }
    ymo_module_state *st = get_state(module);
    if (!PyCallable_Check(app) || !PyCallable_Check(log_error) ||
        (log_warning != Py_None && !PyCallable_Check(log_warning)) ||
        (log_access != Py_None && !PyCallable_Check(log_access)) ||
        (log_answer != Py_None && !PyCallable_Check(log_answer))) {
        PyErr_SetString(PyExc_TypeError,
                        "app, log_error, log_warning, log_access and "
                        "log_answer must be callable");
        return NULL;
    }
    if (!PyList_Check(listeners) || PyList_GET_SIZE(listeners) == 0) {
        PyErr_SetString(PyExc_ValueError,
                        "listeners must be a non-empty list");
        return NULL;
    }
    if (workers < 1 || workers > 4096) {
        PyErr_SetString(PyExc_ValueError, "workers must be 1..4096");
        return NULL;
    }
    if (line < 16 || fields < 1 || field_size < 16 || head_size < 64) {
        PyErr_SetString(PyExc_ValueError, "request limits are too small");
        return NULL;
    }
    ymo_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.limits.max_request_line = (size_t)line;
    cfg.limits.max_header_count = (size_t)fields;
    cfg.limits.max_field_size = (size_t)field_size;
    cfg.limits.max_head_size = (size_t)head_size;
    cfg.limits.max_body_size = max_body;
    cfg.workers = (size_t)workers;
    cfg.header_timeout = 10.0;
    cfg.keepalive_timeout = 5.0;
    cfg.body_timeout = 30.0;
    cfg.write_timeout = 30.0;
    cfg.in_high_water = 256 * 1024;
    cfg.out_high_water = 256 * 1024;
    /* Never more than the input high water: a buffered body must fit. */
    cfg.buffer_body = (size_t)buffer_body < cfg.in_high_water / 2
                          ? (size_t)buffer_body : cfg.in_high_water / 2;
    cfg.min_body_rate = 1024.0;
    /* max_pending < 0: the default, 16 requests waiting per worker. */
    cfg.max_inflight = (size_t)workers +
                       (max_pending < 0 ? 16 * (size_t)workers
                                        : (size_t)max_pending);
    cfg.queue_timeout = 0.0;
    cfg.request_timeout = 0.0;
    cfg.max_requests = max_requests;
    /* Only where others take the connections it leaves. */
    cfg.shared_listener = shared_listener;
    cfg.recycle_stops_accepting = shared_listener;
    struct {
        PyObject *o;
        double *to;
        const char *name;
        double min;
    } timeouts[] = {
        {t_header, &cfg.header_timeout, "header_timeout", 0.001},
        {t_keepalive, &cfg.keepalive_timeout, "keepalive_timeout", 0.0},
        {t_body, &cfg.body_timeout, "body_timeout", 0.001},
        {t_write, &cfg.write_timeout, "write_timeout", 0.001},
        {min_rate, &cfg.min_body_rate, "min_body_rate", 0.0},
        {t_queue, &cfg.queue_timeout, "queue_timeout", 0.0},
        {t_request, &cfg.request_timeout, "timeout", 0.0},
    };
    for (size_t i = 0; i < sizeof(timeouts) / sizeof(timeouts[0]); i++) {
        if (timeouts[i].o != NULL && timeouts[i].o != Py_None) {
            double v = get_double(timeouts[i].o, timeouts[i].name,
                                  timeouts[i].min);
            if (v < 0) {
                return NULL;
            }
            *timeouts[i].to = v;
        }
    }

    cfg.proxy_protocol = proxy_protocol;
    cfg.log_answers = log_answer != Py_None;
    if (build_proxy_headers(&cfg.proxy_headers, proxy_headers) < 0) {
        return NULL;
    }
    /* From here on cfg.trust owns memory: freed on failure until
     * ymo_server_init takes it over. */
    if (build_trust(&cfg.trust, allow_ips) < 0) {
        return NULL;
    }

    int *fds = NULL;
    int *is_unix = NULL;
    CoreObject *self = NULL;
    /* A snapshot, holding each item: parsing one runs Python code (an
     * fd's __index__, a flag's __bool__) that may change the list, as
     * may another thread on a free-threaded build (C review s20). */
    PyObject *items = PySequence_Tuple(listeners);
    if (items == NULL) {
        goto fail;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError,
                        "listeners must be a non-empty list");
        goto fail;
    }
    fds = ymo_pymem_calloc((size_t)n, sizeof(int));
    is_unix = ymo_pymem_calloc((size_t)n, sizeof(int));
    if (fds == NULL || is_unix == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    self = (CoreObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        goto fail;
    }
    self->app.server_name = ymo_pymem_calloc((size_t)n, sizeof(PyObject *));
    self->app.server_port = ymo_pymem_calloc((size_t)n, sizeof(PyObject *));
    if (self->app.server_name == NULL || self->app.server_port == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    self->n_listeners = (size_t)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        PyObject *name, *port;
        int u;
        if (!PyArg_ParseTuple(item, "ipUU;listeners items are (fd, is_unix,"
                              " server_name, server_port)", &fds[i], &u,
                              &name, &port)) {
            goto fail;
        }
        /* libev asserts on a negative descriptor (the process aborts),
         * and one given twice would be closed twice at the end. */
        int twice = 0;
        for (Py_ssize_t j = 0; j < i; j++) {
            twice |= fds[j] == fds[i];
        }
        /* A descriptor that is not open made libev abort; one that is
         * not a listening socket, the loop spin on accept4's errors
         * (review s20). _sockets.inherit_fd checks fd:// the same way. */
        int listening = 0;
        socklen_t len = sizeof(listening);
        if (fds[i] >= 0 &&
            getsockopt(fds[i], SOL_SOCKET, SO_ACCEPTCONN, &listening,
                       &len) < 0) {
            listening = 0;
        }
        if (fds[i] < 0 || twice || !listening) {
            PyErr_Format(PyExc_ValueError,
                         "listener fd %d is %s", fds[i],
                         twice ? "given twice"
                               : "not a listening socket");
            goto fail;
        }
        is_unix[i] = u;
        self->app.server_name[i] = Py_NewRef(name);
        self->app.server_port[i] = Py_NewRef(port);
    }
    self->app.st = st;
    self->app.server = &self->server;
    self->app.core = (PyObject *)self;
    self->app.app = Py_NewRef(app);
    self->app.log_error = Py_NewRef(log_error);
    /* None: the watchdog's lines go to log_error(message, None). */
    self->app.log_warning = log_warning == Py_None ? NULL
                                                   : Py_NewRef(log_warning);
    self->app.log_access = log_access == Py_None ? NULL
                                                 : Py_NewRef(log_access);
    self->app.log_answer = log_answer == Py_None ? NULL
                                                 : Py_NewRef(log_answer);
    self->app.errors = Py_NewRef(errors);
    self->app.file_wrapper = Py_NewRef((PyObject *)st->FileWrapper_type);
    self->app.multithread = Py_NewRef(workers > 1 ? Py_True : Py_False);
    self->app.multiprocess = Py_NewRef(multiprocess ? Py_True : Py_False);
    self->app.environ_template = ymo_pymem_calloc((size_t)n,
                                                  sizeof(PyObject *));
    if (self->app.environ_template == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        self->app.environ_template[i] = ymo_wsgi_environ_template(
            &self->app, (size_t)i, is_unix[i]);
        if (self->app.environ_template[i] == NULL) {
            goto fail;
        }
    }
    if (heartbeat != Py_None) {
        if (PyObject_GetBuffer(heartbeat, &self->heartbeat,
                               PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
            goto fail;
        }
        if (heartbeat_slot < 0 ||
            self->heartbeat.len / YMO_HEARTBEAT_SIZE <= heartbeat_slot ||
            ((uintptr_t)self->heartbeat.buf % 8) != 0) {
            PyErr_Format(PyExc_ValueError,
                         "heartbeat must be a writable, 8-byte aligned "
                         "table of %d-byte slots with heartbeat_slot in it",
                         YMO_HEARTBEAT_SIZE);
            goto fail;
        }
    }
    int r = ymo_server_init(&self->server, &cfg, fds, is_unix, (size_t)n,
                            &self->app);
    cfg.trust.nets = NULL;          /* the server's now, even on failure */
    if (r == -EMFILE || r == -ENFILE) {
        /* Say what ran out and what to change, not only "Too many open
         * files" (hostile review s22). */
        PyObject *exc = Py_BuildValue(
            "(is)", -r, r == -EMFILE
            ? "out of file descriptors for the server's event loop: "
              "raise the limit (ulimit -n)"
            : "the system is out of file descriptors for the server's "
              "event loop (fs.file-max)");
        if (exc != NULL) {
            PyErr_SetObject(PyExc_OSError, exc);
            Py_DECREF(exc);
        }
        goto fail;
    }
    if (r < 0) {
        errno = -r;
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    self->initialized = 1;
    if (self->heartbeat.obj != NULL) {
        ymo_server_set_heartbeat(
            &self->server, self->heartbeat.buf,
            (size_t)(self->heartbeat.len / YMO_HEARTBEAT_SIZE),
            (size_t)heartbeat_slot, notify_fd);
    }
    PyMem_Free(fds);
    PyMem_Free(is_unix);
    Py_DECREF(items);
    return (PyObject *)self;
fail:
    ymo_trust_free(&cfg.trust);
    PyMem_Free(fds);
    PyMem_Free(is_unix);
    Py_XDECREF(items);
    Py_XDECREF(self);
    return NULL;
}

/* Stop and wait for everything, GIL released. */
static void
core_shutdown(CoreObject *self, double grace)
{
    if (!self->initialized || self->finished) {
        return;
    }
    ymo_server_stop(&self->server, grace);
    if (self->workers_started) {
        /* Running, for a run() or start_workers() on another thread
         * meanwhile (the GIL, or the critical section, is let go below):
         * two threads in the loop, both dropping the threads' reference,
         * freed the Core (C review s21). */
        self->running = self->shutting_down = 1;
        Py_BEGIN_ALLOW_THREADS
        while (!ymo_server_run(&self->server, -1)) {
        }
        int interrupted;
        ymo_server_join_workers(&self->server, 1, -1, &interrupted);
        Py_END_ALLOW_THREADS
    }
    /* The app's bytes the loop wrote after the workers' last look. Still
     * running: what they release may run a __del__ that lets the GIL go,
     * and a run() meanwhile went into the loop and dropped the threads'
     * reference a second time (C review s23). */
    ymo_wsgi_release_owners(&self->server);
    ymo_wsgi_log_answers(&self->server, 1);
    self->finished = 1;
    self->running = self->shutting_down = 0;
    if (self->workers_started) {
        /* Joined: the threads' reference (see core_run_locked). Only
         * reached with the caller's own reference held: with workers
         * started and not finished, that reference keeps the Core from
         * being freed, so Core_clear never gets here then. */
        Py_DECREF(self);
    }
}

static int
ymo_py_is_finalizing(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing();
#else
    return _Py_IsFinalizing();
#endif
}

/* Worker starts in progress in this process, from just before a Core's
 * threads are created until they have made their thread states, and
 * whether Python has begun to exit (wait_for_starts, an exit hook): any
 * thread, atomics. A daemon thread's start_workers() that went on
 * creating threads, the GIL let go, while the interpreter finalized gave
 * threads that asked for a thread state with no interpreter left (a
 * crash, C review s23); the exit hook waits for starts to end, and none
 * begins after it has run. (yimmo.Server refuses to start at exit
 * itself; a Core made directly did not.) */
static atomic_int starts_in_progress;
static atomic_int exiting;

/* A millisecond's wait for another thread's start, the GIL (or the
 * critical section) let go. */
static void
nap_for_a_start(void)
{
    Py_BEGIN_ALLOW_THREADS
    struct timespec pause = {0, 1000000};
    nanosleep(&pause, NULL);
    Py_END_ALLOW_THREADS
}

static PyObject *
wait_for_starts(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(ignored))
{
    atomic_store(&exiting, 1);
    while (atomic_load(&starts_in_progress) > 0) {
        nap_for_a_start();
    }
    Py_RETURN_NONE;
}

static PyMethodDef wait_for_starts_def = {
    "_wait_for_starts", wait_for_starts, METH_NOARGS,
    "At exit: refuse new worker starts and wait for those under way.",
};

/* In a forked child the starts of the parent's other threads do not go
 * on: none is waited for there. */
static void
starts_reset_in_child(void)
{
    atomic_store(&starts_in_progress, 0);
}

/* At the very end of a finalization: an embedding program that starts
 * Python again (Py_Initialize after Py_FinalizeEx) may serve again (C
 * review s23: its workers were refused for good). */
static void
starts_reset_at_exit(void)
{
    atomic_store(&exiting, 0);
}

static void
starts_watch_forks(void)
{
    pthread_atfork(NULL, NULL, starts_reset_in_child);
}

/* Counts a start out, unless the process forked since it was counted in
 * (a __del__ run by a failed start's shutdown may fork): the child's
 * count was reset. */
static void
start_counted_out(unsigned counted_gen)
{
    if (counted_gen == ymo_fork_gen) {
        atomic_fetch_sub(&starts_in_progress, 1);
    }
}

/* Start the worker threads (and the watchdog) once, with the Core's
 * critical section held, and wait until each has made its thread state:
 * 0 (also when the server was stopped before they started: it is then
 * finished, with no threads), -1 with the error set. */
static int
core_start_workers_locked(CoreObject *self)
{
    while (self->starting && self->starting_gen == ymo_fork_gen) {
        /* Another thread is creating them (below), the GIL let go: its
         * outcome decides what this call does. */
        nap_for_a_start();
    }
    int counted = 0;
    unsigned counted_gen = 0;
    if (self->shutting_down) {
        /* A failed start's shutdown, the GIL let go (a start_workers()
         * while run() serves is a no-op, as documented). */
        PyErr_SetString(PyExc_RuntimeError, "the server is shutting down");
        return -1;
    }
    if (!self->workers_started) {
        if (ymo_server_stop_requested(&self->server)) {
            /* stop() came first and closed the listeners: threads now
             * would wait for ever for a loop (C review s21). */
            core_shutdown(self, 0);
            return 0;
        }
        /* Counted before the look at exiting, which wait_for_starts
         * sets before it looks at the count: one of the two sees the
         * other. */
        atomic_fetch_add(&starts_in_progress, 1);
        counted_gen = ymo_fork_gen;
        if (ymo_py_is_finalizing() || atomic_load(&exiting)) {
            /* A new thread cannot take the GIL then (it would hang, and
             * the wait for the threads' states below with it). */
            start_counted_out(counted_gen);
            PyErr_SetString(PyExc_RuntimeError,
                            "cannot start the server's workers while "
                            "Python is shutting down");
            return -1;
        }
        counted = 1;
        /* Set before the GIL (or the critical section) is let go below,
         * so that a run() or start_workers() on another thread meanwhile
         * neither starts them again nor takes this reference twice (C
         * review s21). A server that has threads owns itself until they
         * are joined (finished): they use it, and the last reference
         * dropped on one of them (an exchange's wsgi.input or
         * StartResponse, which hold the Core) would have it shut down and
         * join itself there, for ever (C review after 76de913). Dropped
         * unfinished, the Core stays, as with abandoned workers. */
        self->workers_started = 1;
        Py_INCREF(self);
        /* The threads are created with the GIL let go: each new one
         * waits for it at once (PyGILState_Ensure), and with it held
         * here they all woke every switch interval to ask, so that
         * starting 4,096 took seconds. */
        self->starting = 1;
        self->starting_gen = ymo_fork_gen;
        /* Before the GIL is let go: a stop() or a fork meanwhile reads
         * what it writes (C review s23: the stop was lost, a fork's child
         * kept the listeners). */
        ymo_server_prepare_workers(&self->server);
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = ymo_server_start_workers(&self->server);
        if (r == 0) {
            r = ymo_watchdog_start(&self->server);
        }
        Py_END_ALLOW_THREADS
        self->starting = 0;
        if (r < 0) {
            /* Shut down first: building the exception can run the GC,
             * and a __del__ that lets the GIL go let a run() waiting
             * above in, into the loop this shutdown runs (C review s23). */
            core_shutdown(self, 0);
            /* Say what failed and what to change: the bare "Resource
             * temporarily unavailable" named neither (operations review
             * s20). */
            char text[200];
            snprintf(text, sizeof(text),
                     "could not start the threads of %zu workers (%s): "
                     "fewer --workers, or a higher limit on threads or "
                     "memory (ulimit -u, -v)", self->server.config.workers,
                     strerror(-r));
            PyObject *exc = Py_BuildValue("(is)", -r, text);
            if (exc != NULL) {
                PyErr_SetObject(PyExc_OSError, exc);
                Py_DECREF(exc);
            }
            start_counted_out(counted_gen);
            return -1;
        }
    }
    /* Every caller returns once the thread states are made (a second
     * one meanwhile too); at once after the first time. Not in a child
     * forked from the serving process, where the threads do not exist. */
    if (!self->finished && !ymo_server_forked(&self->server)) {
        Py_BEGIN_ALLOW_THREADS
        ymo_server_wait_workers_attached(&self->server);
        Py_END_ALLOW_THREADS
    }
    if (counted) {
        start_counted_out(counted_gen);
    }
    return 0;
}

/* run() with the Core's critical section held (see CoreObject). */
static PyObject *
core_run_locked(CoreObject *self, int wakeup_fd)
{
    if (self->finished) {
        Py_RETURN_TRUE;
    }
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the server is already running");
        return NULL;
    }
    if (self->workers_started && ymo_server_forked(&self->server)) {
        /* A child forked from the process whose threads these are: its
         * loop would run for ever, stop() does nothing here (C review
         * s21). */
        PyErr_SetString(PyExc_RuntimeError,
                        "the server's workers belong to the process that "
                        "started them");
        return NULL;
    }
    if (core_start_workers_locked(self) < 0) {
        return NULL;
    }
    if (self->finished) {
        Py_RETURN_TRUE;         /* stopped before it started */
    }
    if (self->running) {
        /* Another thread's run() began while this one waited for the
         * workers' thread states. */
        PyErr_SetString(PyExc_RuntimeError, "the server is already running");
        return NULL;
    }
    self->running = 1;
    int stopped;
    int interrupted = 0;
    size_t busy = 0;
    Py_BEGIN_ALLOW_THREADS
    stopped = ymo_server_run(&self->server, wakeup_fd);
    if (stopped) {
        /* Workers still running the app get until the same deadline. */
        busy = ymo_server_join_workers(&self->server, 0, wakeup_fd,
                                       &interrupted);
    }
    Py_END_ALLOW_THREADS
    if (interrupted) {
        /* A signal while waiting for workers: let Python run its handler
         * (which may stop(0)); the next run() goes on joining. */
        self->running = 0;
        Py_RETURN_FALSE;
    }
    if (stopped) {
        /* Still running meanwhile (see core_shutdown). */
        ymo_wsgi_release_owners(&self->server);
        if (busy > 0 && atomic_load(&self->server.answers_logging) > 0) {
            /* A worker given up on is logging a batch, inside the app's
             * handlers: logging the rest through them here could wait
             * for it (a stalled stream holds a handler's lock), past the
             * deadline (C review s28). They are counted instead
             * (answers_unlogged). */
            self->answers_discarded =
                ymo_wsgi_discard_answers(&self->server);
        }
        else {
            ymo_wsgi_log_answers(&self->server, 1);
        }
        self->finished = 1;
        if (busy > 0) {
            /* Never freed: those threads use it (the threads' reference
             * stays). */
            self->abandoned = busy;
        }
        else {
            Py_DECREF(self);    /* the threads' (the caller has one) */
        }
    }
    self->running = 0;
    return PyBool_FromLong(stopped);
}

static PyObject *
Core_run(CoreObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"wakeup_fd", NULL};
    int wakeup_fd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|i:run", kwlist,
                                     &wakeup_fd)) {
        return NULL;
    }
    if (self->initialized && ymo_server_on_worker_thread(&self->server)) {
        /* The worker would become the loop inside its own exchange and,
         * at the stop, wait to join itself (C review s20). */
        PyErr_SetString(PyExc_RuntimeError,
                        "run() cannot be called from one of the server's "
                        "own workers");
        return NULL;
    }
    PyObject *r;
    Py_BEGIN_CRITICAL_SECTION(self);
    r = core_run_locked(self, wakeup_fd);
    Py_END_CRITICAL_SECTION();
    return r;
}

static PyObject *
Core_start_workers(CoreObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->initialized && ymo_server_on_worker_thread(&self->server)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "start_workers() cannot be called from one of the "
                        "server's own workers");
        return NULL;
    }
    int r;
    Py_BEGIN_CRITICAL_SECTION(self);
    r = self->finished ? 0 : core_start_workers_locked(self);
    Py_END_CRITICAL_SECTION();
    if (r < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Core_stop(CoreObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"grace", NULL};
    double grace = 30.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|d:stop", kwlist,
                                     &grace)) {
        return NULL;
    }
    if (isnan(grace)) {
        /* No number of seconds: it used to mean no limit at all, and
         * reading it as 0 would cut in-flight requests off. Refuse it. */
        PyErr_SetString(PyExc_ValueError, "grace must be a number, not NaN");
        return NULL;
    }
    Py_BEGIN_CRITICAL_SECTION(self);
    /* Nothing in a process forked from the one serving (by the app): the
     * server is the parent's, and its locks may be held for ever here. */
    int forked = self->initialized && self->workers_started &&
                 ymo_server_forked(&self->server);
    if (self->initialized && !self->finished && !forked) {
        ymo_server_stop(&self->server, grace < 0 ? 0 : grace);
        if (!self->workers_started) {
            /* No loop has run (workers_started is set, under this same
             * critical section, before the first does), so none will see
             * the stop soon: close the listeners here, as the loop
             * would. */
            ymo_server_close_listeners(&self->server);
        }
    }
    Py_END_CRITICAL_SECTION();
    Py_RETURN_NONE;
}

static PyObject *
Core_is_worker_thread(CoreObject *self, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(self->initialized &&
                           ymo_server_on_worker_thread(&self->server));
}

static PyObject *
Core_request_recycle(CoreObject *self, PyObject *unused)
{
    (void)unused;
    if (self->initialized) {
        ymo_server_request_recycle(&self->server);
    }
    Py_RETURN_NONE;
}

static PyObject *
Core_get_finished(CoreObject *self, void *closure)
{
    (void)closure;
    int finished;
    Py_BEGIN_CRITICAL_SECTION(self);
    finished = self->finished;
    Py_END_CRITICAL_SECTION();
    return PyBool_FromLong(finished);
}

static int
Core_traverse(CoreObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->app.app);
    Py_VISIT(self->app.log_error);
    Py_VISIT(self->app.log_warning);
    Py_VISIT(self->app.log_access);
    Py_VISIT(self->app.log_answer);
    Py_VISIT(self->app.errors);
    Py_VISIT(self->app.file_wrapper);
    for (size_t i = 0; self->app.environ_template != NULL &&
                       i < self->n_listeners; i++) {
        Py_VISIT(self->app.environ_template[i]);
    }
    return 0;
}

static int
Core_clear(CoreObject *self)
{
    /* Only after the workers are gone may the app go. */
    if (self->initialized && !self->finished && !self->running) {
        core_shutdown(self, 0);
    }
    if (self->running) {
        return 0;
    }
    Py_CLEAR(self->app.app);
    Py_CLEAR(self->app.log_error);
    Py_CLEAR(self->app.log_warning);
    Py_CLEAR(self->app.log_access);
    Py_CLEAR(self->app.log_answer);
    Py_CLEAR(self->app.errors);
    Py_CLEAR(self->app.file_wrapper);
    for (size_t i = 0; self->app.environ_template != NULL &&
                       i < self->n_listeners; i++) {
        Py_CLEAR(self->app.environ_template[i]);
    }
    return 0;
}

static void
Core_dealloc(CoreObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Core_clear(self);
    if (self->initialized) {
        ymo_server_destroy(&self->server);
        /* What the connections still held: the server's memory stays
         * until tp_free, and no thread is left to push more. */
        ymo_wsgi_release_owners(&self->server);
        self->initialized = 0;
    }
    for (size_t i = 0; i < self->n_listeners; i++) {
        Py_XDECREF(self->app.server_name[i]);
        Py_XDECREF(self->app.server_port[i]);
        if (self->app.environ_template != NULL) {
            Py_XDECREF(self->app.environ_template[i]);
        }
    }
    PyMem_Free(self->app.environ_template);
    PyMem_Free(self->app.server_name);
    PyMem_Free(self->app.server_port);
    Py_CLEAR(self->app.multithread);
    Py_CLEAR(self->app.multiprocess);
    if (self->heartbeat.obj != NULL) {
        PyBuffer_Release(&self->heartbeat);
    }
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef Core_methods[] = {
    {"run", (PyCFunction)(void (*)(void))Core_run,
     METH_VARARGS | METH_KEYWORDS,
     "run(wakeup_fd=-1) -> bool: serve on this thread (GIL released) until"
     " stopped (True) or wakeup_fd is readable (False: a signal arrived;"
     " call again)"},
    {"stop", (PyCFunction)(void (*)(void))Core_stop,
     METH_VARARGS | METH_KEYWORDS,
     "stop(grace=30.0): stop accepting (the listening sockets are closed);"
     " in-flight requests get until one deadline, now + grace seconds"
     " (negative: 0; NaN: ValueError), which a later stop may bring"
     " forward but never postpone. Thread-safe; run() returns True once"
     " stopped."},
    {"start_workers", (PyCFunction)Core_start_workers, METH_NOARGS,
     "start_workers(): start the worker threads now rather than in the"
     " first run(), so that a failure (OSError: the system would not give"
     " the threads) is raised here. Does nothing once they are started or"
     " the server has finished."},
    {"request_recycle", (PyCFunction)Core_request_recycle, METH_NOARGS,
     "request_recycle(): ask the supervisor (processes >= 2) to replace"
     " this process gracefully: a successor starts first, then this one"
     " drains. Does nothing in a single process. Any thread."},
    {"is_worker_thread", (PyCFunction)Core_is_worker_thread, METH_NOARGS,
     "is_worker_thread() -> bool: whether the calling thread is one of this"
     " Core's workers (code called by the app, inside a request)"},
    {NULL, NULL, 0, NULL},
};

static PyObject *
Core_get_abandoned(CoreObject *self, void *closure)
{
    (void)closure;
    size_t abandoned;
    Py_BEGIN_CRITICAL_SECTION(self);
    abandoned = self->abandoned;
    Py_END_CRITICAL_SECTION();
    return PyLong_FromSize_t(abandoned);
}

static PyObject *
Core_get_answers_unlogged(CoreObject *self, void *closure)
{
    (void)closure;
    unsigned long n = 0;
    if (self->initialized) {
        int logging = atomic_load(&self->server.answers_logging);
        n = (logging > 0 ? (unsigned long)logging : 0);
    }
    Py_BEGIN_CRITICAL_SECTION(self);
    n += self->answers_discarded;
    Py_END_CRITICAL_SECTION();
    return PyLong_FromUnsignedLong(n);
}

static PyObject *
Core_get_recycle_requested(CoreObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(
        self->initialized &&
        atomic_load(&self->server.recycle_requested) != 0);
}

static PyObject *
Core_get_gil_handovers(CoreObject *self, void *closure)
{
    (void)closure;
    unsigned long n = 0, timeouts = 0;
    if (self->initialized) {
        n = atomic_load_explicit(&self->server.handovers,
                                 memory_order_relaxed);
        timeouts = atomic_load_explicit(&self->server.handover_timeouts,
                                        memory_order_relaxed);
    }
    return Py_BuildValue("(kk)", n, timeouts);
}

static PyObject *
Core_get_app_blocks(CoreObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(
        self->initialized &&
        atomic_load_explicit(&self->server.cut_share,
                             memory_order_relaxed) > YMO_APP_BLOCKS);
}

static PyGetSetDef Core_getset[] = {
    {"recycle_requested", (getter)Core_get_recycle_requested, NULL,
     "True once the request watchdog asked for this process to be"
     " recycled (a worker stuck and no replacement thread left)", NULL},
    {"abandoned_workers", (getter)Core_get_abandoned, NULL,
     "workers still running the app when the grace period ran out", NULL},
    {"answers_unlogged", (getter)Core_get_answers_unlogged, NULL,
     "log records about requests the server answered itself or cut"
     " short that a worker has taken to log and not logged yet, and, at"
     " a stop that gave up on such a worker, those left unlogged with"
     " it", NULL},
    {"gil_handovers", (getter)Core_get_gil_handovers, NULL,
     "(handovers, missed): times a worker handed the GIL over between two"
     " requests (wsgi_worker.c, handover_due), and of those, the times no"
     " worker took it between requests within the wait (a thread of the"
     " app, or a worker inside a request, may have)", NULL},
    {"app_blocks", (getter)Core_get_app_blocks, NULL,
     "True while most recent requests run with the GIL saw it change hands"
     " (the app blocks with it released, a sleep or a query; or, with"
     " others waiting, its requests run longer than the switch interval"
     " and Python forced a switch): the loop then gives each request an"
     " idle worker of its own (server.c, dispatch)", NULL},
    {"finished", (getter)Core_get_finished, NULL,
     "True once the server has stopped and its workers have exited", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Core_slots[] = {
    {Py_tp_new, Core_new},
    {Py_tp_dealloc, Core_dealloc},
    {Py_tp_traverse, Core_traverse},
    {Py_tp_clear, Core_clear},
    {Py_tp_methods, Core_methods},
    {Py_tp_getset, Core_getset},
    {Py_tp_doc, "Core(app, listeners, log_error, errors, *, workers, ...):"
                " one server over bound listening sockets. listeners:"
                " [(fd, is_unix, server_name, server_port)]; once"
                " constructed the Core owns the fds (it closes them when"
                " a stop begins), while if construction raises they stay"
                " the caller's"},
    {0, NULL},
};

static PyType_Spec Core_spec = {
    .name = "yimmo._yimmo.Core",
    .basicsize = sizeof(CoreObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = Core_slots,
};

/* -- module -- */

static int
intern(PyObject **slot, const char *s)
{
    *slot = PyUnicode_InternFromString(s);
    return *slot == NULL ? -1 : 0;
}

static int
module_exec(PyObject *module)
{
    /* Workers and the watchdog attach with PyGILState_Ensure, which
     * gives a thread state of the main interpreter: an app served from
     * a subinterpreter ran in the main one, with its sys.modules, and
     * objects of one interpreter were freed by the other (C review s20).
     * 3.12 and later refuse the import through the slot below; this
     * covers the versions before it. */
    if (PyInterpreterState_Get() != PyInterpreterState_Main()) {
        PyErr_SetString(PyExc_ImportError,
                        "yimmo._yimmo runs only in the main interpreter");
        return -1;
    }
    ymo_module_state *st = get_state(module);
#define TYPE(field, spec)                                                  \
    do {                                                                   \
        st->field = (PyTypeObject *)PyType_FromModuleAndSpec(              \
            module, &(spec), NULL);                                        \
        if (st->field == NULL) {                                           \
            return -1;                                                     \
        }                                                                  \
    } while (0)
    TYPE(Core_type, Core_spec);
    TYPE(Input_type, ymo_input_spec);
    TYPE(StartResponse_type, ymo_start_response_spec);
    TYPE(FileWrapper_type, ymo_file_wrapper_spec);
#undef TYPE
    ymo_server_watch_forks();
    static pthread_once_t starts_once = PTHREAD_ONCE_INIT;
    pthread_once(&starts_once, starts_watch_forks);
    /* Each time: a finalization runs these once and forgets them. (Full,
     * at 32, it is left out: only a later start in this process would
     * then be refused.) */
    (void)Py_AtExit(starts_reset_at_exit);
    PyObject *hook = PyCFunction_NewEx(&wait_for_starts_def, NULL, NULL);
    PyObject *done = NULL;
    if (hook != NULL) {
        PyObject *atexit = PyImport_ImportModule("atexit");
        if (atexit != NULL) {
            done = PyObject_CallMethod(atexit, "register", "O", hook);
            Py_DECREF(atexit);
        }
        Py_DECREF(hook);
    }
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    if (PyModule_AddType(module, st->Core_type) < 0 ||
        PyModule_AddType(module, st->FileWrapper_type) < 0) {
        return -1;
    }
    /* An OSError, so that frameworks which turn an OSError from the body
     * into their own error (Django's UnreadablePostError) keep working. */
    st->ClientDisconnected = PyErr_NewExceptionWithDoc(
        "yimmo.ClientDisconnected",
        "The client went away before its request body was complete.",
        PyExc_OSError, NULL);
    if (st->ClientDisconnected == NULL ||
        PyModule_AddObjectRef(module, "ClientDisconnected",
                              st->ClientDisconnected) < 0) {
        return -1;
    }
    /* A BaseException, as asyncio.CancelledError: the app's own
     * `except Exception` handlers must not swallow it and go on. */
    st->RequestTimeout = PyErr_NewExceptionWithDoc(
        "yimmo.RequestTimeout",
        "Raised asynchronously in a worker thread whose request ran longer"
        " than the server's timeout; the client was answered already (503,"
        " or a closed connection).",
        PyExc_BaseException, NULL);
    if (st->RequestTimeout == NULL ||
        PyModule_AddObjectRef(module, "RequestTimeout",
                              st->RequestTimeout) < 0) {
        return -1;
    }
#ifdef Py_GIL_DISABLED
    /* From sys.modules (no import hook runs). Missing: workers then
     * assume the GIL's order, never worse than one worker's
     * (wsgi_worker.c note_gil); any other error fails the import. */
    PyObject *sys_name = PyUnicode_FromString("sys");
    PyObject *sys = sys_name != NULL ? PyImport_GetModule(sys_name) : NULL;
    Py_XDECREF(sys_name);
    if (sys == NULL) {
        if (PyErr_Occurred()) {
            return -1;
        }
    }
    else {
        int r = PyObject_GetOptionalAttrString(sys, "_is_gil_enabled",
                                               &st->is_gil_enabled);
        Py_DECREF(sys);
        if (r < 0) {
            return -1;
        }
    }
#endif
    if (intern(&st->k_request_method, "REQUEST_METHOD") ||
        intern(&st->k_script_name, "SCRIPT_NAME") ||
        intern(&st->k_path_info, "PATH_INFO") ||
        intern(&st->k_query_string, "QUERY_STRING") ||
        intern(&st->k_content_type, "CONTENT_TYPE") ||
        intern(&st->k_content_length, "CONTENT_LENGTH") ||
        intern(&st->k_server_name, "SERVER_NAME") ||
        intern(&st->k_server_port, "SERVER_PORT") ||
        intern(&st->k_server_protocol, "SERVER_PROTOCOL") ||
        intern(&st->k_server_software, "SERVER_SOFTWARE") ||
        intern(&st->k_remote_addr, "REMOTE_ADDR") ||
        intern(&st->k_remote_port, "REMOTE_PORT") ||
        intern(&st->k_raw_uri, "RAW_URI") ||
        intern(&st->k_wsgi_version, "wsgi.version") ||
        intern(&st->k_wsgi_url_scheme, "wsgi.url_scheme") ||
        intern(&st->k_wsgi_input, "wsgi.input") ||
        intern(&st->k_wsgi_errors, "wsgi.errors") ||
        intern(&st->k_wsgi_multithread, "wsgi.multithread") ||
        intern(&st->k_wsgi_multiprocess, "wsgi.multiprocess") ||
        intern(&st->k_wsgi_run_once, "wsgi.run_once") ||
        intern(&st->k_wsgi_input_terminated, "wsgi.input_terminated") ||
        intern(&st->k_wsgi_file_wrapper, "wsgi.file_wrapper") ||
        intern(&st->k_client_gone, "yimmo.client_gone") ||
        intern(&st->k_https, "HTTPS") || intern(&st->v_https, "https") ||
        intern(&st->v_on, "on") ||
        intern(&st->v_empty, "") || intern(&st->v_http, "http") ||
        intern(&st->v_http10, "HTTP/1.0") ||
        intern(&st->v_http11, "HTTP/1.1") ||
        intern(&st->v_software, "yimmo") || intern(&st->v_get, "GET") ||
        intern(&st->v_post, "POST") || intern(&st->v_head, "HEAD") ||
        intern(&st->s_close, "close") || intern(&st->s_fileno, "fileno") ||
        intern(&st->s_tell, "tell") || intern(&st->s_raw, "raw")) {
        return -1;
    }
    PyObject *io = PyImport_ImportModule("io");
    if (io == NULL) {
        return -1;
    }
    st->io_fileio = PyObject_GetAttrString(io, "FileIO");
    st->io_buffered_reader = PyObject_GetAttrString(io, "BufferedReader");
    st->io_buffered_random = PyObject_GetAttrString(io, "BufferedRandom");
    Py_DECREF(io);
    if (st->io_fileio == NULL || st->io_buffered_reader == NULL ||
        st->io_buffered_random == NULL) {
        return -1;
    }
    st->v_version = Py_BuildValue("(ii)", 1, 0);
    if (st->v_version == NULL || ymo_environ_state_init(st) < 0) {
        return -1;
    }
#ifdef YMO_FAULT_INJECTION
    if (ymo_fault_injection_init() < 0) {
        return -1;
    }
#endif
    return 0;
}

/* Every PyObject field of the state, for traverse and clear. */
#define STATE_OBJECTS(st)                                                  \
    (PyObject **)&(st)->Core_type, (PyObject **)&(st)->Input_type,         \
        (PyObject **)&(st)->StartResponse_type,                            \
        (PyObject **)&(st)->FileWrapper_type, &(st)->k_request_method,     \
        &(st)->k_script_name, &(st)->k_path_info, &(st)->k_query_string,   \
        &(st)->k_content_type, &(st)->k_content_length,                    \
        &(st)->k_server_name, &(st)->k_server_port,                        \
        &(st)->k_server_protocol, &(st)->k_server_software,                \
        &(st)->k_remote_addr, &(st)->k_remote_port, &(st)->k_raw_uri,      \
        &(st)->k_wsgi_version, &(st)->k_wsgi_url_scheme,                   \
        &(st)->k_wsgi_input, &(st)->k_wsgi_errors,                         \
        &(st)->k_wsgi_multithread, &(st)->k_wsgi_multiprocess,             \
        &(st)->k_wsgi_run_once, &(st)->k_wsgi_input_terminated,            \
        &(st)->k_wsgi_file_wrapper, &(st)->k_client_gone, &(st)->k_https,  \
        &(st)->v_https, &(st)->v_on,                                       \
        &(st)->ClientDisconnected, &(st)->RequestTimeout,                  \
        &(st)->v_empty, &(st)->v_http,                                     \
        &(st)->v_http10, &(st)->v_http11, &(st)->v_version,                \
        &(st)->v_software, &(st)->v_get, &(st)->v_post, &(st)->v_head,     \
        &(st)->s_close, &(st)->s_fileno, &(st)->s_tell, &(st)->s_raw,      \
        &(st)->io_fileio, &(st)->io_buffered_reader,                       \
        &(st)->io_buffered_random, &(st)->is_gil_enabled

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    ymo_module_state *st = get_state(module);
    PyObject **fields[] = {STATE_OBJECTS(st)};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        Py_VISIT(*fields[i]);
    }
    for (size_t i = 0; i < YMO_COMMON_HEADER_KEYS; i++) {
        Py_VISIT(st->header_keys[i]);
    }
    return 0;
}

static int
module_clear(PyObject *module)
{
    ymo_module_state *st = get_state(module);
    PyObject **fields[] = {STATE_OBJECTS(st)};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        Py_CLEAR(*fields[i]);
    }
    for (size_t i = 0; i < YMO_COMMON_HEADER_KEYS; i++) {
        Py_CLEAR(st->header_keys[i]);
    }
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_GIL_DISABLED
    /* Free-threaded CPython (3.13t and later): importing yimmo must not
     * turn the GIL back on. What makes that safe (which lock or which
     * ownership rule covers each piece of shared state once Python code
     * runs in parallel) is written next to that state: ymo_module_state
     * in wsgi.h, CoreObject above, the per-request objects in
     * wsgi_input.c and wsgi_response.c, the worker in wsgi_worker.c. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "yimmo._yimmo",
    .m_doc = "yimmo's C core: the libev I/O thread and the WSGI workers",
    .m_size = sizeof(ymo_module_state),
#ifdef YMO_FAULT_INJECTION
    .m_methods = ymo_fault_injection_methods,
#endif
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__yimmo(void)
{
    return PyModuleDef_Init(&module_def);
}
