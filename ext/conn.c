/* conn.c - the connection state machine (loop thread only): read, parse,
 * hand the request to a worker as an exchange, stream its body, write the
 * response the worker produces, then the next request or close. One
 * exchange at a time per connection, so pipelined responses go out in
 * request order; pipelined requests wait in the input buffer.           */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "http_response.h"
#include "proxy_protocol.h"
#include "wsgi_worker.h"

#define INBUF_INITIAL 8192
#define INBUF_BODY 65536
#define IOV_BATCH 64
#define LINGER_SECONDS 2.0
#define LINGER_POLL 0.02

static void conn_on_io(struct ev_loop *loop, ev_io *w, int revents);
static void conn_on_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void conn_step(ymo_conn_t *c);
static void conn_dispatch(ymo_conn_t *c);

static ev_tstamp
now(const ymo_conn_t *c)
{
    return ev_now(c->server->loop);
}

/* While the server stops, a lingering connection need not wait for its
 * client to close: once the client has acknowledged everything we sent
 * (nothing left in the socket's send queue), a reset can no longer
 * destroy the response. */
static int
conn_linger_done(const ymo_conn_t *c)
{
    int queued = 0;
    return c->linger_until != 0 && c->wq_head == NULL &&
           ioctl(c->fd, SIOCOUTQ, &queued) == 0 && queued == 0;
}

ymo_conn_t *
ymo_conn_new(ymo_server_t *s, const ymo_listener_t *l, int fd,
             const char *addr, int port, int trusted)
{
    ymo_conn_t *c = ymo_calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    /* No input buffer of its own until a read leaves something behind:
     * an idle connection costs only this struct. */
    c->inbuf = NULL;
    c->incap = 0;
    c->server = s;
    c->listener = l;
    c->fd = fd;
    c->remote_port = port;
    snprintf(c->remote_addr, sizeof(c->remote_addr), "%s", addr);
    c->trusted = trusted;
    c->proxy = !s->config.proxy_protocol ? YMO_CONN_PROXY_DONE
               : trusted                 ? YMO_CONN_PROXY_EXPECT
                                         : YMO_CONN_PROXY_REFUSE;
    ymo_http_parser_init(&c->parser, &s->config.limits);
    c->head_started = now(c);
    ev_io_init(&c->io, conn_on_io, fd, EV_READ);
    c->io.data = c;
    ev_init(&c->timer, conn_on_timer);
    c->timer.data = c;
    c->next = s->conns;
    if (s->conns != NULL) {
        s->conns->prev = c;
    }
    s->conns = c;
    s->n_conns++;
    conn_step(c);
    return c;
}

/* -- Waiting for room (max_inflight) -- */

static int
server_full(const ymo_server_t *s)
{
    return s->config.max_inflight > 0 &&
           s->n_exchanges >= s->config.max_inflight;
}

/* The server has as many exchanges in hand as it takes: the connection's
 * next request waits, unparsed, and no more is read from it (its bytes
 * wait in the kernel), until an exchange finishes. */
static void
conn_stall(ymo_conn_t *c)
{
    ymo_server_t *s = c->server;
    c->stalled = 1;
    c->stalled_since = now(c);
    c->stall_next = NULL;
    c->stall_prev = s->stalled_tail;
    if (s->stalled_tail != NULL) {
        s->stalled_tail->stall_next = c;
    }
    else {
        s->stalled_head = c;
    }
    s->stalled_tail = c;
}

static void
conn_unlink_stalled(ymo_conn_t *c)
{
    ymo_server_t *s = c->server;
    if (c->stall_prev != NULL) {
        c->stall_prev->stall_next = c->stall_next;
    }
    else {
        s->stalled_head = c->stall_next;
    }
    if (c->stall_next != NULL) {
        c->stall_next->stall_prev = c->stall_prev;
    }
    else {
        s->stalled_tail = c->stall_prev;
    }
    c->stall_next = c->stall_prev = NULL;
    c->stalled = 0;
}

/* An exchange finished: let waiting connections go on, oldest first, as
 * long as there is room. */
static void
server_unstall(ymo_server_t *s)
{
    while (s->stalled_head != NULL && !server_full(s)) {
        ymo_conn_t *c = s->stalled_head;
        conn_unlink_stalled(c);
        /* The wait was the server's: it counts toward the queue timeout,
         * not toward the client's head or body timeouts. */
        ev_tstamp waited = now(c) - c->stalled_since;
        c->stall_credit += waited;
        c->head_started += waited;
        c->last_read += waited;
        c->rate_since += waited;
        conn_step(c);
    }
}

