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
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "http_response.h"
#include "proxy_protocol.h"
#include "wsgi_worker.h"

#define INBUF_INITIAL 8192
#define INBUF_BODY 65536
#define IOV_BATCH 64
#define LINGER_SECONDS 2.0
/* Fewest body bytes read with a head for the read buffer to be handed to
 * the exchange rather than copied (conn_adoptable): below it, the copy
 * costs less than a new 64 KB buffer, and a small body would pin one. */
#define ADOPT_MIN 16384
#define LINGER_POLL 0.02
/* Most bytes one connection writes in a turn of the loop (conn_flush).
 * Over loopback, or to any reader faster than the server, the socket
 * never fills: without a limit one big response would go out whole while
 * every other connection waits, and latency would follow the order
 * responses started in rather than their size. */
#ifndef YMO_FLUSH_TURN           /* (the fuzz build sets a small one) */
#define YMO_FLUSH_TURN (512u * 1024u)
#endif

/* How far conn_rest walks an idle list back to keep it in order. */
#define YMO_IDLE_WALK_MAX 32

static void conn_on_io(struct ev_loop *loop, ev_io *w, int revents);
static void conn_on_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void conn_step(ymo_conn_t *c);
static void conn_dispatch(ymo_conn_t *c);
static void conn_idle_close(ymo_conn_t *c);

static ev_tstamp
now(const ymo_conn_t *c)
{
    return ymo_server_now(c->listener->server);
}


static int
conn_last_call_fits(const ymo_conn_t *c)
{
    return ymo_server_last_call_fits(c->listener->server);
}

/* How many bytes of empty lines (CRLF pairs) buf begins with. RFC 9112
 * 2.2 has a server ignore them before a request line, and some clients
 * send one after a request's body. Dropped before a head (conn_read, and
 * what follows a response in conn_step), they leave a connection idle:
 * its keep-alive wait, or a stop's last call, still counts from when its
 * last response ended (they do not start a head, which would renew the
 * wait), and it ends quietly rather than with a 408 at the header
 * timeout. (Half a pair, then the other half, is the start of a head.) */
static size_t
empty_lines(const char *buf, size_t len)
{
    size_t n = 0;
    while (len - n >= 2 && buf[n] == '\r' && buf[n + 1] == '\n') {
        n += 2;
    }
    return n;
}

/* While the server stops, a lingering connection need not wait for its
 * client to close: once the client has acknowledged everything we sent
 * (nothing left in the socket's send queue), a reset can no longer
 * destroy the response. */
static int
conn_linger_done(const ymo_conn_t *c)
{
    int queued = 0;
    return c->busy->linger_until != 0 && c->busy->wq_head == NULL &&
           ioctl(c->fd, SIOCOUTQ, &queued) == 0 && queued == 0;
}

/* -- The server's lists of connections --
 *
 * A connection is on exactly one list (c->on): server->conns while busy,
 * or, while idle, the idle list of the timeout that applies to it. The
 * waits on one idle list all have the same length, so the list, kept in
 * the order the waits began, is also the order they end in: one server
 * timer for the first of them replaces a timer per connection (libev's
 * "a linked list of timers with the same timeout"), and going idle and
 * back costs a few pointer updates instead of two heap operations. */

static int
conn_idle_list(const ymo_conn_t *c)
{
    return c->seq > 0 ? 1 : 0;
}

static void
conn_unlink(ymo_conn_t *c)
{
    ymo_server_t *s = c->listener->server;
    ymo_conn_t **head = &s->conns;
    ymo_conn_t **tail = NULL;
    if (c->on != YMO_CONN_ON_BUSY) {
        head = &s->idle_head[c->on - YMO_CONN_ON_FRESH];
        tail = &s->idle_tail[c->on - YMO_CONN_ON_FRESH];
    }
    if (c->prev != NULL) {
        c->prev->next = c->next;
    }
    else {
        *head = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    else if (tail != NULL) {
        *tail = c->prev;
    }
    c->prev = c->next = NULL;
}

static void
conn_link_busy(ymo_conn_t *c)
{
    ymo_server_t *s = c->listener->server;
    c->on = YMO_CONN_ON_BUSY;
    c->prev = NULL;
    c->next = s->conns;
    if (s->conns != NULL) {
        s->conns->prev = c;
    }
    s->conns = c;
}

/* When an idle connection's wait ends. */
static ev_tstamp
conn_idle_deadline(const ymo_conn_t *c)
{
    const ymo_server_t *s = c->listener->server;
    ev_tstamp until = c->head_started + (c->seq > 0
                                             ? s->config.keepalive_timeout
                                             : s->config.header_timeout);
    if (s->draining_loop) {
        /* Stopping: its last call (see YMO_LAST_CALL), from the stop or,
         * for a connection whose response ended after it, from then. */
        ev_tstamp from = c->head_started > s->drain_started
                             ? c->head_started : s->drain_started;
        ev_tstamp last = from + YMO_LAST_CALL;
        return last < until ? last : until;
    }
    return until;
}

/* Arm the idle timer for the first idle connection's deadline, unless it
 * fires earlier already (the callback looks again then). */
static void
server_arm_idle_timer(ymo_server_t *s, int rearm)
{
    ev_tstamp first = 0;
    for (int k = 0; k < 2; k++) {
        if (s->idle_head[k] != NULL) {
            ev_tstamp d = conn_idle_deadline(s->idle_head[k]);
            if (first == 0 || d < first) {
                first = d;
            }
        }
    }
    if (first == 0) {
        ev_timer_stop(s->loop, &s->idle_timer);
        return;
    }
    if (ev_is_active(&s->idle_timer)) {
        if (!rearm && s->idle_timer_at <= first) {
            return;
        }
        ev_timer_stop(s->loop, &s->idle_timer);
    }
    ev_tstamp t = ymo_server_now(s);
    s->idle_timer_at = first;
    ev_timer_set(&s->idle_timer, (first > t ? first - t : 0.) + YMO_TIMER_PAD,
                 0.);
    ev_timer_start(s->loop, &s->idle_timer);
}

/* Busy parts come and go with every request of a keep-alive connection,
 * tens of them in a turn of the loop: past what glibc's per-thread cache
 * keeps (7 of a size), each went through the arena at both ends. The
 * loop keeps up to this many for reuse (none in a fault-injection build,
 * where each is an allocation to fail). */
#define BUSY_SPARES_MAX 64

/* A zeroed busy part, kept or new; NULL when out of memory. */
static ymo_conn_busy_t *
conn_busy_new(ymo_server_t *s)
{
#ifndef YMO_FAULT_INJECTION
    ymo_conn_busy_t *b = ymo_kept_take(&s->busy_spares, sizeof(*b));
    if (b != NULL) {
        return ymo_zero_(b, sizeof(*b));
    }
#else
    (void)s;
#endif
    return ymo_zalloc(sizeof(ymo_conn_busy_t));
}

/* Give back a busy part (its inbuf and timer done with). */
static void
conn_busy_free(ymo_server_t *s, ymo_conn_busy_t *b)
{
    if (!b->inbuf_borrowed) {
        free(b->inbuf);
    }
#ifndef YMO_FAULT_INJECTION
    if (ymo_kept_put(&s->busy_spares, b, sizeof(*b), BUSY_SPARES_MAX)) {
        return;
    }
#else
    (void)s;
#endif
    free(b);
}

void
ymo_conn_busy_drain(ymo_server_t *s)
{
    ymo_kept_free(&s->busy_spares, sizeof(ymo_conn_busy_t));
}

/* The connection has nothing going on: give back its busy part, and wait
 * for its next request (or its timeout) on an idle list. */
static void
conn_rest(ymo_conn_t *c)
{
    ymo_server_t *s = c->listener->server;
    ymo_conn_busy_t *b = c->busy;
    if (b != NULL) {
        ev_timer_stop(s->loop, &b->timer);
        conn_busy_free(s, b);
        c->busy = NULL;
    }
    conn_unlink(c);
    int k = conn_idle_list(c);
    c->on = (uint8_t)(YMO_CONN_ON_FRESH + k);
    /* In order of head_started: at the tail, except for a connection
     * whose wait began before it last went busy (a fresh one that sent
     * only a PROXY header). The walk back is bounded, or thousands of
     * such connections (a trusted proxy's, each opened before its
     * client spoke) would cost the loop thread a quadratic walk: past
     * the bound, the wait counts from the tail's start instead (a later
     * deadline, by no more than the time since the tail's wait began). */
    ymo_conn_t *after = s->idle_tail[k];
    int steps = 0;
    while (after != NULL && after->head_started > c->head_started) {
        if (++steps > YMO_IDLE_WALK_MAX) {
            c->head_started = s->idle_tail[k]->head_started;
            after = s->idle_tail[k];
            break;
        }
        after = after->prev;
    }
    c->prev = after;
    c->next = after != NULL ? after->next : s->idle_head[k];
    if (c->next != NULL) {
        c->next->prev = c;
    }
    else {
        s->idle_tail[k] = c;
    }
    if (after != NULL) {
        after->next = c;
    }
    else {
        s->idle_head[k] = c;
    }
    if (!ev_is_active(&c->io) ||
        (c->io.events & (EV_READ | EV_WRITE)) != EV_READ) {
        ev_io_stop(s->loop, &c->io);
        ev_io_modify(&c->io, EV_READ);      /* see conn_set_events */
        ev_io_start(s->loop, &c->io);
    }
    if (!ev_is_active(&s->idle_timer) ||
        conn_idle_deadline(c) < s->idle_timer_at) {
        server_arm_idle_timer(s, 0);
    }
}

/* Something happens on an idle connection: give it a busy part. Returns
 * -1 (the connection is still idle) when there is no memory for it. */
static int
conn_wake(ymo_conn_t *c)
{
    ymo_server_t *s = c->listener->server;
    ymo_conn_busy_t *b = conn_busy_new(s);
    if (b == NULL) {
        return -1;
    }
    b->state = YMO_CONN_HEAD;
    ymo_http_parser_init(&b->parser, &s->config.limits);
    ev_init(&b->timer, conn_on_timer);
    b->timer.data = c;
    c->busy = b;
    conn_unlink(c);
    conn_link_busy(c);
    /* The idle timer may now fire for nothing; it looks again then. */
    return 0;
}

/* The connection runs over this host's loopback: the peer has a loopback
 * address, and the same one as our end. (A loopback address alone does
 * not say it: with route_localnet, 127.x can be routed over a real
 * link; an address that is both ends' is this host's, unless NAT
 * rewrote both, which no setup does by accident.) It misses loopback
 * connections between two different 127.x addresses (a server bound to
 * 127.0.0.2 gets clients from 127.0.0.1): they get the close any other
 * peer gets, which is slower, not wrong. One getsockname for a peer
 * with a loopback address, none for others. */
static int
conn_over_loopback(int fd, const struct sockaddr *peer)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (peer->sa_family == AF_INET) {
        const struct sockaddr_in *p = (const struct sockaddr_in *)peer;
        const struct sockaddr_in *o = (const struct sockaddr_in *)&ss;
        return (ntohl(p->sin_addr.s_addr) >> 24) == 127 &&
               getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
               ss.ss_family == AF_INET &&
               o->sin_addr.s_addr == p->sin_addr.s_addr;
    }
    if (peer->sa_family == AF_INET6) {
        const struct sockaddr_in6 *p = (const struct sockaddr_in6 *)peer;
        const struct sockaddr_in6 *o = (const struct sockaddr_in6 *)&ss;
        int loopback = IN6_IS_ADDR_LOOPBACK(&p->sin6_addr) ||
                       (IN6_IS_ADDR_V4MAPPED(&p->sin6_addr) &&
                        p->sin6_addr.s6_addr[12] == 127);
        return loopback &&
               getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
               ss.ss_family == AF_INET6 &&
               memcmp(&o->sin6_addr, &p->sin6_addr, 16) == 0;
    }
    return 0;
}

