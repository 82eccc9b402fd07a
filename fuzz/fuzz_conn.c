/* fuzz_conn.c - libFuzzer target for a whole connection (run it with
 * fuzz/run.sh): ext/conn.c with the parser, body decoding, pipelining,
 * response writing and its timers, on one connection with no socket and no
 * Python. The input chooses how the client's bytes are split into reads,
 * when the client stops or resets, how writes fail, when time passes and
 * how a fake application (standing in for the worker thread) answers each
 * request; the target aborts when an invariant breaks.
 *
 * The seam is the linker's, so conn.c is built exactly as in production:
 * -Wl,--wrap redirects the calls conn.c and bucket.c make on the client's
 * descriptor (read, sendmsg, sendfile, shutdown, close) and libev's timer
 * calls (ev_timer_start, ev_timer_stop, ev_timer_remaining) to this file,
 * which owns a virtual clock: the server's own clock field (`now`, what
 * ymo_server_now() reads), set by the harness as time passes. I/O
 * watchers stay real libev watchers on a real loop that never runs: the
 * harness reads which events the connection asked for and calls its
 * callback as the loop would. ymo_exchange_new and ymo_exchange_release are
 * wrapped too, to count what the loop creates and releases. The worker
 * side of wsgi_worker.h (which needs Python) is implemented here: the same
 * queues and flags, the app run one step at a time.
 *
 * Input layout: byte 0 picks the configuration, byte 1 how the client
 * and the socket behave at the end (and, byte 1 / 60, whether the client
 * is a trusted proxy that must send a PROXY header, or an untrusted peer
 * that may not), bytes 2-3 (little endian) the length
 * of the choice bytes that follow; the rest is what the client sends.
 * Choices read past their end are 0, the benign default.                 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fuzz_check.h"
#include "bucket.h"
#include "conn.h"
#include "exchange.h"
#include "http_parser.h"
#include "http_response.h"
#include "proxy_protocol.h"
#include "queue.h"
#include "server.h"
#include "wsgi_worker.h"

#ifndef YMO_FLUSH_TURN
#error "build with -DYMO_FLUSH_TURN=N for this file and conn.c (fuzz/run.sh)"
#endif

#define N_FILE_FDS 4
#define MAX_ACTIONS 3000
#define MAX_FINAL_ITERATIONS 200000
#define CONTINUE_LINE "HTTP/1.1 100 Continue\r\n\r\n"

/* Timeouts in virtual seconds. */
#define HEADER_TIMEOUT 10.0
#define KEEPALIVE_TIMEOUT 5.0
#define BODY_TIMEOUT 7.0
#define WRITE_TIMEOUT 3.0

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void
buf_add(buf_t *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) {
            cap *= 2;
        }
        b->p = realloc(b->p, cap);
        CHECK(b->p != NULL);
        b->cap = cap;
    }
    if (n > 0) {
        memcpy(b->p + b->len, d, n);
    }
    b->len += n;
}

/* -- The fake application, one per exchange. -- */

enum { P_START, P_READ, P_HEAD, P_BODY, P_HELD, P_FIN, P_GONE };
enum { R_FULL, R_STREAM, R_FILE, R_ABORT_EMPTY, R_ABORT_MID, R_ERROR,
       R_KINDS };

typedef struct rec {
    ymo_exchange_t *ex;            /* NULL once freed */
    ymo_wsgi_worker_t *worker;     /* running it, once dequeued */
    int freed;
    int loop_releases;             /* releases made by the loop side */
    int done_flags;                /* the final post's flags, 0 before */
    int held;                      /* P_HELD: the done flags held back
                                    * while close() runs */
    int expect_continue;
    int read_any;
    buf_t out;                     /* every byte the app appended */
    /* what the body must be: from the client's bytes */
    const char *body;
    size_t body_avail;             /* of it present in the client data */
    uint64_t body_len;             /* the full length, if it can end */
    int body_can_end;
    buf_t decoded;                 /* chunked: decoded body */
    uint64_t consumed;             /* body bytes the app read */
    /* the app's plan */
    int phase;
    int queued;                    /* in a worker's input queue */
    uint64_t read_target;          /* stop reading after this many */
    int kind;                      /* R_* */
    int rogue;                     /* ignores the keep-alive rules */
    int holds_ref;                 /* a reference of its own (wsgi.input) */
    int late_read;                 /* reads once more after done */
    size_t body_size;
    size_t pieces_left;
    size_t piece;
    int tiny_buckets;
    int ref_buckets;               /* body buckets by reference (owner:
                                    * a malloc'd block of the harness) */
    int read_status;               /* a failed read's status, or 0 */
} rec_t;

/* -- Per-input state. -- */
static struct {
    int active;
    /* choices */
    const uint8_t *ch;
    size_t ch_len, ch_pos;
    /* the client */
    const uint8_t *client;
    size_t client_total;           /* bytes in the input */
    size_t client_end;             /* bytes it will ever send */
    size_t client_pos;             /* bytes the server has read */
    int client_eof;                /* after client_end: EOF (else silent) */
    int client_reset;              /* after client_end: reset */
    size_t read_allow;             /* bytes the next read may return */
    size_t cursor;                 /* where the next request head starts;
                                    * SIZE_MAX once none may follow */
    /* the socket */
    int conn_closed, shut_wr, writable, write_broken, final;
    int other_closed, read_eintr;
    int write_stuck;
    buf_t out;                     /* what the client received */
    /* the server */
    ymo_server_t server;
    ymo_listener_t listener;
    ymo_conn_t *conn;              /* NULL once closed */
    int drained;
    /* exchanges */
    rec_t **recs;
    size_t n_recs, cap_recs;
    unsigned long progress;
    /* reference buckets: made, and come back through the release list */
    size_t refs_made, refs_back;
} H;

/* Descriptors reserved once per process (opened on /dev/null and never
 * closed), so no real descriptor can have their numbers. */
static int conn_fd = -1;
static int other_fd = -1;          /* an idle second connection's */
static int file_fds[N_FILE_FDS];
static struct {
    int open;
    size_t size;                   /* bytes the "file" really has */
} files[N_FILE_FDS];

static unsigned
pick(unsigned mod)
{
    if (mod <= 1 || H.ch_pos >= H.ch_len) {
        return 0;
    }
    return H.ch[H.ch_pos++] % mod;
}

static int
choices_left(void)
{
    return H.ch_pos < H.ch_len;
}

