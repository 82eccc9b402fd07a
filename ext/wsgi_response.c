/* wsgi_response.c - running one exchange on a worker: the app call,
 * start_response and write(), turning the returned iterable into output
 * buckets with the right framing, wsgi.file_wrapper via sendfile, app
 * errors, and close(). GIL held throughout unless stated otherwise.     */
#include "wsgi.h"

#include <structmember.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "ascii.h"
#include "http_response.h"

/* Output is copied into buckets of at least this size, so small writes
 * share one (these come from the server's spares: bucket.h); a list
 * response is posted to the loop in one go up to this many bytes. */
#define BUCKET_MIN YMO_SPARE_BUCKET
#define POST_BATCH (256 * 1024)

/* A bytes object of at least this many bytes is not copied: its bucket
 * points into it and keeps a reference, released once the loop has
 * written it (see bucket.h and ymo_wsgi_release_owners). Below it, a copy
 * into a shared bucket costs less than a bucket and a reference. */
#define ZEROCOPY_MIN (8 * 1024)
/* In a chunked body a referenced chunk also costs a bucket for its CRLF:
 * callgrind counted 8 KB chunks 12% dearer by reference than copied. */
#define ZEROCOPY_MIN_CHUNKED (16 * 1024)

/* start_response for one exchange, and the response's framing state.
 * Lock: the object's own critical section (Py_BEGIN_CRITICAL_SECTION on
 * it), held by every code path that reads or writes the fields below:
 * start_response() and write() (which the app may call from any thread,
 * several at once on a free-threaded build), and the worker's iterate(),
 * finish_response() and fail_response(). It is never held across a call
 * into the app's code (the iterable's next(), close()); like the GIL it
 * is suspended while the thread waits, detached, for the loop
 * (wait_drain), so what a wait may change is re-read after it. With the
 * GIL the critical sections compile to nothing and the GIL covers it. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    ymo_exchange_t *ex;        /* NULL once the exchange has finished */
    struct ymo_wsgi_app *app;  /* part of core */
    PyObject *core;            /* a strong reference to the Core app is
                                * part of while an exchange may use the
                                * object: the app may keep it or its write
                                * callable after the server stopped and
                                * the Server went, and a call then still
                                * reads app (free-threaded: the fork
                                * guard; a write() woken in wait_drain:
                                * the server's release list; C review and
                                * hostile review of 481a78b). NULL while
                                * kept by its worker (spare_sr), which
                                * must not keep its own Core alive.
                                * Visited by traverse, so a cycle through
                                * the Core (an app that keeps its last
                                * traceback) is still collected */
    PyObject *status;          /* from start_response */
    PyObject *headers;         /* a tuple: the checked copy of the app's
                                * list (build_head trusts it) */
    int called;                /* start_response was called */
    int head_built;            /* the head is in the output: "sent" */
    int status_code;
    int no_body;               /* HEAD, 1xx, 204, 304 */
    int chunked;
    int keep_alive;
    int aborted;               /* the client is gone */
    int stopped;               /* none of the app's bytes can go out any
                                * more and the client has shut down its
                                * sending side: the response is complete,
                                * the app is stopped (write() raises
                                * ClientDisconnected, the iterable is
                                * closed), and the connection goes on to
                                * the requests pipelined before */
    int overflow;              /* the app gave more than Content-Length */
    int to_close;              /* YMO_OUT_TO_CLOSE when the head says the
                                * body ends at the close, else 0: posted
                                * with the output (conn_close_cut) */
    int replaced;              /* what went out is the server's error
                                * response (status_code, body_sent), not
                                * the app's: the access log says so */
    int head_req;              /* a HEAD request: count, send no body */
    int head_only;             /* the head is out and no body may follow
                                * it (HEAD of a streamed body, a 1xx, 204
                                * or 304 given body bytes): the rest of
                                * the iterable is not asked for */
    unsigned long long head_count;  /* body bytes a HEAD app produced */
    long long content_length;  /* -1 when not known */
    long long known_length;    /* length of a one-item body, or -1 */
    unsigned long long body_sent;
    int closes;                /* the iterable has close(): the done post
                                * waits for it (finish_response) */
    int held_done;             /* the response is complete: the done
                                * flags to post once close() returned */
    ymo_bucket_t *pend_head;   /* built, not yet posted */
    ymo_bucket_t *pend_tail;
    size_t pend_len;
    int body_whole;            /* the request body was all in and sound
                                * when the exchange began (it stays so:
                                * see build_head); set before the app
                                * runs, then read only */
    PyObject *write;           /* GIL builds: the write callable
                                * start_response returns, made once and
                                * kept with the object (it holds the
                                * object: a cycle, which
                                * start_response_keep and _drop break);
                                * NULL until then */
} StartResponseObject;

/* Hex digits of v at p (a chunk size); returns the count. */
static size_t
put_hex(char *p, size_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = digits[v & 15];
        v >>= 4;
    } while (v != 0);
    for (size_t i = 0; i < n; i++) {
        p[i] = tmp[n - 1 - i];
    }
    return n;
}

/* -- Small helpers -- */

/* The error latin1_view raises, out of its way. */
static void __attribute__((noinline, cold))
not_latin1(PyObject *s, const char *what)
{
    if (!PyUnicode_Check(s)) {
        PyErr_Format(PyExc_TypeError, "%s must be str, not %.100s", what,
                     Py_TYPE(s)->tp_name);
    }
    else {
        PyErr_Format(PyExc_ValueError, "%s is not latin-1: %R", what, s);
    }
}

/* Latin-1 bytes of a str without copying; -1 (ValueError) when it has
 * characters beyond latin-1, or TypeError when not a str. */
static inline int
latin1_view(PyObject *s, const char *what, const char **p, Py_ssize_t *n)
{
    if (!PyUnicode_Check(s) || PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND) {
        not_latin1(s, what);
        return -1;
    }
    *p = (const char *)PyUnicode_DATA(s);
    *n = PyUnicode_GET_LENGTH(s);
    return 0;
}

static const unsigned char is_tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1,
    ['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1,
    ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1,
    ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
    ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1,
    ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1,
    ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
    ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1,
    ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1,
    ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

/* The bytes a status' reason phrase or a header value may not hold: the
 * controls but HTAB, and DEL (RFC 9110 5.5; CR or LF would let the
 * app's data split the response). */
static const unsigned char is_ctl[256] = {
    [0x00] = 1, [0x01] = 1, [0x02] = 1, [0x03] = 1, [0x04] = 1,
    [0x05] = 1, [0x06] = 1, [0x07] = 1, [0x08] = 1, [0x0a] = 1,
    [0x0b] = 1, [0x0c] = 1, [0x0d] = 1, [0x0e] = 1, [0x0f] = 1,
    [0x10] = 1, [0x11] = 1, [0x12] = 1, [0x13] = 1, [0x14] = 1,
    [0x15] = 1, [0x16] = 1, [0x17] = 1, [0x18] = 1, [0x19] = 1,
    [0x1a] = 1, [0x1b] = 1, [0x1c] = 1, [0x1d] = 1, [0x1e] = 1,
    [0x1f] = 1, [0x7f] = 1,
};

/* Does a Connection value list the "close" token? */
static int
has_close_token(const char *v, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) {
            i++;
        }
        Py_ssize_t start = i;
        while (i < n && v[i] != ',' && v[i] != ' ' && v[i] != '\t') {
            i++;
        }
        if (YMO_ASCII_IS(v + start, i - start, "close")) {
            return 1;
        }
    }
    return 0;
}

/* Status "NNN reason": three digits from 200 to 599, a space, then no
 * control bytes. A 1xx status is not a response a WSGI app can send: it
 * would go out as the final answer and leave the real one, or the next
 * request's, to be read as this one's (RFC 9110 15.2). */
static int
check_status(PyObject *status, int *code)
{
    const char *s;
    Py_ssize_t n;
    if (latin1_view(status, "status", &s, &n) < 0) {
        return -1;
    }
    if (n < 4 || s[3] != ' ' || s[0] < '1' || s[0] > '9' || s[1] < '0' ||
        s[1] > '9' || s[2] < '0' || s[2] > '9') {
        PyErr_Format(PyExc_ValueError,
                     "status must look like '200 OK', got %R", status);
        return -1;
    }
    for (Py_ssize_t i = 4; i < n; i++) {
        if (is_ctl[(unsigned char)s[i]]) {
            PyErr_Format(PyExc_ValueError,
                         "control character in status %R", status);
            return -1;
        }
    }
    *code = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
    if (*code < 200 || *code > 599) {
        PyErr_Format(PyExc_ValueError,
                     *code < 200 ? "informational (1xx) status %R: a WSGI "
                                   "app must send a final status"
                                 : "status %R is beyond 599", status);
        return -1;
    }
    return 0;
}

/* Check one (name, value) pair; -1 with ValueError/TypeError. */
static int
check_header(PyObject *item, const char **name, Py_ssize_t *nlen,
             const char **value, Py_ssize_t *vlen)
{
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
        PyErr_Format(PyExc_TypeError,
                     "headers must be (name, value) tuples, got %R", item);
        return -1;
    }
    if (latin1_view(PyTuple_GET_ITEM(item, 0), "header name", name,
                    nlen) < 0 ||
        latin1_view(PyTuple_GET_ITEM(item, 1), "header value", value,
                    vlen) < 0) {
        return -1;
    }
    if (*nlen == 0) {
        PyErr_SetString(PyExc_ValueError, "empty header name");
        return -1;
    }
    /* Eight bytes at a time for the usual names and values; byte by
     * byte, exactly, when that finds a byte it does not vouch for. */
    if (!ymo_ascii_all(*name, (size_t)*nlen, ymo_ascii_name8)) {
        for (Py_ssize_t i = 0; i < *nlen; i++) {
            if (!is_tchar[(unsigned char)(*name)[i]]) {
                PyErr_Format(PyExc_ValueError, "invalid header name %R",
                             PyTuple_GET_ITEM(item, 0));
                return -1;
            }
        }
    }
    if (!ymo_ascii_all(*value, (size_t)*vlen, ymo_ascii_printable8)) {
        for (Py_ssize_t i = 0; i < *vlen; i++) {
            if (is_ctl[(unsigned char)(*value)[i]]) {
                PyErr_Format(PyExc_ValueError,
                             "control character in value of header %R",
                             PyTuple_GET_ITEM(item, 0));
                return -1;
            }
        }
    }
    return 0;
}

/* -- Output -- */

/* Link the bucket b at the end of the pending chain. */
static void
pend_link(StartResponseObject *self, ymo_bucket_t *b)
{
    if (self->pend_tail != NULL) {
        self->pend_tail->next = b;
    }
    else {
        self->pend_head = b;
    }
    self->pend_tail = b;
}

/* Room for n more bytes at the end of the pending chain, in a new bucket
 * of at least `least` bytes when the last one has no room. */