ymo_conn_t *
ymo_conn_new(const ymo_listener_t *l, int fd, const struct sockaddr *peer,
             int trusted)
{
    ymo_server_t *s = l->server;
    ymo_conn_t *c = ymo_calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    c->listener = l;
    c->fd = fd;
    c->remote_family = AF_UNSPEC;
    if (peer->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)peer;
        c->remote_family = AF_INET;
        memcpy(c->remote_ip, &sin->sin_addr, 4);
        c->remote_port = ntohs(sin->sin_port);
    }
    else if (peer->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)peer;
        c->remote_family = AF_INET6;
        memcpy(c->remote_ip, &sin6->sin6_addr, 16);
        c->remote_port = ntohs(sin6->sin6_port);
    }
    c->peer_local = (uint8_t)conn_over_loopback(fd, peer);
    c->trusted = (uint8_t)trusted;
    c->proxy = !s->config.proxy_protocol ? YMO_CONN_PROXY_DONE
               : trusted                 ? YMO_CONN_PROXY_EXPECT
                                         : YMO_CONN_PROXY_REFUSE;
    c->head_started = now(c);
    ev_io_init(&c->io, conn_on_io, fd, EV_READ);
    c->io.data = c;
    s->n_conns++;
    /* No busy part until the first bytes arrive. */
    c->on = YMO_CONN_ON_BUSY;
    conn_link_busy(c);
    conn_rest(c);
    return c;
}

/* The numeric address of the peer ("" for a unix socket), as inet_ntop
 * would write it, into out (64 bytes). IPv4 without snprintf: this runs
 * for every request. */
static void
conn_format_addr(const ymo_conn_t *c, char *out)
{
    if (c->remote_family == AF_INET) {
        char *p = out;
        for (int i = 0; i < 4; i++) {
            unsigned v = c->remote_ip[i];
            if (v >= 100) {
                *p++ = (char)('0' + v / 100);
            }
            if (v >= 10) {
                *p++ = (char)('0' + v / 10 % 10);
            }
            *p++ = (char)('0' + v % 10);
            *p++ = '.';
        }
        p[-1] = '\0';
    }
    else if (c->remote_family == AF_INET6) {
        inet_ntop(AF_INET6, c->remote_ip, out, 64);
    }
    else {
        out[0] = '\0';
    }
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
    ymo_server_t *s = c->listener->server;
    c->busy->stalled = 1;
    c->busy->stalled_since = now(c);
    c->busy->stall_next = NULL;
    c->busy->stall_prev = s->stalled_tail;
    if (s->stalled_tail != NULL) {
        s->stalled_tail->busy->stall_next = c;
    }
    else {
        s->stalled_head = c;
    }
    s->stalled_tail = c;
}

static void
conn_unlink_stalled(ymo_conn_t *c)
{
    ymo_server_t *s = c->listener->server;
    if (c->busy->stall_prev != NULL) {
        c->busy->stall_prev->busy->stall_next = c->busy->stall_next;
    }
    else {
        s->stalled_head = c->busy->stall_next;
    }
    if (c->busy->stall_next != NULL) {
        c->busy->stall_next->busy->stall_prev = c->busy->stall_prev;
    }
    else {
        s->stalled_tail = c->busy->stall_prev;
    }
    c->busy->stall_next = c->busy->stall_prev = NULL;
    c->busy->stalled = 0;
    c->busy->stall_readable = 0;
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
        ev_tstamp waited = now(c) - c->busy->stalled_since;
        c->busy->stall_credit += waited;
        c->head_started += waited;
        c->busy->last_read += waited;
        c->busy->rate_since += waited;
        conn_step(c);
    }
}

static void
conn_free_exchange(ymo_conn_t *c)
{
    ymo_exchange_t *ex = c->busy->ex;
    c->busy->ex = NULL;
    if (ex == NULL) {
        return;
    }
    ex->conn = NULL;
    if (c->busy->dispatch_pending) {
        /* No worker ever had it. */
        c->busy->dispatch_pending = 0;
        ymo_exchange_release(ex);
    }
    else if (ex->worker_done) {
        ymo_exchange_release(ex);
    }
    else {
        /* The worker still has it: it stops at its next read or write,
         * and the loop frees it when the final post arrives. */
        ymo_exchange_abort(ex, c->listener->server->cut_off
                                   ? YMO_READ_STOPPED : -1);
    }
}

void
ymo_conn_close(ymo_conn_t *c)
{
    ymo_server_t *s = c->listener->server;
    ymo_conn_busy_t *b = c->busy;
    ev_io_stop(s->loop, &c->io);
    close(c->fd);
    if (b != NULL) {
        ev_timer_stop(s->loop, &b->timer);
        if (b->stalled) {
            conn_unlink_stalled(c);
        }
        conn_free_exchange(c);
        ymo_bucket_free_chain(b->wq_head);
        conn_busy_free(s, b);
    }
    /* (An idle list left empty stops its timer when it next fires.) */
    conn_unlink(c);
    free(c);
    ymo_server_conn_closed(s);
}

/* Whether closing c now cuts short a response whose body ends at the
 * close, begun for its client: bytes of it still wait in our queue, or its
 * worker is still making it. (Not one whose last bytes are all written
 * while its iterable's close() runs: it is whole.) Only such a body: one
 * framed by Content-Length or chunked shows a cut by its framing, and a
 * reset drops what the kernel still holds, whole responses before it
 * included (review round 2, s24). */
