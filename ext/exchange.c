/* exchange.c - creation, request-body hand-over and teardown of an
 * exchange (see exchange.h for who owns what). */
#include "exchange.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "wsgi_worker.h"

/* Body bytes are appended to the tail bucket while it has room, so a body
 * that arrives in small reads does not become a long chain. */
#define IN_BUCKET_SIZE 16384
/* Buckets the loop receives a body into: one read(2) fills up to this. */
#define IN_BUCKET_SIZE_DIRECT 65536

static const char *
rebase(const char *p, const char *from, char *to)
{
    return p == NULL ? NULL : to + (p - from);
}

/* The calling thread's kept exchanges (see ymo_exchange_cache_begin):
 * linked through their first bytes. Only a loop thread turns it on. */
typedef struct {
    ymo_kept_t kept;
    unsigned on;                   /* begin calls not yet ended */
} ex_cache_t;
static __thread ex_cache_t ex_cache;

void
ymo_exchange_cache_begin(void)
{
    ex_cache.on++;
}

void
ymo_exchange_cache_end(void)
{
    if (ex_cache.on > 0 && --ex_cache.on > 0) {
        return;
    }
    ymo_kept_free(&ex_cache.kept, YMO_EX_BLOCK);
}

ymo_exchange_t *
ymo_exchange_new(const char *buf, size_t head_len,
                 const ymo_http_request_t *req)
{
    /* One allocation: the struct, the head copy, then the header array
     * aligned for it. */
    size_t align = _Alignof(ymo_http_header_t);
    size_t hoff = (head_len + 1 + align - 1) & ~(align - 1);
    size_t hsize = req->num_headers * sizeof(ymo_http_header_t);
    size_t size = sizeof(ymo_exchange_t) + hoff + hsize;
    int in_block = size <= YMO_EX_BLOCK;
    ymo_exchange_t *ex = NULL;
#ifndef YMO_FAULT_INJECTION
    if (in_block) {
        ex = ymo_kept_take(&ex_cache.kept, YMO_EX_BLOCK);
    }
#endif
    if (ex == NULL) {
        ex = ymo_malloc(in_block ? YMO_EX_BLOCK : size);
        if (ex == NULL) {
            return NULL;
        }
    }
    /* The struct starts zeroed; the head and the header array are written
     * whole below (malloc, not calloc: see ymo_zalloc in alloc.h). */
    ymo_zero_(ex, sizeof(*ex));
    ex->in_block = in_block;
    if (YMO_FI_FAIL("exchange lock") ||
        pthread_mutex_init(&ex->lock, NULL) != 0) {
        free(ex);
        return NULL;
    }
    if (YMO_FI_FAIL("exchange cond_in") ||
        pthread_cond_init(&ex->cond_in, NULL) != 0) {
        pthread_mutex_destroy(&ex->lock);
        free(ex);
        return NULL;
    }
    if (YMO_FI_FAIL("exchange cond_out") ||
        pthread_cond_init(&ex->cond_out, NULL) != 0) {
        pthread_cond_destroy(&ex->cond_in);
        pthread_mutex_destroy(&ex->lock);
        free(ex);
        return NULL;
    }
    atomic_init(&ex->refs, 1);     /* the loop's (see exchange.h) */
    memcpy(ex->head, buf, head_len);
    ex->head[head_len] = '\0';
    ex->head_len = head_len;
    ex->req = *req;
    ymo_http_header_t *h = (ymo_http_header_t *)(ex->head + hoff);
    char *to = ex->head;
    ex->req.method = rebase(req->method, buf, to);
    ex->req.target = rebase(req->target, buf, to);
    ex->req.path = rebase(req->path, buf, to);
    ex->req.query = rebase(req->query, buf, to);
    ex->req.host = rebase(req->host, buf, to);
    for (size_t i = 0; i < req->num_headers; i++) {
        h[i].name = rebase(req->headers[i].name, buf, to);
        h[i].name_len = req->headers[i].name_len;
        h[i].value = rebase(req->headers[i].value, buf, to);
        h[i].value_len = req->headers[i].value_len;
    }
    ex->req.headers = h;
    ex->in_done = req->body == YMO_HTTP_BODY_NONE;
    ex->remote_port = -1;
    return ex;
}

