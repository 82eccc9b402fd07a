/* wsgi_environ.c - builds the PEP 3333 environ dict from an exchange's
 * parsed request head. GIL held throughout. */
#include "wsgi.h"

#include <string.h>

#include "ascii.h"
#include "forwarded.h"

/* Headers common enough that their environ keys are worth interning,
 * and those the environ treats specially (by their index here).
 * Host stays first: HTTP_HOST is set from header_keys[HOST_KEY].      */
#define HOST_KEY 0
#define COOKIE_KEY 6
#define AUTHORIZATION_KEY 10
/* The forwarding fields, in the order of enum fwd_kind. */
#define FWD_KEY 12
/* Content-Type and Content-Length go to CONTENT_TYPE and CONTENT_LENGTH:
 * their HTTP_ keys here are never used. */
#define CONTENT_TYPE_KEY 28
#define CONTENT_LENGTH_KEY 29
#define PROXY_AUTHORIZATION_KEY 30
/* The names in lower case: common_index compares only the request's
 * side of a name with case folded. */
#define H(name) {name, sizeof(name) - 1}
static const struct {
    const char *name;
    size_t len;
} common_headers[] = {
    H("host"), H("user-agent"), H("accept"), H("accept-encoding"),
    H("accept-language"), H("connection"), H("cookie"), H("referer"),
    H("cache-control"), H("origin"), H("authorization"),
    H("upgrade-insecure-requests"), H("x-forwarded-for"),
    H("x-forwarded-proto"), H("x-forwarded-host"), H("forwarded"),
    H("x-requested-with"), H("if-none-match"),
    H("if-modified-since"), H("pragma"), H("sec-fetch-mode"),
    H("sec-fetch-site"), H("sec-fetch-dest"), H("content-encoding"),
    H("keep-alive"), H("expect"), H("transfer-encoding"), H("range"),
    H("content-type"), H("content-length"), H("proxy-authorization"),
};
#undef H
#define N_COMMON (sizeof(common_headers) / sizeof(common_headers[0]))
_Static_assert(N_COMMON <= YMO_COMMON_HEADER_KEYS, "room for the keys");
_Static_assert(N_COMMON <= 127, "indices fit a signed char");

/* The index in common_headers of the field name[0..len), or -1: only
 * the names of its length are compared (one to five of them). */
static int
common_index(const ymo_module_state *st, const char *name, size_t len)
{
    if (len > YMO_COMMON_HEADER_MAX_LEN) {
        return -1;
    }
    for (int i = st->header_by_len[len]; i >= 0; i = st->header_next[i]) {
        if (ymo_ascii_ieq(name, common_headers[i].name, len)) {
            return i;
        }
    }
    return -1;
}

/* The fields through which a proxy speaks for its client, in the order
 * of their keys in common_headers from FWD_KEY on. */
enum fwd_kind { FWD_XFF = 0, FWD_XFP, FWD_XFH, FWD_FORWARDED, FWD_NONE };

/* Each kind's bit in config.proxy_headers. */
static const unsigned fwd_bits[FWD_NONE] = {
    YMO_PH_XFF, YMO_PH_XFP, YMO_PH_XFH, YMO_PH_FORWARDED,
};

static PyObject *value_str(PyObject **values, const char *s, size_t n);

/* "HTTP_" + upper-cased name with '-' as '_', through a worker's cache
 * of keys when `keys` is not NULL (for fields outside common_headers: a
 * client sends the same ones on each request; the keys have slots of
 * their own, so that none evicts a value); new reference. */
static PyObject *
make_key(const char *name, size_t len, PyObject **keys)
{
    char buf[256];
    char *p = len + 5 <= sizeof(buf) ? buf : ymo_pymem_malloc(len + 5);
    if (p == NULL) {
        return PyErr_NoMemory();
    }
    memcpy(p, "HTTP_", 5);
    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        if (ch >= 'a' && ch <= 'z') {
            ch -= 32;
        }
        else if (ch == '-') {
            ch = '_';
        }
        p[5 + i] = ch;
    }
    PyObject *key = value_str(keys, p, len + 5);
    if (p != buf) {
        PyMem_Free(p);
    }
    return key;
}