static int
conn_cuts_response(const ymo_conn_t *c)
{
    const ymo_conn_busy_t *b = c->busy;
    return b != NULL && b->out_to_close &&
           (b->wq_head != NULL ||
            (b->ex != NULL && !b->ex->worker_done && !b->out_complete));
}

/* Close c, with a reset when that cuts short a body that ends at the
 * close (a write timeout, the stop's deadline): cut by a FIN it looks
 * whole to its client, and to a proxy that passes it on (RFC 9112 8: only
 * an abortive close tells; hostile review s24). */
static void
conn_close_cut(ymo_conn_t *c)
{
    if (conn_cuts_response(c)) {
        struct linger lg = {1, 0};
        (void)setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    ymo_conn_close(c);
}

void
ymo_conn_close_all(ymo_server_t *s)
{
    while (s->conns != NULL) {
        conn_close_cut(s->conns);
    }
    for (int k = 0; k < 2; k++) {
        while (s->idle_head[k] != NULL) {
            ymo_conn_close(s->idle_head[k]);
        }
    }
    ev_timer_stop(s->loop, &s->idle_timer);
}

static void
wq_append(ymo_conn_t *c, ymo_bucket_t *chain)
{
    if (chain == NULL) {
        return;
    }
    if (c->busy->wq_tail != NULL) {
        c->busy->wq_tail->next = chain;
    }
    else {
        c->busy->wq_head = chain;
    }
    int file = chain->fd >= 0;
    while (chain->next != NULL) {
        chain = chain->next;
        file |= chain->fd >= 0;
    }
    c->busy->wq_tail = chain;
    if (file && !c->busy->corked && !c->listener->is_unix) {
        /* A file goes out with TCP_CORK on, until the queue is empty
         * (conn_flush): the head shares the file's first segment, and
         * every segment is full. Without it, over loopback, sendfile
         * hands the segments the window does not take yet to the
         * receiver's ACKs, whose CPU then transmits them: 0.7x the
         * throughput when the client is the bottleneck. */
        int one = 1;
        if (setsockopt(c->fd, IPPROTO_TCP, TCP_CORK, &one,
                       sizeof(one)) == 0) {
            c->busy->corked = 1;
        }
    }
}

/* Leave record a (and head[0..len) after it) for a worker to log. */
static void
conn_push_record(ymo_conn_t *c, ymo_answer_t *a, const char *head,
                 size_t len)
{
    ymo_server_t *s = c->listener->server;
    if (atomic_load(&s->answers_waiting) >= YMO_ANSWERS_MAX) {
        atomic_fetch_add(&s->answers_dropped, 1);
        return;
    }
    if (len > YMO_ANSWER_HEAD_MAX) {
        len = YMO_ANSWER_HEAD_MAX;
    }
    a->remote_port = c->remote_family != AF_UNSPEC ? c->remote_port : -1;
    a->head_len = len;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    a->at = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    conn_format_addr(c, a->remote_addr);
    ymo_bucket_t *b = ymo_bucket_new(sizeof(*a) + len);
    if (b == NULL) {
        atomic_fetch_add(&s->answers_dropped, 1);
        return;
    }
    memcpy(b->data, a, sizeof(*a));
    memcpy(b->data + sizeof(*a), head, len);
    b->len = sizeof(*a) + len;
    atomic_fetch_add(&s->answers_waiting, 1);
    ymo_release_push(&s->answered, b);
}

/* The access log's record of an answer of the loop's own (status, the
 * body bytes it sent; the request's bytes as far as they came,
 * head[0..len), of which the head is kept). */
static void
conn_log_answer(ymo_conn_t *c, int status, size_t sent, const char *head,
                size_t len)
{
    if (!c->listener->server->config.log_answers) {
        return;
    }
    /* The empty lines before a request (the parser skips them). */
    size_t k = empty_lines(head, len);
    head += k;
    len -= k;
    /* The head: up to its empty line, if it came. */
    for (size_t i = 0; i + 1 < len && i < YMO_ANSWER_HEAD_MAX; i++) {
        if (head[i] == '\n' &&
            (head[i + 1] == '\n' ||
             (head[i + 1] == '\r' && i + 2 < len && head[i + 2] == '\n'))) {
            len = i + 1;
            break;
        }
    }
    ymo_answer_t a;
    memset(&a, 0, sizeof(a));
    a.kind = YMO_ANSWER_ACCESS;
    a.status = status;
    a.body_len = sent;
    conn_push_record(c, &a, head, len);
}

/* The error log's record of a response cut because its file ended
 * `missing` bytes early (it shrank while being sent). */
static void
conn_log_short_file(ymo_conn_t *c, unsigned long long missing)
{
    ymo_answer_t a;
    memset(&a, 0, sizeof(a));
    a.kind = YMO_ANSWER_SHORT_FILE;
    a.missing = missing;
    const char *line = "";
    size_t len = 0;
    if (c->busy->ex != NULL) {
        size_t k = empty_lines(c->busy->ex->head, c->busy->ex->head_len);
        line = c->busy->ex->head + k;
        len = c->busy->ex->head_len - k;
        const char *end = memchr(line, '\n', len);
        if (end != NULL) {
            len = (size_t)(end - line);
        }
    }
    conn_push_record(c, &a, line, len);
}

/* The one place a request the parser refused becomes a response: status
 * line, a short text body (none for HEAD), and the connection closes
 * after it. req[0..req_len): what the client sent of it, for the access
 * log. */
static void
conn_error_head(ymo_conn_t *c, int status, int head, const char *req,
                size_t req_len)
{
    ymo_bucket_t *b = ymo_http_error_bucket(status, head);
    /* (No memory for the answer: the client gets the close alone.) */
    conn_log_answer(c, status,
                    b != NULL ? ymo_http_error_body_len(status, head) : 0,
                    req, req_len);
    c->busy->closing = 1;
    c->busy->inlen = 0;
    if (b == NULL) {
        return;
    }
    wq_append(c, b);
    /* Discard what the client may still send, so the kernel does not
     * answer it with a reset that could destroy this response. */
    c->busy->state = YMO_CONN_LINGER;
}

static int
req_is_head(const ymo_http_request_t *req)
{
    return req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
}

/* The same for the request whose head (complete or not, parsed or
 * refused) is at the front of inbuf. Its method is read off its first
 * bytes, as the parser may have refused it before: a HEAD's error
 * response carried a text body (hostile review s20), which a client
 * reading the next response would take for its status line. */
static void
conn_error(ymo_conn_t *c, int status)
{
    /* (Past the empty lines the parser skips: a CRLF that came in two
     * reads, or behind a PROXY header, is still there.) */
    size_t k = empty_lines(c->busy->inbuf, c->busy->inlen);
    int head = c->busy->inlen - k >= 5 &&
               memcmp(c->busy->inbuf + k, "HEAD ", 5) == 0;
    conn_error_head(c, status, head, c->busy->inbuf + k,
                    c->busy->inlen - k);
}

/* The same for the request of the exchange not yet given to a worker,
 * which it drops. */
static void
conn_error_exchange(ymo_conn_t *c, int status)
{
    ymo_exchange_t *ex = c->busy->ex;
    int head = req_is_head(&ex->req);
    /* Its head, for the access log, outlives it here. */
    ymo_exchange_retain(ex);
    conn_free_exchange(c);
    c->busy->state = YMO_CONN_HEAD;
    conn_error_head(c, status, head, ex->head, ex->head_len);
    ymo_exchange_release(ex);
}

/* What is queued now is the last the connection sends: the response is
 * complete and the connection closes after it (conn_step's close, or the
 * lingering close's shutdown, follows in the same turn). Sent with
 * MSG_MORE, its last segment waits for the FIN, which then goes out in
 * it: one segment less for each side to send and receive (a tenth of the
 * packets of a connection that carries one request). Not with the cork
 * of a file (its release flushes), nor on a unix socket. */
static int
conn_last_write(const ymo_conn_t *c)
{
    return c->busy->closing && !c->busy->corked && !c->listener->is_unix &&
           !c->busy->resetting &&
           (c->busy->ex == NULL || c->busy->ex->worker_done);
}

/* Our side is done sending: the FIN goes out (with what the kernel held
 * for it). Once per connection. */
static void
conn_shut_down(ymo_conn_t *c)
{
    if (!c->busy->shut) {
        shutdown(c->fd, SHUT_WR);
        c->busy->shut = 1;
        c->busy->held = 0;
    }
}

/* The kernel holds no byte from the client that was not read (or the
 * client closed, or the connection failed), and the client acknowledged
 * everything we sent: closing now cannot destroy the response. Both are
 * needed: a byte the client sends after the close (a stray CRLF after a
 * body, say) makes the orphaned socket answer with a reset, which drops
 * whatever of the response its send queue still holds. A response whose
 * last bytes the kernel holds (c->busy->held) goes out first, with our
 * FIN in the same segment: the shutdown the lingering close would make
 * anyway, so the client can acknowledge it. */
static int
conn_nothing_unread(ymo_conn_t *c)
{
    char byte;
    int queued = 0;
    ssize_t n = recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN &&
                   errno != EWOULDBLOCK)) {
        return 1;               /* the client closed, or the connection
                                 * failed: nothing more can come */
    }
    if (n >= 0 || errno == EINTR) {
        return 0;
    }
    if (c->busy->held) {
        conn_shut_down(c);
        if (c->peer_local) {
            /* A peer on this host acknowledges our FIN only with its
             * own (its socket delays the ACK, hoping to send it with its
             * FIN), which would cost every connection a lingering close.
             * Over loopback there is no network between us: a segment
             * that left our socket is handed to the peer's as it is sent,
             * so everything sent (the window took it) is as good as
             * acknowledged. (Unless the host drops it on loopback: a
             * backlog over net.core.netdev_max_backlog, a firewall rule;
             * then the orphaned socket sends it again, and only a byte
             * the client sends in between, after saying it would send
             * none, could reset it.) */
            return ioctl(c->fd, SIOCOUTQNSD, &queued) == 0 && queued == 0;
        }
    }
    return ioctl(c->fd, SIOCOUTQ, &queued) == 0 && queued == 0;
}