static rec_t *
rec_of(const ymo_exchange_t *ex)
{
    for (size_t i = H.n_recs; i > 0; i--) {
        if (H.recs[i - 1]->ex == ex) {
            return H.recs[i - 1];
        }
    }
    CHECK(!"an exchange the harness does not know");
    return NULL;
}

static int
file_slot(int fd)
{
    for (int i = 0; i < N_FILE_FDS; i++) {
        if (file_fds[i] == fd) {
            return i;
        }
    }
    return -1;
}

static unsigned char
file_byte(int slot, size_t off)
{
    return (unsigned char)('A' + (off * 7 + (size_t)slot) % 26);
}

/* -- Link-time wrappers: the client's socket. -- */

/* Reads straight into a body bucket, over the whole run: with
 * FUZZ_CONN_STATS set in the environment, printed at exit, to see that
 * the corpus exercises that path. */
static uint64_t direct_reads;

__attribute__((destructor)) static void
print_stats(void)
{
    if (getenv("FUZZ_CONN_STATS") != NULL) {
        fprintf(stderr, "fuzz_conn: %llu reads into body buckets\n",
                (unsigned long long)direct_reads);
    }
}

ssize_t __real_read(int fd, void *buf, size_t n);
ssize_t __real_sendmsg(int fd, const struct msghdr *msg, int flags);
ssize_t __real_sendfile(int out, int in, off_t *off, size_t n);
int __real_shutdown(int fd, int how);
int __real_close(int fd);

ssize_t
__wrap_read(int fd, void *buf, size_t n)
{
    if (H.active && fd == other_fd) {
        CHECK(!H.other_closed);
        errno = EAGAIN;
        return -1;
    }
    if (!H.active || fd != conn_fd) {
        return __real_read(fd, buf, n);
    }
    if (H.read_eintr) {
        H.read_eintr = 0;
        errno = EINTR;
        return -1;
    }
    CHECK(!H.conn_closed);
    CHECK(n > 0);                  /* 0 would read as an EOF */
    const ymo_conn_busy_t *cb = H.conn != NULL ? H.conn->busy : NULL;
    if (cb != NULL && cb->state == YMO_CONN_EXCHANGE && cb->ex != NULL &&
        cb->body_kind == YMO_HTTP_BODY_LENGTH && !cb->body_done &&
        !cb->body_paused && cb->body_left > 0 && cb->inlen == 0) {
        /* A Content-Length body is read straight into the room at the
         * end of the exchange's input, never past the body's end (the
         * next request's bytes go to inbuf). */
        const ymo_bucket_t *t = cb->ex->in_tail;
        CHECK(t != NULL && (char *)buf == t->data + t->len);
        CHECK(n <= t->cap - t->len && n <= cb->body_left);
        direct_reads++;
    }
    if (H.client_pos < H.client_end && H.read_allow > 0) {
        size_t k = H.client_end - H.client_pos;
        k = k < n ? k : n;
        k = k < H.read_allow ? k : H.read_allow;
        memcpy(buf, H.client + H.client_pos, k);
        H.client_pos += k;
        H.read_allow -= k;
        H.progress++;
        return (ssize_t)k;
    }
    if (H.client_pos == H.client_end && H.read_allow > 0) {
        if (H.client_reset) {
            errno = ECONNRESET;
            return -1;
        }
        if (H.client_eof) {
            return 0;
        }
    }
    errno = EAGAIN;
    return -1;
}

/* How many of `total` bytes the socket takes now, or -1 with errno. */
static ssize_t
socket_take(size_t total)
{
    CHECK(!H.conn_closed);
    CHECK(!H.shut_wr);             /* nothing after our FIN */
    if (H.write_broken) {
        errno = EPIPE;
        return -1;
    }
    if (!H.writable) {
        errno = EAGAIN;
        return -1;
    }
    if (total == 0) {
        return 0;
    }
    switch (pick(10)) {
    case 5:
        return (ssize_t)(1 + pick(256) % total);
    case 6:
        H.writable = 0;
        errno = EAGAIN;
        return -1;
    case 7:
        H.write_broken = 1;
        errno = pick(2) ? EPIPE : ECONNRESET;
        return -1;
    case 8:
        errno = EINTR;
        return -1;
    default:
        return (ssize_t)total;
    }
}

ssize_t
__wrap_sendmsg(int fd, const struct msghdr *msg, int flags)
{
    if (!H.active || fd != conn_fd) {
        return __real_sendmsg(fd, msg, flags);
    }
    CHECK(flags & MSG_NOSIGNAL);
    size_t total = 0;
    for (size_t i = 0; i < msg->msg_iovlen; i++) {
        total += msg->msg_iov[i].iov_len;
    }
    /* conn_flush asks for no more than a turn's budget. */
    CHECK(total <= YMO_FLUSH_TURN);
    ssize_t n = socket_take(total);
    if (n <= 0) {
        return n;
    }
    size_t left = (size_t)n;
    for (size_t i = 0; i < msg->msg_iovlen && left > 0; i++) {
        size_t k = msg->msg_iov[i].iov_len;
        k = k < left ? k : left;
        buf_add(&H.out, msg->msg_iov[i].iov_base, k);
        left -= k;
    }
    H.progress++;
    return n;
}

ssize_t
__wrap_sendfile(int out, int in, off_t *off, size_t count)
{
    if (!H.active || out != conn_fd) {
        return __real_sendfile(out, in, off, count);
    }
    int slot = file_slot(in);
    CHECK(slot >= 0 && files[slot].open);
    CHECK(off != NULL && *off >= 0);
    CHECK(count <= YMO_FLUSH_TURN);
    size_t pos = (size_t)*off;
    size_t avail = pos < files[slot].size ? files[slot].size - pos : 0;
    size_t want = count < avail ? count : avail;
    if (want == 0) {
        CHECK(!H.shut_wr && !H.conn_closed);
        return 0;                  /* end of file */
    }
    ssize_t n = socket_take(want);
    if (n <= 0) {
        return n;
    }
    for (size_t i = 0; i < (size_t)n; i++) {
        unsigned char c = file_byte(slot, pos + i);
        buf_add(&H.out, &c, 1);
    }
    *off += n;
    H.progress++;
    return n;
}

int
__wrap_shutdown(int fd, int how)
{
    if (!H.active || fd != conn_fd) {
        return __real_shutdown(fd, how);
    }
    CHECK(!H.conn_closed);
    CHECK(how == SHUT_WR);
    H.shut_wr = 1;
    return 0;
}