int
ymo_environ_state_init(ymo_module_state *st)
{
    static const struct {
        int index;
        const char *name;
    } fixed[] = {
        {HOST_KEY, "Host"},
        {COOKIE_KEY, "Cookie"},
        {AUTHORIZATION_KEY, "Authorization"},
        {FWD_KEY + FWD_XFF, "X-Forwarded-For"},
        {FWD_KEY + FWD_XFP, "X-Forwarded-Proto"},
        {FWD_KEY + FWD_XFH, "X-Forwarded-Host"},
        {FWD_KEY + FWD_FORWARDED, "Forwarded"},
        {CONTENT_TYPE_KEY, "Content-Type"},
        {CONTENT_LENGTH_KEY, "Content-Length"},
        {PROXY_AUTHORIZATION_KEY, "Proxy-Authorization"},
    };
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        const char *name = fixed[i].name;
        if (strlen(name) != common_headers[fixed[i].index].len ||
            !ymo_ascii_ieq(name, common_headers[fixed[i].index].name,
                           strlen(name))) {
            PyErr_Format(PyExc_SystemError, "common_headers[%d] is not %s",
                         fixed[i].index, name);
            return -1;
        }
    }
    for (size_t i = 0; i <= YMO_COMMON_HEADER_MAX_LEN; i++) {
        st->header_by_len[i] = -1;
    }
    /* Built from the end, so that each chain keeps the table's order. */
    for (size_t i = N_COMMON; i-- > 0;) {
        size_t len = common_headers[i].len;
        for (size_t k = 0; k < len; k++) {
            char ch = common_headers[i].name[k];
            if (ch >= 'A' && ch <= 'Z') {
                PyErr_Format(PyExc_SystemError,
                             "common_headers[%zu] is not in lower case", i);
                return -1;
            }
        }
        if (len > YMO_COMMON_HEADER_MAX_LEN) {
            PyErr_SetString(PyExc_SystemError,
                            "YMO_COMMON_HEADER_MAX_LEN is out of date");
            return -1;
        }
        st->header_next[i] = st->header_by_len[len];
        st->header_by_len[len] = (signed char)i;
    }
    for (size_t i = 0; i < N_COMMON; i++) {
        st->header_keys[i] = make_key(common_headers[i].name,
                                      common_headers[i].len, NULL);
        if (st->header_keys[i] == NULL) {
            return -1;
        }
        PyUnicode_InternInPlace(&st->header_keys[i]);
    }
    return 0;
}

/* Header values this long at most are looked up in a worker's cache. */
#define VALUE_CACHE_MAX_LEN 256

/* The str of the latin-1 bytes s[0..n) as a header value (or as the
 * environ key of a field outside common_headers, make_key): a client sends
 * the same Host, User-Agent, Accept... on each of its requests, and many
 * clients the same Accept-Encoding, so the worker keeps the str of recent
 * values (`values`, NULL for none; never credentials: Cookie,
 * Authorization, Proxy-Authorization): YMO_WSGI_VALUE_CACHE slots, one
 * per hash of the bytes, the last value of that hash in each. It returns
 * the one with exactly these bytes rather than a new one. A str is
 * immutable: an app cannot tell a shared one from a new one, and keeping
 * one alive costs at most the slots' strings (under 20 KB per worker).
 * New reference. */
static PyObject *
value_str(PyObject **values, const char *s, size_t n)
{
    if (values == NULL || n < 2 || n > VALUE_CACHE_MAX_LEN) {
        /* No cache; a value of one character (Python's own singleton
         * then); or a long one, a token or a list, rarely repeated. */
        return PyUnicode_DecodeLatin1(s, (Py_ssize_t)n, NULL);
    }
    /* The slot: a multiplicative hash of the length and the first and
     * last 8 bytes (all of a shorter value). */
    uint64_t a = 0, b = 0;
    if (n >= 8) {
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
    }
    else {
        memcpy(&a, s, n);
    }
    uint64_t h = (a ^ (b * 0xff51afd7ed558ccdULL) ^ (uint64_t)n) *
                 0x9e3779b97f4a7c15ULL;
    PyObject **slot = &values[h >> (64 - YMO_WSGI_VALUE_CACHE_BITS)];
    PyObject *v = *slot;
    /* Every str in the cache came from PyUnicode_DecodeLatin1 below: one
     * byte per character, those of the value. */
    if (v != NULL && PyUnicode_GET_LENGTH(v) == (Py_ssize_t)n &&
        memcmp(PyUnicode_DATA(v), s, n) == 0) {
        return Py_NewRef(v);
    }
    v = PyUnicode_DecodeLatin1(s, (Py_ssize_t)n, NULL);
    if (v != NULL) {
        Py_XSETREF(*slot, Py_NewRef(v));
    }
    return v;
}