/* Write as much of the queue as the socket takes, up to YMO_FLUSH_TURN
 * bytes: what is left then waits for the next turn of the loop (as if the
 * socket were full), after the other connections ready in this one.
 * Returns -1 when the connection was closed (c is gone), 0 otherwise. */
static int
conn_flush(ymo_conn_t *c)
{
    size_t ex_bytes = 0;
    size_t turn = YMO_FLUSH_TURN;
    int r = 0;
    while (c->busy->wq_head != NULL) {
        ymo_bucket_t *b = c->busy->wq_head;
        ssize_t n;
        if (turn == 0) {
            if (!c->busy->write_blocked) {
                c->busy->write_blocked = 1;
                c->busy->last_write = now(c);
            }
            break;
        }
        if (b->fd >= 0) {
            off_t off = b->file_off + (off_t)b->off;
            size_t want = b->len - b->off;
            n = sendfile(c->fd, b->fd, &off, want > turn ? turn : want);
            if (n == 0 && want > 0) {
                /* The file is shorter than promised: the response cannot
                 * be completed. */
                conn_log_short_file(c, want);
                r = -1;
                break;
            }
        }
        else {
            struct iovec iov[IOV_BATCH];
            int cnt = 0;
            size_t room = turn;
            ymo_bucket_t *x;
            for (x = b; x != NULL && x->fd < 0 && cnt < IOV_BATCH &&
                        room > 0;
                 x = x->next) {
                if (x->len == x->off) {
                    continue;
                }
                /* No more than the turn's budget either: a socket with
                 * a big send buffer (loopback autotunes it to several MB)
                 * takes a big item whole in one sendmsg. */
                size_t len = x->len - x->off;
                iov[cnt].iov_base = (void *)(x->ptr + x->off);
                iov[cnt].iov_len = len < room ? len : room;
                room -= iov[cnt].iov_len;
                cnt++;
            }
            /* sendmsg rather than writev for MSG_NOSIGNAL: a client that
             * reset the connection must cost an EPIPE, not a SIGPIPE that
             * kills the process where its disposition is SIG_DFL. (For
             * sendfile, which takes no flags, see ymo_server_run.) */
            struct msghdr msg = {.msg_iov = iov,
                                 .msg_iovlen = (size_t)cnt};
            /* All that is left, and the last of the connection. */
            int more = x == NULL && room > 0 && conn_last_write(c);
            int flags = MSG_NOSIGNAL | (more ? MSG_MORE : 0);
            /* One piece (a small response): send, which spares the kernel
             * the copy and check of a msghdr and its iovec. */
            n = cnt == 1   ? send(c->fd, iov[0].iov_base, iov[0].iov_len,
                                  flags)
                : cnt > 0 ? sendmsg(c->fd, &msg, flags)
                          : 0;
            if (n > 0 && more) {
                c->busy->held = 1;
            }
        }
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->busy->write_blocked) {
                    c->busy->write_blocked = 1;
                    c->busy->last_write = now(c);
                }
                break;
            }
            r = -1;
            break;
        }
        c->busy->write_blocked = 0;
        c->busy->last_write = now(c);
        turn -= (size_t)n < turn ? (size_t)n : turn;
        size_t left = (size_t)n;
        while (c->busy->wq_head != NULL) {
            ymo_bucket_t *x = c->busy->wq_head;
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
            if (x->from_ex) {
                /* And the memory it held (see ymo_bucket_slack). */
                ex_bytes += ymo_bucket_slack(x);
            }
            c->busy->wq_head = x->next;
            if (c->busy->wq_head == NULL) {
                c->busy->wq_tail = NULL;
            }
            ymo_bucket_free(x);
            if (left == 0) {
                break;
            }
        }
    }
    if (c->busy->corked && c->busy->wq_head == NULL && r == 0) {
        /* Everything is written: what the cork holds goes out now. */
        int zero = 0;
        (void)setsockopt(c->fd, IPPROTO_TCP, TCP_CORK, &zero, sizeof(zero));
        c->busy->corked = 0;
    }
    if (ex_bytes > 0 && c->busy->ex != NULL) {
        const ymo_config_t *cfg = &c->listener->server->config;
        ymo_exchange_output_written(c->busy->ex, ex_bytes,
                                    cfg->out_high_water / 2);
    }
    if (r < 0) {
        ymo_conn_close(c);
    }
    return r;
}

/* No memory for the body: the client may try again later. */
static void
conn_body_nomem(ymo_conn_t *c)
{
    c->busy->closing = 1;
    c->busy->body_done = 1;
    c->busy->body_error = 503;
    if (!c->busy->dispatch_pending) {
        ymo_exchange_input_fail(c->busy->ex, 503);
    }
}

/* Body bytes that came in one read with the head need no copy when they
 * are many and nothing follows them: the loop's buffer, a bucket, becomes
 * the exchange's first input bucket (body from `at`, `take` bytes), and the
 * loop takes a new one. Returns that bucket, or NULL to copy. */
static ymo_bucket_t *
conn_adoptable(ymo_conn_t *c, size_t at, size_t take, int done)
{
    ymo_server_t *s = c->listener->server;
    if (at == 0 || take < ADOPT_MIN || at + take != c->busy->inlen ||
        !c->busy->inbuf_borrowed || c->busy->inbuf != s->scratch) {
        return NULL;
    }
    ymo_bucket_t *fresh = ymo_bucket_new(YMO_SCRATCH_SIZE);
    if (fresh == NULL) {
        return NULL;            /* the copy needs no memory of its own */
    }
    ymo_bucket_t *b = s->scratch_bucket;
    b->off = at;
    b->len = at + take;
    s->scratch_bucket = fresh;
    s->scratch = fresh->data;
    if (done && b->len < b->cap) {
        /* The whole body is in: its room would be held for nothing (a
         * request waiting for a worker kept 64 KB for a 16 KB body).
         * Shrinking leaves the bytes where they are. */
        ymo_bucket_t *smaller = ymo_realloc(b, sizeof(*b) + b->len);
        if (smaller != NULL) {
            b = smaller;
            b->cap = b->len;
        }
    }
    /* inbuf stays borrowed, now from the new buffer; what it held (all
     * consumed by the caller) is the exchange's. */
    c->busy->inbuf = s->scratch;
    return b;
}

/* Hand body bytes in inbuf, from offset `at`, to the exchange (those that
 * came in one read with the head, and chunked bodies, whose framing is
 * parsed here: a copy), then drop the first `at` bytes (the head just
 * parsed) and what was fed. A Content-Length body's other bytes are read
 * straight into the exchange: see conn_read_into_body. */