void
ymo_exchange_retain(ymo_exchange_t *ex)
{
    atomic_fetch_add_explicit(&ex->refs, 1, memory_order_relaxed);
}

void
ymo_exchange_release(ymo_exchange_t *ex)
{
    /* acq_rel: whatever this thread did to the exchange happens before
     * the free on the thread that drops the last reference. */
    if (atomic_fetch_sub_explicit(&ex->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
    ymo_bucket_free_chain(ex->in_head);
    ymo_bucket_free_chain(ex->out_head);
    pthread_cond_destroy(&ex->cond_out);
    pthread_cond_destroy(&ex->cond_in);
    pthread_mutex_destroy(&ex->lock);
#ifndef YMO_FAULT_INJECTION
    if (ex->in_block && ex_cache.on > 0 &&
        ymo_kept_put(&ex_cache.kept, ex, YMO_EX_BLOCK, YMO_EX_CACHE_MAX)) {
        return;
    }
#endif
    free(ex);
}

/* Wake every reader (lock held): there may be several threads of the app
 * reading, and each must see the news. */
static void
wake_readers(ymo_exchange_t *ex)
{
    if (ex->in_waiters > 0) {
        pthread_cond_broadcast(&ex->cond_in);
    }
}

/* Body bytes came (lock held): wake the readers once there are enough
 * for one of them (ymo_exchange_read), the body is whole, or the loop
 * stopped reading until they take some. A reader of a big body is woken
 * per low-water mark's worth instead of per read() of the socket. */
static void
wake_readers_for_input(ymo_exchange_t *ex)
{
    if (ex->in_done || ex->in_paused || ex->in_buffered >= ex->in_want) {
        wake_readers(ex);
    }
}

static void
wake_writers(ymo_exchange_t *ex)
{
    if (ex->out_waiters > 0) {
        pthread_cond_broadcast(&ex->cond_out);
    }
}

void
ymo_exchange_wake_all(ymo_exchange_t *ex)
{
    wake_readers(ex);
    wake_writers(ex);
}

int
(ymo_exchange_input_append)(ymo_exchange_t *ex, const char *data,
                            size_t len, int done, size_t high_water
                            YMO_SITE_PARAM)
{
    int r = 0;
    pthread_mutex_lock(&ex->lock);
    while (len > 0) {
        ymo_bucket_t *b = ex->in_tail;
        if (b == NULL || b->len == b->cap) {
            b = (ymo_bucket_new)(len > IN_BUCKET_SIZE ? len : IN_BUCKET_SIZE
                                 YMO_SITE_FWD);
            if (b == NULL) {
                r = -ENOMEM;
                break;
            }
            if (ex->in_tail != NULL) {
                ex->in_tail->next = b;
            }
            else {
                ex->in_head = b;
            }
            ex->in_tail = b;
        }
        size_t n = b->cap - b->len < len ? b->cap - b->len : len;
        memcpy(b->data + b->len, data, n);
        b->len += n;
        ex->in_buffered += n;
        ex->in_received += n;
        data += n;
        len -= n;
    }
    if (done && r == 0) {
        /* Not when a bucket failed: the body is not all there, and a
         * complete-looking body would be handed to the app short (the loop
         * fails the input next, which a done body would ignore). */
        ex->in_done = 1;
    }
    if (r == 0 && !ex->in_done && ex->in_buffered >= high_water) {
        ex->in_paused = 1;
        r = 1;
    }
    wake_readers_for_input(ex);
    pthread_mutex_unlock(&ex->lock);
    return r;
}

/* The tail bucket stays in the chain while it has room, even once read
 * to its end (see ymo_exchange_read): the loop may be receiving into that
 * room without the lock, and appends to it. */
static int
input_tail_open(const ymo_exchange_t *ex, const ymo_bucket_t *b)
{
    return b->next == NULL && b->len < b->cap && !ex->in_done;
}

char *
(ymo_exchange_input_space)(ymo_exchange_t *ex, uint64_t left, size_t *room
                           YMO_SITE_PARAM)
{
    pthread_mutex_lock(&ex->lock);
    ymo_bucket_t *b = ex->in_tail;
    if (b == NULL || b->len == b->cap) {
        /* No bigger than what is left of the body: a small body costs a
         * small bucket. */
        size_t cap = left < IN_BUCKET_SIZE_DIRECT ? (size_t)left
                                                  : IN_BUCKET_SIZE_DIRECT;
        b = (ymo_bucket_new)(cap YMO_SITE_FWD);
        if (b == NULL) {
            pthread_mutex_unlock(&ex->lock);
            return NULL;
        }
        if (ex->in_tail != NULL) {
            ex->in_tail->next = b;
        }
        else {
            ex->in_head = b;
        }
        ex->in_tail = b;
    }
    *room = b->cap - b->len;
    char *p = b->data + b->len;
    pthread_mutex_unlock(&ex->lock);
    return p;
}

/* input_commit with the lock held. */
static int
input_commit_locked(ymo_exchange_t *ex, size_t n, int done,
                    size_t high_water)
{
    int r = 0;
    ex->in_tail->len += n;
    ex->in_buffered += n;
    ex->in_received += n;
    if (done) {
        ex->in_done = 1;
    }
    if (!ex->in_done && ex->in_buffered >= high_water) {
        ex->in_paused = 1;
        r = 1;
    }
    wake_readers_for_input(ex);
    return r;
}

int
ymo_exchange_input_commit(ymo_exchange_t *ex, size_t n, int done,
                          size_t high_water)
{
    pthread_mutex_lock(&ex->lock);
    int r = input_commit_locked(ex, n, done, high_water);
    pthread_mutex_unlock(&ex->lock);
    return r;
}

int
ymo_exchange_input_adopt(ymo_exchange_t *ex, ymo_bucket_t *b, int done,
                         size_t high_water)
{
    size_t n = b->len - b->off;
    b->len = b->off;            /* committed below */
    b->next = NULL;
    pthread_mutex_lock(&ex->lock);
    if (ex->in_tail != NULL) {
        ex->in_tail->next = b;
    }
    else {
        ex->in_head = b;
    }
    ex->in_tail = b;
    int r = input_commit_locked(ex, n, done, high_water);
    pthread_mutex_unlock(&ex->lock);
    return r;
}

void
ymo_exchange_input_fail(ymo_exchange_t *ex, int status)
{
    pthread_mutex_lock(&ex->lock);
    if (!ex->in_done && ex->in_error == 0) {
        ex->in_error = status;
    }
    wake_readers(ex);
    pthread_mutex_unlock(&ex->lock);
}

void
ymo_exchange_abort(ymo_exchange_t *ex, int reason)
{
    pthread_mutex_lock(&ex->lock);
    ex->aborted = 1;
    if (!ex->in_done && ex->in_error == 0) {
        ex->in_error = reason;
    }
    ymo_exchange_wake_all(ex);
    pthread_mutex_unlock(&ex->lock);
}

void
ymo_exchange_client_eof(ymo_exchange_t *ex)
{
    pthread_mutex_lock(&ex->lock);
    ex->client_eof = 1;
    pthread_mutex_unlock(&ex->lock);
}

int
ymo_exchange_client_gone(ymo_exchange_t *ex)
{
    pthread_mutex_lock(&ex->lock);
    int gone = ex->aborted || ex->client_eof;
    pthread_mutex_unlock(&ex->lock);
    return gone;
}

void
ymo_exchange_output_written(ymo_exchange_t *ex, size_t n, size_t low_water)
{
    pthread_mutex_lock(&ex->lock);
    ex->out_buffered -= n;
    if (ex->out_buffered <= low_water) {
        wake_writers(ex);
    }
    pthread_mutex_unlock(&ex->lock);
}

long
ymo_exchange_read(ymo_exchange_t *ex, char *dst, size_t n, int line,
                  size_t low_water, int *status)
{
    size_t got = 0;
    int post = 0;
    long r;
    pthread_mutex_lock(&ex->lock);
    if (!ex->in_started) {
        ex->in_started = 1;
        if (ex->req.expect_continue && !ex->in_done && !ex->out_complete) {
            ex->need_continue = 1;
            post = 1;
        }
    }
    for (;;) {
        /* Copy what is there, and wait for more until there are n bytes
         * (a line: until its end), the body ends or fails. */
        while (got < n && ex->in_head != NULL) {
            ymo_bucket_t *b = ex->in_head;
            size_t avail = b->len - b->off;
            if (avail == 0 && input_tail_open(ex, b)) {
                break;      /* read to its end; the loop fills the rest */
            }
            size_t want = n - got < avail ? n - got : avail;
            const char *src = b->data + b->off;
            if (line) {
                const char *nl = memchr(src, '\n', want);
                if (nl != NULL) {
                    want = (size_t)(nl - src) + 1;
                }
            }
            memcpy(dst + got, src, want);
            got += want;
            b->off += want;
            ex->in_buffered -= want;
            if (b->off == b->len && !input_tail_open(ex, b)) {
                ex->in_head = b->next;
                if (ex->in_head == NULL) {
                    ex->in_tail = NULL;
                }
                ymo_bucket_free(b);
            }
            if (line && got > 0 && dst[got - 1] == '\n') {
                goto done;
            }
        }
        if (got == n || ex->in_done) {
            break;
        }
        if (ex->in_error != 0 || ex->out_complete) {
            /* A line cut short is still returned: the error comes with
             * the next read. */
            if (got > 0) {
                break;
            }
            *status = ex->in_error != 0 ? ex->in_error : YMO_READ_FINISHED;
            r = -1;
            goto out;
        }
        if (ex->in_paused && !ex->need_resume) {
            ex->need_resume = 1;
            post = 1;
        }
        if (post) {
            /* Tell the loop before sleeping, or nobody would wake us. */
            pthread_mutex_unlock(&ex->lock);
            ymo_wsgi_worker_post(ex);
            post = 0;
            pthread_mutex_lock(&ex->lock);
            continue;
        }
        /* Woken when what is missing is there (a line: any byte), or
         * low_water bytes of it: the loop pauses at twice that, and
         * resumes once this reader has taken them. */
        size_t want = line ? 1 : n - got < low_water ? n - got : low_water;
        if (want == 0) {
            want = 1;
        }
        if (ex->in_waiters == 0 || want < ex->in_want) {
            ex->in_want = want;
        }
        ex->in_waiters++;
        pthread_cond_wait(&ex->cond_in, &ex->lock);
        ex->in_waiters--;
    }
done:
    if (ex->in_paused && !ex->need_resume && ex->in_buffered <= low_water) {
        ex->need_resume = 1;
        post = 1;
    }
    r = (long)got;
out:
    pthread_mutex_unlock(&ex->lock);
    if (post) {
        ymo_wsgi_worker_post(ex);
    }
    return r;
}

int
ymo_exchange_wait_drain(ymo_exchange_t *ex, size_t low_water)
{
    pthread_mutex_lock(&ex->lock);
    while (!ex->aborted && !ex->out_complete &&
           ex->out_buffered > low_water) {
        ex->out_waiters++;
        pthread_cond_wait(&ex->cond_out, &ex->lock);
        ex->out_waiters--;
    }
    int stop = ex->aborted || ex->out_complete;
    pthread_mutex_unlock(&ex->lock);
    return stop;
}