void
ymo_wsgi_values_clear(PyObject **values)
{
    for (size_t i = 0; i < YMO_WSGI_STR_CACHE; i++) {
        Py_CLEAR(values[i]);
    }
}

/* env[key] = the str of s[0..n) (through a worker's cache of header
 * values when `values` is not NULL). */
static int
set_latin1(PyObject *env, PyObject *key, const char *s, size_t n,
           PyObject **values)
{
    PyObject *v = value_str(values, s, n);
    if (v == NULL) {
        return -1;
    }
    int r = PyDict_SetItem(env, key, v);
    Py_DECREF(v);
    return r;
}

/* Set or extend a header's environ entry: repeated fields are joined with
 * "," (RFC 9110 5.3), cookies with "; " (RFC 6265 5.4). */
static int
add_header(PyObject *env, PyObject *key, const char *v, size_t n,
           int is_cookie, PyObject **values)
{
    PyObject *add = value_str(values, v, n);
    if (add == NULL) {
        return -1;
    }
    /* One lookup: the field's first line inserts its value. Whether it
     * did shows in the size, not in the value returned: the cache gives
     * a repeated line with the same bytes the very same str. */
    Py_ssize_t size = PyDict_GET_SIZE(env);
    /* Borrowed: env is this worker's alone until the app gets it, so
     * nothing can replace or free the value meanwhile. */
    PyObject *old = PyDict_SetDefault(env, key, add);
    if (old == NULL || PyDict_GET_SIZE(env) != size) {
        Py_DECREF(add);
        return old == NULL ? -1 : 0;
    }
    PyObject *joined = PyUnicode_FromFormat("%U%s%U", old,
                                            is_cookie ? "; " : ",", add);
    Py_DECREF(add);
    if (joined == NULL) {
        return -1;
    }
    int r = PyDict_SetItem(env, key, joined);
    Py_DECREF(joined);
    return r;
}

static PyObject *
method_str(ymo_module_state *st, const ymo_http_request_t *req)
{
    const char *m = req->method;
    size_t n = req->method_len;
    if (n == 3 && memcmp(m, "GET", 3) == 0) {
        return Py_NewRef(st->v_get);
    }
    if (n == 4 && memcmp(m, "POST", 4) == 0) {
        return Py_NewRef(st->v_post);
    }
    if (n == 4 && memcmp(m, "HEAD", 4) == 0) {
        return Py_NewRef(st->v_head);
    }
    return PyUnicode_DecodeLatin1(m, (Py_ssize_t)n, NULL);
}

/* A unix socket has no host name or port of its own, and PEP 3333 wants
 * neither SERVER_NAME nor SERVER_PORT empty: on a unix listener they come
 * from the request's host (the Host field, or an absolute-form target's
 * authority), which the parser has checked to be uri-host [":" port].
 * An IP literal keeps its brackets, so that SERVER_NAME ":" SERVER_PORT
 * is still an authority, as in PEP 3333's URL reconstruction. Without a
 * port (or with an empty one) the template's "80" stays; without a host,
 * also its "localhost". */
static int
set_unix_server(ymo_module_state *st, PyObject *env, const char *host,
                size_t len)
{
    const char *end = host + len, *colon;
    if (host[0] == '[') {
        /* An IPv6 address has colons of its own; the literal ends at the
         * first ']', and only ":" port may follow it. */
        const char *close = memchr(host, ']', len);
        colon = close + 1 < end ? close + 1 : NULL;
    }
    else {
        colon = memchr(host, ':', len);
    }
    if (set_latin1(env, st->k_server_name, host,
                   colon != NULL ? (size_t)(colon - host) : len,
                   NULL) < 0) {
        return -1;
    }
    /* "name:" has an empty port, which means the default (RFC 3986
     * 3.2.3): the template's "80" stays, as without a colon. */
    if (colon != NULL && colon + 1 < end &&
        set_latin1(env, st->k_server_port, colon + 1,
                   (size_t)(end - colon - 1), NULL) < 0) {
        return -1;
    }
    return 0;
}