static void
conn_free_exchange(ymo_conn_t *c)
{
    ymo_exchange_t *ex = c->ex;
    c->ex = NULL;
    if (ex == NULL) {
        return;
    }
    ex->conn = NULL;
    if (c->dispatch_pending) {
        /* No worker ever had it. */
        c->dispatch_pending = 0;
        ymo_exchange_release(ex);
    }
    else if (ex->worker_done) {
        ymo_exchange_release(ex);
    }
    else {
        /* The worker still has it: it stops at its next read or write,
         * and the loop frees it when the final post arrives. */
        ymo_exchange_abort(ex, c->server->cut_off ? YMO_READ_STOPPED : -1);
    }
}

void
ymo_conn_close(ymo_conn_t *c)
{
    ymo_server_t *s = c->server;
    ev_io_stop(s->loop, &c->io);
    ev_timer_stop(s->loop, &c->timer);
    if (c->stalled) {
        conn_unlink_stalled(c);
    }
    close(c->fd);
    conn_free_exchange(c);
    ymo_bucket_free_chain(c->wq_head);
    if (c->prev != NULL) {
        c->prev->next = c->next;
    }
    else {
        s->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    if (!c->inbuf_borrowed) {
        free(c->inbuf);
    }
    free(c);
    ymo_server_conn_closed(s);
}

static void
wq_append(ymo_conn_t *c, ymo_bucket_t *chain)
{
    if (chain == NULL) {
        return;
    }
    if (c->wq_tail != NULL) {
        c->wq_tail->next = chain;
    }
    else {
        c->wq_head = chain;
    }
    while (chain->next != NULL) {
        chain = chain->next;
    }
    c->wq_tail = chain;
}

/* The one place a request the parser refused becomes a response: status
 * line, a short text body (none for HEAD), and the connection closes
 * after it. */
static void
conn_error_head(ymo_conn_t *c, int status, int head)
{
    ymo_bucket_t *b = ymo_http_error_bucket(status, head);
    c->closing = 1;
    c->inlen = 0;
    if (b == NULL) {
        return;
    }
    wq_append(c, b);
    /* Discard what the client may still send, so the kernel does not
     * answer it with a reset that could destroy this response. */
    c->state = YMO_CONN_LINGER;
}

/* The same for a request whose method is unknown (mostly one that could
 * not be parsed). */
static void
conn_error(ymo_conn_t *c, int status)
{
    conn_error_head(c, status, 0);
}

/* Write as much of the queue as the socket takes. Returns -1 when the
 * connection was closed (c is gone), 0 otherwise. */
static int
conn_flush(ymo_conn_t *c)
{
    size_t ex_bytes = 0;
    int r = 0;
    while (c->wq_head != NULL) {
        ymo_bucket_t *b = c->wq_head;
        ssize_t n;
        if (b->fd >= 0) {
            off_t off = b->file_off + (off_t)b->off;
            size_t want = b->len - b->off;
            n = sendfile(c->fd, b->fd, &off, want > (1u << 30) ? (1u << 30)
                                                                : want);
            if (n == 0 && want > 0) {
                /* The file is shorter than promised: the response cannot
                 * be completed. */
                r = -1;
                break;
            }
        }
        else {
            struct iovec iov[IOV_BATCH];
            int cnt = 0;
            for (ymo_bucket_t *x = b; x != NULL && x->fd < 0 &&
                                      cnt < IOV_BATCH; x = x->next) {
                if (x->len == x->off) {
                    continue;
                }
                iov[cnt].iov_base = x->data + x->off;
                iov[cnt].iov_len = x->len - x->off;
                cnt++;
            }
            /* sendmsg rather than writev for MSG_NOSIGNAL: a client that
             * reset the connection must cost an EPIPE, not a SIGPIPE that
             * kills the process where its disposition is SIG_DFL. (For
             * sendfile, which takes no flags, see ymo_server_run.) */
            struct msghdr msg = {.msg_iov = iov,
                                 .msg_iovlen = (size_t)cnt};
            n = cnt > 0 ? sendmsg(c->fd, &msg, MSG_NOSIGNAL) : 0;
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->write_blocked) {
                    c->write_blocked = 1;
                    c->last_write = now(c);
                }
                break;
            }
            r = -1;
            break;
        }
        c->write_blocked = 0;
        c->last_write = now(c);
        size_t left = (size_t)n;
        while (c->wq_head != NULL) {
            ymo_bucket_t *x = c->wq_head;
            size_t rest = x->len - x->off;
            size_t take = left < rest ? left : rest;
            x->off += take;
            left -= take;
            if (x->from_ex) {
                ex_bytes += take;
            }
            if (x->off < x->len) {
                break;
            }
            c->wq_head = x->next;
            if (c->wq_head == NULL) {
                c->wq_tail = NULL;
            }
            ymo_bucket_free(x);
            if (left == 0) {
                break;
            }
        }
    }
    if (ex_bytes > 0 && c->ex != NULL) {
        ymo_exchange_output_written(c->ex, ex_bytes,
                                    c->server->config.out_high_water / 2);
    }
    if (r < 0) {
        ymo_conn_close(c);
    }
    return r;
}