static char *
pend_reserve_in(StartResponseObject *self, size_t n, size_t least)
{
    ymo_bucket_t *b = self->pend_tail;
    if (b == NULL || !ymo_bucket_fits(b, n)) {
        b = ymo_bucket_new_from(self->ex != NULL ? &self->ex->server->spares
                                                 : NULL,
                                n > least ? n : least);
        if (b == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        pend_link(self, b);
    }
    return b->data + b->len;
}

static char *
pend_reserve(StartResponseObject *self, size_t n)
{
    return pend_reserve_in(self, n, BUCKET_MIN);
}

static void
pend_commit(StartResponseObject *self, size_t n)
{
    self->pend_tail->len += n;
    self->pend_len += n;
}

/* Add data[0..n), which lies in the bytes object `owner`, by reference. */
static int
pend_ref(StartResponseObject *self, PyObject *owner, const char *data,
         size_t n)
{
    ymo_bucket_t *b = ymo_bucket_ref(data, n, owner,
                                     &self->ex->server->release);
    if (b == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(owner);
    pend_link(self, b);
    self->pend_len += n;
    return 0;
}

static int
pend_add(StartResponseObject *self, const char *data, size_t n)
{
    char *p = pend_reserve(self, n);
    if (p == NULL) {
        return -1;
    }
    memcpy(p, data, n);
    pend_commit(self, n);
    return 0;
}

/* Wait, GIL released, until the loop has written enough of the output.
 * The caller may be a thread of the app calling write() while the worker
 * finishes the exchange: a reference keeps the exchange alive meanwhile,
 * and the final post wakes the wait. */
static void
wait_drain(StartResponseObject *self)
{
    ymo_exchange_t *ex = self->ex;
    size_t low = ex->server->config.out_high_water / 2;
    YMO_FORK_GUARD(ex->server);
    int stop;
    ymo_exchange_retain(ex);
    Py_BEGIN_ALLOW_THREADS
    stop = ymo_exchange_wait_drain(ex, low);
    Py_END_ALLOW_THREADS
    /* The loop has written most of it: let go of what it is done with. */
    ymo_wsgi_release_owners(ex->server);
    ymo_exchange_release(ex);
    if (stop) {
        self->aborted = 1;
    }
}

/* Hand the pending output to the loop (with `done` flags, the last). */
static void
post(StartResponseObject *self, int done)
{
    if (self->ex != NULL) {
        /* What the loop has written of this response (or of others) so
         * far: a long streamed body must not keep all its items alive
         * until it ends. */
        ymo_wsgi_release_owners(self->ex->server);
    }
    ymo_bucket_t *chain = self->pend_head;
    self->pend_head = self->pend_tail = NULL;
    self->pend_len = 0;
    if (chain == NULL && !done) {
        return;
    }
    if (self->ex == NULL || self->held_done) {
        /* Finished meanwhile (a write() from a thread of the app while
         * the worker completed the response, or while it runs close()). */
        ymo_wsgi_free_chain(chain);
        self->aborted = 1;
        return;
    }
    /* Whole: every byte is in, though the app may run on (see the
     * watchdog's cut). */
    int whole = self->head_built && !self->overflow &&
                        (self->no_body ||
                         (self->content_length >= 0 &&
                          self->body_sent ==
                              (unsigned long long)self->content_length))
                    ? YMO_OUT_WHOLE
                    : 0;
    int r = ymo_wsgi_worker_response_body_append(self->ex, chain,
                                                 done | self->to_close |
                                                     whole);
    if (done & YMO_DONE) {
        self->ex = NULL;        /* the loop's now */
        return;
    }
    if (done & YMO_OUT_COMPLETE) {
        return;                 /* no wait: the worker goes on to close() */
    }
    if (r & YMO_OUT_ABORTED) {
        self->aborted = 1;
    }
    else if (r & YMO_OUT_HIGH_WATER) {
        wait_drain(self);
    }
}

/* Build the status line and headers into the pending output, deciding
 * the framing. `extra` is a hint of body bytes about to follow. */
static int
build_head(StartResponseObject *self, size_t extra)
{
    ymo_exchange_t *ex = self->ex;
    YMO_FORK_GUARD(ex->server);
    const ymo_http_request_t *req = &ex->req;
    const char *s;
    Py_ssize_t slen;
    if (latin1_view(self->status, "status", &s, &slen) < 0) {
        return -1;
    }
    Py_ssize_t nh = PyTuple_GET_SIZE(self->headers);
    size_t size = 9 + (size_t)slen + 2 + 160;
    for (Py_ssize_t i = 0; i < nh; i++) {
        PyObject *item = PyTuple_GET_ITEM(self->headers, i);
        size += (size_t)PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(item, 0)) +
                (size_t)PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(item, 1)) + 4;
    }
    char *p = pend_reserve(self, size + (extra < POST_BATCH ? extra : 0));
    if (p == NULL) {
        return -1;
    }
    char *start = p;
    memcpy(p, "HTTP/1.1 ", 9);
    p += 9;
    memcpy(p, s, (size_t)slen);
    p += slen;
    *p++ = '\r';
    *p++ = '\n';
    int code = self->status_code;
    /* RFC 9110 8.6: no Content-Length in a 1xx or 204 response (the app's
     * is dropped; it has no body either way). A 205 has no content either
     * (RFC 9110 15.3.6), but its status does not say so to a client (RFC
     * 9112 6.3): the app's field gives way to "0", below (hostile review
     * s24: a 205 went out with the app's body). */
    int no_length = code < 200 || code == 204 || code == 205;
    int app_close = 0, has_date = 0, has_server = 0, cl_written = 0;
    for (Py_ssize_t i = 0; i < nh; i++) {
        /* Checked by start_response; the tuple is our own copy, and
         * neither it nor its tuples and strings can change. */
        PyObject *item = PyTuple_GET_ITEM(self->headers, i);
        PyObject *n_obj = PyTuple_GET_ITEM(item, 0);
        PyObject *v_obj = PyTuple_GET_ITEM(item, 1);
        const char *name = (const char *)PyUnicode_DATA(n_obj);
        const char *value = (const char *)PyUnicode_DATA(v_obj);
        Py_ssize_t nlen = PyUnicode_GET_LENGTH(n_obj);
        Py_ssize_t vlen = PyUnicode_GET_LENGTH(v_obj);
        if (YMO_ASCII_IS(name, nlen, "connection")) {
            /* Hop-by-hop: the server manages it; honour a close. */
            app_close |= has_close_token(value, vlen);
            continue;
        }
        if (YMO_ASCII_IS(name, nlen, "content-length")) {
            /* Once, as the number start_response read: the app's fields
             * "5" and "05" both went out, which a strict recipient
             * refuses as two lengths (hostile review s20). Never longer
             * than the app's field, which the size counted. */
            if (!no_length && !cl_written) {
                memcpy(p, "Content-Length: ", 16);
                p += 16;
                p += ymo_put_decimal(
                    p, (unsigned long long)self->content_length);
                *p++ = '\r';
                *p++ = '\n';
                cl_written = 1;
            }
            continue;
        }
        if (YMO_ASCII_IS(name, nlen, "date")) {
            has_date = 1;
        }
        else if (YMO_ASCII_IS(name, nlen, "server")) {
            has_server = 1;
        }
        memcpy(p, name, (size_t)nlen);
        p += nlen;
        *p++ = ':';
        *p++ = ' ';
        memcpy(p, value, (size_t)vlen);
        p += vlen;
        *p++ = '\r';
        *p++ = '\n';
    }
    if (!has_date) {
        size_t n;
        const char *line = ymo_http_date_header(&n);
        memcpy(p, line, n);
        p += n;
    }
    if (!has_server) {
        memcpy(p, "Server: yimmo\r\n", 15);
        p += 15;
    }
    self->no_body = self->head_req || code < 200 || code == 204 ||
                    code == 205 || code == 304;
    int keep = req->keep_alive && !atomic_load(&ex->server->draining) &&
               ex->server->config.keepalive_timeout > 0 && !app_close;
    /* A request body not fully received by now cannot be told apart from
     * the next request unless it is read to its end: do not reuse. A body
     * that was whole when the exchange began (no body at all, most
     * often) still is: in_done is never unset, and in_error is set only
     * while in_done is not. */
    if (!self->body_whole) {
        pthread_mutex_lock(&ex->lock);
        if (!ex->in_done || ex->in_error != 0) {
            keep = 0;
        }
        pthread_mutex_unlock(&ex->lock);
    }
    if (code == 205) {
        memcpy(p, "Content-Length: 0\r\n", 19);
        p += 19;
    }
    else if (self->content_length < 0 && self->known_length >= 0 &&
             !(code < 200 || code == 204 || code == 304)) {
        self->content_length = self->known_length;
        memcpy(p, "Content-Length: ", 16);
        p += 16;
        p += ymo_put_decimal(p, (unsigned long long)self->content_length);
        *p++ = '\r';
        *p++ = '\n';
    }
    else if (self->content_length < 0 && !self->no_body) {
        if (req->minor_version >= 1) {
            self->chunked = 1;
            memcpy(p, "Transfer-Encoding: chunked\r\n", 28);
            p += 28;
        }
        else {
            keep = 0;           /* the end of the body is the close */
            self->to_close = YMO_OUT_TO_CLOSE;
        }
    }
    if (!keep) {
        memcpy(p, "Connection: close\r\n", 19);
        p += 19;
    }
    else if (req->minor_version == 0) {
        memcpy(p, "Connection: keep-alive\r\n", 24);
        p += 24;
    }
    *p++ = '\r';
    *p++ = '\n';
    pend_commit(self, (size_t)(p - start));
    self->keep_alive = keep;
    self->head_built = 1;
    return 0;
}

/* -- Owners of reference buckets -- */

void
ymo_wsgi_free_chain(ymo_bucket_t *b)
{
    while (b != NULL) {
        ymo_bucket_t *next = b->next;
        if (b->owner != NULL) {
            /* An exact bytes object: its release runs no Python code. */
            Py_DECREF((PyObject *)b->owner);
            ymo_bucket_free_taken(b);
        }
        else {
            ymo_bucket_free(b);
        }
        b = next;
    }
}

void
ymo_wsgi_release_owners(ymo_server_t *s)
{
    ymo_wsgi_free_chain(ymo_release_take(&s->release));
}