PyObject *
ymo_wsgi_environ_template(struct ymo_wsgi_app *app, size_t listener,
                          int is_unix)
{
    ymo_module_state *st = app->st;
    PyObject *server_name = NULL, *server_port = NULL;
    /* Presized for the per-request keys and a few dozen headers, so that
     * the copies never grow their tables; PyDict_Copy keeps the size. */
    PyObject *env = _PyDict_NewPresized(48);
    if (env == NULL) {
        return NULL;
    }
    if (is_unix) {
        /* What a request without a host gets (see set_unix_server()). */
        server_name = PyUnicode_FromString("localhost");
        server_port = PyUnicode_FromString("80");
    }
    else {
        server_name = Py_NewRef(app->server_name[listener]);
        server_port = Py_NewRef(app->server_port[listener]);
    }
    if (server_name == NULL || server_port == NULL) {
        goto fail;
    }
    PyObject *per_request[] = {
        st->k_request_method, st->k_path_info, st->k_raw_uri,
        st->k_remote_addr, st->k_remote_port, st->k_wsgi_input,
        st->k_client_gone,
    };
    for (size_t i = 0; i < sizeof(per_request) / sizeof(*per_request);
         i++) {
        if (PyDict_SetItem(env, per_request[i], Py_None) < 0) {
            goto fail;
        }
    }
    /* What most requests have, so that they need not set it: no query,
     * HTTP/1.1 (ymo_wsgi_environ sets the others). */
    if (PyDict_SetItem(env, st->k_query_string, st->v_empty) < 0 ||
        PyDict_SetItem(env, st->k_server_protocol, st->v_http11) < 0 ||
        PyDict_SetItem(env, st->k_script_name, st->v_empty) < 0 ||
        PyDict_SetItem(env, st->k_server_name, server_name) < 0 ||
        PyDict_SetItem(env, st->k_server_port, server_port) < 0 ||
        PyDict_SetItem(env, st->k_server_software, st->v_software) < 0 ||
        PyDict_SetItem(env, st->k_wsgi_version, st->v_version) < 0 ||
        PyDict_SetItem(env, st->k_wsgi_url_scheme, st->v_http) < 0 ||
        PyDict_SetItem(env, st->k_wsgi_errors, app->errors) < 0 ||
        PyDict_SetItem(env, st->k_wsgi_multithread, app->multithread) < 0 ||
        PyDict_SetItem(env, st->k_wsgi_multiprocess,
                       app->multiprocess) < 0 ||
        PyDict_SetItem(env, st->k_wsgi_run_once, Py_False) < 0 ||
        PyDict_SetItem(env, st->k_wsgi_input_terminated, Py_True) < 0 ||
        PyDict_SetItem(env, st->k_wsgi_file_wrapper,
                       app->file_wrapper) < 0) {
        goto fail;
    }
    Py_DECREF(server_name);
    Py_DECREF(server_port);
    return env;
fail:
    Py_XDECREF(server_name);
    Py_XDECREF(server_port);
    Py_DECREF(env);
    return NULL;
}

/* The value of a header field in env as latin-1 bytes (the forwarding
 * fields are ASCII when valid; PyUnicode_AsUTF8AndSize costs nothing for
 * an ASCII string). 0 when found, 1 when not, -1 with an exception. */
static int
env_value(PyObject *env, PyObject *key, const char **v, size_t *n)
{
    PyObject *o = PyDict_GetItemWithError(env, key);
    if (o == NULL) {
        return PyErr_Occurred() ? -1 : 1;
    }
    Py_ssize_t len;
    *v = PyUnicode_AsUTF8AndSize(o, &len);
    if (*v == NULL) {
        return -1;
    }
    *n = (size_t)len;
    return 0;
}

static int
set_port(PyObject *env, PyObject *key, int port)
{
    char digits[24];
    size_t n = ymo_put_decimal(digits, (unsigned long long)port);
    PyObject *v = PyUnicode_FromStringAndSize(digits, (Py_ssize_t)n);
    if (v == NULL) {
        return -1;
    }
    int r = PyDict_SetItem(env, key, v);
    Py_DECREF(v);
    return r;
}