static int
conn_feed_body_at(ymo_conn_t *c, size_t at)
{
    ymo_exchange_t *ex = c->busy->ex;
    size_t hwm = c->listener->server->config.in_high_water;
    const char *src = c->busy->inbuf + at;
    size_t avail = c->busy->inlen - at;
    size_t used = 0;
    int r = 0;
    if (c->busy->body_done || c->busy->body_paused) {
        /* Nothing to feed (no body, or the exchange is full). */
    }
    else if (c->busy->body_kind == YMO_HTTP_BODY_LENGTH) {
        size_t take = avail < c->busy->body_left ? avail
                                                 : (size_t)c->busy->body_left;
        c->busy->body_left -= take;
        used = take;
        c->busy->body_done = c->busy->body_left == 0;
        ymo_bucket_t *adopted = conn_adoptable(c, at, take,
                                               c->busy->body_done);
        r = adopted != NULL ? ymo_exchange_input_adopt(ex, adopted,
                                                       c->busy->body_done,
                                                       hwm)
                            : ymo_exchange_input_append(ex, src, take,
                                                        c->busy->body_done,
                                                        hwm);
    }
    else {
        while (used < avail && !c->busy->chunked.done) {
            const char *data;
            size_t dlen;
            ssize_t n = ymo_http_chunked_feed(&c->busy->chunked, src + used,
                                              avail - used, &data, &dlen);
            if (n < 0) {
                c->busy->body_done = 1;
                c->busy->closing = 1;
                c->busy->body_error = c->busy->chunked.status;
                if (!c->busy->dispatch_pending) {
                    ymo_exchange_input_fail(ex, c->busy->chunked.status);
                }
                c->busy->inlen = 0;
                return 0;
            }
            if (n == 0) {
                break;
            }
            used += (size_t)n;
            if (dlen > 0 || c->busy->chunked.done) {
                r = ymo_exchange_input_append(ex, data, dlen,
                                              c->busy->chunked.done, hwm);
                if (r != 0) {
                    break;
                }
            }
        }
        c->busy->body_done = c->busy->chunked.done;
    }
    if (r < 0) {
        conn_body_nomem(c);
    }
    else if (r == 1) {
        c->busy->body_paused = 1;
    }
    c->busy->inlen -= at + used;
    if (c->busy->inlen > 0 && at + used > 0) {
        memmove(c->busy->inbuf, c->busy->inbuf + at + used, c->busy->inlen);
    }
    if (used > 0) {
        c->busy->last_read = now(c);
        c->busy->body_received += used;
    }
    return 0;
}

/* A complete head is at the front of inbuf: make it an exchange. */
static void
conn_start_exchange(ymo_conn_t *c, size_t head_len,
                    const ymo_http_request_t *req)
{
    ymo_server_t *s = c->listener->server;
    ymo_exchange_t *ex = ymo_exchange_new(c->busy->inbuf, head_len, req);
    if (ex == NULL) {
        conn_error(c, 503);
        return;
    }
    ex->server = s;
    ex->listener = c->listener;
    conn_format_addr(c, ex->remote_addr);
    ex->remote_port = c->remote_family != AF_UNSPEC ? c->remote_port : -1;
    ex->trusted = c->trusted;
    ex->seq = c->seq;
    if (c->seq < UINT32_MAX) {
        c->seq++;
    }
    ex->conn = c;
    if (c->busy->read_eof) {
        /* Pipelined by a client that has shut down its sending side
         * since (see the EOF in conn_read). */
        ymo_exchange_client_eof(ex);
    }
    c->busy->ex = ex;
    c->busy->state = YMO_CONN_EXCHANGE;
    c->busy->head_written = 0;
    c->busy->out_complete = 0;
    c->busy->out_to_close = 0;
    c->busy->body_kind = req->body;
    c->busy->body_left = req->content_length;
    c->busy->body_done = req->body == YMO_HTTP_BODY_NONE;
    c->busy->body_paused = 0;
    c->busy->body_error = 0;
    c->busy->body_received = 0;
    c->busy->last_read = now(c);
    c->busy->rate_since = c->busy->last_read;
    c->busy->rate_bytes = 0;
    if (req->body == YMO_HTTP_BODY_CHUNKED) {
        ymo_http_chunked_init(&c->busy->chunked, &s->config.limits);
    }
    /* A small body is read whole before a worker is engaged, so that a
     * client sending it slowly (the slow-POST attack) ties up only its
     * connection. Not with Expect: 100-continue, which the app answers by
     * reading (or not). */
    size_t buffer = s->config.buffer_body;
    c->busy->dispatch_pending =
        buffer > 0 && req->body != YMO_HTTP_BODY_NONE &&
        (req->body == YMO_HTTP_BODY_CHUNKED || req->content_length <= buffer);
    if (c->busy->dispatch_pending && req->expect_continue) {
        /* The body is small enough to buffer: the loop asks for it, so
         * that Expect cannot be a way around the buffering (the app could
         * not have refused a body this small to much gain). */
        static const char msg[] = "HTTP/1.1 100 Continue\r\n\r\n";
        ymo_bucket_t *b = ymo_bucket_copy(msg, sizeof(msg) - 1);
        if (b == NULL) {
            conn_error_exchange(c, 503);
            return;
        }
        b->from_ex = 0;
        wq_append(c, b);
        c->busy->head_written = 1;
    }
    /* The body bytes that came with the head go to the exchange from
     * where they are (moved to the front of inbuf first, they were copied
     * once more), and only what follows them moves. */
    conn_feed_body_at(c, head_len);
    if (!c->busy->dispatch_pending) {
        conn_dispatch(c);
    }
}

/* Hand the exchange to a worker (for a buffered request: its body is in,
 * or too big to wait for). Its wait for a worker starts now, plus what it
 * waited for room. */
static void
conn_dispatch(ymo_conn_t *c)
{
    c->busy->dispatch_pending = 0;
    c->busy->ex->queued_at = now(c) - c->busy->stall_credit;
    c->busy->stall_credit = 0;
    ymo_server_dispatch(c->listener->server, c->busy->ex);
}

/* The body cannot complete (status 400/408/413/500): tell the app, or,
 * when no worker has the exchange yet, answer for it. */
static void
conn_body_failed(ymo_conn_t *c, int status)
{
    c->busy->body_done = 1;
    c->busy->closing = 1;
    c->busy->body_error = status;
    if (!c->busy->dispatch_pending) {
        ymo_exchange_input_fail(c->busy->ex, status);
    }
}

static void
conn_set_events(ymo_conn_t *c, int events)
{
    struct ev_loop *loop = c->listener->server->loop;
    if (ev_is_active(&c->io) && (c->io.events & (EV_READ | EV_WRITE))
                                == events) {
        return;
    }
    ev_io_stop(loop, &c->io);
    if (events != 0) {
        /* Not ev_io_set: the fd is the same, and libev takes a set fd for
         * a new one, which it adds to epoll again (EEXIST when it is
         * still there) even when the events end up unchanged. */
        ev_io_modify(&c->io, events);
        ev_io_start(loop, &c->io);
    }
}

/* When the current state times out; 0 when nothing can. */
static ev_tstamp
conn_deadline(const ymo_conn_t *c)
{
    const ymo_config_t *cfg = &c->listener->server->config;
    if (c->busy->write_blocked) {
        return c->busy->last_write + cfg->write_timeout;
    }
    switch (c->busy->state) {
    case YMO_CONN_LINGER:
        if (c->listener->server->draining_loop && c->busy->linger_until != 0) {
            /* Stopping: look again shortly whether the client has what
             * we sent (see conn_linger_done). */
            ev_tstamp soon = now(c) + LINGER_POLL;
            return soon < c->busy->linger_until ? soon : c->busy->linger_until;
        }
        return c->busy->linger_until;
    case YMO_CONN_HEAD:
        if (c->busy->stalled) {
            /* Waiting for room is the server's doing, not the client's. */
            return cfg->queue_timeout > 0
                       ? c->busy->stalled_since + cfg->queue_timeout : 0;
        }
        if (c->busy->closing) {
            return 0;
        }
        if (c->busy->inlen == 0) {
            return conn_idle_deadline(c);   /* as if idle (not for long) */
        }
        return c->head_started + cfg->header_timeout;
    default:
        if (c->busy->stalled) {
            return cfg->queue_timeout > 0
                       ? c->busy->stalled_since + cfg->queue_timeout : 0;
        }
        /* While the app works, only a body the client is expected to be
         * sending can time out. */
        if (!c->busy->body_done && !c->busy->body_paused &&
            c->busy->ex != NULL &&
            (!c->busy->ex->req.expect_continue || c->busy->head_written)) {
            ev_tstamp gap = c->busy->last_read + cfg->body_timeout;
            ev_tstamp rate = c->busy->rate_since + YMO_RATE_WINDOW;
            return cfg->min_body_rate > 0 && rate < gap ? rate : gap;
        }
        return 0;
    }
}