/* One record of s->answered (see ymo_answer_t) to app->log_answer. */
static void
log_answer(struct ymo_wsgi_app *app, const ymo_bucket_t *b)
{
    ymo_answer_t a;
    memcpy(&a, b->data, sizeof(a));
    PyObject *head = PyBytes_FromStringAndSize(b->data + sizeof(a),
                                               (Py_ssize_t)a.head_len);
    PyObject *addr = PyUnicode_DecodeASCII(a.remote_addr,
                                           (Py_ssize_t)strlen(a.remote_addr),
                                           NULL);
    PyObject *port = PyLong_FromLong(a.remote_port);
    PyObject *status = PyLong_FromLong(a.status);
    PyObject *len = PyLong_FromSize_t(a.body_len);
    PyObject *at = PyFloat_FromDouble(a.at);
    if (head != NULL && addr != NULL && port != NULL && status != NULL &&
        len != NULL && at != NULL) {
        PyObject *args[6] = {head, addr, port, status, len, at};
        PyObject *r = PyObject_Vectorcall(app->log_answer, args, 6, NULL);
        YMO_FORK_GUARD(app->server);
        if (r == NULL) {
            PyErr_WriteUnraisable(app->log_answer);
        }
        Py_XDECREF(r);
    }
    else {
        PyErr_Clear();
    }
    Py_XDECREF(head);
    Py_XDECREF(addr);
    Py_XDECREF(port);
    Py_XDECREF(status);
    Py_XDECREF(len);
    Py_XDECREF(at);
}

/* A response the loop cut because its file ended early: one WARNING
 * line, as for an app's body shorter than its Content-Length (the access
 * line, written when the app was done, counted the whole file). */
static void
log_short_file(struct ymo_wsgi_app *app, const ymo_answer_t *a,
               const char *line)
{
    /* The request line of a dispatched request: parsed, so printable
     * (latin-1, as the environ reads it). */
    const char *end = line + a->head_len;
    const char *sp = memchr(line, ' ', a->head_len);
    const char *uri = sp != NULL ? sp + 1 : end;
    const char *sp2 = memchr(uri, ' ', (size_t)(end - uri));
    PyObject *method = PyUnicode_DecodeLatin1(
        line, sp != NULL ? sp - line : 0, NULL);
    PyObject *target = PyUnicode_DecodeLatin1(
        uri, (sp2 != NULL ? sp2 : end) - uri, NULL);
    PyObject *msg = method == NULL || target == NULL ? NULL
        : PyUnicode_FromFormat(
              "response body shorter than its Content-Length: its file "
              "ended %llu bytes early (changed while being sent?), "
              "connection closed: %U %U", a->missing, method, target);
    Py_XDECREF(method);
    Py_XDECREF(target);
    if (msg == NULL) {
        PyErr_Clear();
        return;
    }
    ymo_wsgi_log_warning(app, msg);
    Py_DECREF(msg);
}

void
ymo_wsgi_log_answers(ymo_server_t *s, int all)
{
    struct ymo_wsgi_app *app = s->app;
    do {
        /* What the loop pushed since (newest first) goes behind what
         * waits, oldest first; then a batch off the front. */
        ymo_bucket_t *batch = NULL;
        int n = 0;
        pthread_mutex_lock(&s->answers_lock);
        ymo_bucket_t *b = ymo_release_take(&s->answered);
        ymo_bucket_t *oldest = NULL, *last = b;
        while (b != NULL) {
            ymo_bucket_t *next = b->next;
            b->next = oldest;
            oldest = b;
            b = next;
        }
        if (oldest != NULL) {
            if (s->answers_tail != NULL) {
                s->answers_tail->next = oldest;
            }
            else {
                s->answers_head = oldest;
            }
            s->answers_tail = last;
        }
        batch = s->answers_head;
        ymo_bucket_t *end = batch;
        n = batch != NULL;
        for (; end != NULL && end->next != NULL && n < YMO_ANSWERS_BATCH;
             n++) {
            end = end->next;
        }
        if (end != NULL) {
            s->answers_head = end->next;
            end->next = NULL;
        }
        else {
            s->answers_head = NULL;
        }
        if (s->answers_head == NULL) {
            s->answers_tail = NULL;
        }
        /* Taken: with the lock, so that an idle worker never sees records
         * owed that none can take (it would spin in worker_main while
         * this batch is logged). */
        atomic_fetch_sub(&s->answers_waiting, n);
        atomic_fetch_add(&s->answers_logging, n);
        pthread_mutex_unlock(&s->answers_lock);
        if (batch == NULL) {
            break;
        }
        for (b = batch; b != NULL;) {
            ymo_bucket_t *next = b->next;
            ymo_answer_t a;
            memcpy(&a, b->data, sizeof(a));
            if (a.kind == YMO_ANSWER_SHORT_FILE) {
                log_short_file(app, &a, b->data + sizeof(a));
            }
            else if (app->log_answer != NULL) {
                log_answer(app, b);
            }
            ymo_bucket_free(b);
            atomic_fetch_sub(&s->answers_logging, 1);
            b = next;
        }
    } while (all);
    unsigned long dropped = atomic_exchange(&s->answers_dropped, 0);
    if (dropped > 0) {
        PyObject *msg = PyUnicode_FromFormat(
            "%lu request(s) the server answered itself (a malformed "
            "request, an overload) or cut short have no log line: more "
            "than %d waited for a worker to log them, or there was no "
            "memory",
            dropped, YMO_ANSWERS_MAX);
        if (msg == NULL) {
            PyErr_Clear();
            return;
        }
        ymo_wsgi_log_warning(app, msg);
        Py_DECREF(msg);
    }
}

unsigned long
ymo_wsgi_discard_answers(ymo_server_t *s)
{
    pthread_mutex_lock(&s->answers_lock);
    ymo_bucket_t *stack = ymo_release_take(&s->answered);
    ymo_bucket_t *queue = s->answers_head;
    s->answers_head = s->answers_tail = NULL;
    unsigned long n = 0;
    for (ymo_bucket_t *b = stack; b != NULL; b = b->next) {
        n++;
    }
    for (ymo_bucket_t *b = queue; b != NULL; b = b->next) {
        n++;
    }
    atomic_fetch_sub(&s->answers_waiting, (int)n);
    pthread_mutex_unlock(&s->answers_lock);
    ymo_bucket_free_chain(stack);
    ymo_bucket_free_chain(queue);
    return n + atomic_exchange(&s->answers_dropped, 0);
}

/* HEAD: send the head now and stop producing the body (see emit). */
static void
head_now(StartResponseObject *self)
{
    if (build_head(self, 0) < 0) {
        return;
    }
    self->head_only = 1;
    post(self, 0);
}

/* Add body bytes (framed as needed) to the pending output; post when
 * `flush` or when enough has gathered. `owner`, when not NULL, is an
 * exact bytes object holding data[0..n): a big one is sent from where it
 * is rather than copied. */
static int
emit(StartResponseObject *self, const char *data, size_t n, int flush,
     PyObject *owner)
{
    if (self->head_req && !self->head_built) {
        if (!flush) {
            /* HEAD gets the headers GET would get: the Content-Length of
             * a list body is counted (it is all there already). */
            self->head_count += n;
            return 0;
        }
        /* A streamed body (an iterable, write()) would tell its length
         * only at its end, which may never come (server-sent events).
         * RFC 9110 9.3.2 lets a HEAD response leave out what only the
         * body would tell: the head goes out now, and no more of the
         * body is asked for. */
        head_now(self);
        return self->head_built ? 0 : -1;
    }
    int by_ref = owner != NULL && n >= ZEROCOPY_MIN && self->ex != NULL;
    /* The head's bucket has room for a body that will be copied after
     * it, not for one sent by reference. */
    if (!self->head_built && build_head(self, by_ref ? 32 : n) < 0) {
        return -1;
    }
    if (self->no_body || self->aborted || self->overflow) {
        if (n > 0 && !self->aborted && !self->stopped && self->ex != NULL) {
            /* None of it goes out, so no append tells this writer that
             * the client has gone: a write() loop or a generator behind
             * a HEAD, a 204/304 or a reached Content-Length went on for
             * ever for a client long gone (hostile review s20). A client
             * that only shut down its sending side may still wait for
             * answers to requests it pipelined: the response ends as if
             * the app had (stopped), rather than aborted. */
            ymo_exchange_t *ex = self->ex;
            pthread_mutex_lock(&ex->lock);
            int gone = ex->aborted, eof = ex->client_eof;
            pthread_mutex_unlock(&ex->lock);
            if (gone) {
                self->aborted = 1;
            }
            else if (eof) {
                self->stopped = 1;
            }
        }
        if (n > 0 && self->no_body) {
            /* None of an iterable's further bytes could go out either:
             * it is not asked for them, as for a HEAD (head_now). A 304
             * whose body was an endless generator ran until --timeout
             * (hostile review s24). */
            self->head_only = 1;
        }
        n = 0;
    }
    if (self->content_length >= 0 &&
        self->body_sent + n > (unsigned long long)self->content_length) {
        /* Never more bytes than the Content-Length the app declared. */
        n = (size_t)((unsigned long long)self->content_length
                     - self->body_sent);
        self->overflow = 1;
    }
    /* (n may have been cut; chunks have a threshold of their own) */
    by_ref = by_ref && n >= (self->chunked ? ZEROCOPY_MIN_CHUNKED
                                           : ZEROCOPY_MIN);
    if (n > 0) {
        if (self->chunked) {
            char size_line[24];
            size_t k = put_hex(size_line, n);
            size_line[k++] = '\r';
            size_line[k++] = '\n';
            if (by_ref) {
                /* Three pieces, all or none: a write() that fails with
                 * MemoryError must leave no part of a chunk behind, as
                 * the app may catch it and go on writing. */
                ymo_bucket_t *tail = self->pend_tail;
                size_t tail_len = tail != NULL ? tail->len : 0;
                size_t pend_len = self->pend_len;
                char *crlf = NULL;
                if (pend_add(self, size_line, k) == 0 &&
                    pend_ref(self, owner, data, n) == 0) {
                    /* The chunk's CRLF, and the next one's size line if
                     * it is referenced too, in a small bucket: a 4 KB one
                     * per chunk (malloc'd past the small-size caches) cost
                     * more than the copy saved for chunks of about 8 KB. */
                    crlf = pend_reserve_in(self, 2, 32);
                }
                if (crlf == NULL) {
                    ymo_bucket_t **rest = tail != NULL ? &tail->next
                                                       : &self->pend_head;
                    ymo_wsgi_free_chain(*rest);
                    *rest = NULL;
                    if (tail != NULL) {
                        tail->len = tail_len;
                    }
                    self->pend_tail = tail;
                    self->pend_len = pend_len;
                    return -1;
                }
                memcpy(crlf, "\r\n", 2);
                pend_commit(self, 2);
                self->body_sent += n;
                goto posted;
            }
            char *p = pend_reserve(self, k + n + 2);
            if (p == NULL) {
                return -1;
            }
            memcpy(p, size_line, k);
            memcpy(p + k, data, n);
            memcpy(p + k + n, "\r\n", 2);
            pend_commit(self, k + n + 2);
        }
        else if (by_ref ? pend_ref(self, owner, data, n) < 0
                        : pend_add(self, data, n) < 0) {
            return -1;
        }
        self->body_sent += n;
    }
posted:
    if (flush || self->pend_len >= POST_BATCH) {
        post(self, 0);
    }
    return 0;
}