/* The value of forwarding field `kind`: straight from the request head
 * when it came in one field line (the usual case, and no dict lookup),
 * else the joined value env holds. Same returns as env_value. */
static int
fwd_value(ymo_module_state *st, PyObject *env, const ymo_exchange_t *ex,
          const size_t *line, unsigned repeated, int kind, const char **v,
          size_t *n)
{
    if (!(repeated & (1u << kind))) {
        const ymo_http_header_t *h = &ex->req.headers[line[kind]];
        *v = h->value;
        *n = h->value_len;
        return 0;
    }
    return env_value(env, st->header_keys[FWD_KEY + kind], v, n);
}

/* Whether the request's host (Host, or an absolute-form target's
 * authority) names a port: "name:" with an empty one does not. */
static int
host_has_port(const ymo_http_request_t *req)
{
    size_t name_len, port_off, port_len;
    if (req->host == NULL || req->host_len == 0) {
        return 0;
    }
    ymo_forwarded_split_host(req->host, req->host_len, &name_len, &port_off,
                             &port_len);
    return port_len > 0;
}

/* A trusted proxy sent forwarding fields that config.proxy_headers names
 * (bit 1 << enum fwd_kind in `seen`): let them say who the client is and
 * how it reached the proxy. Forwarded and the X-Forwarded-* fields are
 * never both named (a proxy manages one family, and the client writes
 * the other). The fields themselves stay in env as HTTP_*. The client's
 * address, if one was given, is left in out->addr/port for the caller.
 * 0, or -1 with an exception set. */
static int
apply_forwarded(ymo_module_state *st, PyObject *env, ymo_exchange_t *ex,
                unsigned seen, const size_t *line, unsigned repeated,
                ymo_forwarded_t *out)
{
    const ymo_trust_t *t = &ex->server->config.trust;
    ymo_forwarded_t fw;
    const char *v;
    size_t n;
    int r;
    fw.has_addr = 0;
    fw.port = -1;
    fw.proto = YMO_PROTO_NONE;
    fw.host_len = 0;
    int from_forwarded = 0;
    if (seen & (1u << FWD_FORWARDED)) {
        r = fwd_value(st, env, ex, line, repeated, FWD_FORWARDED, &v, &n);
        if (r < 0) {
            return -1;
        }
        from_forwarded = r == 0 && ymo_forwarded_parse(v, n, t, &fw) == 0;
        if (!from_forwarded) {
            /* Malformed: ignored as a whole, nothing of it is kept. (No
             * X-Forwarded-* field is seen when Forwarded is believed:
             * config.proxy_headers never has both.) */
            fw.has_addr = 0;
            fw.port = -1;
            fw.proto = YMO_PROTO_NONE;
            fw.host_len = 0;
        }
    }
    if (!from_forwarded) {
        if (seen & (1u << FWD_XFF)) {
            r = fwd_value(st, env, ex, line, repeated, FWD_XFF, &v, &n);
            if (r < 0) {
                return -1;
            }
            if (r == 0 && ymo_forwarded_for(v, n, t, &fw) < 0) {
                fw.has_addr = 0;
            }
        }
        if (seen & (1u << FWD_XFP)) {
            r = fwd_value(st, env, ex, line, repeated, FWD_XFP, &v, &n);
            if (r < 0) {
                return -1;
            }
            if (r == 0) {
                fw.proto = ymo_forwarded_proto(v, n);
            }
        }
        if (seen & (1u << FWD_XFH)) {
            r = fwd_value(st, env, ex, line, repeated, FWD_XFH, &v, &n);
            if (r < 0) {
                return -1;
            }
            if (r == 0 && ymo_forwarded_host(v, n, &fw) < 0) {
                fw.host_len = 0;
            }
        }
    }
    /* The address is the caller's to set (it sets REMOTE_ADDR once). */
    out->has_addr = fw.has_addr;
    if (fw.has_addr) {
        memcpy(out->addr, fw.addr, sizeof(out->addr));
        out->port = fw.port;
    }
    if (fw.proto == YMO_PROTO_HTTPS &&
        (PyDict_SetItem(env, st->k_wsgi_url_scheme, st->v_https) < 0 ||
         PyDict_SetItem(env, st->k_https, st->v_on) < 0)) {
        return -1;
    }
    if (fw.host_len > 0) {
        /* The host the client asked for: HTTP_HOST, and SERVER_NAME and
         * SERVER_PORT from it (the port defaults to the scheme's), so
         * that both of PEP 3333's URL reconstructions agree. */
        size_t name_len, port_off, port_len;
        ymo_forwarded_split_host(fw.host, fw.host_len, &name_len,
                                 &port_off, &port_len);
        if (set_latin1(env, st->header_keys[HOST_KEY], fw.host,
                       fw.host_len, NULL) < 0 ||
            set_latin1(env, st->k_server_name, fw.host, name_len,
                       NULL) < 0) {
            return -1;
        }
        if (port_len > 0) {
            r = set_latin1(env, st->k_server_port, fw.host + port_off,
                           port_len, NULL);
        }
        else {
            r = set_port(env, st->k_server_port,
                         fw.proto == YMO_PROTO_HTTPS ? 443 : 80);
        }
        if (r < 0) {
            return -1;
        }
    }
    else if (fw.proto == YMO_PROTO_HTTPS && ex->listener->is_unix &&
             !host_has_port(&ex->req)) {
        /* A unix listener's SERVER_PORT comes from the request's host
         * (set_unix_server): without a port of its own there, it is the
         * scheme's default, and the scheme is now https. */
        if (set_port(env, st->k_server_port, 443) < 0) {
            return -1;
        }
    }
    return 0;
}