static void
conn_arm_timer(ymo_conn_t *c)
{
    struct ev_loop *loop = c->listener->server->loop;
    ev_tstamp deadline = conn_deadline(c);
    if (deadline == 0) {
        ev_timer_stop(loop, &c->busy->timer);
        return;
    }
    ev_tstamp t = now(c);
    if (ev_is_active(&c->busy->timer) &&
        t + ev_timer_remaining(loop, &c->busy->timer) <=
            deadline + 2 * YMO_TIMER_PAD) {
        /* Fires no later than needed (its pad, and libev's reading of the
         * clock a little before ours, aside); the callback re-checks. */
        return;
    }
    ev_timer_stop(loop, &c->busy->timer);
    ev_timer_set(&c->busy->timer,
                 (deadline > t ? deadline - t : 0.) + YMO_TIMER_PAD, 0.);
    ev_timer_start(loop, &c->busy->timer);
}

static void
conn_on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    ymo_conn_t *c = w->data;
    if (c->busy->state == YMO_CONN_LINGER && !c->busy->write_blocked &&
        c->listener->server->draining_loop && c->busy->linger_until != 0) {
        /* Stopping: the poll of conn_deadline (its deadline moves with
         * the clock, so it is looked at here, before the check below). */
        if (conn_linger_done(c) || now(c) >= c->busy->linger_until) {
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
    if (now(c) < deadline) {
        conn_arm_timer(c);
        return;
    }
    if (c->busy->write_blocked || c->busy->state == YMO_CONN_LINGER) {
        conn_close_cut(c);
        return;
    }
    if (c->busy->stalled) {
        /* Waited too long for room: the client may try again. A buffered
         * request's exchange never reached a worker: drop it. (The request
         * of a connection stalled before parsing is not parsed: whether it
         * is a HEAD is read off its first bytes.) */
        conn_unlink_stalled(c);
        if (c->busy->state == YMO_CONN_EXCHANGE) {
            conn_error_exchange(c, 503);
        }
        else {
            conn_error(c, 503);
        }
        conn_step(c);
        return;
    }
    if (c->busy->state == YMO_CONN_HEAD) {
        if (c->busy->inlen == 0 || c->proxy != YMO_CONN_PROXY_DONE) {
            /* Idle, or a PROXY header that never completed: nothing to
             * answer (a proxy does not read HTTP errors there). */
            ymo_conn_close(c);
            return;
        }
        conn_error(c, 408);
        conn_step(c);
        return;
    }
    const ymo_config_t *cfg = &c->listener->server->config;
    if (cfg->min_body_rate > 0 &&
        now(c) < c->busy->last_read + cfg->body_timeout &&
        (double)(c->busy->body_received - c->busy->rate_bytes) >=
            cfg->min_body_rate * YMO_RATE_WINDOW) {
        /* Fast enough over this window: measure the next one. */
        c->busy->rate_since = now(c);
        c->busy->rate_bytes = c->busy->body_received;
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
    c->busy->inbuf_borrowed = 0;
    if (c->busy->inlen == 0) {
        c->busy->inbuf = NULL;
        c->busy->incap = 0;
        return 0;
    }
    /* Room to grow a partial head, except on a connection that waits for
     * room in the server: thousands of them may each hold a request. */
    size_t cap = c->busy->inlen < INBUF_INITIAL && !c->busy->stalled
                     ? INBUF_INITIAL
                     : c->busy->inlen;
    char *p = ymo_malloc(cap);
    if (p == NULL) {
        c->busy->inbuf = NULL;
        c->busy->incap = c->busy->inlen = 0;
        return -1;
    }
    memcpy(p, c->busy->inbuf, c->busy->inlen);
    c->busy->inbuf = p;
    c->busy->incap = cap;
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
    const ymo_config_t *cfg = &c->listener->server->config;
    if (c->proxy == YMO_CONN_PROXY_REFUSE) {
        int sig = ymo_proxy_signature(c->busy->inbuf, c->busy->inlen);
        if (sig == 0) {
            c->proxy = YMO_CONN_PROXY_DONE;
            return 0;
        }
        if (sig < 0 && !c->busy->read_eof) {
            return 1;
        }
        ymo_conn_close(c);
        return -1;
    }
    ymo_proxy_header_t h;
    int n = ymo_proxy_parse(c->busy->inbuf, c->busy->inlen, &h);
    if (n == -2 && !c->busy->read_eof &&
        c->busy->inlen <= cfg->limits.max_head_size) {
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
        c->remote_family = family == YMO_PROXY_INET ? AF_INET : AF_INET6;
        memcpy(c->remote_ip, a, family == YMO_PROXY_INET ? 4 : 16);
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
        c->remote_family = AF_UNSPEC;
        c->trusted = 0;
        break;
    default:
        /* LOCAL (a health check), UNKNOWN or UNSPEC: the connection's own
         * addresses stand, but not the proxy's trust. What follows may be
         * a client the proxy does not name (HAProxy sends UNKNOWN in v1,
         * and LOCAL in v2, for a client on a unix socket), whose
         * forwarding fields are as unknown as it is. */
        c->trusted = 0;
        break;
    }
    c->busy->inlen -= (size_t)n;
    memmove(c->busy->inbuf, c->busy->inbuf + n, c->busy->inlen);
    c->proxy = YMO_CONN_PROXY_DONE;
    return 0;
}

/* Bring the connection forward as far as it can go now: parse, feed the
 * body, write, finish the exchange, start the next one. */
static void
conn_step(ymo_conn_t *c)
{
    ymo_server_t *s = c->listener->server;
    int client_closes = 0;      /* the response just completed was to a
                                 * request that said it is the last */
    for (;;) {
        /* The PROXY header first: it needs no room, and a connection
         * whose header never completes is closed without a word (see
         * conn_on_timer), never answered 503 as a stalled one would be. */
        if (c->busy->state == YMO_CONN_HEAD &&
            c->proxy != YMO_CONN_PROXY_DONE && !c->busy->closing &&
            c->busy->inlen > 0 && conn_proxy_header(c) < 0) {
            return;
        }
        if (c->busy->state == YMO_CONN_HEAD && !c->busy->closing &&
            c->busy->inlen > 0 && !c->busy->stalled &&
            c->proxy == YMO_CONN_PROXY_DONE && server_full(s)) {
            conn_stall(c);
        }
        if (c->busy->state == YMO_CONN_HEAD && !c->busy->closing &&
            c->busy->inlen > 0 && !c->busy->stalled &&
            c->proxy == YMO_CONN_PROXY_DONE) {
            ymo_http_request_t req;
            /* The loop's one header array: a complete head is copied
             * into its exchange before the next parse. */
            req.headers = s->headers;
            int n = ymo_http_parse_request(&c->busy->parser, c->busy->inbuf,
                                           c->busy->inlen,
                                           &req);
            if (n > 0) {
                conn_start_exchange(c, (size_t)n, &req);
            }
            else if (n == -1) {
                conn_error(c, c->busy->parser.status);
            }
            else if (c->busy->read_eof) {
                ymo_conn_close(c);  /* the head can never complete */
                return;
            }
        }
        if (c->busy->state == YMO_CONN_EXCHANGE && !c->busy->body_done &&
            !c->busy->body_paused && c->busy->inlen > 0) {
            conn_feed_body_at(c, 0);
        }
        if (c->busy->state == YMO_CONN_EXCHANGE && !c->busy->body_done &&
            c->busy->read_eof && c->busy->inlen == 0) {
            /* A pipelined request whose body was cut short by an EOF the
             * connection read earlier: it can never complete. */
            ymo_conn_close(c);
            return;
        }
        if (c->busy->state == YMO_CONN_EXCHANGE && c->busy->dispatch_pending) {
            if (c->busy->body_error != 0) {
                /* Nobody ran the app: the loop answers. */
                conn_error_exchange(c, c->busy->body_error);
            }
            else if ((c->busy->body_done || c->busy->body_paused ||
                      c->busy->body_received >= s->config.buffer_body) &&
                     !c->busy->stalled) {
                if (server_full(s)) {
                    conn_stall(c);  /* room first, like a new head */
                }
                else {
                    conn_dispatch(c);
                }
            }
        }
        if (c->busy->wq_head != NULL && !c->busy->write_blocked) {
            if (conn_flush(c) < 0) {
                return;
            }
        }
        if (c->busy->state == YMO_CONN_EXCHANGE && c->busy->ex->worker_done &&
            c->busy->wq_head == NULL) {
            /* Response complete. A body the app did not read closes the
             * connection: its bytes cannot be told from the next request
             * unless we read them, and the worker said so in its head. */
            client_closes = !c->busy->ex->req.keep_alive;
            conn_free_exchange(c);
            c->busy->state = YMO_CONN_HEAD;
            if (!c->busy->body_done) {
                /* Closing with unread body bytes would make the kernel
                 * reset the connection, destroying the response still in
                 * flight: shut down our side and discard them first. */
                c->busy->state = YMO_CONN_LINGER;
                c->busy->closing = 1;
                c->busy->inlen = 0;
                c->busy->linger_until = 0;
            }
            /* Empty lines first (a CRLF some clients send after a body):
             * what is left decides whether a client that half-closed has
             * nothing more for us. */
            size_t skip = c->busy->state == YMO_CONN_HEAD
                              ? empty_lines(c->busy->inbuf, c->busy->inlen)
                              : 0;
            if (skip > 0) {
                c->busy->inlen -= skip;
                memmove(c->busy->inbuf, c->busy->inbuf + skip,
                        c->busy->inlen);
            }
            /* Stopping, with a response that promised to keep the
             * connection (its head was built before the worker saw the
             * stop): its client may send the next request right away, and
             * closing now would fail it. It gets the last call of an idle
             * connection (conn_idle_deadline): a request that arrives is
             * answered with Connection: close. */
            if ((c->busy->read_eof && c->busy->inlen == 0) ||
                s->config.keepalive_timeout <= 0 ||
                (s->draining_loop && !conn_last_call_fits(c))) {
                c->busy->closing = 1;
            }
            ymo_http_parser_init(&c->busy->parser, &s->config.limits);
            c->head_started = now(c);
            if (c->busy->inlen == 0 && !c->busy->inbuf_borrowed) {
                free(c->busy->inbuf);         /* idle again: give it back */
                c->busy->inbuf = NULL;
                c->busy->incap = 0;
            }
            if (!c->busy->closing && c->busy->inlen > 0) {
                continue;       /* a pipelined request is waiting */
            }
        }
        break;
    }
    if (c->busy->inbuf_borrowed && conn_keep_input(c) < 0) {
        ymo_conn_close(c);
        return;
    }
    if (c->busy->closing && c->busy->wq_head == NULL) {
        if (c->busy->state == YMO_CONN_HEAD && c->busy->read_eof) {
            ymo_conn_close(c);
            return;
        }
        if (c->busy->state == YMO_CONN_HEAD && client_closes &&
            c->busy->inlen == 0 && conn_nothing_unread(c)) {
            /* The client said this request was its last (RFC 9112 9.6:
             * it sends nothing more), all it sent was read, the kernel
             * holds nothing from it and it has all we sent: a reset
             * cannot destroy the response any more, so the connection
             * closes now, without the lingering close's shutdown, wait
             * and read. (With the response still in flight, a stray byte
             * would make the orphaned socket reset it: then it lingers.) */
            ymo_conn_close(c);
            return;
        }
        if (c->busy->state == YMO_CONN_HEAD) {
            /* Our close: the client may have sent more (pipelined
             * requests) that sits unread in the kernel, and closing over
             * unread data resets the connection, destroying the response
             * still in flight. Shut down our side, then discard until the
             * client closes (or LINGER_SECONDS). */
            c->busy->state = YMO_CONN_LINGER;
            c->busy->inlen = 0;
            c->busy->linger_until = 0;
        }
        if (c->busy->state == YMO_CONN_LINGER && c->busy->linger_until == 0) {
            if (c->busy->read_eof) {
                /* Everything the client sent was read: nothing can reset
                 * the connection. */
                ymo_conn_close(c);
                return;
            }
            conn_shut_down(c);
            c->busy->linger_until = now(c) + LINGER_SECONDS;
        }
    }
    if (c->busy->state == YMO_CONN_HEAD) {
        /* The credit for time spent waiting for room belongs to the
         * request parsed right after the wait; without one (only part of
         * a head, or stray line breaks, were in), it does not carry over
         * to a later request. */
        c->busy->stall_credit = 0;
    }
    if (c->busy->state == YMO_CONN_HEAD && c->busy->inlen == 0 &&
        !c->busy->closing && !c->busy->stalled && !c->busy->read_eof &&
        c->busy->wq_head == NULL && !c->busy->write_blocked &&
        c->busy->ex == NULL) {
        conn_rest(c);           /* idle: between requests */
        return;
    }
    int events = 0;
    if (c->busy->write_blocked) {
        events |= EV_WRITE;
    }
    if (!c->busy->read_eof && c->busy->stalled) {
        /* A connection waiting for room reads nothing, but its read
         * watcher stays as it was until the kernel has bytes for it (see
         * conn_on_io), which is mostly never: libev leaves a stopped fd in
         * epoll and adds it again on the restart, an epoll_ctl that fails
         * with EEXIST, one per wait. */
        if (!c->busy->stall_readable && ev_is_active(&c->io)) {
            events |= c->io.events & EV_READ;
        }
    }
    else if (!c->busy->read_eof) {
        /* While the app works on a request whose body has arrived, keep
         * reading into the buffer (a pipelined request, or the client's
         * EOF): switching the watcher off and on would cost an epoll_ctl
         * per request. (A connection waiting for room reads nothing.) */
        if ((c->busy->state == YMO_CONN_HEAD && !c->busy->closing &&
             !c->busy->stalled) ||
            (c->busy->state == YMO_CONN_EXCHANGE && !c->busy->body_done &&
             !c->busy->body_paused) ||
            (c->busy->state == YMO_CONN_EXCHANGE && c->busy->body_done &&
             (c->busy->inbuf == NULL || c->busy->inlen < c->busy->incap)) ||
            (c->busy->state == YMO_CONN_LINGER &&
             c->busy->linger_until != 0)) {
            events |= EV_READ;
        }
    }
    conn_set_events(c, events);
    conn_arm_timer(c);
}

/* A Content-Length body, with none of its bytes waiting in inbuf: the
 * next read goes straight into the exchange's input, bounded by what is
 * left of the body, so that the body is copied once (into the app's
 * bytes) and a pipelined request after it lands in inbuf as usual. */
static int
conn_reads_into_body(const ymo_conn_t *c)
{
    return c->busy->state == YMO_CONN_EXCHANGE && c->busy->ex != NULL &&
           c->busy->body_kind == YMO_HTTP_BODY_LENGTH &&
           !c->busy->body_done && !c->busy->body_paused &&
           c->busy->body_left > 0 && c->busy->inlen == 0;
}

/* n body bytes arrived at the room ymo_exchange_input_space gave. */
static void
conn_body_received(ymo_conn_t *c, size_t n)
{
    size_t hwm = c->listener->server->config.in_high_water;
    c->busy->body_left -= n;
    c->busy->body_done = c->busy->body_left == 0;
    if (ymo_exchange_input_commit(c->busy->ex, n, c->busy->body_done,
                                  hwm) == 1) {
        c->busy->body_paused = 1;
    }
    c->busy->last_read = now(c);
    c->busy->body_received += n;
}

/* Read what the socket has. Returns -1 when the connection was closed. */
static int
conn_read(ymo_conn_t *c)
{
    char *dst = NULL;
    size_t room = 0;
    int into_body = conn_reads_into_body(c);
    if (into_body) {
        dst = ymo_exchange_input_space(c->busy->ex, c->busy->body_left,
                                       &room);
        if (dst == NULL) {
            conn_body_nomem(c);
            return 0;
        }
        if (room > c->busy->body_left) {
            room = (size_t)c->busy->body_left;
        }
    }
    else if (c->busy->state == YMO_CONN_LINGER) {
        char sink[16384];
        ssize_t n = read(c->fd, sink, sizeof(sink));
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            ymo_conn_close(c);
            return -1;
        }
        return 0;
    }
    if (into_body) {
        /* dst and room are set */
    }
    else if (c->busy->inbuf == NULL) {
        /* Read into the loop's buffer; conn_step keeps what is left. */
        c->busy->inbuf = c->listener->server->scratch;
        c->busy->incap = YMO_SCRATCH_SIZE;
        c->busy->inbuf_borrowed = 1;
    }
    else if (c->busy->inlen == c->busy->incap) {
        /* Grow for a long head (the parser bounds it) or for a body. */
        size_t limit = c->listener->server->config.limits.max_head_size + 1;
        size_t cap = c->busy->incap * 2;
        if (c->busy->state == YMO_CONN_HEAD && cap > limit) {
            cap = limit > c->busy->incap ? limit : c->busy->incap;
        }
        if (c->busy->state == YMO_CONN_EXCHANGE && cap < INBUF_BODY) {
            cap = INBUF_BODY;
        }
        if (cap > c->busy->incap) {
            char *p = ymo_realloc(c->busy->inbuf, cap);
            if (p == NULL) {
                ymo_conn_close(c);
                return -1;
            }
            c->busy->inbuf = p;
            c->busy->incap = cap;
        }
        else {
            return 0;           /* full: the parser will decide */
        }
    }
    else if (c->busy->state == YMO_CONN_EXCHANGE && !c->busy->body_done &&
             !c->busy->inbuf_borrowed && c->busy->incap < INBUF_BODY) {
        char *p = ymo_realloc(c->busy->inbuf, INBUF_BODY);
        if (p != NULL) {
            c->busy->inbuf = p;
            c->busy->incap = INBUF_BODY;
        }
    }
    if (!into_body) {
        dst = c->busy->inbuf + c->busy->inlen;
        room = c->busy->incap - c->busy->inlen;
    }
    /* recv, not read: a socket's read goes through the file layer
     * (position lock, permission hook, fsnotify) first. */
    ssize_t n = recv(c->fd, dst, room, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            return 0;
        }
        ymo_conn_close(c);
        return -1;
    }
    if (n == 0) {
        c->busy->read_eof = 1;
        if (c->busy->state == YMO_CONN_HEAD && c->busy->wq_head == NULL &&
            c->busy->inlen == 0) {
            /* Nothing (or half a head) and the client is done. */
            ymo_conn_close(c);
            return -1;
        }
        if (c->busy->state == YMO_CONN_EXCHANGE && !c->busy->body_done) {
            /* The request can never complete: the client is gone. Abort
             * the exchange, so that a request still waiting for a worker
             * never reaches the app and a running one stops at its next
             * read or write. (A body that ends at the close, begun for
             * it, is cut: a reset; C review s24.) */
            conn_close_cut(c);
            return -1;
        }
        if (c->busy->ex != NULL) {
            /* After a complete request an EOF may be a client that only
             * shut down its sending side (`nc -N`, HTTP/1.0 scripts, some
             * health checks) and waits for its answer: it gets it, and the
             * connection closes after it. Only a reset or a failed write
             * says for sure that a client is gone; the app may still ask
             * (yimmo.client_gone), and a writer none of whose bytes can
             * go out is stopped (wsgi_response.c, emit). The requests it
             * pipelined before are answered; each learns it at its start
             * (conn_start_exchange). */
            ymo_exchange_client_eof(c->busy->ex);
        }
        return 0;
    }
    if (into_body) {
        conn_body_received(c, (size_t)n);
        return 0;
    }
    if (c->busy->state == YMO_CONN_HEAD && c->busy->inlen == 0 &&
        c->proxy == YMO_CONN_PROXY_DONE) {
        size_t skip = empty_lines(dst, (size_t)n);
        if (skip > 0) {
            n -= (ssize_t)skip;
            memmove(dst, dst + skip, (size_t)n);
        }
        if (n > 0 && c->seq > 0) {
            /* A keep-alive connection's next head is timed from its first
             * byte (idleness before it is keepalive_timeout's business);
             * the first request's from the accept. */
            c->head_started = now(c);
        }
    }
    c->busy->inlen += (size_t)n;
    return 0;
}