int
__wrap_close(int fd)
{
    if (!H.active) {
        return __real_close(fd);
    }
    if (fd == other_fd) {
        CHECK(!H.other_closed);
        H.other_closed = 1;
        return 0;
    }
    if (fd == conn_fd) {
        CHECK(!H.conn_closed);     /* closed exactly once */
        H.conn_closed = 1;
        H.conn = NULL;             /* freed right after this */
        H.progress++;
        return 0;
    }
    int slot = file_slot(fd);
    if (slot >= 0) {
        CHECK(files[slot].open);
        files[slot].open = 0;
        return 0;
    }
    return __real_close(fd);
}

/* -- Link-time wrappers: libev's timers run on virtual time. -- */

void
__wrap_ev_timer_start(struct ev_loop *loop, ev_timer *w)
{
    (void)loop;
    if (w->active) {
        return;
    }
    CHECK(w->at >= 0.);
    w->at += H.server.now;     /* absolute, as libev keeps it */
    w->active = 1;
}

void
__wrap_ev_timer_stop(struct ev_loop *loop, ev_timer *w)
{
    (void)loop;
    w->active = 0;
}

ev_tstamp
__wrap_ev_timer_remaining(struct ev_loop *loop, ev_timer *w)
{
    (void)loop;
    return w->at - (w->active ? H.server.now : 0.);
}

/* -- Link-time wrappers: the loop's side of an exchange's lifetime. -- */

ymo_exchange_t *__real_ymo_exchange_new(const char *buf, size_t head_len,
                                        const ymo_http_request_t *req);
void __real_ymo_exchange_release(ymo_exchange_t *ex);

/* What the body of the request whose head ends at `start` must be. */
static void
expect_body(rec_t *r, const ymo_http_request_t *req, size_t start)
{
    const char *at = (const char *)H.client + start;
    size_t avail = H.client_total - start;
    if (req->body == YMO_HTTP_BODY_NONE) {
        r->body_can_end = 1;
        H.cursor = start;
        return;
    }
    if (req->body == YMO_HTTP_BODY_LENGTH) {
        r->body = at;
        r->body_len = req->content_length;
        r->body_avail = avail < req->content_length
                            ? avail : (size_t)req->content_length;
        r->body_can_end = r->body_avail == req->content_length;
        H.cursor = r->body_can_end ? start + r->body_avail : SIZE_MAX;
        return;
    }
    ymo_http_chunked_t d;
    size_t used = 0;
    ymo_http_chunked_init(&d, &H.server.config.limits);
    while (used < avail && !d.done) {
        const char *data;
        size_t dlen;
        ssize_t n = ymo_http_chunked_feed(&d, at + used, avail - used, &data,
                                          &dlen);
        if (n <= 0) {
            break;
        }
        used += (size_t)n;
        buf_add(&r->decoded, data, dlen);
    }
    r->body = r->decoded.p;
    r->body_avail = r->decoded.len;
    r->body_len = r->decoded.len;
    r->body_can_end = d.done;
    H.cursor = d.done ? start + used : SIZE_MAX;
}

ymo_exchange_t *
__wrap_ymo_exchange_new(const char *buf, size_t head_len,
                        const ymo_http_request_t *req)
{
    /* Requests are taken from the client's bytes in order, each head
     * right after the previous request's body, or after empty lines
     * (CRLF pairs) that followed it, which the server may drop before
     * the head (conn.c, empty_lines; how many depends on how the bytes
     * were read). */
    CHECK(H.cursor != SIZE_MAX);
    while (H.cursor + head_len <= H.client_pos &&
           memcmp(buf, H.client + H.cursor, head_len) != 0 &&
           H.cursor + 2 <= H.client_pos && H.client[H.cursor] == '\r' &&
           H.client[H.cursor + 1] == '\n') {
        H.cursor += 2;
    }
    CHECK(H.cursor + head_len <= H.client_pos);
    CHECK(memcmp(buf, H.client + H.cursor, head_len) == 0);
    if (H.n_recs > 0) {
        /* Nothing follows a response that closes the connection. */
        const rec_t *prev = H.recs[H.n_recs - 1];
        CHECK(prev->done_flags != 0);
        CHECK(!(prev->done_flags & (YMO_DONE_CLOSE | YMO_DONE_ABORT)));
        CHECK(prev->loop_releases == 1);
    }
    if (pick(32) == 31) {
        H.cursor = SIZE_MAX;       /* out of memory: a 503, then close */
        return NULL;
    }
    ymo_exchange_t *ex = __real_ymo_exchange_new(buf, head_len, req);
    if (ex == NULL) {
        return NULL;
    }
    rec_t *r = calloc(1, sizeof(*r));
    CHECK(r != NULL);
    r->ex = ex;
    r->expect_continue = req->expect_continue;
    if (H.n_recs == H.cap_recs) {
        H.cap_recs = H.cap_recs ? H.cap_recs * 2 : 16;
        H.recs = realloc(H.recs, H.cap_recs * sizeof(*H.recs));
        CHECK(H.recs != NULL);
    }
    H.recs[H.n_recs++] = r;
    expect_body(r, req, H.cursor + head_len);
    H.progress++;
    return ex;
}

static void
release(rec_t *r)
{
    CHECK(r->ex != NULL && !r->freed);
    if (atomic_load(&r->ex->refs) == 1) {
        r->freed = 1;
    }
    ymo_exchange_t *ex = r->ex;
    if (r->freed) {
        r->ex = NULL;
    }
    __real_ymo_exchange_release(ex);
}

/* Only the loop side calls this one (the app releases through release()
 * directly): the loop's one reference, dropped once the worker is done. */
void
__wrap_ymo_exchange_release(ymo_exchange_t *ex)
{
    rec_t *r = rec_of(ex);
    CHECK(r->loop_releases == 0);
    CHECK(r->done_flags != 0);     /* never while the worker has it */
    r->loop_releases++;
    release(r);
    H.progress++;
}

/* -- The worker side of wsgi_worker.h (wsgi_worker.c needs Python). The
 * queues and the output bookkeeping are those of wsgi_worker.c; the loop
 * wake-ups are the harness's to deliver. -- */

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
    pthread_mutex_init(&worker->lock_in, NULL);
    pthread_mutex_init(&worker->lock_out, NULL);
    pthread_cond_init(&worker->ready_in, NULL);
    ev_prepare_init(&worker->prepare_watcher, NULL);
    atomic_init(&worker->idle, 1);
    atomic_init(&worker->in_app, 0);
    worker->running = 1;
    worker->thread_initialized = 1;
    return 0;
}

ymo_status_t
ymo_wsgi_worker_start(ymo_wsgi_worker_t *worker)
{
    worker->started = 1;
    return 0;
}

