/* conn.h - one client connection, owned by the loop thread: reads and
 * parses requests, feeds request bodies to the exchange, writes responses
 * in request order, keeps the connection alive and enforces timeouts. */
#ifndef YMO_CONN_H
#define YMO_CONN_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "bucket.h"
#include "exchange.h"
#include "http_parser.h"
#include "server.h"

enum ymo_conn_state {
    YMO_CONN_HEAD = 0,         /* waiting for / reading a request head */
    YMO_CONN_EXCHANGE,         /* an exchange is in progress */
    YMO_CONN_LINGER,           /* error sent, discarding input, closing */
};

/* --proxy-protocol: what the start of a connection may hold. */
enum ymo_conn_proxy {
    YMO_CONN_PROXY_DONE = 0,   /* nothing (more) to check */
    YMO_CONN_PROXY_EXPECT,     /* a trusted peer: a PROXY header first */
    YMO_CONN_PROXY_REFUSE,     /* an untrusted peer: plain HTTP, and a
                                * PROXY header closes the connection */
};

/* What a connection holds only while something is going on: a request
 * being read or run, a response being written, a wait for room, a close.
 * An idle connection (between requests, nothing buffered either way) has
 * none: its ymo_conn_t alone is what it costs, so that thousands of idle
 * keep-alive clients cost little memory. Loop thread only. */
typedef struct ymo_conn_busy {
    ev_timer timer;            /* the current timeout, if any */
    int state;                 /* enum ymo_conn_state */
    int closing;               /* close once the write queue drains */
    int read_eof;              /* the client shut down its side */

    /* input */
    char *inbuf;               /* NULL when empty; during a callback it may
                                * be the server's scratch buffer */
    size_t inlen;              /* bytes in inbuf */
    size_t incap;
    int inbuf_borrowed;        /* inbuf is server->scratch */
    ymo_http_parser_t parser;
    ev_tstamp last_read;       /* last body bytes */

    /* the current exchange and its request body */
    ymo_exchange_t *ex;
    int body_kind;
    uint64_t body_left;        /* Content-Length bytes still to come */
    ymo_http_chunked_t chunked;
    int body_done;
    int body_paused;           /* exchange input above high water */
    int body_error;            /* the body failed: 400/408/413/500 */
    uint64_t body_received;    /* body bytes read, framing included */
    ev_tstamp rate_since;      /* start of the body rate's window */
    uint64_t rate_bytes;       /* body_received then */
    int dispatch_pending;      /* the body is being read whole before the
                                * exchange goes to a worker (buffer_body) */

    /* waiting for room for its next request (max_inflight) */
    int stalled;
    int stall_readable;        /* the kernel had bytes for it during the
                                * wait: its read watcher went off */
    struct ymo_conn *stall_next, *stall_prev;  /* server->stalled_* */
    ev_tstamp stalled_since;
    ev_tstamp stall_credit;    /* seconds its request already waited for
                                * room (queue_timeout counts them) */

    /* output */
    ymo_bucket_t *wq_head, *wq_tail;   /* to write, in order */
    int head_written;          /* response bytes already went out */
    ev_tstamp last_write;      /* last write progress */
    int write_blocked;         /* waiting for EV_WRITE */
    int corked;                /* TCP_CORK is on: a file is being sent
                                * (see wq_append) */
    int held;                  /* the response's last bytes went to the
                                * kernel with MSG_MORE (what the socket
                                * took; the rest follows the same way):
                                * they wait for our FIN (conn_last_write) */
    int shut;                  /* our side is shut down (FIN sent) */
    int out_complete;          /* the worker posted the response's last
                                * bytes (the loop took them): closing
                                * once they are written cuts nothing,
                                * though its close() may still run */
    int out_to_close;          /* the response's body ends at the close
                                * (its worker said so with its head) */
    int resetting;             /* a reset follows what is written now:
                                * nothing waits for a FIN */
    ev_tstamp linger_until;
} ymo_conn_busy_t;

/* Which list of the server's a connection is on. */
enum ymo_conn_list {
    YMO_CONN_ON_BUSY = 0,      /* server->conns */
    YMO_CONN_ON_FRESH,         /* server->idle[0]: no request yet
                                * (header_timeout from the accept) */
    YMO_CONN_ON_KEPT,          /* server->idle[1]: between requests
                                * (keepalive_timeout) */
};

/* One connection. Kept small (it is all an idle connection costs, with
 * libev's entry for its fd): 120 bytes, one 128-byte malloc chunk (the
 * last field fills what was the struct's padding). */
typedef struct ymo_conn {
    ev_io io;                  /* read/write readiness */
    const ymo_listener_t *listener;    /* its ->server is ours */
    struct ymo_conn *prev, *next;  /* the list `on` names */
    ymo_conn_busy_t *busy;     /* NULL while idle */
    ev_tstamp head_started;    /* first byte of the current head; while
                                * idle, when the wait began (the accept,
                                * or the end of the last response) */
    int fd;
    uint32_t seq;              /* requests on this connection (stops
                                * counting at UINT32_MAX) */
    uint16_t remote_port;      /* host order; see remote_family */
    uint8_t remote_family;     /* AF_INET, AF_INET6, or AF_UNSPEC: no
                                * address (a unix socket) */
    uint8_t trusted;           /* the peer (or, after a PROXY header, the
                                * client it named) is a trusted proxy:
                                * its forwarding fields are believed */
    uint8_t proxy;             /* enum ymo_conn_proxy: a PROXY header is
                                * still to be read or refused */
    uint8_t on;                /* enum ymo_conn_list */
    uint8_t peer_local;        /* the connection runs over this host's
                                * loopback (the TCP peer, not a client a
                                * PROXY header names; see
                                * conn_over_loopback, conn_nothing_unread) */
    uint8_t remote_ip[16];     /* network order: 4 bytes for AF_INET */
} ymo_conn_t;

/* Loop thread: a new connection on an accepted, non-blocking fd; peer:
 * the address accept() gave (any family; only AF_INET and AF_INET6 are
 * kept); trusted: the peer is in config.trust (or on a unix socket). */
ymo_conn_t *ymo_conn_new(const ymo_listener_t *l, int fd,
                         const struct sockaddr *peer, int trusted);

/* Loop thread: the worker posted news for ex (output, flags, done). */
void ymo_conn_on_exchange(ymo_exchange_t *ex);

/* Loop thread: close now (aborting any exchange). */
void ymo_conn_close(ymo_conn_t *c);

/* Loop thread: close every connection now (aborting their exchanges). */
void ymo_conn_close_all(ymo_server_t *s);

/* Free the busy parts the loop keeps for reuse: the thread destroying
 * the server, once every connection is closed (no loop runs then). */
void ymo_conn_busy_drain(ymo_server_t *s);

/* Loop thread: the server began to stop: idle connections get their last
 * call (YMO_LAST_CALL), lingering ones are polled (see conn_deadline). */
void ymo_conn_drain_all(ymo_server_t *s);

/* Loop thread: server->idle_timer's callback: closes the idle connections
 * whose wait ran out. */
void ymo_conn_idle_on_timer(struct ev_loop *loop, ev_timer *w, int revents);

#endif /* YMO_CONN_H */