/* Hand body bytes at the front of inbuf to the exchange. */
static int
conn_feed_body(ymo_conn_t *c)
{
    ymo_exchange_t *ex = c->ex;
    size_t hwm = c->server->config.in_high_water;
    size_t used = 0;
    int r = 0;
    if (c->body_kind == YMO_HTTP_BODY_LENGTH) {
        size_t take = c->inlen < c->body_left ? c->inlen
                                              : (size_t)c->body_left;
        c->body_left -= take;
        used = take;
        c->body_done = c->body_left == 0;
        r = ymo_exchange_input_append(ex, c->inbuf, take, c->body_done, hwm);
    }
    else {
        while (used < c->inlen && !c->chunked.done) {
            const char *data;
            size_t dlen;
            ssize_t n = ymo_http_chunked_feed(&c->chunked, c->inbuf + used,
                                              c->inlen - used, &data, &dlen);
            if (n < 0) {
                c->body_done = 1;
                c->closing = 1;
                c->body_error = c->chunked.status;
                if (!c->dispatch_pending) {
                    ymo_exchange_input_fail(ex, c->chunked.status);
                }
                c->inlen = 0;
                return 0;
            }
            if (n == 0) {
                break;
            }
            used += (size_t)n;
            if (dlen > 0 || c->chunked.done) {
                r = ymo_exchange_input_append(ex, data, dlen,
                                              c->chunked.done, hwm);
                if (r != 0) {
                    break;
                }
            }
        }
        c->body_done = c->chunked.done;
    }
    if (r < 0) {
        c->closing = 1;
        c->body_done = 1;
        c->body_error = 503;   /* out of memory: try again later */
        if (!c->dispatch_pending) {
            ymo_exchange_input_fail(ex, 503);
        }
    }
    else if (r == 1) {
        c->body_paused = 1;
    }
    c->inlen -= used;
    if (c->inlen > 0 && used > 0) {
        memmove(c->inbuf, c->inbuf + used, c->inlen);
    }
    if (used > 0) {
        c->last_read = now(c);
        c->body_received += used;
    }
    return 0;
}

/* A complete head is at the front of inbuf: make it an exchange. */
static void
conn_start_exchange(ymo_conn_t *c, size_t head_len,
                    const ymo_http_request_t *req)
{
    ymo_server_t *s = c->server;
    ymo_exchange_t *ex = ymo_exchange_new(c->inbuf, head_len, req);
    if (ex == NULL) {
        conn_error(c, 503);
        return;
    }
    ex->server = s;
    ex->listener = c->listener;
    memcpy(ex->remote_addr, c->remote_addr, sizeof(ex->remote_addr));
    ex->remote_port = c->remote_port;
    ex->trusted = c->trusted;
    ex->seq = c->seq++;
    ex->conn = c;
    c->ex = ex;
    c->state = YMO_CONN_EXCHANGE;
    c->head_written = 0;
    c->body_kind = req->body;
    c->body_left = req->content_length;
    c->body_done = req->body == YMO_HTTP_BODY_NONE;
    c->body_paused = 0;
    c->body_error = 0;
    c->body_received = 0;
    c->last_read = now(c);
    c->rate_since = c->last_read;
    c->rate_bytes = 0;
    if (req->body == YMO_HTTP_BODY_CHUNKED) {
        ymo_http_chunked_init(&c->chunked, &s->config.limits);
    }
    c->inlen -= head_len;
    memmove(c->inbuf, c->inbuf + head_len, c->inlen);
    /* A small body is read whole before a worker is engaged, so that a
     * client sending it slowly (the slow-POST attack) ties up only its
     * connection. Not with Expect: 100-continue, which the app answers by
     * reading (or not). */
    size_t buffer = s->config.buffer_body;
    c->dispatch_pending =
        buffer > 0 && req->body != YMO_HTTP_BODY_NONE &&
        (req->body == YMO_HTTP_BODY_CHUNKED || req->content_length <= buffer);
    if (c->dispatch_pending && req->expect_continue) {
        /* The body is small enough to buffer: the loop asks for it, so
         * that Expect cannot be a way around the buffering (the app could
         * not have refused a body this small to much gain). */
        static const char msg[] = "HTTP/1.1 100 Continue\r\n\r\n";
        ymo_bucket_t *b = ymo_bucket_copy(msg, sizeof(msg) - 1);
        if (b == NULL) {
            conn_free_exchange(c);
            c->state = YMO_CONN_HEAD;
            conn_error(c, 503);
            return;
        }
        b->from_ex = 0;
        wq_append(c, b);
        c->head_written = 1;
    }
    if (!c->dispatch_pending) {
        conn_dispatch(c);
    }
}

