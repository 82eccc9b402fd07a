/* wsgi_input.c - the wsgi.input stream: reads the request body as the loop
 * delivers it, blocking with the GIL released, so the app can start before
 * the body has arrived and memory stays bounded whatever its size.      */
#include "wsgi.h"

#include <string.h>

/* The object's fields are immutable; what changes per read is the body
 * itself, which comes through the exchange's lock (ymo_exchange_read),
 * and ex->in_consumed, which only this object writes: under its critical
 * section (with the GIL, the GIL), so that an app reading one stream from
 * two threads at once (free-threaded: truly at once) gets every byte
 * once, in some interleaving, and the count stays exact. The object
 * holds a reference to its exchange for its whole life, so a thread of
 * the app still reading when the response is complete reads memory that
 * is still there: it gets what had arrived, then an error (see
 * ymo_exchange_read, which also wakes a read waiting then). */
typedef struct {
    PyObject_HEAD
    ymo_exchange_t *ex;        /* immutable */
    PyObject *core;            /* immutable: the Core whose server ex
                                * belongs to. An app may keep this object
                                * after the server has stopped and the
                                * Server is gone: a read then still looks
                                * at the server (the fork guard) and frees
                                * body buckets into its spares, and the
                                * exchange's release does too, so the
                                * server's memory must stay until both are
                                * done (C review of 481a78b: a late read
                                * read freed memory). Visited by traverse
                                * (a GC type for it), so a cycle through
                                * the Core is still collected */
    size_t low_water;          /* ask the loop for more below this */
} InputObject;

PyObject *
ymo_input_new(ymo_module_state *st, PyObject *core, ymo_exchange_t *ex,
              size_t low_water)
{
    InputObject *self = PyObject_GC_New(InputObject, st->Input_type);
    if (self == NULL) {
        return NULL;
    }
    ymo_exchange_retain(ex);
    self->ex = ex;
    self->core = Py_NewRef(core);
    self->low_water = low_water;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static void
Input_dealloc(InputObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject *core = self->core;
    PyObject_GC_UnTrack(self);
    /* The exchange first: its release frees into the server's memory. */
    ymo_exchange_release(self->ex);
    PyObject_GC_Del(self);
    Py_DECREF(tp);
    Py_DECREF(core);
}

/* Read into buf with the GIL released. Returns bytes read (0 at the end)
 * or -1 with an exception set; -2 with an exception set when the response
 * is already complete (what was read before stays valid). */
/* Body bytes still to come of a Content-Length body. */
static uint64_t
body_left(InputObject *self)
{
    uint64_t left;
    YMO_FORK_GUARD_FT(self->ex->server);   /* before the critical section */
    Py_BEGIN_CRITICAL_SECTION(self);
    left = self->ex->req.content_length - self->ex->in_consumed;
    Py_END_CRITICAL_SECTION();
    return left;
}

static long
input_fill(InputObject *self, char *buf, size_t n, int line)
{
    ymo_exchange_t *ex = self->ex;
    if (n == 0) {
        return 0;
    }
    YMO_FORK_GUARD(ex->server);
    long r;
    int status = 0;
    /* The caller keeps this object, and so its reference to the exchange,
     * alive while we wait. */
    Py_BEGIN_ALLOW_THREADS
    r = ymo_exchange_read(ex, buf, n, line, self->low_water, &status);
    Py_END_ALLOW_THREADS
    if (r < 0) {
        if (status == YMO_READ_FINISHED) {
            PyErr_SetString(PyExc_OSError,
                            "the response is complete: the rest of the "
                            "request body can no longer be read");
            return -2;
        }
        else if (status == YMO_READ_STOPPED) {
            PyErr_SetString(PyExc_OSError,
                            "the server is shutting down: the request body "
                            "can no longer be read");
        }
        else if (status == -1) {
            ymo_module_state *st = PyType_GetModuleState(Py_TYPE(self));
            PyErr_SetString(st->ClientDisconnected,
                            "client disconnected before the request body "
                            "was complete");
        }
        else {
            PyErr_Format(PyExc_OSError, "request body refused: %d %s",
                         status, ymo_http_reason(status));
        }
    }
    return r;
}

/* Read up to `limit` bytes (all when limit < 0), stopping after a newline
 * when `line`. Keeps reading until then: a short result means the end of
 * the body. */
static PyObject *
input_read(InputObject *self, Py_ssize_t limit, int line)
{
    size_t cap;
    int unbounded = 0;
    if (limit >= 0) {
        cap = (size_t)limit;
        if (!line && self->ex != NULL &&
            self->ex->req.body == YMO_HTTP_BODY_LENGTH) {
            /* No bigger than what can still come. */
            uint64_t left = body_left(self);
            if (left < cap) {
                cap = (size_t)left;
            }
        }
    }
    else if (!line && self->ex != NULL &&
             self->ex->req.body == YMO_HTTP_BODY_LENGTH) {
        cap = (size_t)body_left(self);
    }
    else {
        cap = line ? 256 : 65536;
        if (!line) {
            unbounded = 1;
        }
    }
    if (line && limit < 0) {
        unbounded = 1;
    }
    /* The result can be no longer than this; start no bigger than the
     * input buffer, though: what the client announced or the app asked
     * for is not there yet, and may never come. */
    size_t maxcap = unbounded ? SIZE_MAX : cap;
    if (line && cap > 65536) {
        cap = 65536;            /* grows below if the line is longer */
    }
    if (cap > 256 * 1024) {
        cap = 256 * 1024;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)cap);
    if (out == NULL) {
        return NULL;
    }
    size_t got = 0;
    for (;;) {
        size_t want = cap - got;
        if (limit >= 0 && (size_t)limit - got < want) {
            want = (size_t)limit - got;
        }
        if (want == 0) {
            if (cap >= maxcap) {
                break;
            }
            /* Out of room with more to come: grow. */
            size_t ncap = cap < 65536 ? 65536 : cap * 2;
            if (ncap > maxcap) {
                ncap = maxcap;
            }
            if (_PyBytes_Resize(&out, (Py_ssize_t)ncap) < 0) {
                return NULL;
            }
            cap = ncap;
            continue;
        }
        long n = input_fill(self, PyBytes_AS_STRING(out) + got, want, line);
        if (n == -2 && got > 0) {
            /* The exchange ended: what arrived is returned, and the next
             * read raises. */
            PyErr_Clear();
            break;
        }
        if (n < 0) {
            Py_DECREF(out);
            return NULL;
        }
        if (n == 0) {
            break;
        }
        got += (size_t)n;
        if (self->ex != NULL) {
            Py_BEGIN_CRITICAL_SECTION(self);
            self->ex->in_consumed += (uint64_t)n;
            Py_END_CRITICAL_SECTION();
        }
        if (line && PyBytes_AS_STRING(out)[got - 1] == '\n') {
            break;
        }
    }
    if (got != cap && _PyBytes_Resize(&out, (Py_ssize_t)got) < 0) {
        return NULL;
    }
    return out;
}