void
ymo_wsgi_worker_stop(ymo_wsgi_worker_t *worker)
{
    worker->running = 0;
}

int
ymo_wsgi_worker_join(ymo_wsgi_worker_t *worker, int wait)
{
    (void)wait;
    worker->started = 0;
    return 0;
}

void
ymo_wsgi_worker_destroy(ymo_wsgi_worker_t *worker)
{
    if (!worker->thread_initialized) {
        return;
    }
    ev_prepare_stop(worker->loop, &worker->prepare_watcher);
    pthread_cond_destroy(&worker->ready_in);
    pthread_mutex_destroy(&worker->lock_out);
    pthread_mutex_destroy(&worker->lock_in);
    worker->thread_initialized = 0;
}

/* The request watchdog (wsgi_watchdog.c) is a Python-side thread too: the
 * harness runs none. */
int
ymo_watchdog_start(struct ymo_server *s)
{
    (void)s;
    return 0;
}

void
ymo_watchdog_stop(struct ymo_server *s)
{
    (void)s;
}

ymo_status_t
ymo_wsgi_worker_notify(ymo_wsgi_worker_t *worker)
{
    (void)worker;
    return 0;
}

int
ymo_wsgi_worker_gil_on(const struct ymo_server *s)
{
    (void)s;
    return 1;                   /* as a GIL build: a turn to one worker */
}

void
ymo_wsgi_worker_add_exchange(ymo_wsgi_worker_t *worker,
                             ymo_exchange_t *exchange)
{
    rec_t *r = rec_of(exchange);
    CHECK(!r->queued && r->phase == P_START);
    r->queued = 1;
    ymo_queue_push(&worker->queue_in, exchange, &exchange->node_in);
}

int
ymo_wsgi_worker_response_body_append(ymo_exchange_t *exchange,
                                     ymo_bucket_t *body_item, int done)
{
    ymo_wsgi_worker_t *worker = exchange->worker;
    CHECK(worker != NULL);
    pthread_mutex_lock(&exchange->lock);
    if (exchange->out_done) {
        pthread_mutex_unlock(&exchange->lock);
        ymo_bucket_free_chain(body_item);
        return YMO_OUT_ABORTED;
    }
    if (body_item != NULL) {
        ymo_bucket_t *last = body_item;
        exchange->out_buffered += last->len;
        while (last->next != NULL) {
            last = last->next;
            exchange->out_buffered += last->len;
        }
        if (exchange->out_tail != NULL) {
            exchange->out_tail->next = body_item;
        }
        else {
            exchange->out_head = body_item;
        }
        exchange->out_tail = last;
    }
    if (done & (YMO_DONE | YMO_OUT_COMPLETE)) {
        exchange->out_complete = 1;
    }
    if (done & YMO_DONE) {
        exchange->out_done = 1;
        exchange->out_close = (done & YMO_DONE_CLOSE) != 0;
        exchange->out_abort = (done & YMO_DONE_ABORT) != 0;
    }
    int flags = exchange->aborted ? YMO_OUT_ABORTED : 0;
    if (exchange->out_buffered > worker->server->config.out_high_water) {
        flags |= YMO_OUT_HIGH_WATER;
    }
    if (!exchange->out_queued) {
        exchange->out_queued = 1;
        ymo_queue_push(&worker->queue_out, exchange, &exchange->node_out);
    }
    pthread_mutex_unlock(&exchange->lock);
    return flags;
}

void
ymo_wsgi_worker_post(ymo_exchange_t *exchange)
{
    ymo_wsgi_worker_response_body_append(exchange, NULL, 0);
}

/* The loop's event_out callback (worker_on_output): everything posted. */
static int
deliver_posts(void)
{
    int any = 0;
    for (size_t w = 0; w < H.server.n_workers; w++) {
        ymo_wsgi_worker_t *worker = &H.server.workers[w];
        ymo_exchange_t *ex;
        while ((ex = ymo_queue_pop(&worker->queue_out)) != NULL) {
            ymo_conn_on_exchange(ex);
            any = 1;
        }
    }
    if (any) {
        H.progress++;
    }
    return any;
}

/* -- The application's steps. -- */

static void
append(rec_t *r, ymo_bucket_t *chain, int done)
{
    for (ymo_bucket_t *b = chain; b != NULL; b = b->next) {
        if (b->fd >= 0) {
            int slot = file_slot(b->fd);
            for (size_t i = 0; i < b->len; i++) {
                unsigned char c = file_byte(slot, (size_t)b->file_off + i);
                buf_add(&r->out, &c, 1);
            }
        }
        else {
            buf_add(&r->out, b->ptr, b->len);
        }
    }
    if (done & YMO_DONE) {
        r->done_flags = done;
    }
    ymo_wsgi_worker_response_body_append(r->ex, chain, done);
}

/* The last bytes of a complete response: at once, or, as for an iterable
 * with close() (finish_response), with YMO_OUT_COMPLETE and the done
 * flags held until a later step (post_held). */
static void
append_last(rec_t *r, ymo_bucket_t *chain, int done)
{
    if (pick(3) == 0) {
        append(r, chain, YMO_OUT_COMPLETE);
        r->held = done;
        r->phase = P_HELD;
        return;
    }
    append(r, chain, done);
    r->phase = P_FIN;
}

static ymo_bucket_t *
text_bucket(const char *s, size_t n)
{
    ymo_bucket_t *b = ymo_bucket_copy(s, n);
    CHECK(b != NULL);
    return b;
}

static ymo_bucket_t *
body_chain(rec_t *r, size_t n)
{
    ymo_bucket_t *head = NULL, **tail = &head;
    size_t per = r->tiny_buckets ? 1 : (n > 3 ? n / 3 : n);
    for (size_t done = 0; done < n;) {
        size_t k = n - done < per ? n - done : per;
        ymo_bucket_t *b;
        char *p;
        if (r->ref_buckets) {
            /* As the WSGI side sends a big bytes object: the bucket
             * points into its owner, which only the release list's
             * taker may let go of. */
            p = malloc(k);
            CHECK(p != NULL);
            b = ymo_bucket_ref(p, k, p, &H.server.release);
            CHECK(b != NULL);
            H.refs_made++;
        }
        else {
            b = ymo_bucket_new(k);
            CHECK(b != NULL);
            p = b->data;
        }
        for (size_t i = 0; i < k; i++) {
            p[i] = (char)('a' + (done + i + r->ex->seq) % 26);
        }
        b->len = k;
        *tail = b;
        tail = &b->next;
        done += k;
    }
    return head;
}