/* Hand the exchange to a worker (for a buffered request: its body is in,
 * or too big to wait for). Its wait for a worker starts now, plus what it
 * waited for room. */
static void
conn_dispatch(ymo_conn_t *c)
{
    c->dispatch_pending = 0;
    c->ex->queued_at = now(c) - c->stall_credit;
    c->stall_credit = 0;
    ymo_server_dispatch(c->server, c->ex);
}

/* The body cannot complete (status 400/408/413/500): tell the app, or,
 * when no worker has the exchange yet, answer for it. */
static void
conn_body_failed(ymo_conn_t *c, int status)
{
    c->body_done = 1;
    c->closing = 1;
    c->body_error = status;
    if (!c->dispatch_pending) {
        ymo_exchange_input_fail(c->ex, status);
    }
}

static void
conn_set_events(ymo_conn_t *c, int events)
{
    struct ev_loop *loop = c->server->loop;
    if (ev_is_active(&c->io) && (c->io.events & (EV_READ | EV_WRITE))
                                == events) {
        return;
    }
    ev_io_stop(loop, &c->io);
    if (events != 0) {
        ev_io_set(&c->io, c->fd, events);
        ev_io_start(loop, &c->io);
    }
}

/* When the current state times out; 0 when nothing can. */
static ev_tstamp
conn_deadline(const ymo_conn_t *c)
{
    const ymo_config_t *cfg = &c->server->config;
    if (c->write_blocked) {
        return c->last_write + cfg->write_timeout;
    }
    switch (c->state) {
    case YMO_CONN_LINGER:
        if (c->server->draining_loop && c->linger_until != 0) {
            /* Stopping: look again shortly whether the client has what
             * we sent (see conn_linger_done). */
            ev_tstamp soon = ev_now(c->server->loop) + LINGER_POLL;
            return soon < c->linger_until ? soon : c->linger_until;
        }
        return c->linger_until;
    case YMO_CONN_HEAD:
        if (c->stalled) {
            /* Waiting for room is the server's doing, not the client's. */
            return cfg->queue_timeout > 0
                       ? c->stalled_since + cfg->queue_timeout : 0;
        }
        if (c->closing) {
            return 0;
        }
        ev_tstamp until = c->inlen == 0 && c->seq > 0
                              ? c->head_started + cfg->keepalive_timeout
                              : c->head_started + cfg->header_timeout;
        if (c->server->draining_loop && c->inlen == 0) {
            /* Stopping: an idle connection's last call (see
             * YMO_LAST_CALL). */
            ev_tstamp last = c->server->drain_started + YMO_LAST_CALL;
            return last < until ? last : until;
        }
        return until;
    default:
        if (c->stalled) {
            return cfg->queue_timeout > 0
                       ? c->stalled_since + cfg->queue_timeout : 0;
        }
        /* While the app works, only a body the client is expected to be
         * sending can time out. */
        if (!c->body_done && !c->body_paused && c->ex != NULL &&
            (!c->ex->req.expect_continue || c->head_written)) {
            ev_tstamp gap = c->last_read + cfg->body_timeout;
            ev_tstamp rate = c->rate_since + YMO_RATE_WINDOW;
            return cfg->min_body_rate > 0 && rate < gap ? rate : gap;
        }
        return 0;
    }
}

static void
conn_arm_timer(ymo_conn_t *c)
{
    struct ev_loop *loop = c->server->loop;
    ev_tstamp deadline = conn_deadline(c);
    if (deadline == 0) {
        ev_timer_stop(loop, &c->timer);
        return;
    }
    ev_tstamp t = ev_now(loop);
    if (ev_is_active(&c->timer) &&
        t + ev_timer_remaining(loop, &c->timer) <= deadline) {
        /* Fires no later than needed; the callback re-checks. */
        return;
    }
    ev_timer_stop(loop, &c->timer);
    ev_timer_set(&c->timer, deadline > t ? deadline - t : 0., 0.);
    ev_timer_start(loop, &c->timer);
}