static int
size_arg(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t *size)
{
    *size = -1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "expected at most 1 argument");
        return -1;
    }
    if (nargs == 1 && args[0] != Py_None) {
        *size = PyNumber_AsSsize_t(args[0], PyExc_OverflowError);
        if (*size == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    return 0;
}

static PyObject *
Input_read(InputObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t size;
    if (size_arg(args, nargs, &size) < 0) {
        return NULL;
    }
    return input_read(self, size, 0);
}

static PyObject *
Input_readline(InputObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t size;
    if (size_arg(args, nargs, &size) < 0) {
        return NULL;
    }
    return input_read(self, size, 1);
}

static PyObject *
Input_readlines(InputObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t hint;
    if (size_arg(args, nargs, &hint) < 0) {
        return NULL;
    }
    PyObject *lines = PyList_New(0);
    if (lines == NULL) {
        return NULL;
    }
    Py_ssize_t total = 0;
    for (;;) {
        PyObject *line = input_read(self, -1, 1);
        if (line == NULL) {
            Py_DECREF(lines);
            return NULL;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(line);
        if (n == 0) {
            Py_DECREF(line);
            break;
        }
        int r = PyList_Append(lines, line);
        Py_DECREF(line);
        if (r < 0) {
            Py_DECREF(lines);
            return NULL;
        }
        total += n;
        if (hint > 0 && total >= hint) {
            break;
        }
    }
    return lines;
}

static PyObject *
Input_iternext(InputObject *self)
{
    PyObject *line = input_read(self, -1, 1);
    if (line != NULL && PyBytes_GET_SIZE(line) == 0) {
        Py_DECREF(line);
        return NULL;            /* StopIteration */
    }
    return line;
}

/* environ["yimmo.client_gone"] is the wsgi.input object itself, called:
 * one callable per request without allocating one. */
static PyObject *
Input_call(InputObject *self, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0 ||
        (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_SetString(PyExc_TypeError,
                        "client_gone() takes no arguments");
        return NULL;
    }
    YMO_FORK_GUARD(self->ex->server);
    return PyBool_FromLong(ymo_exchange_client_gone(self->ex));
}

static PyMethodDef Input_methods[] = {
    {"read", (PyCFunction)(void (*)(void))Input_read, METH_FASTCALL,
     "read(size=-1) -> bytes: up to size bytes of the body (all when -1);"
     " fewer only at its end"},
    {"readline", (PyCFunction)(void (*)(void))Input_readline, METH_FASTCALL,
     "readline(size=-1) -> bytes: one line, including its newline"},
    {"readlines", (PyCFunction)(void (*)(void))Input_readlines,
     METH_FASTCALL, "readlines(hint=-1) -> list of lines"},
    {NULL, NULL, 0, NULL},
};

static int
Input_traverse(InputObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->core);
    return 0;
}

static PyType_Slot Input_slots[] = {
    {Py_tp_dealloc, Input_dealloc},
    {Py_tp_traverse, Input_traverse},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, Input_iternext},
    {Py_tp_call, Input_call},
    {Py_tp_methods, Input_methods},
    {Py_tp_doc, "wsgi.input: the request body as a stream"},
    {0, NULL},
};

PyType_Spec ymo_input_spec = {
    .name = "yimmo._yimmo.Input",
    .basicsize = sizeof(InputObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Input_slots,
};