static void
conn_on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    ymo_conn_t *c = w->data;
    if (c->busy == NULL && conn_wake(c) < 0) {
        ymo_conn_close(c);      /* no memory for its request */
        return;
    }
    if (revents & EV_WRITE) {
        c->busy->write_blocked = 0;
    }
    if ((revents & EV_READ) && c->busy->stalled) {
        /* Its bytes wait in the kernel until there is room: the watcher
         * goes off now (libev takes the fd out of epoll at its next poll,
         * which reports it again), and back on after the wait. */
        c->busy->stall_readable = 1;
    }
    else if ((revents & EV_READ) && conn_read(c) < 0) {
        return;
    }
    ymo_server_t *s = c->listener->server;
    s->dispatch_read = 1;
    conn_step(c);
    s->dispatch_read = 0;
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
    int complete = ex->out_complete;
    int to_close = ex->out_to_close;
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
        /* The response was cut (the watchdog, or an app error in a body
         * that ends at the close): the client sees a reset now, not a
         * body that goes on arriving until the write timeout, nor a FIN
         * that ends it as if whole. What the socket takes at once goes
         * first (the head and the body so far, often: without them the
         * client saw a bare reset), the rest is dropped. Not held back
         * for a FIN (conn_last_write), which the reset drops. */
        c->busy->resetting = 1;
        wq_append(c, out);
        if (conn_flush(c) < 0) {
            return;             /* closed */
        }
        struct linger lg = {1, 0};
        (void)setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        ymo_conn_close(c);
        return;
    }
    if (cont && !done && !c->busy->head_written && !c->busy->body_done) {
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
            c->busy->head_written = 1;
            /* The client sends the body from now. */
            c->busy->last_read = now(c);
            c->busy->rate_since = c->busy->last_read;
            c->busy->rate_bytes = c->busy->body_received;
        }
    }
    if (out != NULL) {
        c->busy->head_written = 1;
        wq_append(c, out);
    }
    if (complete) {
        c->busy->out_complete = 1;
    }
    if (to_close) {
        c->busy->out_to_close = 1;
    }
    if (resume) {
        /* The body clock restarts: the pause was the app's doing. */
        c->busy->body_paused = 0;
        c->busy->last_read = now(c);
        c->busy->rate_since = c->busy->last_read;
        c->busy->rate_bytes = c->busy->body_received;
    }
    if (done && close_after) {
        c->busy->closing = 1;
    }
    conn_step(c);
}