/* A read the worker would make, except that where it would block (the
 * worker sleeping on cond_in) the app returns -2 instead, after doing
 * what ymo_exchange_read does before it sleeps. */
static long
app_read(rec_t *r, size_t n, int *status)
{
    ymo_exchange_t *ex = r->ex;
    size_t low = H.server.config.in_high_water / 2;
    pthread_mutex_lock(&ex->lock);
    /* Nothing unread (the chain may still hold the tail bucket the loop
     * receives a body into). */
    int block = ex->in_buffered == 0 && !ex->in_done && ex->in_error == 0 &&
                !ex->out_done;
    int line = ex->in_done || ex->in_error != 0 || ex->out_done;
    if (!block && !line && n > ex->in_buffered) {
        /* A read waits for all n bytes: ask for what is there. */
        n = ex->in_buffered;
    }
    int post = 0;
    if (block) {
        if (!ex->in_started) {
            ex->in_started = 1;
            if (ex->req.expect_continue && !ex->in_done) {
                ex->need_continue = 1;
                post = 1;
            }
        }
        if (ex->in_paused && !ex->need_resume) {
            ex->need_resume = 1;
            post = 1;
        }
    }
    pthread_mutex_unlock(&ex->lock);
    r->read_any = 1;
    if (block) {
        if (post) {
            ymo_wsgi_worker_post(ex);
            return -3;             /* a post is progress */
        }
        return -2;
    }
    char *dst = malloc(n);
    CHECK(dst != NULL);
    /* Line mode only where it cannot block: at or after the end. */
    long got = ymo_exchange_read(ex, dst, n, line && pick(2), low, status);
    if (got > 0) {
        CHECK(r->consumed + (uint64_t)got <= r->body_avail);
        CHECK(memcmp(dst, r->body + r->consumed, (size_t)got) == 0);
        r->consumed += (uint64_t)got;
    }
    else if (got == 0) {
        /* The end of the body: all of it, exactly. */
        CHECK(r->body_can_end && r->consumed == r->body_len);
    }
    free(dst);
    return got;
}

static int
keep_alive(const rec_t *r)
{
    ymo_exchange_t *ex = r->ex;
    pthread_mutex_lock(&ex->lock);
    int body_ok = ex->in_done && ex->in_error == 0;
    pthread_mutex_unlock(&ex->lock);
    if (r->rogue) {
        return 1;
    }
    return ex->req.keep_alive && !atomic_load(&H.server.draining) &&
           H.server.config.keepalive_timeout > 0 && body_ok;
}

static int
free_file_slot(void)
{
    for (int i = 0; i < N_FILE_FDS; i++) {
        if (!files[i].open) {
            return i;
        }
    }
    return -1;
}

/* Head, then the response of the chosen kind. */
static void
app_respond(rec_t *r)
{
    ymo_exchange_t *ex = r->ex;
    int keep = keep_alive(r);
    int close_flag = keep ? 0 : YMO_DONE_CLOSE;
    if (r->read_status != 0 || r->kind == R_ERROR) {
        /* As the worker's fail_response before any head went out. */
        int status = r->read_status > 0 ? r->read_status : 500;
        if (r->read_status == -1) {
            append(r, NULL, YMO_DONE | YMO_DONE_ABORT);
            return;
        }
        ymo_bucket_t *b = ymo_http_error_bucket(status, 0);
        CHECK(b != NULL);
        b->from_ex = 1;
        append(r, b, YMO_DONE | YMO_DONE_CLOSE);
        return;
    }
    if (r->kind == R_ABORT_EMPTY) {
        append(r, NULL, YMO_DONE | YMO_DONE_ABORT);
        return;
    }
    size_t total = r->body_size;
    if (r->kind == R_STREAM || r->kind == R_ABORT_MID) {
        total = r->piece * r->pieces_left;
    }
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\nX-Seq: %llu\r\n"
                     "Content-Length: %zu\r\n%s\r\n",
                     (unsigned long long)ex->seq, total,
                     keep ? "" : "Connection: close\r\n");
    ymo_bucket_t *h = text_bucket(head, (size_t)n);
    if (r->kind == R_FULL) {
        h->next = body_chain(r, total);
        if (pick(4) == 0) {
            ymo_bucket_t *e = text_bucket("", 0);
            e->next = h->next;
            h->next = e;
        }
        append_last(r, h, YMO_DONE | close_flag);
        return;
    }
    if (r->kind == R_FILE) {
        int slot = free_file_slot();
        if (slot >= 0) {
            files[slot].open = 1;
            size_t off = pick(4);
            /* Sometimes the file is shorter than the response says. */
            files[slot].size = off + total - (pick(4) == 0 ? total / 2 : 0);
            h->next = ymo_bucket_file(file_fds[slot], (off_t)off, total);
            CHECK(h->next != NULL);
            if (pick(2)) {
                h->next->next = body_chain(r, 0);
            }
        }
        else {
            h->next = body_chain(r, total);
        }
        append_last(r, h, YMO_DONE | close_flag);
        return;
    }
    append(r, h, 0);
    r->phase = P_BODY;
}

/* One step of the app. Returns 1 when it did something, 0 when it waits
 * for the loop (a read or a drain that would block). */