/* One item of the app's iterable. Caller holds self's critical
 * section. */
static int
emit_item_locked(StartResponseObject *self, PyObject *item, int flush)
{
    if (!PyBytes_Check(item)) {
        PyErr_Format(PyExc_TypeError,
                     "response body items must be bytes, not %.100s",
                     Py_TYPE(item)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(item);
    if (n == 0) {
        return 0;               /* empty chunks would end a chunked body */
    }
    if (!self->called) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the app sent body data before calling "
                        "start_response");
        return -1;
    }
    return emit(self, PyBytes_AS_STRING(item), (size_t)n, flush,
                PyBytes_CheckExact(item) ? item : NULL);
}

/* emit_item_locked under self's critical section (the worker's path:
 * an app thread may call write() or start_response() meanwhile). */
static int
emit_item(StartResponseObject *self, PyObject *item, int flush)
{
    int r;
    YMO_FORK_GUARD_FT(self->app->server);  /* before the critical section */
    Py_BEGIN_CRITICAL_SECTION(self);
    r = emit_item_locked(self, item, flush);
    Py_END_CRITICAL_SECTION();
    return r;
}

/* -- start_response and write -- */

static PyObject *
write_locked(StartResponseObject *self, PyObject *data)
{
    if (!self->called) {
        PyErr_SetString(PyExc_RuntimeError,
                        "write() before start_response()");
        return NULL;
    }
    if (self->ex == NULL || self->held_done) {
        PyErr_SetString(PyExc_RuntimeError,
                        "write() after the response has finished");
        return NULL;
    }
    if (!PyBytes_Check(data)) {
        PyErr_Format(PyExc_TypeError, "write() takes bytes, not %.100s",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    if (self->aborted || self->stopped) {
        PyErr_SetString(self->app->st->ClientDisconnected,
                        "client disconnected");
        return NULL;
    }
    if (emit(self, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data),
             1, PyBytes_CheckExact(data) ? data : NULL) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
StartResponse_write(StartResponseObject *self, PyObject *data)
{
    PyObject *r;
    YMO_FORK_GUARD_FT(self->app->server);  /* before the critical section */
    Py_BEGIN_CRITICAL_SECTION(self);
    r = write_locked(self, data);
    Py_END_CRITICAL_SECTION();
    return r;
}

static PyMethodDef write_def = {
    "write", (PyCFunction)StartResponse_write, METH_O,
    "write(data): send bytes now (the PEP 3333 write callable)",
};

/* start_response with exc_info once the head is out: too late to change
 * the response, so exc_info is re-raised (PEP 3333), as PEP 3333's
 * `raise exc_info[1].with_traceback(exc_info[2])`: the value itself,
 * whatever class the triple names (restored with that class, CPython
 * 3.12+ raised a new exception of it wrapping the value: an app's
 * `except ValueError` missed it). Returns NULL. */
static PyObject *
reraise_exc_info(PyObject *exc_info)
{
    if (!PyTuple_Check(exc_info) || PyTuple_GET_SIZE(exc_info) != 3) {
        PyErr_SetString(PyExc_TypeError, "exc_info must be a 3-tuple");
        return NULL;
    }
    PyObject *t = PyTuple_GET_ITEM(exc_info, 0);
    PyObject *v = PyTuple_GET_ITEM(exc_info, 1);
    PyObject *tb = PyTuple_GET_ITEM(exc_info, 2);
    if (!PyExceptionClass_Check(t) || !PyExceptionInstance_Check(v) ||
        (tb != Py_None && !PyTraceBack_Check(tb))) {
        /* (None, None, None) is what sys.exc_info() gives outside an
         * except block. */
        PyErr_Format(PyExc_TypeError,
                     "exc_info must be an exception triple, got %R",
                     exc_info);
        return NULL;
    }
    /* None too: with_traceback(None) clears the traceback the value had
     * (C review s18). */
    if (PyException_SetTraceback(v, tb) < 0) {
        return NULL;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(v), v);
    return NULL;
}

/* Is this call refused by the state start_response is in? NULL with an
 * exception set when it is (or exc_info re-raised), Py_None (borrowed)
 * when it may go on. */
static PyObject *
start_response_refused(StartResponseObject *self, PyObject *exc_info)
{
    if (self->ex == NULL) {
        /* Kept by the app and called after its exchange: nothing it says
         * can reach a client any more, and accepting it in silence hid
         * the mistake until the write callable was used (hostile review
         * of 481a78b). */
        PyErr_SetString(PyExc_RuntimeError,
                        "start_response() after the response has finished");
        return NULL;
    }
    if (exc_info != Py_None) {
        if (self->head_built) {
            return reraise_exc_info(exc_info);
        }
    }
    else if (self->called) {
        PyErr_SetString(PyExc_RuntimeError,
                        "start_response() called again without exc_info");
        return NULL;
    }
    return Py_None;
}

static PyObject *
start_response(StartResponseObject *self, PyObject *status,
               PyObject *headers, PyObject *exc_info)
{
    if (start_response_refused(self, exc_info) == NULL) {
        return NULL;
    }
    if (!PyList_Check(headers)) {
        PyErr_Format(PyExc_TypeError, "headers must be a list, not %.100s",
                     Py_TYPE(headers)->tp_name);
        return NULL;
    }
    int code;
    if (check_status(status, &code) < 0) {
        return NULL;
    }
    /* A copy, made first and then checked: the app may change its list
     * after the call, or (free-threaded) from another thread during it;
     * PyList_AsTuple takes the list's own critical section. Even a list
     * whose only reference is the call's may be the app's: the one in a
     * tuple passed as start_response(*args), or in a functools.partial,
     * has a reference count of 1 too. A tuple, not a list: the copy is
     * reachable too (gc.get_referrers of a header tuple, get_referents of
     * start_response), and a list could be changed after the checks
     * (C review of 481a78b: an item that was not a tuple crashed
     * build_head, a value with CR LF split the response). */
    PyObject *copy = PyList_AsTuple(headers);
    if (copy == NULL) {
        return NULL;
    }
    headers = copy;
    long long cl = -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(headers); i++) {
        const char *name, *value;
        Py_ssize_t nlen, vlen;
        if (check_header(PyTuple_GET_ITEM(headers, i), &name, &nlen, &value,
                         &vlen) < 0) {
            Py_DECREF(copy);
            return NULL;
        }
        if (YMO_ASCII_IS(name, nlen, "content-length")) {
            long long v = 0;
            if (vlen == 0 || vlen > 18) {
                goto bad_length;
            }
            for (Py_ssize_t k = 0; k < vlen; k++) {
                if (value[k] < '0' || value[k] > '9') {
                    goto bad_length;
                }
                v = v * 10 + (value[k] - '0');
            }
            if (cl >= 0 && cl != v) {
                goto bad_length;
            }
            cl = v;
            continue;
bad_length:
            PyErr_Format(PyExc_ValueError, "bad Content-Length %R",
                         PyTuple_GET_ITEM(PyTuple_GET_ITEM(headers, i), 1));
            Py_DECREF(copy);
            return NULL;
        }
        if (YMO_ASCII_IS(name, nlen, "transfer-encoding") ||
            YMO_ASCII_IS(name, nlen, "keep-alive") ||
            YMO_ASCII_IS(name, nlen, "upgrade") ||
            YMO_ASCII_IS(name, nlen, "proxy-connection") ||
            YMO_ASCII_IS(name, nlen, "te") ||
            YMO_ASCII_IS(name, nlen, "trailer")) {
            PyErr_Format(PyExc_ValueError,
                         "hop-by-hop header %R is the server's business "
                         "(PEP 3333)", PyTuple_GET_ITEM(
                             PyTuple_GET_ITEM(headers, i), 0));
            Py_DECREF(copy);
            return NULL;
        }
    }
    /* The write callable before the commit, which must not fail after
     * (C review of 481a78b: a MemoryError here left the call half done,
     * its status sent and a retry refused as a second call). One for
     * the life of the object, which a worker reuses from exchange to
     * exchange (start_response_keep): making and freeing a bound method
     * for every request cost about 200 instructions; on a free-threaded
     * build one per call. */
    PyObject *write;
#ifndef Py_GIL_DISABLED
    if (self->ex != NULL && self->write != NULL) {
        write = Py_NewRef(self->write);
    }
    else
#endif
    {
        write = PyCFunction_New(&write_def, (PyObject *)self);
        if (write == NULL) {
            Py_DECREF(copy);
            return NULL;
        }
    }
    /* Asked again: copying the list took its lock, and waiting for it
     * (free-threaded: another thread of the app changing the list)
     * suspends self's critical section, so a start_response() on another
     * thread, or the worker building the head, may have run meanwhile;
     * with the GIL, the allocations may have run a collection and the
     * app's finalizers. From here to the commit nothing can suspend it:
     * the old values are released only after. */
    if (start_response_refused(self, exc_info) == NULL) {
        Py_DECREF(write);
        Py_DECREF(copy);
        return NULL;
    }
    PyObject *old_status = self->status;
    PyObject *old_headers = self->headers;
    self->status = Py_NewRef(status);
    self->headers = copy;
    self->status_code = code;
    self->content_length = cl;
    self->called = 1;
    Py_XDECREF(old_status);
    Py_XDECREF(old_headers);
#ifndef Py_GIL_DISABLED
    /* Kept only while the exchange runs, looked at after whatever could
     * run the app's code above (the releases; the allocation's
     * collection): the worker cuts the cycle at the exchange's end
     * (start_response_keep), and for a call after it (a start_response
     * the app kept) no one would but the GIL. */
    if (self->ex != NULL && self->write == NULL) {
        self->write = Py_NewRef(write);
    }
#endif
    return write;
}

/* start_response(status, headers, exc_info=None), called once per request:
 * vectorcall spares it building an args tuple and parsing it. */
static PyObject *
StartResponse_vectorcall(PyObject *callable, PyObject *const *args,
                         size_t nargsf, PyObject *kwnames)
{
    static const char *const names[] = {"status", "headers", "exc_info"};
    PyObject *vals[3] = {NULL, NULL, Py_None};
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs > 3) {
        goto usage;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        vals[i] = args[i];
    }
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        Py_ssize_t i = 0;
        while (i < 3 && PyUnicode_CompareWithASCIIString(key, names[i]) != 0) {
            i++;
        }
        if (i == 3 || i < nargs) {
            goto usage;
        }
        vals[i] = args[nargs + k];
    }
    if (vals[0] == NULL || vals[1] == NULL) {
        goto usage;
    }
    PyObject *r;
    Py_BEGIN_CRITICAL_SECTION(callable);
    r = start_response((StartResponseObject *)callable, vals[0], vals[1],
                       vals[2]);
    Py_END_CRITICAL_SECTION();
    return r;
usage:
    PyErr_SetString(PyExc_TypeError,
                    "start_response(status, headers, exc_info=None)");
    return NULL;
}