static void
conn_on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    ymo_conn_t *c = w->data;
    if (c->state == YMO_CONN_LINGER && !c->write_blocked &&
        c->server->draining_loop && c->linger_until != 0) {
        /* Stopping: the poll of conn_deadline (its deadline moves with
         * the clock, so it is looked at here, before the check below). */
        if (conn_linger_done(c) || ev_now(loop) >= c->linger_until) {
            ymo_conn_close(c);
        }
        else {
            conn_arm_timer(c);
        }
        return;
    }
    ev_tstamp deadline = conn_deadline(c);
    if (deadline == 0) {
        return;
    }
    if (ev_now(loop) < deadline) {
        conn_arm_timer(c);
        return;
    }
    if (c->write_blocked || c->state == YMO_CONN_LINGER) {
        ymo_conn_close(c);
        return;
    }
    if (c->stalled) {
        /* Waited too long for room: the client may try again. A buffered
         * request's exchange never reached a worker: drop it. (The request
         * of a connection stalled before parsing is not parsed: whether it
         * is a HEAD is read off its first bytes.) */
        conn_unlink_stalled(c);
        int head = c->inlen >= 5 && memcmp(c->inbuf, "HEAD ", 5) == 0;
        if (c->state == YMO_CONN_EXCHANGE) {
            head = c->ex->req.method_len == 4 &&
                   memcmp(c->ex->req.method, "HEAD", 4) == 0;
            conn_free_exchange(c);
            c->state = YMO_CONN_HEAD;
        }
        conn_error_head(c, 503, head);
        conn_step(c);
        return;
    }
    if (c->state == YMO_CONN_HEAD) {
        if (c->inlen == 0 || c->proxy != YMO_CONN_PROXY_DONE) {
            /* Idle, or a PROXY header that never completed: nothing to
             * answer (a proxy does not read HTTP errors there). */
            ymo_conn_close(c);
            return;
        }
        conn_error(c, 408);
        conn_step(c);
        return;
    }
    const ymo_config_t *cfg = &c->server->config;
    if (cfg->min_body_rate > 0 &&
        ev_now(loop) < c->last_read + cfg->body_timeout &&
        (double)(c->body_received - c->rate_bytes) >=
            cfg->min_body_rate * YMO_RATE_WINDOW) {
        /* Fast enough over this window: measure the next one. */
        c->rate_since = ev_now(loop);
        c->rate_bytes = c->body_received;
        conn_arm_timer(c);
        return;
    }
    /* The body stalled, or crawls, while the app waits for it. */
    conn_body_failed(c, 408);
    conn_step(c);
}

/* The input sits in the loop's shared buffer: give the connection a
 * buffer of its own for what is left (a partial head, body bytes held back
 * by back-pressure, pipelined requests), or none when nothing is. */
static int
conn_keep_input(ymo_conn_t *c)
{
    c->inbuf_borrowed = 0;
    if (c->inlen == 0) {
        c->inbuf = NULL;
        c->incap = 0;
        return 0;
    }
    /* Room to grow a partial head, except on a connection that waits for
     * room in the server: thousands of them may each hold a request. */
    size_t cap = c->inlen < INBUF_INITIAL && !c->stalled ? INBUF_INITIAL
                                                         : c->inlen;
    char *p = ymo_malloc(cap);
    if (p == NULL) {
        c->inbuf = NULL;
        c->incap = c->inlen = 0;
        return -1;
    }
    memcpy(p, c->inbuf, c->inlen);
    c->inbuf = p;
    c->incap = cap;
    return 0;
}

/* --proxy-protocol: read (from a trusted peer) or refuse (from anyone
 * else) the PROXY header at the start of the connection. Returns 0 once
 * HTTP may be parsed (a header was consumed, or an untrusted peer sent
 * none), 1 while more bytes are needed, -1 when the connection was
 * closed: a trusted peer must send a valid header, an untrusted one may
 * not name a client. The whole header must arrive within header_timeout
 * (see conn_on_timer) and within limit_request_head_size bytes. */
static int
conn_proxy_header(ymo_conn_t *c)
{
    const ymo_config_t *cfg = &c->server->config;
    if (c->proxy == YMO_CONN_PROXY_REFUSE) {
        int sig = ymo_proxy_signature(c->inbuf, c->inlen);
        if (sig == 0) {
            c->proxy = YMO_CONN_PROXY_DONE;
            return 0;
        }
        if (sig < 0 && !c->read_eof) {
            return 1;
        }
        ymo_conn_close(c);
        return -1;
    }
    ymo_proxy_header_t h;
    int n = ymo_proxy_parse(c->inbuf, c->inlen, &h);
    if (n == -2 && !c->read_eof && c->inlen <= cfg->limits.max_head_size) {
        return 1;
    }
    /* The limit holds however the header arrived, whole or in parts. */
    if (n < 0 || (size_t)n > cfg->limits.max_head_size) {
        ymo_conn_close(c);
        return -1;
    }
    uint8_t *a = h.src_addr;
    static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                          0xff, 0xff};
    int family = h.family;
    if (family == YMO_PROXY_INET6 && memcmp(a, v4_mapped, 12) == 0) {
        family = YMO_PROXY_INET;    /* an IPv4 client of an IPv6 proxy */
        a += 12;
    }
    switch (family) {
    case YMO_PROXY_INET6:
    case YMO_PROXY_INET:
        inet_ntop(family == YMO_PROXY_INET ? AF_INET : AF_INET6, a,
                  c->remote_addr, sizeof(c->remote_addr));
        c->remote_port = h.src_port;
        /* The client's forwarding fields are believed only if the client
         * is itself a trusted proxy: a layer-4 proxy passes them on
         * unread. */
        c->trusted = ymo_trust_match(&cfg->trust,
                                     family == YMO_PROXY_INET ? 4 : 6, a);
        break;
    case YMO_PROXY_UNIX:
        /* A client on a unix socket of the proxy's host: as for our own
         * unix peers, no address; but nothing says who it is, so its
         * forwarding fields are not believed. */
        c->remote_addr[0] = '\0';
        c->remote_port = -1;
        c->trusted = 0;
        break;
    default:
        /* LOCAL (the proxy's own health check) or UNKNOWN: the
         * connection's own addresses stand. */
        break;
    }
    c->inlen -= (size_t)n;
    memmove(c->inbuf, c->inbuf + n, c->inlen);
    c->proxy = YMO_CONN_PROXY_DONE;
    return 0;
}