static int
app_step(rec_t *r)
{
    static const size_t read_sizes[] = {4096, 1, 3, 16, 100, 65536};
    static const size_t sizes[] = {0, 1, 10, 100, 1000, 5000, 20000};
    ymo_exchange_t *ex = r->ex;
    switch (r->phase) {
    case P_START: {
        pthread_mutex_lock(&ex->lock);
        int aborted = ex->aborted;
        pthread_mutex_unlock(&ex->lock);
        (void)ymo_exchange_client_gone(ex);
        if (aborted) {
            /* As ymo_wsgi_run_exchange: the app never sees it. */
            append(r, NULL, YMO_DONE | YMO_DONE_ABORT);
            r->phase = P_FIN;
            return 1;
        }
        static const uint64_t targets[] = {0, UINT64_MAX, 1, 10, 1000};
        r->read_target = targets[pick(5)];
        r->kind = (int)pick(R_KINDS);
        r->rogue = pick(8) == 0;
        r->holds_ref = pick(4) == 0;
        r->late_read = pick(2);
        r->body_size = sizes[pick(7)];
        r->pieces_left = 1 + pick(6);
        r->piece = sizes[pick(6)];
        r->tiny_buckets = pick(6) == 0;
        r->ref_buckets = pick(3) == 0;
        if (r->holds_ref) {
            ymo_exchange_retain(ex);
        }
        r->phase = P_READ;
        return 1;
    }
    case P_READ: {
        if (r->consumed >= r->read_target) {
            r->phase = P_HEAD;
            return 1;
        }
        int status = 0;
        size_t want = read_sizes[pick(6)];
        if (want > r->read_target - r->consumed) {
            want = (size_t)(r->read_target - r->consumed);
        }
        long got = app_read(r, want, &status);
        if (got == -2) {
            return 0;
        }
        if (got == -1) {
            CHECK(status != 0 && status != YMO_READ_FINISHED);
            r->read_status = status;
            r->phase = P_HEAD;
        }
        else if (got == 0) {
            r->phase = P_HEAD;
        }
        return 1;
    }
    case P_HEAD:
        app_respond(r);
        if (r->phase == P_HEAD) {
            r->phase = P_FIN;
        }
        return 1;
    case P_BODY: {
        size_t low = H.server.config.out_high_water / 2;
        pthread_mutex_lock(&ex->lock);
        int full = !ex->aborted && ex->out_buffered > low;
        pthread_mutex_unlock(&ex->lock);
        if (full) {
            return 0;              /* ymo_exchange_wait_drain would wait */
        }
        if (ymo_exchange_wait_drain(ex, low)) {
            append(r, NULL, YMO_DONE | YMO_DONE_ABORT);
            r->phase = P_FIN;
            return 1;
        }
        if (r->kind == R_ABORT_MID && r->pieces_left == 1) {
            append(r, body_chain(r, r->piece / 2), YMO_DONE | YMO_DONE_ABORT);
            r->phase = P_FIN;
            return 1;
        }
        r->pieces_left--;
        if (r->pieces_left == 0) {
            append_last(r, body_chain(r, r->piece),
                        YMO_DONE | (keep_alive(r) ? 0 : YMO_DONE_CLOSE));
            return 1;
        }
        append(r, body_chain(r, r->piece), 0);
        return 1;
    }
    case P_HELD:
        /* close() returned: the done post (post_held). */
        append(r, NULL, r->held);
        r->phase = P_FIN;
        return 1;
    case P_FIN:
        /* The exchange is the loop's now; only a reference of the app's
         * own lets it look again (a thread still reading wsgi.input). */
        if (r->holds_ref) {
            if (r->late_read) {
                /* A first read here still asks for 100 Continue, which the
                 * loop sends if the final post has not been handled yet:
                 * harmless (a 1xx before the end), if useless. */
                r->read_any = 1;
                int status = 0;
                char b[8];
                long got = ymo_exchange_read(ex, b, sizeof(b), 0, 0,
                                             &status);
                CHECK(got >= 0 || status != 0);
                if (got > 0) {
                    CHECK(r->consumed + (uint64_t)got <= r->body_avail);
                    CHECK(memcmp(b, r->body + r->consumed, (size_t)got) == 0);
                    r->consumed += (uint64_t)got;
                }
            }
            r->holds_ref = 0;
            release(r);
        }
        r->phase = P_GONE;
        r->worker = NULL;
        return 1;
    default:
        return 0;
    }
}

/* Live apps: started and not gone. */
static rec_t *
live_app(unsigned k)
{
    for (size_t i = 0; i < H.n_recs; i++) {
        rec_t *r = H.recs[i];
        if (r->worker != NULL && r->phase != P_GONE && k-- == 0) {
            return r;
        }
    }
    return NULL;
}

static size_t
n_live_apps(void)
{
    size_t n = 0;
    while (live_app((unsigned)n) != NULL) {
        n++;
    }
    return n;
}

/* A worker takes the next exchange (its own queue first, then a peer's,
 * as worker_next does). Returns whether there was one. */
static int
worker_take(unsigned who)
{
    size_t nw = H.server.n_workers;
    for (size_t i = 0; i < nw; i++) {
        ymo_wsgi_worker_t *from = &H.server.workers[(who + i) % nw];
        ymo_exchange_t *ex = ymo_queue_pop(&from->queue_in);
        if (ex != NULL) {
            rec_t *r = rec_of(ex);
            r->queued = 0;
            r->worker = &H.server.workers[who % nw];
            ex->worker = r->worker;
            atomic_store(&r->worker->idle, 0);
            H.progress++;
            return 1;
        }
    }
    return 0;
}

static void
update_idle(void)
{
    for (size_t w = 0; w < H.server.n_workers; w++) {
        int busy = H.server.workers[w].queue_in.count > 0;
        for (size_t i = 0; i < H.n_recs; i++) {
            busy |= H.recs[i]->worker == &H.server.workers[w];
        }
        atomic_store(&H.server.workers[w].idle, !busy);
    }
}

/* -- Driving the connection as the loop would. -- */

static int
conn_wants(int ev)
{
    return H.conn != NULL && ev_is_active(&H.conn->io) &&
           (H.conn->io.events & ev);
}

static void
io_event(int revents)
{
    H.conn->io.cb(H.server.loop, &H.conn->io, revents);
}

/* The timer due first, if any: the connection's own while it is busy,
 * or the server's one timer for idle connections (which may close the
 * idle neighbour instead, or find nothing to do and re-arm). */
static ev_timer *
next_timer(void)
{
    ev_timer *t = NULL;
    if (H.conn != NULL && H.conn->busy != NULL &&
        ev_is_active(&H.conn->busy->timer)) {
        t = &H.conn->busy->timer;
    }
    if (ev_is_active(&H.server.idle_timer) &&
        (t == NULL || H.server.idle_timer.at < t->at)) {
        t = &H.server.idle_timer;
    }
    return t;
}

/* The first timer, if it is due (libev stops a one-shot timer before its
 * callback runs). */
static int
fire_timer(void)
{
    ev_timer *t = next_timer();
    if (t == NULL || t->at > H.server.now) {
        return 0;
    }
    t->active = 0;
    t->cb(H.server.loop, t, EV_TIMER);
    H.progress++;
    return 1;
}

/* Whether the client has anything for a read: bytes, an EOF or a reset. */
static int
client_readable(void)
{
    return H.client_pos < H.client_end || H.client_eof || H.client_reset;
}