static PyMemberDef StartResponse_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET,
     offsetof(StartResponseObject, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static int
StartResponse_traverse(StartResponseObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->status);
    Py_VISIT(self->headers);
    Py_VISIT(self->write);
    Py_VISIT(self->core);
    return 0;
}

static int
StartResponse_clear(StartResponseObject *self)
{
    Py_CLEAR(self->status);
    Py_CLEAR(self->headers);
    Py_CLEAR(self->write);
    return 0;
}

static void
StartResponse_dealloc(StartResponseObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject *core = self->core;
    PyObject_GC_UnTrack(self);
    StartResponse_clear(self);
    ymo_wsgi_free_chain(self->pend_head);
    tp->tp_free(self);
    Py_DECREF(tp);
    /* Last: what was pending may have been the server's memory. Not in
     * tp_clear: in a cycle through the Core, Core_clear breaks it, and
     * the Core's memory goes after this. */
    Py_XDECREF(core);
}

static PyType_Slot StartResponse_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_members, StartResponse_members},
    {Py_tp_traverse, StartResponse_traverse},
    {Py_tp_clear, StartResponse_clear},
    {Py_tp_dealloc, StartResponse_dealloc},
    {Py_tp_doc, "start_response(status, headers, exc_info=None)"},
    {0, NULL},
};

PyType_Spec ymo_start_response_spec = {
    .name = "yimmo._yimmo.StartResponse",
    .basicsize = sizeof(StartResponseObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC |
             Py_TPFLAGS_DISALLOW_INSTANTIATION | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = StartResponse_slots,
};

/* -- wsgi.file_wrapper -- */

/* Immutable once made: filelike and blksize are set by FileWrapper_new
 * and cleared only by tp_clear/dealloc, when no thread can reach the
 * object any more; so no lock. Two threads iterating one wrapper at once
 * call filelike.read() at once: the file object's own lock (io's) covers
 * that, as it would for the file itself. */

static PyObject *
FileWrapper_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"filelike", "blksize", NULL};
    PyObject *filelike;
    Py_ssize_t blksize = 8192;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|n:file_wrapper",
                                     kwlist, &filelike, &blksize)) {
        return NULL;
    }
    if (blksize <= 0) {
        PyErr_SetString(PyExc_ValueError, "blksize must be positive");
        return NULL;
    }
    ymo_file_wrapper_t *self = (ymo_file_wrapper_t *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->filelike = Py_NewRef(filelike);
    self->blksize = blksize;
    return (PyObject *)self;
}

static PyObject *
FileWrapper_iternext(ymo_file_wrapper_t *self)
{
    PyObject *data = PyObject_CallMethod(self->filelike, "read", "n",
                                         self->blksize);
    if (data == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyObject_Length(data);
    if (n <= 0) {
        Py_DECREF(data);
        return NULL;            /* the end, or the error set */
    }
    return data;
}

static PyObject *
FileWrapper_close(ymo_file_wrapper_t *self, PyObject *unused)
{
    (void)unused;
    if (PyObject_HasAttrString(self->filelike, "close")) {
        return PyObject_CallMethod(self->filelike, "close", NULL);
    }
    Py_RETURN_NONE;
}

static int
FileWrapper_traverse(ymo_file_wrapper_t *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->filelike);
    return 0;
}

static int
FileWrapper_clear(ymo_file_wrapper_t *self)
{
    Py_CLEAR(self->filelike);
    return 0;
}