/* Bring the connection forward as far as it can go now: parse, feed the
 * body, write, finish the exchange, start the next one. */
static void
conn_step(ymo_conn_t *c)
{
    ymo_server_t *s = c->server;
    for (;;) {
        /* The PROXY header first: it needs no room, and a connection
         * whose header never completes is closed without a word (see
         * conn_on_timer), never answered 503 as a stalled one would be. */
        if (c->state == YMO_CONN_HEAD && c->proxy != YMO_CONN_PROXY_DONE &&
            !c->closing && c->inlen > 0 && conn_proxy_header(c) < 0) {
            return;
        }
        if (c->state == YMO_CONN_HEAD && !c->closing && c->inlen > 0 &&
            !c->stalled && c->proxy == YMO_CONN_PROXY_DONE &&
            server_full(s)) {
            conn_stall(c);
        }
        if (c->state == YMO_CONN_HEAD && !c->closing && c->inlen > 0 &&
            !c->stalled && c->proxy == YMO_CONN_PROXY_DONE) {
            ymo_http_request_t req;
            /* The loop's one header array: a complete head is copied
             * into its exchange before the next parse. */
            req.headers = s->headers;
            int n = ymo_http_parse_request(&c->parser, c->inbuf, c->inlen,
                                           &req);
            if (n > 0) {
                conn_start_exchange(c, (size_t)n, &req);
            }
            else if (n == -1) {
                conn_error(c, c->parser.status);
            }
            else if (c->read_eof) {
                ymo_conn_close(c);  /* the head can never complete */
                return;
            }
        }
        if (c->state == YMO_CONN_EXCHANGE && !c->body_done &&
            !c->body_paused && c->inlen > 0) {
            conn_feed_body(c);
        }
        if (c->state == YMO_CONN_EXCHANGE && !c->body_done &&
            c->read_eof && c->inlen == 0) {
            /* A pipelined request whose body was cut short by an EOF the
             * connection read earlier: it can never complete. */
            ymo_conn_close(c);
            return;
        }
        if (c->state == YMO_CONN_EXCHANGE && c->dispatch_pending) {
            if (c->body_error != 0) {
                /* Nobody ran the app: the loop answers. */
                int status = c->body_error;
                conn_free_exchange(c);
                c->state = YMO_CONN_HEAD;
                conn_error(c, status);
            }
            else if ((c->body_done || c->body_paused ||
                      c->body_received >= s->config.buffer_body) &&
                     !c->stalled) {
                if (server_full(s)) {
                    conn_stall(c);  /* room first, like a new head */
                }
                else {
                    conn_dispatch(c);
                }
            }
        }
        if (c->wq_head != NULL && !c->write_blocked) {
            if (conn_flush(c) < 0) {
                return;
            }
        }
        if (c->state == YMO_CONN_EXCHANGE && c->ex->worker_done &&
            c->wq_head == NULL) {
            /* Response complete. A body the app did not read closes the
             * connection: its bytes cannot be told from the next request
             * unless we read them, and the worker said so in its head. */
            conn_free_exchange(c);
            c->state = YMO_CONN_HEAD;
            if (!c->body_done) {
                /* Closing with unread body bytes would make the kernel
                 * reset the connection, destroying the response still in
                 * flight: shut down our side and discard them first. */
                c->state = YMO_CONN_LINGER;
                c->closing = 1;
                c->inlen = 0;
                c->linger_until = 0;
            }
            if (s->draining_loop || (c->read_eof && c->inlen == 0) ||
                s->config.keepalive_timeout <= 0) {
                c->closing = 1;
            }
            ymo_http_parser_init(&c->parser, &s->config.limits);
            c->head_started = now(c);
            if (c->inlen == 0 && !c->inbuf_borrowed) {
                free(c->inbuf);         /* idle again: give it back */
                c->inbuf = NULL;
                c->incap = 0;
            }
            if (!c->closing && c->inlen > 0) {
                continue;       /* a pipelined request is waiting */
            }
        }
        break;
    }
    if (c->inbuf_borrowed && conn_keep_input(c) < 0) {
        ymo_conn_close(c);
        return;
    }
    if (c->closing && c->wq_head == NULL) {
        if (c->state == YMO_CONN_HEAD && c->read_eof) {
            ymo_conn_close(c);
            return;
        }
        if (c->state == YMO_CONN_HEAD) {
            /* Our close: the client may have sent more (pipelined
             * requests) that sits unread in the kernel, and closing over
             * unread data resets the connection, destroying the response
             * still in flight. Shut down our side, then discard until the
             * client closes (or LINGER_SECONDS). */
            c->state = YMO_CONN_LINGER;
            c->inlen = 0;
            c->linger_until = 0;
        }
        if (c->state == YMO_CONN_LINGER && c->linger_until == 0) {
            if (c->read_eof) {
                /* Everything the client sent was read: nothing can reset
                 * the connection. */
                ymo_conn_close(c);
                return;
            }
            shutdown(c->fd, SHUT_WR);
            c->linger_until = now(c) + LINGER_SECONDS;
        }
    }
    if (c->state == YMO_CONN_HEAD) {
        /* The credit for time spent waiting for room belongs to the
         * request parsed right after the wait; without one (only part of
         * a head, or stray line breaks, were in), it does not carry over
         * to a later request. */
        c->stall_credit = 0;
    }
    int events = 0;
    if (c->write_blocked) {
        events |= EV_WRITE;
    }
    if (!c->read_eof && !c->stalled) {
        /* While the app works on a request whose body has arrived, keep
         * reading into the buffer (a pipelined request, or the client's
         * EOF): switching the watcher off and on would cost an epoll_ctl
         * per request. (A connection waiting for room reads nothing.) */
        if ((c->state == YMO_CONN_HEAD && !c->closing && !c->stalled) ||
            (c->state == YMO_CONN_EXCHANGE && !c->body_done &&
             !c->body_paused) ||
            (c->state == YMO_CONN_EXCHANGE && c->body_done &&
             (c->inbuf == NULL || c->inlen < c->incap)) ||
            (c->state == YMO_CONN_LINGER && c->linger_until != 0)) {
            events |= EV_READ;
        }
    }
    conn_set_events(c, events);
    conn_arm_timer(c);
}