static void
action(void)
{
    static const size_t splits[] = {1, 2, 3, 5, 8, 17, 64, 300, 4096,
                                    (size_t)-1};
    switch (pick(10)) {
    case 0:
    case 1:
        if (conn_wants(EV_READ) && !client_readable() && pick(2)) {
            /* A wake-up with nothing to read (or an EINTR). */
            H.read_eintr = pick(2);
            H.read_allow = 0;
            io_event(EV_READ);
            H.read_eintr = 0;
        }
        else if (conn_wants(EV_READ) && client_readable()) {
            H.read_allow = splits[pick(10)];
            int ev = EV_READ;
            if (conn_wants(EV_WRITE) && pick(2)) {
                H.writable = 1;
                ev |= EV_WRITE;
            }
            io_event(ev);
        }
        break;
    case 2:
        if (conn_wants(EV_WRITE)) {
            H.writable = 1;
            io_event(EV_WRITE);
        }
        break;
    case 3:
    case 4: {
        size_t n = n_live_apps();
        if (n > 0 && pick(4) != 0) {
            app_step(live_app(pick((unsigned)n)));
        }
        else {
            worker_take(pick(2));
        }
        update_idle();
        break;
    }
    case 5:
        deliver_posts();
        break;
    case 6: {
        static const double steps[] = {0.5, 1.0, 2.0, 4.5, 100.0};
        unsigned k = pick(6);
        if (k == 5) {
            ev_timer *t = next_timer();
            if (t != NULL && t->at > H.server.now) {
                H.server.now = t->at;
            }
        }
        else {
            H.server.now += steps[k];
        }
        fire_timer();
        break;
    }
    case 7:
        /* The client ends early: what it has not sent is never sent. */
        if (pick(2)) {
            H.client_end = H.client_pos + pick(8);
            if (H.client_end > H.client_total) {
                H.client_end = H.client_total;
            }
            H.client_eof = pick(3) != 0;
            H.client_reset = !H.client_eof;
        }
        break;
    case 8:
        /* The server stops (server_on_stop, for this connection). */
        if (pick(4) == 0 && !H.drained) {
            H.drained = 1;
            H.server.draining_loop = 1;
            atomic_store(&H.server.draining, 1);
            ymo_conn_drain_all(&H.server);
        }
        break;
    default:
        break;
    }
}

/* Everything runs to its end: the apps finish, the client does what byte
 * 1 says, time passes; the connection must close. */
static void
finish(void)
{
    H.final = 1;
    H.ch_pos = H.ch_len;
    unsigned long last = H.progress;
    int idle_rounds = 0;
    for (int it = 0; it < MAX_FINAL_ITERATIONS; it++) {
        if (H.progress != last) {
            last = H.progress;
            idle_rounds = 0;
        }
        else {
            /* Something that spins without progress: a level-triggered
             * loop would burn a core here. */
            CHECK(++idle_rounds < 100);
        }
        if (deliver_posts()) {
            continue;
        }
        int stepped = 0;
        for (rec_t *r; (r = live_app(0)) != NULL && app_step(r);) {
            stepped = 1;
        }
        for (size_t i = 0; !stepped && i < n_live_apps(); i++) {
            stepped = app_step(live_app((unsigned)i));
        }
        if (!stepped) {
            stepped = worker_take(0);
        }
        update_idle();
        if (stepped) {
            H.progress++;
            continue;
        }
        if (H.conn == NULL) {
            /* Closed: every app must be able to finish by itself. */
            CHECK(n_live_apps() == 0);
            break;
        }
        if (conn_wants(EV_WRITE) && !H.write_stuck) {
            H.writable = 1;
            io_event(EV_WRITE);
            continue;
        }
        if (conn_wants(EV_READ) && client_readable()) {
            H.read_allow = (size_t)-1;
            io_event(EV_READ);
            continue;
        }
        ev_timer *t = next_timer();
        if (t != NULL) {
            if (t->at > H.server.now) {
                H.server.now = t->at;
            }
            fire_timer();
            continue;
        }
        /* Open, nothing to read or write, no app running, no timer: this
         * connection would stay open for ever. */
        CHECK(!"connection stuck open");
    }
    CHECK(H.conn == NULL);
}

/* The bytes the client received: the responses in request order, each
 * complete unless the connection ended in it, nothing after one that
 * closes, and at most a server error response at the end. */
static void
verify_output(void)
{
    const char *o = H.out.p;
    size_t len = H.out.len, pos = 0;
    static const char cont[] = CONTINUE_LINE;
    size_t clen = sizeof(cont) - 1;
    for (size_t k = 0; k < H.n_recs; k++) {
        rec_t *r = H.recs[k];
        size_t ck = len - pos < clen ? len - pos : clen;
        if (r->expect_continue && r->read_any && ck > 0 &&
            memcmp(o + pos, cont, ck) == 0 && (ck == clen || r->out.len == 0 ||
            memcmp(r->out.p, cont, ck) != 0)) {
            /* The 100 Continue, or what went out of it before the end. */
            pos += ck;
            if (ck < clen) {
                CHECK(k + 1 == H.n_recs);
                return;
            }
        }
        size_t m = 0;
        while (m < r->out.len && pos + m < len && o[pos + m] == r->out.p[m]) {
            m++;
        }
        pos += m;
        if (m < r->out.len) {
            /* Cut short: the connection ended here, and no later request
             * was ever started. */
            CHECK(pos == len);
            CHECK(k + 1 == H.n_recs);
            return;
        }
        if (r->done_flags & (YMO_DONE_CLOSE | YMO_DONE_ABORT)) {
            CHECK(pos == len);
            CHECK(k + 1 == H.n_recs);
            return;
        }
    }
    if (pos == len) {
        return;
    }
    /* A server error response (possibly cut short), then nothing. */
    const char *e = o + pos;
    size_t elen = len - pos;
    static const char start[] = "HTTP/1.1 ";
    CHECK(memcmp(e, start, elen < 9 ? elen : 9) == 0);
    const char *end = memmem(e, elen, "\r\n\r\n", 4);
    if (end == NULL) {
        return;
    }
    CHECK(memmem(e, (size_t)(end - e) + 2, "\r\nConnection: close\r\n", 21)
          != NULL);
    const char *cl = memmem(e, (size_t)(end - e), "Content-Length: ", 16);
    CHECK(cl != NULL);
    size_t body = strtoul(cl + 16, NULL, 10);
    CHECK((size_t)(end + 4 - e) + body >= elen);
    CHECK(e[9] >= '4' && e[9] <= '5');
}

