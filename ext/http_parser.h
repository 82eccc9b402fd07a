/* http_parser.h - a strict, incremental HTTP/1.1 request parser (RFC 9112).
 *
 * Plain C: no Python, no libev, no allocation. The head parser works over a
 * buffer the caller keeps accumulating; results point into that buffer. The
 * chunked decoder is a byte-streaming state machine. Anything ambiguous in
 * framing is an error with a status code, never a guess.                   */
#ifndef YMO_HTTP_PARSER_H
#define YMO_HTTP_PARSER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Limits checked while parsing. Defaults follow gunicorn's. */
typedef struct ymo_http_limits {
    size_t max_request_line;  /* bytes before CRLF; longer gives 414 */
    size_t max_header_count;  /* header fields (and trailer fields); 431 */
    size_t max_field_size;    /* one field line "name: value" (without
                               * its CRLF); 431 */
    size_t max_head_size;     /* whole head incl. leading empty lines and
                               * the final CRLF CRLF; also bounds the
                               * trailer section; 431 */
    uint64_t max_body_size;   /* 0 = unlimited; larger body gives 413 */
} ymo_http_limits_t;

#define YMO_HTTP_LIMITS_DEFAULT {4094, 100, 8190, 65536, 0}

/* One header field; both spans point into the parsed buffer. */
typedef struct ymo_http_header {
    const char *name;
    size_t name_len;
    const char *value;        /* OWS trimmed on both sides */
    size_t value_len;
} ymo_http_header_t;

enum ymo_http_body_kind {
    YMO_HTTP_BODY_NONE = 0,   /* no body (also "Content-Length: 0") */
    YMO_HTTP_BODY_LENGTH,     /* Content-Length bytes follow */
    YMO_HTTP_BODY_CHUNKED,    /* chunked transfer coding follows */
};

/* A parsed request head. All pointers point into the caller's buffer. */
typedef struct ymo_http_request {
    const char *method;       /* token */
    size_t method_len;
    const char *target;       /* request-target exactly as sent */
    size_t target_len;
    const char *path;         /* path part, still percent-encoded: for
                               * absolute-form the path after the authority
                               * ("/" when empty), "*" for asterisk-form
                               * (a CONNECT is refused: 501) */
    size_t path_len;
    const char *query;        /* after the first '?' (empty when none) */
    size_t query_len;
    int minor_version;        /* 0 or 1 (HTTP/1.0, HTTP/1.1); a higher
                               * 1.x is 1, as RFC 9110 2.5 asks */
    ymo_http_header_t *headers;  /* caller's array, max_header_count long */
    size_t num_headers;       /* out: fields stored in headers[] */
    int body;                 /* enum ymo_http_body_kind */
    uint64_t content_length;  /* with YMO_HTTP_BODY_LENGTH */
    const char *host;         /* Host field value (may be empty), or the
                               * authority of an absolute-form target;
                               * NULL for HTTP/1.0 without either */
    size_t host_len;
    unsigned keep_alive : 1;  /* connection persists after this exchange */
    unsigned expect_continue : 1; /* "Expect: 100-continue" was sent */
} ymo_http_request_t;

/* Head parser state; one per request head. */
typedef struct ymo_http_parser {
    const ymo_http_limits_t *limits;
    int status;               /* after -1: 400, 413, 414, 417, 431, 501
                               * or 505 */
    /* private: how far the incremental scan has got */
    size_t _scanned;          /* bytes of buf already scanned */
    size_t _line_start;       /* offset of the line being scanned */
    size_t _nlines;           /* complete lines seen so far */
} ymo_http_parser_t;

/* `limits` must outlive the parser; NULL means YMO_HTTP_LIMITS_DEFAULT. */
void ymo_http_parser_init(ymo_http_parser_t *p,
                          const ymo_http_limits_t *limits);

/* Parse a request head. `buf` holds every byte received for this request
 * so far, from its first byte; call again with the longer buffer as more
 * arrives (a buffer may hold more than one request: only the first is
 * parsed). `req->headers` must have room for limits->max_header_count
 * fields. Returns the head's length (> 0, through the blank line) when it
 * is complete and valid, -2 when more input is needed, -1 on error with
 * p->status set. Never reads beyond buf[len - 1]. Any slicing of the input
 * gives the same result: limit (414, 431) and line-ending errors come as
 * soon as the byte that makes them certain arrives, the other checks run
 * once the head is complete. After a result other than -2, calling again
 * with the same bytes repeats it; init the parser for the next request.
 * `req` is only meaningful after a result > 0.                            */
int ymo_http_parse_request(ymo_http_parser_t *p, const char *buf,
                           size_t len, ymo_http_request_t *req);

/* Chunked body decoder state (RFC 9112 7.1), trailers included. Trailer
 * fields are checked and dropped; one that RFC 9110 6.5.1 does not allow
 * in a trailer section (Content-Length, Host, Authorization, ...; the list
 * is NO_TRAILER in http_parser.c) is a 400. */
typedef struct ymo_http_chunked {
    const ymo_http_limits_t *limits;
    int status;               /* after -1: 400, 413 or 431 */
    int done;                 /* last-chunk and trailer section consumed */
    uint64_t total;           /* body bytes decoded so far */
    /* private */
    int _state;
    uint64_t _remaining;      /* data bytes left in the current chunk */
    size_t _line;             /* bytes of the current size/trailer line */
    size_t _trailer_bytes;    /* bytes of the trailer section so far */
    size_t _trailer_count;    /* trailer fields so far */
    int _digits;              /* hex digits of the current chunk size */
    char _name[20];           /* the current trailer field name's first
                               * bytes: enough for every name the parser
                               * refuses in a trailer section */
} ymo_http_chunked_t;

/* `limits` as for ymo_http_parser_init(). */
void ymo_http_chunked_init(ymo_http_chunked_t *d,
                           const ymo_http_limits_t *limits);

/* Feed chunked-coded bytes. Each call either consumes framing bytes
 * (returns n > 0 with *data_len == 0), or returns a span of body data
 * (returns n == *data_len > 0, *data == buf), or returns 0 when it needs
 * more input (buf exhausted) or once d->done is set. Returns -1 on error
 * with d->status set (and again on any later call). A chunk-size line
 * (size and extensions) over 4096 bytes is a 400. The bytes after the
 * final CRLF are not consumed. Never reads beyond buf[len - 1]. Loop:
 *     while (len && !d->done) { n = feed(...); if (n <= 0) break; ... }  */
ssize_t ymo_http_chunked_feed(ymo_http_chunked_t *d, const char *buf,
                              size_t len, const char **data,
                              size_t *data_len);

/* Percent-decode `len` bytes of `in` into `out` (room for len bytes; may
 * equal in). A '%' not followed by two hex digits is copied as is.
 * Returns the decoded length.                                            */
size_t ymo_http_percent_decode(const char *in, size_t len, char *out);

/* Reason phrase for a status code the server itself sends ("Bad Request");
 * "Unknown" for others. */
const char *ymo_http_reason(int status);

#endif /* YMO_HTTP_PARSER_H */