/* Read what the socket has. Returns -1 when the connection was closed. */
static int
conn_read(ymo_conn_t *c)
{
    if (c->state == YMO_CONN_LINGER) {
        char sink[16384];
        ssize_t n = read(c->fd, sink, sizeof(sink));
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            ymo_conn_close(c);
            return -1;
        }
        return 0;
    }
    if (c->inbuf == NULL) {
        /* Read into the loop's buffer; conn_step keeps what is left. */
        c->inbuf = c->server->scratch;
        c->incap = YMO_SCRATCH_SIZE;
        c->inbuf_borrowed = 1;
    }
    else if (c->inlen == c->incap) {
        /* Grow for a long head (the parser bounds it) or for a body. */
        size_t limit = c->server->config.limits.max_head_size + 1;
        size_t cap = c->incap * 2;
        if (c->state == YMO_CONN_HEAD && cap > limit) {
            cap = limit > c->incap ? limit : c->incap;
        }
        if (c->state == YMO_CONN_EXCHANGE && cap < INBUF_BODY) {
            cap = INBUF_BODY;
        }
        if (cap > c->incap) {
            char *p = ymo_realloc(c->inbuf, cap);
            if (p == NULL) {
                ymo_conn_close(c);
                return -1;
            }
            c->inbuf = p;
            c->incap = cap;
        }
        else {
            return 0;           /* full: the parser will decide */
        }
    }
    else if (c->state == YMO_CONN_EXCHANGE && !c->body_done &&
             !c->inbuf_borrowed && c->incap < INBUF_BODY) {
        char *p = ymo_realloc(c->inbuf, INBUF_BODY);
        if (p != NULL) {
            c->inbuf = p;
            c->incap = INBUF_BODY;
        }
    }
    ssize_t n = read(c->fd, c->inbuf + c->inlen, c->incap - c->inlen);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            return 0;
        }
        ymo_conn_close(c);
        return -1;
    }
    if (n == 0) {
        c->read_eof = 1;
        if (c->state == YMO_CONN_HEAD && c->wq_head == NULL &&
            c->inlen == 0) {
            /* Nothing (or half a head) and the client is done. */
            ymo_conn_close(c);
            return -1;
        }
        if (c->state == YMO_CONN_EXCHANGE && !c->body_done) {
            /* The request can never complete: the client is gone. Abort
             * the exchange, so that a request still waiting for a worker
             * never reaches the app and a running one stops at its next
             * read or write. */
            ymo_conn_close(c);
            return -1;
        }
        if (c->ex != NULL) {
            /* After a complete request an EOF may be a client that only
             * shut down its sending side (`nc -N`, HTTP/1.0 scripts, some
             * health checks) and waits for its answer: it gets it, and the
             * connection closes after it. Only a reset or a failed write
             * says for sure that a client is gone; the app may still ask
             * (yimmo.client_gone). */
            ymo_exchange_client_eof(c->ex);
        }
        return 0;
    }
    if (c->state == YMO_CONN_HEAD && c->inlen == 0 && c->seq > 0) {
        /* A keep-alive connection's next head is timed from its first
         * byte (idleness before it is keepalive_timeout's business); the
         * first request's from the accept. */
        c->head_started = now(c);
    }
    c->inlen += (size_t)n;
    return 0;
}