PyObject *
ymo_wsgi_environ(struct ymo_wsgi_app *app, ymo_exchange_t *ex,
                 PyObject **values)
{
    ymo_module_state *st = app->st;
    const ymo_http_request_t *req = &ex->req;
    PyObject *env = PyDict_Copy(app->environ_template[ex->listener->index]);
    PyObject *v;
    if (env == NULL) {
        return NULL;
    }
#define SET(key, value)                                                    \
    do {                                                                   \
        if (PyDict_SetItem(env, (key), (value)) < 0) {                     \
            goto fail;                                                     \
        }                                                                  \
    } while (0)
#define SET_NEW(key, expr)                                                 \
    do {                                                                   \
        if ((v = (expr)) == NULL) {                                        \
            goto fail;                                                     \
        }                                                                  \
        int r_ = PyDict_SetItem(env, (key), v);                            \
        Py_DECREF(v);                                                      \
        if (r_ < 0) {                                                      \
            goto fail;                                                     \
        }                                                                  \
    } while (0)

    SET_NEW(st->k_request_method, method_str(st, req));
    /* PATH_INFO: percent-decoded bytes as latin-1 (PEP 3333 "native
     * strings"); frameworks re-encode it to recover UTF-8. */
    {
        char stackbuf[1024];
        char *buf = req->path_len <= sizeof(stackbuf)
                        ? stackbuf
                        : ymo_pymem_malloc(req->path_len + 1);
        if (buf == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        size_t n = ymo_http_percent_decode(req->path, req->path_len, buf);
        v = PyUnicode_DecodeLatin1(buf, (Py_ssize_t)n, NULL);
        if (buf != stackbuf) {
            PyMem_Free(buf);
        }
        if (v == NULL) {
            goto fail;
        }
        int r = PyDict_SetItem(env, st->k_path_info, v);
        Py_DECREF(v);
        if (r < 0) {
            goto fail;
        }
    }
    /* The template's QUERY_STRING is empty, its SERVER_PROTOCOL
     * HTTP/1.1. */
    if (req->query_len > 0 &&
        set_latin1(env, st->k_query_string, req->query, req->query_len,
                   NULL) < 0) {
        goto fail;
    }
    if (set_latin1(env, st->k_raw_uri, req->target, req->target_len,
                   NULL) < 0) {
        goto fail;
    }
    if (req->minor_version != 1) {
        SET(st->k_server_protocol, st->v_http10);
    }
    /* Only unix listeners take the server's name from the request. */
    if (ex->listener->is_unix && req->host_len > 0 &&
        set_unix_server(st, env, req->host, req->host_len) < 0) {
        goto fail;
    }
    /* req->host is the Host field or, for an absolute-form target, the
     * target's authority, which replaces Host (RFC 9112 3.2.2): HTTP_HOST
     * is taken from it, and the Host field line is skipped below. */
    if (req->host != NULL &&
        set_latin1(env, st->header_keys[HOST_KEY], req->host,
                   req->host_len, values) < 0) {
        goto fail;
    }
    unsigned fwd_seen = 0;     /* believed forwarding fields (a trusted
                                * peer, config.proxy_headers) */
    unsigned fwd_repeated = 0; /* ... that came in more than one line */
    size_t fwd_line[FWD_NONE] = {0};   /* where each one is */
    for (size_t i = 0; i < req->num_headers; i++) {
        const ymo_http_header_t *h = &req->headers[i];
        /* "X_Foo" would become the same key as "X-Foo": a way to smuggle
         * a header past a proxy that checks X-Foo. Drop such names. */
        if (memchr(h->name, '_', h->name_len) != NULL) {
            continue;
        }
        int common = common_index(st, h->name, h->name_len);
        if (common == CONTENT_TYPE_KEY) {
            /* The parser refuses a repeated Content-Type. */
            if (set_latin1(env, st->k_content_type, h->value,
                           h->value_len, values) < 0) {
                goto fail;
            }
            continue;
        }
        if (common == CONTENT_LENGTH_KEY) {
            /* The parser accepted only identical duplicates. */
            if (set_latin1(env, st->k_content_length, h->value,
                           h->value_len, NULL) < 0) {
                goto fail;
            }
            continue;
        }
        if (common == HOST_KEY) {
            continue;               /* HTTP_HOST is set above */
        }
        PyObject *key;
        if (common >= 0) {
            key = Py_NewRef(st->header_keys[common]);
            int fwd = common - FWD_KEY;
            if (fwd >= 0 && fwd < FWD_NONE && ex->trusted &&
                (ex->server->config.proxy_headers & fwd_bits[fwd])) {
                fwd_repeated |= fwd_seen & (1u << fwd);
                fwd_seen |= 1u << fwd;
                fwd_line[fwd] = i;
            }
        }
        else if ((key = make_key(h->name, h->name_len,
                                  values != NULL
                                      ? values + YMO_WSGI_VALUE_CACHE
                                      : NULL)) == NULL) {
            goto fail;
        }
        /* Credentials stay out of the worker's cache of values: nothing
         * of a request's secret outlives the request there, and no timing
         * can tell whether another client sent the same one lately. */
        int is_cookie = common == COOKIE_KEY;
        int secret = is_cookie || common == AUTHORIZATION_KEY ||
                     common == PROXY_AUTHORIZATION_KEY;
        int r = add_header(env, key, h->value, h->value_len, is_cookie,
                           secret ? NULL : values);
        Py_DECREF(key);
        if (r < 0) {
            goto fail;
        }
    }
    /* REMOTE_ADDR and REMOTE_PORT are set last, once: from what a
     * trusted proxy said, or the peer's. */
    ymo_forwarded_t fw;
    fw.has_addr = 0;
    if (fwd_seen != 0 && apply_forwarded(st, env, ex, fwd_seen, fwd_line,
                                         fwd_repeated, &fw) < 0) {
        goto fail;
    }
    const char *addr = fw.has_addr ? fw.addr : ex->remote_addr;
    int port = fw.has_addr ? fw.port : ex->remote_port;
    if (set_latin1(env, st->k_remote_addr, addr, strlen(addr),
                   values) < 0) {
        goto fail;
    }
    if (port >= 0) {
        char digits[24];
        size_t n = ymo_put_decimal(digits, (unsigned long long)port);
        /* ASCII digits: the latin-1 decoder, the cheapest way to a str. */
        SET_NEW(st->k_remote_port,
                PyUnicode_DecodeLatin1(digits, (Py_ssize_t)n, NULL));
    }
    else {
        /* A unix socket peer, or a forwarded client without a port of
         * its own (the proxy's port says nothing about it). */
        SET(st->k_remote_port, st->v_empty);
    }
#undef SET
#undef SET_NEW
    return env;
fail:
    Py_DECREF(env);
    return NULL;
}