static void
FileWrapper_dealloc(ymo_file_wrapper_t *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    FileWrapper_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef FileWrapper_methods[] = {
    {"close", (PyCFunction)FileWrapper_close, METH_NOARGS,
     "close the wrapped file"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot FileWrapper_slots[] = {
    {Py_tp_new, FileWrapper_new},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, FileWrapper_iternext},
    {Py_tp_methods, FileWrapper_methods},
    {Py_tp_traverse, FileWrapper_traverse},
    {Py_tp_clear, FileWrapper_clear},
    {Py_tp_dealloc, FileWrapper_dealloc},
    {Py_tp_doc, "wsgi.file_wrapper(filelike, blksize=8192): a file sent "
                "with sendfile(2) when it is a regular file"},
    {0, NULL},
};

PyType_Spec ymo_file_wrapper_spec = {
    .name = "yimmo._yimmo.FileWrapper",
    .basicsize = sizeof(ymo_file_wrapper_t),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = FileWrapper_slots,
};

/* Does the file's size say how much a read would give? Not for size 0
 * (procfs reports 0 for files full of text) nor on pseudo file systems
 * whose sizes are placeholders (sysfs reports 4096): those are read. */
static int
size_trusted(int fd, const struct stat *sb)
{
    if (sb->st_size == 0) {
        return 0;
    }
    struct statfs fs;
    if (fstatfs(fd, &fs) < 0) {
        return 0;
    }
    switch ((unsigned long)fs.f_type) {
    case 0x9fa0:        /* PROC_SUPER_MAGIC */
    case 0x62656572:    /* SYSFS_MAGIC */
    case 0x64626720:    /* DEBUGFS_MAGIC */
    case 0x74726163:    /* TRACEFS_MAGIC */
    case 0x27e0eb:      /* CGROUP_SUPER_MAGIC */
    case 0x63677270:    /* CGROUP2_SUPER_MAGIC */
        return 0;
    default:
        return 1;
    }
}

/* Does the file's read() give the bytes of its descriptor? Only open()'s
 * binary files (the exact types, not a subclass that may override read).
 * A wrapper that passes on fileno() of the file under it -- gzip, bz2 and
 * lzma files (their fileno() is the compressed file's), a text-mode file
 * (its read() gives decoded str) -- is iterated, as PEP 3333 says the
 * file wrapper must mean; sent with sendfile, the client got the
 * compressed bytes (hostile review s20). */
static int
reads_its_descriptor(ymo_module_state *st, PyObject *f)
{
    PyObject *type = (PyObject *)Py_TYPE(f);
    if (type == st->io_fileio) {
        return 1;
    }
    if (type != st->io_buffered_reader && type != st->io_buffered_random) {
        return 0;
    }
    PyObject *raw = PyObject_GetAttr(f, st->s_raw);     /* a C getter */
    int ok = raw != NULL && (PyObject *)Py_TYPE(raw) == st->io_fileio;
    Py_XDECREF(raw);
    PyErr_Clear();
    return ok;
}

/* Send a FileWrapper around a regular file with sendfile(2), from the
 * file's current position. Returns 1 when done that way, 0 when the caller
 * should iterate instead, -1 on error. */
static int
send_file(StartResponseObject *self, ymo_file_wrapper_t *fw)
{
    ymo_module_state *st = self->app->st;
    if (!self->called || self->head_built ||
        !reads_its_descriptor(st, fw->filelike)) {
        return 0;
    }
    PyObject *r = PyObject_CallMethodNoArgs(fw->filelike, st->s_fileno);
    if (r == NULL) {
        PyErr_Clear();          /* not a real file: iterate */
        return 0;
    }
    long lfd = PyLong_AsLong(r);
    Py_DECREF(r);
    if (lfd < 0 || lfd > INT_MAX || PyErr_Occurred()) {
        /* (Out of range: not cut down to another descriptor's number.) */
        PyErr_Clear();
        return 0;
    }
    int fd = (int)lfd;
    /* Our own descriptor at once, before more of the app's code runs
     * (tell() below, which may let another thread close the app's file
     * and reuse its number), and before the head is built: a dup that
     * fails (EMFILE) leaves the response to the iteration rather than a
     * head that promises a body which never comes. */
    int dupfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    struct stat sb;
    /* Not a file opened write-only either (io.FileIO in mode "w" or "a"):
     * sendfile fails with EBADF after the head is out, and the client got
     * a 200 with no body and a close; iterated, its read() raises before
     * the head, a 500 and a traceback in the log (C review s24). Nor one
     * opened O_DIRECT, whose unaligned reads sendfile refuses (EINVAL):
     * iterated, its read() gives the bytes or raises (hostile review
     * s24). */
    int fl = dupfd >= 0 ? fcntl(dupfd, F_GETFL) : -1;
    if (dupfd < 0 || fl < 0 || (fl & O_ACCMODE) == O_WRONLY ||
        (fl & O_DIRECT) != 0 ||
        fstat(dupfd, &sb) < 0 || !S_ISREG(sb.st_mode) ||
        !size_trusted(dupfd, &sb)) {
        if (dupfd >= 0) {
            close(dupfd);
        }
        return 0;
    }
    long long pos;
    r = PyObject_CallMethodNoArgs(fw->filelike, st->s_tell);
    if (r != NULL) {
        pos = PyLong_AsLongLong(r);
        Py_DECREF(r);
    }
    else {
        PyErr_Clear();
        pos = (long long)lseek(dupfd, 0, SEEK_CUR);
    }
    if (pos < 0 || PyErr_Occurred() || self->head_built) {
        /* (head_built: fileno() and tell() are the app's code: while they
         * ran, self's critical section was suspended (with the GIL: the
         * GIL was passed on), and a thread of the app may have sent the
         * head with write(). A second head would follow the first in the
         * body: iterate instead, as after any write().) */
        PyErr_Clear();
        close(dupfd);
        return 0;
    }
    long long avail = (long long)sb.st_size - pos;
    if (avail < 0) {
        avail = 0;
    }
    long long len = avail;
    if (self->content_length >= 0 && self->content_length < len) {
        len = self->content_length;
    }
    /* The bucket before the head too: out of memory, the app's answer is
     * a 500, not a head and a close. */
    ymo_bucket_t *b = ymo_bucket_file(dupfd, (off_t)pos, (size_t)len);
    if (b == NULL) {
        close(dupfd);
        PyErr_NoMemory();
        return -1;
    }
    self->known_length = len;
    if (build_head(self, 0) < 0) {
        ymo_bucket_free(b);
        return -1;
    }
    if (self->no_body || len == 0) {
        ymo_bucket_free(b);     /* closes dupfd */
    }
    else {
        pend_link(self, b);
        self->body_sent += (unsigned long long)len;
    }
    return 1;
}

/* -- Running an exchange -- */

static int
is_head(const ymo_exchange_t *ex)
{
    return ex->req.method_len == 4 && memcmp(ex->req.method, "HEAD", 4) == 0;
}

#ifndef Py_GIL_DISABLED
/* Whether only the worker holds sr: its own reference and, when sr has
 * made its write callable, that callable's, which only sr holds. With
 * the GIL, no thread can take a reference meanwhile. */
static int
start_response_unshared(StartResponseObject *sr)
{
    return sr->write == NULL ? Py_REFCNT(sr) == 1
                             : Py_REFCNT(sr) == 2 &&
                                   Py_REFCNT(sr->write) == 1;
}
#endif

#ifndef Py_GIL_DISABLED
/* sr and its write callable (whose __self__ it is) out of the GC's sight
 * while the worker keeps them, and back: gc.get_objects() on a thread of
 * the app would hand them out, and their holder could then answer the
 * next request this worker runs (review of b4c4c43). */
static void
start_response_hide(StartResponseObject *sr)
{
    PyObject_GC_UnTrack(sr);
    if (sr->write != NULL) {
        PyObject_GC_UnTrack(sr->write);
    }
}

static void
start_response_show(StartResponseObject *sr)
{
    PyObject_GC_Track(sr);
    if (sr->write != NULL) {
        PyObject_GC_Track(sr->write);
    }
}
#endif

/* Let go of the worker's reference to sr, first cutting the cycle with
 * its write callable: without the cycle, sr goes now (or when the app
 * lets go of what it kept), not at the GC's next collection. */
static void
start_response_drop(StartResponseObject *sr)
{
    Py_CLEAR(sr->write);
    Py_DECREF(sr);
}

static StartResponseObject *
start_response_new(struct ymo_wsgi_app *app, ymo_wsgi_worker_t *worker,
                   ymo_exchange_t *ex, int body_whole)
{
    StartResponseObject *self = NULL;
#ifndef Py_GIL_DISABLED
    /* The one an earlier exchange of this worker left, its references
     * cleared and out of the GC's sight (start_response_keep), so no one
     * found it meanwhile; the count is checked all the same. */
    self = (StartResponseObject *)worker->spare_sr;
    worker->spare_sr = NULL;
    if (self != NULL) {
        start_response_show(self);
        if (!start_response_unshared(self)) {
            start_response_drop(self);
            self = NULL;
        }
    }
#else
    (void)worker;
#endif
    if (self == NULL) {
        self = PyObject_GC_New(StartResponseObject,
                               app->st->StartResponse_type);
        if (self == NULL) {
            return NULL;
        }
        self->write = NULL;
        self->status = NULL;
        self->headers = NULL;
        self->core = Py_NewRef(app->core);
        PyObject_GC_Track(self);
    }
    else {
        /* Kept without its Core reference (start_response_keep). */
        assert(self->core == NULL);
        self->core = Py_NewRef(app->core);
        /* Cleared when kept; let go of anything all the same. */
        Py_CLEAR(self->status);
        Py_CLEAR(self->headers);
    }
    self->vectorcall = StartResponse_vectorcall;
    self->ex = ex;
    self->app = app;
    self->called = self->head_built = 0;
    self->status_code = 0;
    self->no_body = self->chunked = self->keep_alive = 0;
    self->aborted = self->overflow = self->stopped = self->replaced = 0;
    self->to_close = 0;
    self->head_req = is_head(ex);
    self->head_count = 0;
    self->head_only = 0;
    self->closes = self->held_done = 0;
    self->content_length = -1;
    self->known_length = -1;
    self->body_sent = 0;
    self->pend_head = self->pend_tail = NULL;
    self->pend_len = 0;
    self->body_whole = body_whole;
    return self;
}

#ifndef Py_GIL_DISABLED
/* Does a weak reference hold sr's write callable? */
static int
start_response_weakly_held(const StartResponseObject *sr)
{
    return sr->write != NULL &&
           ((PyCFunctionObject *)sr->write)->m_weakreflist != NULL;
}
#endif

/* At the end of an exchange: keep sr for the worker's next one when
 * nothing else holds it (the app kept neither start_response nor its
 * write callable, which holds it too), rather than free it and allocate
 * the next: about 250 instructions a request. With the GIL only: there
 * a reference count of 1 means no other holder, and no thread can take
 * one meanwhile. Takes the caller's reference. */
static void
start_response_keep(ymo_wsgi_worker_t *worker, StartResponseObject *sr)
{
#ifndef Py_GIL_DISABLED
    if (worker->spare_sr == NULL && start_response_unshared(sr) &&
        sr->pend_head == NULL && sr->ex == NULL) {
        /* The app's status and headers may be str or tuple subclasses
         * whose release runs its code (__del__, a weakref callback),
         * which may find sr or write (the GC still sees them) and take a
         * reference, a weak one, or call it. */
        Py_CLEAR(sr->status);
        Py_CLEAR(sr->headers);
        if (start_response_weakly_held(sr)) {
            /* Weak references do not count: one the app keeps (a WeakSet
             * of open streams' writers, a WeakKeyDictionary keyed by
             * write) would reach the next request's response (hostile
             * review of ec4bbea). The callable goes, and its weak
             * references with it, as when every response had its own;
             * their callbacks are the app's code too. */
            Py_CLEAR(sr->write);
        }
        /* So everything is looked at again after the last of the app's
         * code, and nothing runs from here to the hide (C review of
         * 481a78b: a weak reference taken in a status's __del__ reached
         * another client's response). */
        if (worker->spare_sr == NULL && start_response_unshared(sr) &&
            sr->status == NULL && sr->headers == NULL &&
            sr->pend_head == NULL && !start_response_weakly_held(sr)) {
            start_response_hide(sr);
            /* A spare is the worker's alone: it must not keep the Core
             * (and so the workers that hold it) alive. Not the last
             * reference: the exchange's wsgi.input still holds one. */
            Py_CLEAR(sr->core);
            worker->spare_sr = (PyObject *)sr;
            return;
        }
    }
#else
    (void)worker;
#endif
    start_response_drop(sr);
}

/* At the worker's end: the StartResponse it kept, if any. */
void
ymo_wsgi_start_response_free(ymo_wsgi_worker_t *worker)
{
    StartResponseObject *sr = (StartResponseObject *)worker->spare_sr;
    worker->spare_sr = NULL;
    if (sr != NULL) {
#ifndef Py_GIL_DISABLED
        start_response_show(sr);    /* for their usual deallocs */
#endif
        start_response_drop(sr);
    }
}

/* A new reference to environ[key], or NULL (no error set). Never a
 * borrowed one: environ is the app's, and what formats the value (a str
 * subclass's __str__, or on a free-threaded build a thread of the app
 * writing to environ meanwhile) may replace the key and free the value
 * the server still had in hand. */
static PyObject *
environ_get(PyObject *environ, PyObject *key)
{
    PyObject *v = NULL;
#if PY_VERSION_HEX >= 0x030D0000
    if (PyDict_GetItemRef(environ, key, &v) < 0) {
        PyErr_Clear();
    }
#else
    /* The GIL is held: nothing runs between the look-up and the
     * incref. */
    v = Py_XNewRef(PyDict_GetItemWithError(environ, key));
    PyErr_Clear();
#endif
    return v;
}

/* log_error(msg, info): info is an exc_info triple (ERROR with the
 * traceback) or None (an expected event, INFO). msg or info NULL: the
 * error set while building them is reported instead. */
static void
call_log_error(struct ymo_wsgi_app *app, PyObject *msg, PyObject *info)
{
    PyObject *r = NULL;
    if (msg != NULL && info != NULL) {
        PyObject *args[2] = {msg, info};
        r = PyObject_Vectorcall(app->log_error, args, 2, NULL);
    }
    /* The app's log handlers ran (with what they raised still set). */
    YMO_FORK_GUARD(app->server);
    if (r == NULL) {
        PyErr_WriteUnraisable(app->log_error);
    }
    Py_XDECREF(r);
}

/* Log the exception set, with its traceback, through the app's logger;
 * the request is named from environ (the exchange may be gone). */
static void
log_exception(struct ymo_wsgi_app *app, PyObject *environ, const char *what)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    PyObject *method = NULL, *uri = NULL;
    if (environ != NULL) {
        method = environ_get(environ, app->st->k_request_method);
        uri = environ_get(environ, app->st->k_raw_uri);
    }
    PyObject *msg;
    if (method != NULL && uri != NULL) {
        msg = PyUnicode_FromFormat("%s: %S %S", what, method, uri);
    }
    else {
        msg = PyUnicode_FromString(what);
    }
    Py_XDECREF(method);
    Py_XDECREF(uri);
    PyObject *info = PyTuple_Pack(3, type ? type : Py_None,
                                  value ? value : Py_None,
                                  tb ? tb : Py_None);
    call_log_error(app, msg, info);
    Py_XDECREF(msg);
    Py_XDECREF(info);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* The request's method and URI for a log line, as new references: empty
 * strings if the app took them out of environ. */
static void
request_names(struct ymo_wsgi_app *app, PyObject *environ,
              PyObject **method, PyObject **uri)
{
    *uri = environ_get(environ, app->st->k_raw_uri);
    *method = environ_get(environ, app->st->k_request_method);
    if (*uri == NULL || *method == NULL) {
        Py_XSETREF(*uri, Py_NewRef(app->st->v_empty));
        Py_XSETREF(*method, Py_NewRef(app->st->v_empty));
    }
}

/* The app's body did not match the Content-Length it declared (`sign`
 * 1: longer, cut there; -1: shorter): the client saw the connection
 * close after it, and the app's bug is logged as one WARNING line. */
static void
log_length_mismatch(struct ymo_wsgi_app *app, PyObject *environ, int sign,
                    unsigned long long sent, unsigned long long declared)
{
    PyObject *method, *uri;
    request_names(app, environ, &method, &uri);
    PyObject *msg = sign > 0
        ? PyUnicode_FromFormat(
              "response body longer than its Content-Length (%llu): cut "
              "there, connection closed: %S %S", declared, method, uri)
        : PyUnicode_FromFormat(
              "response body shorter than its Content-Length (%llu of %llu "
              "bytes), connection closed: %S %S", sent, declared, method,
              uri);
    Py_DECREF(uri);
    Py_DECREF(method);
    if (msg == NULL) {
        PyErr_Clear();
        return;
    }
    ymo_wsgi_log_warning(app, msg);
    Py_DECREF(msg);
}

/* A ClientDisconnected (set) came out of the app: log one INFO line with
 * the request and how much of its body arrived, no traceback. */
static void
log_disconnect(struct ymo_wsgi_app *app, PyObject *environ,
               ymo_exchange_t *ex)
{
    PyErr_Clear();
    pthread_mutex_lock(&ex->lock);
    unsigned long long got = ex->in_received;
    pthread_mutex_unlock(&ex->lock);
    const ymo_http_request_t *req = &ex->req;
    PyObject *method, *uri, *msg;
    request_names(app, environ, &method, &uri);
    if (req->body == YMO_HTTP_BODY_NONE) {
        msg = PyUnicode_FromFormat("client disconnected: %S %S", method,
                                   uri);
    }
    else if (req->body == YMO_HTTP_BODY_LENGTH) {
        msg = PyUnicode_FromFormat(
            "client disconnected: %S %S (%llu of %llu body bytes "
            "received)", method, uri, got,
            (unsigned long long)req->content_length);
    }
    else {
        msg = PyUnicode_FromFormat(
            "client disconnected: %S %S (%llu body bytes received, "
            "chunked)", method, uri, got);
    }
    Py_DECREF(uri);
    Py_DECREF(method);
    call_log_error(app, msg, Py_None);
    Py_XDECREF(msg);
}

/* Finish after an app error: an error response if nothing went out yet,
 * otherwise abort the connection; nothing at all for a client that is
 * gone. */
static void
fail_response(StartResponseObject *self)
{
    ymo_exchange_t *ex = self->ex;
    if (ex == NULL) {
        return;
    }
    if (self->aborted) {
        /* The client is gone: nothing to answer. */
        ymo_wsgi_free_chain(self->pend_head);
        self->pend_head = self->pend_tail = NULL;
        self->pend_len = 0;
        ymo_wsgi_worker_response_body_append(ex, NULL, YMO_DONE |
                                                       YMO_DONE_ABORT);
    }
    else if (!self->head_built) {
        int status = 500;
        pthread_mutex_lock(&ex->lock);
        if (ex->in_error > 0) {
            status = ex->in_error;   /* the body was refused: say why */
        }
        pthread_mutex_unlock(&ex->lock);
        ymo_wsgi_free_chain(self->pend_head);
        self->pend_head = self->pend_tail = NULL;
        self->pend_len = 0;
        self->status_code = status;
        self->replaced = 1;
        ymo_bucket_t *b = ymo_http_error_bucket(status, self->head_req);
        self->body_sent =
            b != NULL ? ymo_http_error_body_len(status, self->head_req) : 0;
        if (b != NULL) {
            b->from_ex = 1;
        }
        ymo_wsgi_worker_response_body_append(ex, b, YMO_DONE |
                                                    YMO_DONE_CLOSE);
    }
    else if (self->to_close) {
        /* The body ends at the close (HTTP/1.0, no Content-Length): a
         * FIN would end it as if whole, for the client and for a proxy
         * that passes it on (RFC 9112 8). A reset says it is cut
         * (hostile review s24). */
        post(self, YMO_DONE | YMO_DONE_ABORT | YMO_DONE_RESET);
    }
    else {
        post(self, YMO_DONE | YMO_DONE_ABORT);
    }
    self->ex = NULL;
}

/* Would PyObject_GetIter take o? Without calling its __iter__: a type
 * slot, or the sequence protocol. A class that says `__iter__ = None`
 * (the documented way to refuse iteration) still has the slot, which
 * raises when called: found in the class, without running the app's code
 * (review of 04d2e7e). */
static int
looks_iterable(PyObject *o)
{
    PyTypeObject *tp = Py_TYPE(o);
    if (tp->tp_iter == NULL) {
        return PySequence_Check(o);
    }
    if (PyType_HasFeature(tp, Py_TPFLAGS_HEAPTYPE)) {
        PyObject *name = PyUnicode_InternFromString("__iter__");
        if (name == NULL) {
            PyErr_Clear();
            return 1;       /* then GetIter, or the app's body, will say */
        }
        PyObject *iter = _PyType_Lookup(tp, name);     /* borrowed */
        Py_DECREF(name);
        return iter != Py_None;
    }
    return 1;
}

static int
iterate(StartResponseObject *self, PyObject *result)
{
    struct ymo_wsgi_app *app = self->app;
    if (PyList_CheckExact(result) || PyTuple_CheckExact(result)) {
        Py_BEGIN_CRITICAL_SECTION2(self, result);
        if (PySequence_Fast_GET_SIZE(result) == 1 &&
            PyBytes_Check(PySequence_Fast_GET_ITEM(result, 0))) {
            self->known_length = PyBytes_GET_SIZE(
                PySequence_Fast_GET_ITEM(result, 0));
        }
        Py_END_CRITICAL_SECTION2();
        /* Size and items re-read each time: emit may release the GIL
         * (waiting for a slow client) and another thread could change a
         * list the app shares. On a free-threaded build that thread may
         * run at any moment: a list item is taken with a new reference
         * under the list's own lock (PyList_GetItemRef), never borrowed.
         * self->aborted and overflow are read racily here on purpose:
         * emit_item re-checks them under self's critical section. */
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(result) &&
                               !self->aborted && !self->overflow &&
                               !self->stopped; i++) {
#ifdef Py_GIL_DISABLED
            PyObject *item = PyList_CheckExact(result)
                                 ? PyList_GetItemRef(result, i)
                                 : Py_NewRef(PyTuple_GET_ITEM(result, i));
            if (item == NULL) {
                PyErr_Clear();  /* shrunk by another thread meanwhile */
                break;
            }
#else
            PyObject *item = Py_NewRef(PySequence_Fast_GET_ITEM(result, i));
#endif
            int r = emit_item(self, item, 0);
            Py_DECREF(item);
            if (r < 0) {
                return -1;
            }
        }
        return 0;
    }
    if (Py_IS_TYPE(result, (PyTypeObject *)app->file_wrapper)) {
        int r;
        Py_BEGIN_CRITICAL_SECTION(self);
        r = send_file(self, (ymo_file_wrapper_t *)result);
        Py_END_CRITICAL_SECTION();
        if (r != 0) {
            return r;
        }
    }
    /* HEAD: an app that returned something that is not iterable fails as
     * it does for GET (500 and the error logged), not with a 200 (hostile
     * review of 481a78b). Asked as PyObject_GetIter would decide, without
     * calling the app's __iter__, which may start the body's work (a
     * Django StreamingHttpResponse over an async iterator reads the whole
     * stream there; review of 40e31cc, which called it). */
    if (self->head_req && !looks_iterable(result)) {
        PyErr_Format(PyExc_TypeError, "'%.200s' object is not iterable",
                     Py_TYPE(result)->tp_name);
        return -1;
    }
    int head = 0;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (self->head_req && self->called && !self->head_built) {
        /* HEAD of a streamed body: the head is known now; iterating could
         * take for ever (see emit). close() is still called. */
        head_now(self);
        head = self->head_built ? 1 : -1;
    }
    Py_END_CRITICAL_SECTION();
    if (head != 0) {
        return head > 0 ? 0 : -1;
    }
    PyObject *it = PyObject_GetIter(result);
    if (it == NULL) {
        return -1;
    }
    PyObject *item;
    while (!self->aborted && !self->overflow && !self->head_only &&
           !self->stopped &&
           (item = PyIter_Next(it)) != NULL) {
        /* Each chunk goes out before the next is asked for. */
        int r = emit_item(self, item, 1);
        Py_DECREF(item);
        if (r < 0) {
            Py_DECREF(it);
            return -1;
        }
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

/* The response is complete: head if none yet, end of chunked body, and
 * the final post. */
static int
finish_response(StartResponseObject *self)
{
    if (!self->called) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the app returned without calling start_response");
        return -1;
    }
    if (self->head_req && !self->head_built && self->known_length < 0) {
        self->known_length = (long long)self->head_count;
    }
    if (!self->head_built && build_head(self, 0) < 0) {
        return -1;
    }
    int done = YMO_DONE;
    if (self->aborted) {
        done |= YMO_DONE_ABORT;
    }
    else if (self->chunked) {
        if (pend_add(self, "0\r\n\r\n", 5) < 0) {
            return -1;
        }
    }
    if (!self->no_body && self->content_length >= 0 &&
        self->body_sent != (unsigned long long)self->content_length) {
        /* Fewer bytes than promised: the client must see the response is
         * cut short, so the connection closes after them. */
        done |= YMO_DONE_ABORT;
    }
    if (self->overflow) {
        done |= YMO_DONE_CLOSE;
    }
    if (!self->keep_alive) {
        done |= YMO_DONE_CLOSE;
    }
    if (self->closes && !(done & (YMO_DONE_CLOSE | YMO_DONE_ABORT))) {
        /* The bytes go out now; the exchange ends once close() has
         * returned (post_held), and the connection's next request waits
         * until then, as on a server that runs a connection's requests
         * one after another: what close() finishes (a session saved, a
         * lock let go) is done before the client's next request runs.
         * A connection that closes after this response has no next
         * request to hold back: its client sees the end at once. */
        post(self, YMO_OUT_COMPLETE);
        self->held_done = done;
    }
    else {
        post(self, done);
    }
    return 0;
}

/* After close(): the done post finish_response held back, if any. */
static void
post_held(StartResponseObject *self)
{
    if (self->held_done && self->ex != NULL) {
        ymo_wsgi_worker_response_body_append(self->ex, NULL,
                                             self->held_done);
        self->ex = NULL;        /* the loop's now */
    }
}

/* Clear the exception the watchdog's RequestTimeout caused; on a
 * free-threaded build its traceback is the stack the overrun line waits
 * for (see ymo_watch_report). */
static void
clear_watchdog_error(ymo_wsgi_worker_t *worker)
{
#ifdef Py_GIL_DISABLED
    PyObject *exc = PyErr_GetRaisedException();
    ymo_watch_report(worker, exc);
    Py_XDECREF(exc);
#else
    (void)worker;
    PyErr_Clear();
#endif
}

/* The iterable's close method (a new reference), or NULL when it has
 * none. Looked up once the body is iterated (PEP 3333 calls it then) and
 * before the response ends, which waits for it (finish_response). */
static PyObject *
lookup_close(struct ymo_wsgi_app *app, ymo_wsgi_worker_t *worker,
             ymo_exchange_t *ex, PyObject *environ, PyObject *result)
{
    if (PyList_CheckExact(result) || PyTuple_CheckExact(result)) {
        return NULL;            /* the common case: nothing to close */
    }
    /* Looked up without raising AttributeError when there is none: that
     * exception would cost more than the rest of a small request. An
     * error of the app's own (a property that raises) is logged, and the
     * response goes on. */
    PyObject *close;
#if PY_VERSION_HEX >= 0x030D0000
    int found = PyObject_GetOptionalAttr(result, app->st->s_close, &close);
#else
    int found = _PyObject_LookupAttr(result, app->st->s_close, &close);
#endif
    YMO_FORK_GUARD(ex->server);     /* a property of the app's ran */
    if (found < 0) {
        ymo_watch_pause(worker);        /* yimmo's logging: not the app */
        if (PyErr_ExceptionMatches(app->st->RequestTimeout) &&
            ymo_watch_timed_out(worker)) {
            clear_watchdog_error(worker);   /* the watchdog's, logged */
        }
        else {
            log_exception(app, environ, "error looking up close()");
        }
        ymo_watch_resume(worker, ex);
    }
    return found > 0 ? close : NULL;
}

static void
close_result(struct ymo_wsgi_app *app, ymo_wsgi_worker_t *worker,
             PyObject *environ, PyObject *close)
{
    PyObject *r = PyObject_CallNoArgs(close);
    YMO_FORK_GUARD(worker->server);
    Py_DECREF(close);
    if (r == NULL && PyErr_ExceptionMatches(app->st->RequestTimeout) &&
        ymo_watch_timed_out(worker)) {
        clear_watchdog_error(worker);   /* the watchdog's, in close() */
    }
    else if (r == NULL) {
        ymo_watch_pause(worker);        /* yimmo's logging: not the app */
        log_exception(app, environ, "error closing the response iterable");
    }
    Py_XDECREF(r);
}

/* One line of the access log (app->log_access set): the status string
 * the app gave, or NULL for the code's number; the body bytes sent; the
 * response headers as the app gave them (the checked tuple: passing it
 * costs a reference, no copy, and log_access cannot change it), for the
 * %({name}o)s atom of --access-log-format, or NULL. The logging is the
 * app's code: the exchange may be gone after it. */
static void
access_log(struct ymo_wsgi_app *app, ymo_wsgi_worker_t *worker,
           PyObject *environ, PyObject *status_str, int code,
           unsigned long long sent, double secs, PyObject *headers)
{
    PyObject *status = status_str ? Py_NewRef(status_str)
                                  : PyUnicode_FromFormat("%d", code);
    PyObject *len = PyLong_FromUnsignedLongLong(sent);
    PyObject *dur = PyFloat_FromDouble(secs);
    if (status != NULL && len != NULL && dur != NULL) {
        PyObject *a[5] = {environ, status, len, dur,
                          headers ? headers : Py_None};
        PyObject *r = PyObject_Vectorcall(app->log_access, a, 5, NULL);
        YMO_FORK_GUARD(worker->server);
        if (r == NULL) {
            PyErr_WriteUnraisable(app->log_access);
        }
        Py_XDECREF(r);
    }
    else {
        PyErr_Clear();
    }
    Py_XDECREF(status);
    Py_XDECREF(len);
    Py_XDECREF(dur);
}

void
ymo_wsgi_run_exchange(struct ymo_wsgi_app *app, ymo_wsgi_worker_t *worker,
                      ymo_exchange_t *ex)
{
    ymo_module_state *st = app->st;
    pthread_mutex_lock(&ex->lock);
    int aborted = ex->aborted;
    int body_whole = ex->in_done && ex->in_error == 0;
    pthread_mutex_unlock(&ex->lock);
    if (aborted) {
        /* The client went away while the request waited for a worker: no
         * one would see the answer, and running the app could repeat a
         * side effect the client will retry. */
        ymo_wsgi_worker_response_body_append(ex, NULL, YMO_DONE |
                                                       YMO_DONE_ABORT);
        return;
    }
    double queue_timeout = ex->server->config.queue_timeout;
    if (queue_timeout > 0 &&
        ymo_monotonic_now() - ex->queued_at > queue_timeout) {
        /* Under a flood, work goes to requests whose clients are likely
         * still waiting: this one waited too long for a worker. Its line
         * in the access log too (they were missing, under overload
         * where they matter; hostile review s24): the environ is made
         * first, while the request is still this thread's. */
        PyObject *env = NULL;
        if (app->log_access != NULL &&
            (env = ymo_wsgi_environ(app, ex, worker->values)) == NULL) {
            PyErr_Clear();
        }
        int head = is_head(ex);
        ymo_bucket_t *b = ymo_http_error_bucket(503, head);
        if (b != NULL) {
            /* Counted out as it is written, as every bucket the exchange
             * appends (out_buffered; C review of the session after
             * 76de913). */
            b->from_ex = 1;
        }
        ymo_wsgi_worker_response_body_append(ex, b, YMO_DONE |
                                                    YMO_DONE_CLOSE);
        if (env != NULL) {
            access_log(app, worker, env, NULL, 503,
                       b != NULL ? ymo_http_error_body_len(503, head) : 0,
                       0., NULL);
            Py_DECREF(env);
        }
        return;
    }
    struct timespec t0 = {0, 0};
    if (app->log_access != NULL) {
        clock_gettime(CLOCK_MONOTONIC, &t0);
    }
    PyObject *result = NULL, *input = NULL;
    StartResponseObject *sr = NULL;
    int watched = 0;            /* YMO_WATCH_*, or 0 */
    ymo_watch_begin(worker, ex);
    PyObject *environ = ymo_wsgi_environ(app, ex, worker->values);
    if (environ == NULL) {
        goto internal_error;
    }
    input = ymo_input_new(st, app->core, ex,
                          ex->server->config.in_high_water / 2);
    if (input == NULL || PyDict_SetItem(environ, st->k_wsgi_input,
                                        input) < 0) {
        goto internal_error;
    }
    /* yimmo.client_gone: the input object is callable for it. */
    if (PyDict_SetItem(environ, st->k_client_gone, input) < 0) {
        goto internal_error;
    }
    sr = start_response_new(app, worker, ex, body_whole);
    if (sr == NULL) {
        goto internal_error;
    }
    PyObject *args[2] = {environ, (PyObject *)sr};
    result = PyObject_Vectorcall(app->app, args, 2, NULL);
    YMO_FORK_GUARD(ex->server);
    int failed = result == NULL || iterate(sr, result) < 0;
    YMO_FORK_GUARD(ex->server);
    if (failed && PyErr_ExceptionMatches(st->ClientDisconnected)) {
        int stopped;
        Py_BEGIN_CRITICAL_SECTION(sr);  /* app threads may write() */
        stopped = sr->stopped && !sr->aborted;
        Py_END_CRITICAL_SECTION();
        if (stopped) {
            /* The write() that raised it was stopped (see emit): the
             * response is complete, not failed. */
            PyErr_Clear();
            failed = 0;
        }
    }
    PyObject *close = NULL;
    int mismatch = 0;
    unsigned long long sent = 0, declared = 0;
    if (!failed) {
        close = result != NULL
                    ? lookup_close(app, worker, ex, environ, result)
                    : NULL;
        Py_BEGIN_CRITICAL_SECTION(sr);
        sr->closes = close != NULL;
        failed = finish_response(sr) < 0;
        if (!failed && !sr->no_body && !sr->aborted &&
            sr->content_length >= 0 &&
            (sr->overflow ||
             sr->body_sent != (unsigned long long)sr->content_length)) {
            mismatch = sr->overflow ? 1 : -1;
            sent = sr->body_sent;
            declared = (unsigned long long)sr->content_length;
        }
        Py_END_CRITICAL_SECTION();
    }
    if (mismatch != 0) {
        ymo_watch_pause(worker);        /* yimmo's logging: not the app */
        log_length_mismatch(app, environ, mismatch, sent, declared);
        YMO_FORK_GUARD(worker->server); /* the logging is the app's */
        ymo_watch_resume(worker, ex);
    }
    if (failed) {
        /* From here to the answer, yimmo's own code runs (the logging
         * may run Python for long): the watchdog must neither end the
         * exchange nor raise in it meanwhile. */
        ymo_watch_pause(worker);
        int aborted = 0;
        if ((PyErr_ExceptionMatches(st->RequestTimeout) ||
             PyErr_ExceptionMatches(st->ClientDisconnected)) &&
            ymo_exchange_client_gone(ex) && ymo_watch_timed_out(worker)) {
            /* The watchdog's RequestTimeout, or the read it made fail:
             * the client has its answer and the overrun is logged. */
            clear_watchdog_error(worker);
            aborted = 1;
        }
        else if (PyErr_ExceptionMatches(st->ClientDisconnected) &&
                 ymo_exchange_client_gone(ex)) {
            /* Not an error of the app's: one line, and nothing to send. */
            log_disconnect(app, environ, ex);
            aborted = 1;
        }
        else {
            log_exception(app, environ, "error handling request");
        }
        YMO_FORK_GUARD(ex->server);     /* the logging is the app's */
        Py_BEGIN_CRITICAL_SECTION(sr);
        if (aborted) {
            sr->aborted = 1;
        }
        fail_response(sr);
        Py_END_CRITICAL_SECTION();
        ymo_watch_resume(worker, ex);   /* close() is the app's again */
        if (result != NULL && close == NULL) {
            close = lookup_close(app, worker, ex, environ, result);
        }
    }
    if (close != NULL) {
        close_result(app, worker, environ, close);  /* takes close */
    }
    Py_BEGIN_CRITICAL_SECTION(sr);
    post_held(sr);
    Py_END_CRITICAL_SECTION();
    watched = ymo_watch_end(worker, ex);
    if (watched && PyErr_Occurred()) {
        PyErr_Clear();
    }
    goto done;

internal_error:
    ymo_watch_pause(worker);
    if (ymo_watch_timed_out(worker)) {
        clear_watchdog_error(worker);   /* answered already */
    }
    else {
        log_exception(app, environ, "internal error preparing request");
    }
    YMO_FORK_GUARD(ex->server);
    if (sr != NULL) {
        Py_BEGIN_CRITICAL_SECTION(sr);
        fail_response(sr);
        Py_END_CRITICAL_SECTION();
    }
    else {
        ymo_bucket_t *b = ymo_http_error_bucket(500, is_head(ex));
        if (b != NULL) {
            b->from_ex = 1;
        }
        ymo_wsgi_worker_response_body_append(ex, b, YMO_DONE |
                                                    YMO_DONE_CLOSE);
    }
    watched = ymo_watch_end(worker, ex);

done:;
    /* The exchange belongs to the loop now: cut start_response loose from
     * it (wsgi.input keeps a reference of its own). */
    /* The access log's view of the response is taken under sr's critical
     * section too (a write() from a thread of the app may still be
     * running), then logged outside it: log_access is the app's code. */
    PyObject *r_status = NULL, *r_headers = NULL;
    int r_code = 0, r_head = 0;
    unsigned long long r_sent = 0;
    if (sr != NULL) {
        Py_BEGIN_CRITICAL_SECTION(sr);
        sr->ex = NULL;
        if (!sr->replaced) {
            /* (Replaced: the status and length of the server's error
             * response, which went out instead; the access log said
             * 200 for a 500, hostile review s24.) */
            r_status = Py_XNewRef(sr->status);
            r_headers = Py_XNewRef(sr->headers);
        }
        r_code = sr->status_code;
        r_sent = sr->body_sent;
        r_head = sr->head_req;
        Py_END_CRITICAL_SECTION();
    }
    if (app->log_access != NULL && environ != NULL && sr != NULL) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double secs = (double)(t1.tv_sec - t0.tv_sec) +
                      (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        /* The client of a request the watchdog answered got its 503. */
        if (watched == YMO_WATCH_503) {
            access_log(app, worker, environ, NULL, 503,
                       ymo_http_error_body_len(503, r_head), secs, NULL);
        }
        else {
            access_log(app, worker, environ, r_status, r_code, r_sent, secs,
                       r_headers);
        }
    }
    Py_XDECREF(r_status);
    Py_XDECREF(r_headers);
    Py_XDECREF(result);
    if (sr != NULL) {
        start_response_keep(worker, sr);
    }
    Py_XDECREF(input);
    Py_XDECREF(environ);
}