static void
conn_on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    ymo_conn_t *c = w->data;
    if (revents & EV_WRITE) {
        c->write_blocked = 0;
    }
    if ((revents & EV_READ) && conn_read(c) < 0) {
        return;
    }
    conn_step(c);
}

void
ymo_conn_on_exchange(ymo_exchange_t *ex)
{
    pthread_mutex_lock(&ex->lock);
    ymo_bucket_t *out = ex->out_head;
    ex->out_head = ex->out_tail = NULL;
    ex->out_queued = 0;
    int done = ex->out_done;
    int close_after = ex->out_close || ex->out_abort;
    int reset = ex->out_done && ex->out_reset;
    int cont = ex->need_continue;
    int resume = ex->need_resume;
    ex->need_continue = 0;
    if (resume) {
        ex->need_resume = 0;
        ex->in_paused = 0;
    }
    pthread_mutex_unlock(&ex->lock);

    ymo_server_t *s = ex->server;
    if (done) {
        ex->worker_done = 1;
        if (ex->assigned != NULL) {
            ex->assigned->assigned--;
        }
        s->n_exchanges--;
        ymo_server_request_done(s);
    }
    ymo_conn_t *c = ex->conn;
    if (c == NULL) {
        /* The client is gone: drop the output, free when done. */
        ymo_bucket_free_chain(out);
        if (done) {
            ymo_exchange_release(ex);
            server_unstall(s);
        }
        return;
    }
    if (done) {
        /* Connections waiting for room go first, then this one's next
         * request (it waits behind them if there is no room left). */
        server_unstall(s);
    }
    if (reset) {
        /* The response was cut (the watchdog): what is still queued is
         * dropped and the client sees a reset now, not a body that goes
         * on arriving until the write timeout. */
        ymo_bucket_free_chain(out);
        struct linger lg = {1, 0};
        (void)setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        ymo_conn_close(c);
        return;
    }
    if (cont && !done && !c->head_written && !c->body_done) {
        static const char msg[] = "HTTP/1.1 100 Continue\r\n\r\n";
        ymo_bucket_t *b = ymo_bucket_copy(msg, sizeof(msg) - 1);
        if (b == NULL) {
            /* Out of memory: a client that waits for the 100 would never
             * send the body. Fail it now: the app's read raises, and the
             * client gets a 503 and the close. */
            conn_body_failed(c, 503);
        }
        else {
            b->from_ex = 0;
            wq_append(c, b);
            c->head_written = 1;
            c->last_read = now(c);  /* the client sends the body from now */
            c->rate_since = c->last_read;
            c->rate_bytes = c->body_received;
        }
    }
    if (out != NULL) {
        c->head_written = 1;
        wq_append(c, out);
    }
    if (resume) {
        /* The body clock restarts: the pause was the app's doing. */
        c->body_paused = 0;
        c->last_read = now(c);
        c->rate_since = c->last_read;
        c->rate_bytes = c->body_received;
    }
    if (done && close_after) {
        c->closing = 1;
    }
    conn_step(c);
}

void
ymo_conn_drain(ymo_conn_t *c)
{
    if (c->state == YMO_CONN_HEAD && c->inlen == 0 && c->wq_head == NULL &&
        !c->stalled) {
        /* Idle: not closed at once, as its client may be sending a
         * request this very moment (a keep-alive client reusing it, or a
         * new client whose request has not arrived yet), and a close
         * would fail that request. It gets a last call of YMO_LAST_CALL
         * seconds: a request that arrives is answered with Connection:
         * close (the worker sees `draining`), then the connection closes;
         * silence closes it when the window ends. */
        conn_arm_timer(c);
    }
    else if (c->state == YMO_CONN_LINGER && conn_linger_done(c)) {
        ymo_conn_close(c);
    }
    else if (c->state == YMO_CONN_LINGER) {
        conn_arm_timer(c);      /* polled from now on: see conn_deadline */
    }
}