static void
reserve_fds(void)
{
    if (conn_fd >= 0) {
        return;
    }
    conn_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(conn_fd >= 0);
    other_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(other_fd >= 0);
    for (int i = 0; i < N_FILE_FDS; i++) {
        file_fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        CHECK(file_fds[i] >= 0);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const ymo_http_limits_t limit_sets[] = {
        YMO_HTTP_LIMITS_DEFAULT,
        {64, 4, 64, 256, 100},
        {16, 2, 16, 48, 5},
        {200, 8, 100, 300, 0},
    };
    static const size_t in_hw[] = {1, 64, 4096, 1 << 20};
    static const size_t out_hw[] = {1, 128, 8192, 1 << 20};
    if (size < 4) {
        return 0;
    }
    reserve_fds();
    memset(&H, 0, sizeof(H));
    memset(files, 0, sizeof(files));
    uint8_t cfg = data[0], fin = data[1];
    size_t nch = (size_t)data[2] | (size_t)data[3] << 8;
    size -= 4;
    data += 4;
    nch = nch < size ? nch : size;
    H.ch = data;
    H.ch_len = nch;
    H.client = data + nch;
    H.client_total = H.client_end = size - nch;

    ymo_config_t config;
    memset(&config, 0, sizeof(config));
    config.limits = limit_sets[cfg & 3];
    config.workers = (cfg >> 7) + 1u;
    config.header_timeout = HEADER_TIMEOUT;
    config.keepalive_timeout = (cfg & 4) ? 0. : KEEPALIVE_TIMEOUT;
    config.body_timeout = BODY_TIMEOUT;
    config.write_timeout = WRITE_TIMEOUT;
    config.in_high_water = in_hw[(cfg >> 3) & 3];
    config.out_high_water = out_hw[(cfg >> 5) & 3];

    H.active = 1;
    H.writable = 1;
    switch (fin % 5) {
    case 0: H.client_eof = 1; break;
    case 1: break;                 /* silent after its last byte */
    case 2: H.client_reset = 1; break;
    case 3: H.client_end = H.client_total / 2; H.client_eof = 1; break;
    default: H.client_end = H.client_total / 2; break;
    }
    H.write_stuck = (fin / 5) % 4 == 3;

    CHECK(ymo_server_init(&H.server, &config, NULL, NULL, 0, NULL) == 0);
    H.server.now = 1000.0;         /* the virtual clock (see the top) */
    /* The peers: the client's address, and a unix socket's for the
     * neighbour (no address). */
    struct sockaddr_in peer = {.sin_family = AF_INET,
                               .sin_port = htons(4321)};
    peer.sin_addr.s_addr = htonl(0xc0000201);      /* 192.0.2.1 */
    const struct sockaddr unix_peer = {.sa_family = AF_UNIX};
    H.listener.server = &H.server;
    H.listener.fd = -1;
    /* Sometimes an idle second connection, opened before or after this
     * one, so that the list of connections has neighbours. */
    int other = (fin / 20) % 3;
    if (other == 1) {
        CHECK(ymo_conn_new(&H.listener, other_fd, &unix_peer, 1));
    }
    /* fin / 60: with --proxy-protocol, from a trusted peer (a PROXY
     * header is required) or an untrusted one (one is refused). */
    int proxy = (fin / 60) % 3;
    H.server.config.proxy_protocol = proxy != 0;
    if (proxy == 1) {
        /* The first request follows the PROXY header (when the client's
         * bytes hold a valid one; otherwise none may start). */
        ymo_proxy_header_t ph;
        int n = ymo_proxy_parse((const char *)H.client, H.client_total, &ph);
        H.cursor = n > 0 ? (size_t)n : SIZE_MAX;
    }
    else if (proxy == 2 &&
             ymo_proxy_signature((const char *)H.client,
                                 H.client_total) != 0) {
        H.cursor = SIZE_MAX;        /* refused: no request may start */
    }
    ymo_conn_t *c = ymo_conn_new(&H.listener, conn_fd,
                                 (const struct sockaddr *)&peer, proxy != 2);
    CHECK(c != NULL);
    if (other == 2) {
        CHECK(ymo_conn_new(&H.listener, other_fd, &unix_peer, 1));
    }
    if (!H.conn_closed) {
        H.conn = c;
    }
    for (int i = 0; i < MAX_ACTIONS && choices_left(); i++) {
        action();
    }
    if (H.write_stuck) {
        H.writable = 0;
    }
    finish();

    /* Every exchange released once by the loop and freed; every file the
     * responses used closed; the connection closed once, and gone. */
    for (size_t i = 0; i < H.n_recs; i++) {
        CHECK(H.recs[i]->freed && H.recs[i]->loop_releases == 1);
        CHECK(H.recs[i]->phase == P_GONE);
    }
    for (int i = 0; i < N_FILE_FDS; i++) {
        CHECK(!files[i].open);
    }
    CHECK(H.conn_closed);
    CHECK(H.server.n_conns == (other != 0 && !H.other_closed));
    /* Every connection is on one list: busy, or idle (fresh or kept). */
    size_t listed = 0;
    for (const ymo_conn_t *l = H.server.conns; l != NULL; l = l->next) {
        listed++;
    }
    for (int k = 0; k < 2; k++) {
        for (const ymo_conn_t *l = H.server.idle_head[k]; l != NULL;
             l = l->next) {
            listed++;
        }
    }
    CHECK(listed == H.server.n_conns);
    if (getenv("FUZZ_CONN_DEBUG") != NULL) {
        /* What happened, for reading a reproducer. */
        fprintf(stderr, "%zu exchanges, %zu of %zu client bytes read, "
                "t=+%.1f s; the client received:\n%.*s\n", H.n_recs,
                H.client_pos, H.client_total, H.server.now - 1000.0,
                (int)H.out.len, H.out.p ? H.out.p : "");
        for (size_t i = 0; i < H.n_recs; i++) {
            const rec_t *r = H.recs[i];
            fprintf(stderr, "exchange %zu: kind %d, read %llu of %llu "
                    "(target %llu, status %d), done flags %d\n", i, r->kind,
                    (unsigned long long)r->consumed,
                    (unsigned long long)r->body_len,
                    (unsigned long long)r->read_target, r->read_status,
                    r->done_flags);
        }
    }

    verify_output();

    ymo_server_destroy(&H.server);
    /* Every reference bucket was freed, into the release list. */
    ymo_bucket_t *back = ymo_release_take(&H.server.release);
    while (back != NULL) {
        ymo_bucket_t *next = back->next;
        CHECK(back->owner == back->ptr);
        free(back->owner);
        ymo_bucket_free_taken(back);
        H.refs_back++;
        back = next;
    }
    CHECK(H.refs_back == H.refs_made);
    H.refs_made = H.refs_back = 0;
    CHECK(other == 0 || H.other_closed);
    for (size_t i = 0; i < H.n_recs; i++) {
        free(H.recs[i]->out.p);
        free(H.recs[i]->decoded.p);
        free(H.recs[i]);
    }
    free(H.recs);
    free(H.out.p);
    H.active = 0;
    return 0;
}