static void
conn_drain(ymo_conn_t *c)
{
    if (c->busy->state == YMO_CONN_HEAD && c->busy->inlen == 0 &&
        c->busy->wq_head == NULL && !c->busy->stalled &&
        !conn_last_call_fits(c)) {
        conn_idle_close(c);     /* see YMO_LAST_CALL */
    }
    else if (c->busy->state == YMO_CONN_HEAD && c->busy->inlen == 0 &&
             c->busy->wq_head == NULL && !c->busy->stalled) {
        /* Idle: not closed at once, as its client may be sending a
         * request this very moment (a keep-alive client reusing it, or a
         * new client whose request has not arrived yet), and a close
         * would fail that request. It gets a last call of YMO_LAST_CALL
         * seconds: a request that arrives is answered with Connection:
         * close (the worker sees `draining`), then the connection closes;
         * silence closes it when the window ends. */
        conn_arm_timer(c);
    }
    else if (c->busy->state == YMO_CONN_LINGER && conn_linger_done(c)) {
        ymo_conn_close(c);
    }
    else if (c->busy->state == YMO_CONN_LINGER) {
        conn_arm_timer(c);      /* polled from now on: see conn_deadline */
    }
}

void
ymo_conn_drain_all(ymo_server_t *s)
{
    ymo_conn_t *c = s->conns;
    while (c != NULL) {
        ymo_conn_t *next = c->next;
        conn_drain(c);
        c = next;
    }
    /* Connections on the idle lists are not closed at once either (see
     * conn_drain): their deadlines moved to the last call. Unless the
     * stop's deadline leaves no room for one: then they close now, as
     * idle ones with a busy part do in conn_drain. */
    if (!ymo_server_last_call_fits(s)) {
        for (int k = 0; k < 2; k++) {
            while (s->idle_head[k] != NULL) {
                conn_idle_close(s->idle_head[k]);
            }
        }
    }
    server_arm_idle_timer(s, 1);
}

/* An idle connection's wait is over. A slow client may not have all of
 * its last response yet (the kernel still holds some): a close over bytes
 * it sends meanwhile (its next request, pipelined or sent as it finishes
 * reading) would reset the connection and destroy the rest of that
 * response. Then the connection lingers, as after our other closes (see
 * conn_step): our side shut down, its input discarded. */
static void
conn_idle_close(ymo_conn_t *c)
{
    /* (On an idle list it has no busy part; one that still has it is a
     * stop's, conn_drain.) */
    int queued = 0;
    if (ioctl(c->fd, SIOCOUTQ, &queued) != 0 || queued == 0 ||
        (c->busy == NULL && conn_wake(c) < 0)) {
        ymo_conn_close(c);
        return;
    }
    c->busy->state = YMO_CONN_LINGER;
    c->busy->closing = 1;
    conn_step(c);
}

void
ymo_conn_idle_on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    ymo_server_t *s = w->data;
    ev_tstamp t = ymo_server_now(s);
    for (int k = 0; k < 2; k++) {
        /* In order: the first one whose wait is not over ends the run.
         * Idle, or a PROXY header that never started: nothing to answer
         * (a proxy does not read HTTP errors there). */
        while (s->idle_head[k] != NULL &&
               conn_idle_deadline(s->idle_head[k]) <= t) {
            conn_idle_close(s->idle_head[k]);
        }
    }
    server_arm_idle_timer(s, 1);
}
