/* test_parser.c - table-driven tests of ext/http_parser.c: request heads
 * and chunked bodies, each fed whole, as every prefix and byte by byte,
 * always ending right before a PROT_NONE guard page so that reading past
 * the input crashes. `test_parser --bench` times a typical browser head. */

#include "http_parser.h"

#include "../guard_page.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* The tables below leave the fields a case does not check zero. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#define S(lit) lit, sizeof(lit) - 1

/* Expected outcome of a case. */
enum { UNSET = 0, OK, PART, ERR, DONE, MORE };
/* Tri-state expectations: UNSET means "not checked". */
enum { NO = 1, YES };
enum { B_NONE = 1, B_LENGTH, B_CHUNKED };
#define NH(n) ((n) + 1)

/* Marks a case that expects req->host == NULL. */
static const char NOHOST[] = "<NULL>";

typedef struct {
    const char *name;
    const char *value;
} hv_t;

typedef struct {
    const char *name;
    const char *in;
    size_t len;
    int ret;                 /* OK, PART or ERR */
    int status;              /* with ERR */
    size_t head;             /* with OK: head length; 0 = the whole input */
    const char *method, *target, *path, *query, *host;  /* NULL: skip */
    int version;             /* 10 or 11; 0: skip */
    int nh;                  /* NH(count); 0: skip */
    int body;                /* B_*; 0: skip */
    uint64_t cl;             /* with B_LENGTH */
    int ka, ec;              /* YES / NO; 0: skip */
    hv_t hdrs[4];            /* first header of that exact name */
    const ymo_http_limits_t *limits;
} pcase_t;

typedef struct {
    const char *name;
    const char *in;
    size_t len;
    int ret;                 /* DONE, MORE or ERR */
    int status;              /* with ERR */
    const char *data;        /* the decoded body */
    size_t data_len;
    size_t consumed;         /* with DONE: bytes used; 0 = whole input */
    const ymo_http_limits_t *limits;
} ccase_t;

static const ymo_http_limits_t lim_small = {
    .max_request_line = 32, .max_header_count = 3, .max_field_size = 20,
    .max_head_size = 96, .max_body_size = 100,
};
static const ymo_http_limits_t lim_head64 = {
    .max_request_line = 4094, .max_header_count = 100,
    .max_field_size = 8190, .max_head_size = 64, .max_body_size = 0,
};
static const ymo_http_limits_t lim_trailer = {
    .max_request_line = 4094, .max_header_count = 2, .max_field_size = 10,
    .max_head_size = 32, .max_body_size = 10,
};
static const ymo_http_limits_t lim_tsect = {
    .max_request_line = 4094, .max_header_count = 10, .max_field_size = 100,
    .max_head_size = 32, .max_body_size = 0,
};
static const ymo_http_limits_t lim_body1 = {4094, 100, 8190, 65536, 1};
static const ymo_http_limits_t lim_nohdr = {4094, 0, 8190, 65536, 0};
static const ymo_http_limits_t lim_default = YMO_HTTP_LIMITS_DEFAULT;

#define GET11 "GET / HTTP/1.1\r\n"
#define HOSTX "Host: x\r\n"

static const pcase_t pcases[] = {
    /* ---- valid request lines ---- */
    {"simple GET", S(GET11 HOSTX "\r\n"), OK, .method = "GET",
     .target = "/", .path = "/", .query = "", .host = "x", .version = 11,
     .nh = NH(1), .body = B_NONE, .ka = YES, .ec = NO,
     .hdrs = {{"Host", "x"}}},
    {"HTTP/1.0 without Host", S("GET /a HTTP/1.0\r\n\r\n"), OK,
     .path = "/a", .host = NOHOST, .version = 10, .nh = NH(0),
     .ka = NO},
    {"HTTP/1.0 keep-alive", S("GET / HTTP/1.0\r\nConnection: Keep-Alive"
                              "\r\n\r\n"), OK, .version = 10, .ka = YES},
    {"HTTP/1.0 keep-alive and close",
     S("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"), OK,
     .ka = NO},
    {"HTTP/1.0 Host", S("GET / HTTP/1.0\r\nHost: h:1\r\n\r\n"), OK,
     .host = "h:1"},
    {"HTTP/1.1 close", S(GET11 HOSTX "Connection: close\r\n\r\n"), OK,
     .ka = NO},
    {"close among tokens", S(GET11 HOSTX "Connection: Upgrade ,\tCLOSE"
                             "\r\n\r\n"), OK, .ka = NO},
    {"close on a second line", S(GET11 HOSTX "Connection: upgrade\r\n"
                                 "Connection: close\r\n\r\n"), OK,
     .ka = NO},
    {"connection empty elements", S(GET11 HOSTX "Connection: , ,upgrade,"
                                    "\r\n\r\n"), OK, .ka = YES},
    {"connection not a token", S(GET11 HOSTX "Connection: a b\r\n\r\n"),
     ERR, 400},
    {"connection bad char", S(GET11 HOSTX "Connection: close;\r\n\r\n"),
     ERR, 400},
    {"query", S("GET /p/q?a=1&b=%20 HTTP/1.1\r\n" HOSTX "\r\n"), OK,
     .path = "/p/q", .query = "a=1&b=%20"},
    {"empty query", S("GET /? HTTP/1.1\r\n" HOSTX "\r\n"), OK, .path = "/",
     .query = ""},
    {"second ? in query", S("GET /a?b?c HTTP/1.1\r\n" HOSTX "\r\n"), OK,
     .path = "/a", .query = "b?c"},
    {"percent-encoded path kept", S("GET /a%20b HTTP/1.1\r\n" HOSTX "\r\n"),
     OK, .path = "/a%20b"},
    {"visible ASCII target", S("GET /a|b\"{}^`<> HTTP/1.1\r\n" HOSTX "\r\n"),
     OK, .path = "/a|b\"{}^`<>"},
    {"leading CRLFs", S("\r\n\r\n" GET11 HOSTX "\r\n"), OK, .method = "GET",
     .nh = NH(1)},
    {"pipelined: first head only", S(GET11 HOSTX "\r\n" GET11 HOSTX "\r\n"),
     OK, .head = 27},
    {"body bytes follow", S("POST /u HTTP/1.1\r\nHost: x\r\nContent-Length:"
                            " 5\r\n\r\nhello"), OK, .head = 48,
     .method = "POST", .body = B_LENGTH, .cl = 5},
    {"method of all tchars", S("!#$%&'*+-.^_`|~09azAZ / HTTP/1.1\r\n" HOSTX
                               "\r\n"), OK,
     .method = "!#$%&'*+-.^_`|~09azAZ"},
    {"lower-case method is a token", S("get / HTTP/1.1\r\n" HOSTX "\r\n"),
     OK, .method = "get"},
    {"asterisk with M-SEARCH", S("M-SEARCH * HTTP/1.1\r\n" HOSTX "\r\n"), ERR,
     400},

    /* ---- invalid request lines ---- */
    {"method with (", S("G(T / HTTP/1.1\r\n" HOSTX "\r\n"), ERR, 400},
    {"empty method", S(" / HTTP/1.1\r\n" HOSTX "\r\n"), ERR, 400},
    {"tab after method", S("GET\t/ HTTP/1.1\r\n" HOSTX "\r\n"), ERR, 400},
    {"two spaces after method", S("GET  / HTTP/1.1\r\n" HOSTX "\r\n"), ERR,
     400},
    {"two spaces before version", S("GET /  HTTP/1.1\r\n" HOSTX "\r\n"), ERR,
     400},
    {"space after version", S("GET / HTTP/1.1 \r\n" HOSTX "\r\n"), ERR, 400},
    {"no version", S("GET /\r\n" HOSTX "\r\n"), ERR, 400},
    {"method only", S("GET\r\n" HOSTX "\r\n"), ERR, 400},
    {"HTTP/2.0", S("GET / HTTP/2.0\r\n" HOSTX "\r\n"), ERR, 505},
    /* RFC 9110 2.5: a higher 1.x minor version is handled as HTTP/1.1. */
    {"HTTP/1.2 is 1.1", S("GET / HTTP/1.2\r\n" HOSTX "\r\n"), OK,
     .host = "x", .version = 11, .ka = YES},
    {"HTTP/1.9 is 1.1", S("GET / HTTP/1.9\r\n" HOSTX "\r\n"), OK,
     .version = 11, .ka = YES},
    {"HTTP/1.2 close", S("GET / HTTP/1.2\r\n" HOSTX "Connection: close"
                         "\r\n\r\n"), OK, .version = 11, .ka = NO},
    {"HTTP/1.2 needs Host", S("GET / HTTP/1.2\r\n\r\n"), ERR, 400},
    {"HTTP/1.2 chunked", S("POST / HTTP/1.2\r\n" HOSTX "Transfer-Encoding:"
                           " chunked\r\n\r\n"), OK, .version = 11,
     .body = B_CHUNKED},
    {"HTTP/1.2 100-continue", S("POST / HTTP/1.2\r\n" HOSTX "Expect: "
                                "100-continue\r\n\r\n"), OK, .ec = YES},
    {"HTTP/1.2 bad expectation", S("GET / HTTP/1.2\r\n" HOSTX "Expect: "
                                   "x\r\n\r\n"), ERR, 417},
    {"HTTP/1.2 bad target", S("GET x HTTP/1.2\r\n" HOSTX "\r\n"), ERR,
     400},
    {"HTTP/2.1", S("GET / HTTP/2.1\r\n" HOSTX "\r\n"), ERR, 505},
    {"HTTP/0.0", S("GET / HTTP/0.0\r\n" HOSTX "\r\n"), ERR, 505},
    {"HTTP/9.9", S("GET / HTTP/9.9\r\n" HOSTX "\r\n"), ERR, 505},
    {"HTTP/0.9", S("GET / HTTP/0.9\r\n" HOSTX "\r\n"), ERR, 505},
    {"HTTP/3.0 before bad target", S("GET x HTTP/3.0\r\n\r\n"), ERR, 505},
    {"HTTP/1.10", S("GET / HTTP/1.10\r\n" HOSTX "\r\n"), ERR, 400},
    {"HTTP/1", S("GET / HTTP/1\r\n" HOSTX "\r\n"), ERR, 400},
    {"http/1.1", S("GET / http/1.1\r\n" HOSTX "\r\n"), ERR, 400},
    {"HTTPS/1.1", S("GET / HTTPS/1.1\r\n" HOSTX "\r\n"), ERR, 400},
    {"HTTP/a.b", S("GET / HTTP/a.b\r\n" HOSTX "\r\n"), ERR, 400},
    {"NUL in version", S("GET / HTTP/1.\0\r\n" HOSTX "\r\n"), ERR, 400},
    {"NUL in target", S("GET /a\0b HTTP/1.1\r\n" HOSTX "\r\n"), ERR, 400},
    {"DEL in target", S("GET /a\x7f HTTP/1.1\r\n" HOSTX "\r\n"), ERR, 400},
    {"obs-text in target", S("GET /\xc3\xa9 HTTP/1.1\r\n" HOSTX "\r\n"), ERR,
     400},
    {"tab in target", S("GET /a\tb HTTP/1.1\r\n" HOSTX "\r\n"), ERR, 400},
    {"fragment in target", S("GET /a#b HTTP/1.1\r\n" HOSTX "\r\n"), ERR, 400},
    {"relative target", S("GET a/b HTTP/1.1\r\n" HOSTX "\r\n"), ERR, 400},
    {"empty line then LF", S("\r\n\nGET / HTTP/1.1\r\n" HOSTX "\r\n"), ERR,
     400},
    {"leading bare LF", S("\n" GET11 HOSTX "\r\n"), ERR, 400},
    {"bare LF line ends", S("GET / HTTP/1.1\nHost: x\n\n"), ERR, 400},
    {"bare CR in request line", S("GET /\r HTTP/1.1\r\n" HOSTX "\r\n"), ERR,
     400},
    {"CR CR LF", S("GET / HTTP/1.1\r\r\n" HOSTX "\r\n"), ERR, 400},
    {"bare LF ends head", S(GET11 HOSTX "\n"), ERR, 400},
    {"CR at end is partial", S(GET11 "Host: x\r"), PART},
    {"bare CR before end", S(GET11 "Host: x\r\r"), ERR, 400},

    /* ---- request-target forms ---- */
    {"asterisk-form", S("OPTIONS * HTTP/1.1\r\n" HOSTX "\r\n"), OK,
     .path = "*", .query = "", .target = "*"},
    {"asterisk with GET", S("GET * HTTP/1.1\r\n" HOSTX "\r\n"), ERR, 400},
    {"asterisk and more", S("OPTIONS *x HTTP/1.1\r\n" HOSTX "\r\n"), ERR,
     400},
    {"OPTIONS origin-form", S("OPTIONS /x HTTP/1.1\r\n" HOSTX "\r\n"), OK,
     .path = "/x"},
    {"absolute-form", S("GET http://example.com/a/b?c=d HTTP/1.1\r\n"
                        "Host: other\r\n\r\n"), OK,
     .target = "http://example.com/a/b?c=d", .host = "example.com",
     .path = "/a/b", .query = "c=d"},
    {"absolute-form empty path", S("GET HTTP://EXAMPLE.com:8080 HTTP/1.1\r\n"
                                   HOSTX "\r\n"), OK,
     .host = "EXAMPLE.com:8080", .path = "/", .query = ""},
    {"absolute-form https query", S("GET hTTpS://h?q=1 HTTP/1.1\r\n" HOSTX
                                    "\r\n"), OK,
     .host = "h", .path = "/", .query = "q=1"},
    {"absolute-form IPv6", S("GET http://[::1]:80/x HTTP/1.1\r\n" HOSTX
                             "\r\n"), OK, .host = "[::1]:80", .path = "/x"},
    {"absolute-form overrides Host", S("GET http://a.example/ HTTP/1.0\r\n"
                                       "Host: b.example\r\n\r\n"), OK,
     .host = "a.example", .hdrs = {{"Host", "b.example"}}},
    {"absolute-form HTTP/1.0 no Host", S("GET http://h/x HTTP/1.0\r\n\r\n"),
     OK, .host = "h", .path = "/x"},
    {"absolute-form needs Host", S("GET http://h/x HTTP/1.1\r\n\r\n"), ERR,
     400},
    {"absolute-form empty host", S("GET http:///x HTTP/1.1\r\n" HOSTX
                                   "\r\n"), ERR, 400},
    {"absolute-form nothing", S("GET http:// HTTP/1.1\r\n" HOSTX "\r\n"), ERR,
     400},
    {"absolute-form userinfo", S("GET http://u@h/ HTTP/1.1\r\n" HOSTX
                                 "\r\n"), ERR, 400},
    {"absolute-form ftp", S("GET ftp://h/ HTTP/1.1\r\n" HOSTX "\r\n"), ERR,
     400},
    {"absolute-form one slash", S("GET http:/h HTTP/1.1\r\n" HOSTX "\r\n"),
     ERR, 400},
    {"absolute-form bad port", S("GET http://h:x/ HTTP/1.1\r\n" HOSTX
                                 "\r\n"), ERR, 400},
    {"absolute-form empty port", S("GET http://h:/x HTTP/1.1\r\n" HOSTX
                                   "\r\n"), OK, .host = "h:", .path = "/x"},
    {"absolute-form empty port, no path", S("GET http://h:?q HTTP/1.1\r\n"
                                            HOSTX "\r\n"), OK, .host = "h:",
     .path = "/", .query = "q"},
    /* A well-formed CONNECT asks for a tunnel: 501 (a malformed one is
     * a 400 like any malformed target). */
    {"CONNECT", S("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443"
                  "\r\n\r\n"), ERR, 501},
    {"CONNECT IPv6", S("CONNECT [2001:db8::1]:443 HTTP/1.1\r\n" HOSTX
                       "\r\n"), ERR, 501},
    {"CONNECT with a body", S("CONNECT h:443 HTTP/1.1\r\n" HOSTX
                              "\r\nContent-Length: 5\r\n\r\nhello"),
     ERR, 501},
    {"CONNECT without port", S("CONNECT example.com HTTP/1.1\r\n" HOSTX
                               "\r\n"), ERR, 400},
    {"CONNECT empty port", S("CONNECT h: HTTP/1.1\r\n" HOSTX "\r\n"), ERR,
     400},
    {"CONNECT port 65536", S("CONNECT h:65536 HTTP/1.1\r\n" HOSTX "\r\n"),
     ERR, 400},
    {"CONNECT origin-form", S("CONNECT / HTTP/1.1\r\n" HOSTX "\r\n"), ERR,
     400},
    {"CONNECT absolute-form", S("CONNECT http://h:1/ HTTP/1.1\r\n" HOSTX
                                "\r\n"), ERR, 400},
    {"CONNECT asterisk", S("CONNECT * HTTP/1.1\r\n" HOSTX "\r\n"), ERR, 400},
    {"authority-form with GET", S("GET h:443 HTTP/1.1\r\n" HOSTX "\r\n"),
     ERR, 400},
    {"connect is case-sensitive", S("connect h:443 HTTP/1.1\r\n" HOSTX
                                    "\r\n"), ERR, 400},

    /* ---- field lines ---- */
    {"no space before value", S(GET11 "Host:x\r\n\r\n"), OK, .host = "x"},
    {"OWS trimmed", S(GET11 "Host: \t x \t \r\n\r\n"), OK, .host = "x",
     .hdrs = {{"Host", "x"}}},
    {"tab inside value", S(GET11 HOSTX "X-A: a\tb c\r\n\r\n"), OK,
     .hdrs = {{"X-A", "a\tb c"}}},
    {"obs-text value", S(GET11 HOSTX "X-A: caf\xc3\xa9 \xff\x80\r\n\r\n"), OK,
     .hdrs = {{"X-A", "caf\xc3\xa9 \xff\x80"}}},
    {"empty value", S(GET11 HOSTX "X-A:\r\nX-B: \t \r\n\r\n"), OK,
     .nh = NH(3), .hdrs = {{"X-A", ""}, {"X-B", ""}}},
    {"names keep their case", S(GET11 "hOsT: x\r\nX_Under: 1\r\n\r\n"), OK,
     .host = "x", .nh = NH(2), .hdrs = {{"hOsT", "x"}, {"X_Under", "1"}}},
    {"space before colon", S(GET11 "Host : x\r\n\r\n"), ERR, 400},
    {"tab before colon", S(GET11 HOSTX "X\t: x\r\n\r\n"), ERR, 400},
    {"no colon", S(GET11 HOSTX "Foo\r\n\r\n"), ERR, 400},
    {"empty name", S(GET11 HOSTX ": x\r\n\r\n"), ERR, 400},
    {"non-token name", S(GET11 HOSTX "A/B: x\r\n\r\n"), ERR, 400},
    {"obs-text name", S(GET11 HOSTX "\xc3\xa9: x\r\n\r\n"), ERR, 400},
    {"obs-fold", S(GET11 HOSTX "X: a\r\n b\r\n\r\n"), ERR, 400},
    {"obs-fold with tab", S(GET11 HOSTX "X: a\r\n\tb\r\n\r\n"), ERR, 400},
    {"space before first field", S(GET11 " Host: x\r\n\r\n"), ERR, 400},
    {"NUL in value", S(GET11 HOSTX "X: a\0b\r\n\r\n"), ERR, 400},
    {"DEL in value", S(GET11 HOSTX "X: a\x7f\r\n\r\n"), ERR, 400},
    {"CTL in value", S(GET11 HOSTX "X: a\x01\r\n\r\n"), ERR, 400},
    {"ESC in value", S(GET11 HOSTX "X: \x1b[0m\r\n\r\n"), ERR, 400},
    {"bare CR in value", S(GET11 HOSTX "X: a\rb\r\n\r\n"), ERR, 400},
    {"bare LF in value", S(GET11 HOSTX "X: a\nb\r\n\r\n"), ERR, 400},
    {"vertical tab in value", S(GET11 HOSTX "X: a\x0b\r\n\r\n"), ERR, 400},

    /* ---- Content-Length ---- */
    {"content-length", S("POST / HTTP/1.1\r\n" HOSTX "Content-Length: 5"
                         "\r\n\r\n"), OK, .body = B_LENGTH, .cl = 5},
    {"content-length 0", S("POST / HTTP/1.1\r\n" HOSTX "content-length: 0"
                           "\r\n\r\n"), OK, .body = B_NONE, .cl = 0},
    {"content-length leading zeros", S(GET11 HOSTX "Content-Length: 007\r\n"
                                       "\r\n"), OK, .body = B_LENGTH, .cl = 7},
    {"content-length OWS", S(GET11 HOSTX "Content-Length: \t12 \r\n\r\n"), OK,
     .body = B_LENGTH, .cl = 12},
    {"content-length max", S(GET11 HOSTX "Content-Length: "
                             "9223372036854775807\r\n\r\n"), OK,
     .body = B_LENGTH, .cl = 9223372036854775807ULL},
    {"content-length 2^63", S(GET11 HOSTX "Content-Length: "
                              "9223372036854775808\r\n\r\n"), ERR, 400},
    {"content-length 20 digits", S(GET11 HOSTX "Content-Length: "
                                   "00000000000000000001\r\n\r\n"), ERR, 400},
    {"content-length 2^64", S(GET11 HOSTX "Content-Length: "
                              "18446744073709551616\r\n\r\n"), ERR, 400},
    {"content-length +", S(GET11 HOSTX "Content-Length: +5\r\n\r\n"), ERR,
     400},
    {"content-length -", S(GET11 HOSTX "Content-Length: -1\r\n\r\n"), ERR,
     400},
    {"content-length inner space", S(GET11 HOSTX "Content-Length: 1 2\r\n"
                                     "\r\n"), ERR, 400},
    {"content-length empty", S(GET11 HOSTX "Content-Length:\r\n\r\n"), ERR,
     400},
    {"content-length hex", S(GET11 HOSTX "Content-Length: 0x5\r\n\r\n"), ERR,
     400},
    {"content-length list", S(GET11 HOSTX "Content-Length: 5, 5\r\n\r\n"),
     ERR, 400},
    {"content-length twice same", S(GET11 HOSTX "Content-Length: 5\r\n"
                                    "content-length: 5\r\n\r\n"), OK,
     .body = B_LENGTH, .cl = 5},
    {"content-length twice differ", S(GET11 HOSTX "Content-Length: 5\r\n"
                                      "Content-Length: 6\r\n\r\n"), ERR, 400},
    {"content-length 5 and 05", S(GET11 HOSTX "Content-Length: 5\r\n"
                                  "Content-Length: 05\r\n\r\n"), ERR, 400},
    {"content-length twice bad", S(GET11 HOSTX "Content-Length: x\r\n"
                                   "Content-Length: x\r\n\r\n"), ERR, 400},
    {"content-length at max body", S("PUT / HTTP/1.1\r\nHost: x\r\n"
                                     "Content-Length: 100\r\n\r\n"), OK,
     .body = B_LENGTH, .cl = 100, .limits = &lim_small},
    {"content-length over max body", S("PUT / HTTP/1.1\r\nHost: x\r\n"
                                       "Content-Length: 101\r\n\r\n"), ERR,
     413, .limits = &lim_small},

    /* ---- Transfer-Encoding ---- */
    {"chunked", S("POST / HTTP/1.1\r\n" HOSTX "Transfer-Encoding: chunked\r\n"
                  "\r\n"), OK, .body = B_CHUNKED, .cl = 0},
    {"CHUNKED with OWS", S(GET11 HOSTX "transfer-encoding:  CHUNKED \r\n"
                           "\r\n"), OK, .body = B_CHUNKED},
    {"te gzip, chunked", S(GET11 HOSTX "Transfer-Encoding: gzip, chunked"
                           "\r\n\r\n"), ERR, 501},
    {"te gzip", S(GET11 HOSTX "Transfer-Encoding: gzip\r\n\r\n"), ERR, 501},
    {"te identity", S(GET11 HOSTX "Transfer-Encoding: identity\r\n\r\n"),
     ERR, 501},
    {"te x-custom", S(GET11 HOSTX "Transfer-Encoding: x-custom\r\n\r\n"),
     ERR, 501},
    {"te with params", S(GET11 HOSTX "Transfer-Encoding: gzip;q=\"1,2\","
                         "chunked\r\n\r\n"), ERR, 501},
    {"te chunked, gzip", S(GET11 HOSTX "Transfer-Encoding: chunked, gzip"
                           "\r\n\r\n"), ERR, 400},
    {"te chunked twice", S(GET11 HOSTX "Transfer-Encoding: chunked,chunked"
                           "\r\n\r\n"), ERR, 400},
    {"te chunked on two lines", S(GET11 HOSTX "Transfer-Encoding: chunked"
                                  "\r\nTransfer-Encoding: chunked\r\n\r\n"),
     ERR, 400},
    {"te gzip then chunked lines", S(GET11 HOSTX "Transfer-Encoding: gzip"
                                     "\r\nTransfer-Encoding: chunked\r\n"
                                     "\r\n"), ERR, 501},
    {"te chunked then gzip lines", S(GET11 HOSTX "Transfer-Encoding: chunked"
                                     "\r\nTransfer-Encoding: gzip\r\n\r\n"),
     ERR, 400},
    {"te empty", S(GET11 HOSTX "Transfer-Encoding:\r\n\r\n"), ERR, 400},
    /* RFC 9110 5.6.1: empty list elements are ignored... */
    {"te trailing comma", S(GET11 HOSTX "Transfer-Encoding: chunked,\r\n"
                            "\r\n"), OK, .body = B_CHUNKED},
    {"te leading comma", S(GET11 HOSTX "Transfer-Encoding: ,chunked\r\n"
                           "\r\n"), OK, .body = B_CHUNKED},
    {"te first problem wins", S(GET11 HOSTX "Transfer-Encoding: gzip , ,"
                                "chunked\r\n\r\n"), ERR, 501},
    {"te empty element", S(GET11 HOSTX "Transfer-Encoding: chunked, ,\r\n"
                           "\r\n"), OK, .body = B_CHUNKED},
    {"te empty elements around", S(GET11 HOSTX "Transfer-Encoding: \t, ,"
                                   "chunked ,\t,\r\n\r\n"), OK,
     .body = B_CHUNKED},
    {"te comma, chunked, gzip", S(GET11 HOSTX "Transfer-Encoding: ,chunked,"
                                  ",gzip\r\n\r\n"), ERR, 400},
    {"te chunked, , chunked", S(GET11 HOSTX "Transfer-Encoding: chunked, ,"
                                "chunked\r\n\r\n"), ERR, 400},
    /* ...but a line that names no coding is refused, even beside one that
     * says chunked: read alone it means no transfer coding. */
    {"te only a comma", S(GET11 HOSTX "Transfer-Encoding: ,\r\n\r\n"), ERR,
     400},
    {"te only commas", S(GET11 HOSTX "Transfer-Encoding: , \t,,\r\n\r\n"),
     ERR, 400},
    {"te comma line, chunked line", S(GET11 HOSTX "Transfer-Encoding: ,\r\n"
                                      "Transfer-Encoding: chunked\r\n\r\n"),
     ERR, 400},
    {"te chunked line, comma line", S(GET11 HOSTX "Transfer-Encoding: chunked"
                                      "\r\nTransfer-Encoding: ,\r\n\r\n"),
     ERR, 400},
    {"te chunked line, empty line", S(GET11 HOSTX "Transfer-Encoding: chunked"
                                      "\r\nTransfer-Encoding:\r\n\r\n"),
     ERR, 400},
    {"te junk after coding", S(GET11 HOSTX "Transfer-Encoding: gzip/1\r\n"
                               "\r\n"), ERR, 400},
    {"te chunked with params", S(GET11 HOSTX "Transfer-Encoding: chunked;a=b"
                                 "\r\n\r\n"), ERR, 400},
    {"te chunk ed", S(GET11 HOSTX "Transfer-Encoding: chunk ed\r\n\r\n"), ERR,
     400},
    {"te bad param", S(GET11 HOSTX "Transfer-Encoding: gzip;q\r\n\r\n"), ERR,
     400},
    {"te and content-length", S(GET11 HOSTX "Content-Length: 5\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n"), ERR,
     400},
    {"content-length and te", S(GET11 HOSTX "Transfer-Encoding: chunked\r\n"
                                "Content-Length: 0\r\n\r\n"), ERR, 400},
    {"te in HTTP/1.0", S("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n"
                         "\r\n"), ERR, 400},

    /* ---- Host ---- */
    {"missing Host", S(GET11 "X: y\r\n\r\n"), ERR, 400},
    {"two Host fields", S(GET11 HOSTX HOSTX "\r\n"), ERR, 400},
    {"two Host fields in 1.0", S("GET / HTTP/1.0\r\n" HOSTX "host: y\r\n\r\n"),
     ERR, 400},
    {"empty Host", S(GET11 "Host:\r\n\r\n"), OK, .host = ""},
    {"Host with port", S(GET11 "Host: example.com:8080\r\n\r\n"), OK,
     .host = "example.com:8080"},
    {"Host IPv4", S(GET11 "Host: 10.0.0.1:80\r\n\r\n"), OK,
     .host = "10.0.0.1:80"},
    {"Host IPv6", S(GET11 "Host: [::1]\r\n\r\n"), OK, .host = "[::1]"},
    {"Host IPv6 full", S(GET11 "Host: [1:2:3:4:5:6:7:8]:1\r\n\r\n"), OK},
    {"Host IPv6 v4 tail", S(GET11 "Host: [::ffff:1.2.3.4]\r\n\r\n"), OK},
    {"Host IPvFuture", S(GET11 "Host: [v1.fe:x]\r\n\r\n"), OK},
    {"Host pct-encoded", S(GET11 "Host: h%41st\r\n\r\n"), OK},
    {"Host trailing dot", S(GET11 "Host: example.com.\r\n\r\n"), OK},
    {"Host sub-delims", S(GET11 "Host: a!$&'()*+,;=b-._~\r\n\r\n"), OK},
    {"Host IPv6 ::", S(GET11 "Host: [::]\r\n\r\n"), OK},
    {"Host IPv6 trailing ::", S(GET11 "Host: [1:2:3:4:5:6:7::]\r\n\r\n"),
     OK},
    {"Host IPv6 :: with 8 groups", S(GET11 "Host: [1::2:3:4:5:6:7:8]\r\n"
                                     "\r\n"), ERR, 400},
    {"Host IPv6 5-digit group", S(GET11 "Host: [12345::1]\r\n\r\n"), ERR,
     400},
    {"Host IPv6 single colon start", S(GET11 "Host: [:1::2]\r\n\r\n"), ERR,
     400},
    {"Host IPv6 trailing colon", S(GET11 "Host: [1::2:]\r\n\r\n"), ERR,
     400},
    {"Host IPvFuture empty", S(GET11 "Host: [v1.]\r\n\r\n"), ERR, 400},
    {"Host empty brackets", S(GET11 "Host: []\r\n\r\n"), ERR, 400},
    {"Host port 65535", S(GET11 "Host: h:65535\r\n\r\n"), OK},
    {"Host port 65536", S(GET11 "Host: h:65536\r\n\r\n"), ERR, 400},
    {"Host port 6 digits", S(GET11 "Host: h:000080\r\n\r\n"), ERR, 400},
    /* RFC 3986 3.2.3: port = *DIGIT; empty means the scheme's default */
    {"Host empty port", S(GET11 "Host: h:\r\n\r\n"), OK, .host = "h:",
     .hdrs = {{"Host", "h:"}}},
    {"Host IPv6 empty port", S(GET11 "Host: [::1]:\r\n\r\n"), OK,
     .host = "[::1]:"},
    {"Host IPv4 empty port", S(GET11 "Host: 10.0.0.1:\r\n\r\n"), OK,
     .host = "10.0.0.1:"},
    {"Host only a colon", S(GET11 "Host: :\r\n\r\n"), ERR, 400},
    {"Host two colons", S(GET11 "Host: h::\r\n\r\n"), ERR, 400},
    {"Host empty port then junk", S(GET11 "Host: h:x\r\n\r\n"), ERR, 400},
    {"Host only port", S(GET11 "Host: :80\r\n\r\n"), ERR, 400},
    {"Host bad port", S(GET11 "Host: h:8a\r\n\r\n"), ERR, 400},
    {"Host with space", S(GET11 "Host: a b\r\n\r\n"), ERR, 400},
    {"Host with userinfo", S(GET11 "Host: u@h\r\n\r\n"), ERR, 400},
    {"Host with path", S(GET11 "Host: h/x\r\n\r\n"), ERR, 400},
    {"Host bad pct", S(GET11 "Host: h%4\r\n\r\n"), ERR, 400},
    {"Host open bracket", S(GET11 "Host: [::1\r\n\r\n"), ERR, 400},
    {"Host IPv6 nine groups", S(GET11 "Host: [1:2:3:4:5:6:7:8:9]\r\n\r\n"),
     ERR, 400},
    {"Host IPv6 two ::", S(GET11 "Host: [1::2::3]\r\n\r\n"), ERR, 400},
    {"Host IPv6 zone", S(GET11 "Host: [fe80::1%25eth0]\r\n\r\n"), ERR, 400},
    {"Host IPv6 bad v4", S(GET11 "Host: [::1.2.3.256]\r\n\r\n"), ERR, 400},
    {"Host IPv6 v4 zero", S(GET11 "Host: [::01.2.3.4]\r\n\r\n"), ERR, 400},
    {"Host junk after ]", S(GET11 "Host: [::1]x\r\n\r\n"), ERR, 400},

    /* ---- fields that may not repeat (SINGLETONS in http_parser.c) ---- */
    {"two Host fields, same value", S(GET11 "Host: x\r\nhost: x\r\n\r\n"),
     ERR, 400},
    {"two Content-Type", S(GET11 HOSTX "Content-Type: a/b\r\nContent-Type:"
                           " c/d\r\n\r\n"), ERR, 400},
    {"two Content-Type, same value", S(GET11 HOSTX "Content-Type: a/b\r\n"
                                       "CONTENT-TYPE: a/b\r\n\r\n"), ERR,
     400},
    {"two Content-Type, apart", S(GET11 "content-type: a/b\r\n" HOSTX
                                  "X: 1\r\nContent-type: a/b\r\n\r\n"),
     ERR, 400},
    {"two Content-Type in 1.0", S("POST / HTTP/1.0\r\nContent-Type: a/b\r\n"
                                  "Content-Type: c/d\r\n\r\n"), ERR, 400},
    {"two Content-Range", S(GET11 HOSTX "Content-Range: bytes 0-0/2\r\n"
                            "Content-Range: bytes 1-1/2\r\n\r\n"), ERR,
     400},
    {"two Authorization", S(GET11 HOSTX "Authorization: Basic YTpi\r\n"
                            "authorization: Bearer x\r\n\r\n"), ERR, 400},
    {"two Proxy-Authorization", S(GET11 HOSTX "Proxy-Authorization: a\r\n"
                                  "Proxy-Authorization: b\r\n\r\n"), ERR,
     400},
    {"two Origin", S(GET11 HOSTX "Origin: http://a\r\nOrigin: http://b\r\n"
                     "\r\n"), ERR, 400},
    {"two Referer", S(GET11 HOSTX "Referer: /a\r\nReferer: /b\r\n\r\n"),
     ERR, 400},
    {"two Range", S(GET11 HOSTX "Range: bytes=0-1\r\nRange: bytes=3-4\r\n"
                    "\r\n"), ERR, 400},
    {"two If-Range", S(GET11 HOSTX "If-Range: \"a\"\r\nIf-Range: \"b\"\r\n"
                       "\r\n"), ERR, 400},
    {"two If-Modified-Since", S(GET11 HOSTX "If-Modified-Since: a\r\n"
                                "If-Modified-Since: b\r\n\r\n"), ERR, 400},
    {"two If-Unmodified-Since", S(GET11 HOSTX "If-Unmodified-Since: a\r\n"
                                  "if-unmodified-since: a\r\n\r\n"), ERR,
     400},
    {"two Max-Forwards", S(GET11 HOSTX "Max-Forwards: 1\r\nMax-Forwards: 0"
                           "\r\n\r\n"), ERR, 400},
    {"singletons once each", S(GET11 HOSTX "Content-Type: a/b\r\n"
                               "Content-Range: bytes 0-0/1\r\n"
                               "Authorization: a\r\n"
                               "Proxy-Authorization: b\r\nOrigin: null\r\n"
                               "Referer: /r\r\nRange: bytes=0-\r\n"
                               "If-Range: \"e\"\r\nIf-Modified-Since: d\r\n"
                               "If-Unmodified-Since: d\r\n"
                               "Max-Forwards: 2\r\n\r\n"), OK, .nh = NH(12),
     .hdrs = {{"Content-Type", "a/b"}, {"Max-Forwards", "2"}}},
    {"repeated lists and User-Agent", S(GET11 HOSTX "Accept: a\r\nAccept: b"
                                        "\r\nUser-Agent: u\r\nUser-Agent: v"
                                        "\r\nCookie: a=1\r\nCookie: b=2\r\n"
                                        "If-None-Match: \"x\"\r\n"
                                        "If-None-Match: \"y\"\r\n\r\n"),
     OK, .nh = NH(9)},
    {"names near singletons", S(GET11 HOSTX "Content-Types: a\r\n"
                                "Content-Types: b\r\nX-Range: 1\r\n"
                                "X-Range: 2\r\nReferrer: a\r\n"
                                "Referrer: b\r\n\r\n"), OK, .nh = NH(7)},

    /* ---- Expect ---- */
    {"expect 100-continue", S(GET11 HOSTX "Expect: 100-Continue\r\n\r\n"), OK,
     .ec = YES},
    {"expect other", S(GET11 HOSTX "Expect: foo\r\n\r\n"), ERR, 417},
    {"expect second line other", S(GET11 HOSTX "Expect: 100-continue\r\n"
                                   "Expect: 200-ok\r\n\r\n"), ERR, 417},
    {"expect list", S(GET11 HOSTX "Expect: 100-continue, foo\r\n\r\n"), ERR,
     417},
    /* Expect = #expectation: empty elements are ignored (RFC 9110
     * 5.6.1), so an empty list expects nothing. */
    {"expect empty", S(GET11 HOSTX "Expect:\r\n\r\n"), OK, .ec = NO},
    {"expect only commas", S(GET11 HOSTX "Expect: , ,\t\r\n\r\n"), OK,
     .ec = NO},
    {"expect trailing comma", S(GET11 HOSTX "Expect: 100-continue,\r\n\r\n"),
     OK, .ec = YES},
    {"expect leading comma", S(GET11 HOSTX "Expect: , 100-continue\r\n\r\n"),
     OK, .ec = YES},
    {"expect twice in a list", S(GET11 HOSTX "Expect: 100-continue ,,\t"
                                 "100-CONTINUE\r\n\r\n"), OK, .ec = YES},
    {"expect empty line and 100", S(GET11 HOSTX "Expect:\r\nExpect: "
                                    "100-continue\r\n\r\n"), OK, .ec = YES},
    {"expect comma then other", S(GET11 HOSTX "Expect: ,foo\r\n\r\n"), ERR,
     417},
    {"expect 100, empty, other", S(GET11 HOSTX "Expect: 100-continue,,foo"
                                   "\r\n\r\n"), ERR, 417},
    {"expect quoted comma", S(GET11 HOSTX "Expect: a=\"x,100-continue\""
                              "\r\n\r\n"), ERR, 417},
    {"expect 100 with a parameter", S(GET11 HOSTX "Expect: 100-continue;a=b"
                                      "\r\n\r\n"), ERR, 417},
    {"expect inner space", S(GET11 HOSTX "Expect: 100- continue\r\n\r\n"),
     ERR, 417},
    {"expect in HTTP/1.0", S("GET / HTTP/1.0\r\nExpect: 100-continue\r\n"
                             "\r\n"), OK, .ec = NO},
    {"expect other in HTTP/1.0", S("GET / HTTP/1.0\r\nExpect: foo\r\n\r\n"),
     OK, .ec = NO},

    /* ---- incomplete ---- */
    {"empty input", S(""), PART},
    {"request line only", S(GET11), PART},
    {"no blank line", S(GET11 HOSTX), PART},
    {"one CR of the blank line", S(GET11 HOSTX "\r"), PART},

    /* ---- limits (small ones; the defaults are generated below) ---- */
    {"request line at limit", S("GET /234567890123456789 HTTP/1.1\r\n" HOSTX
                                "\r\n"), OK, .limits = &lim_small},
    {"request line over limit", S("GET /2345678901234567890 HTTP/1.1\r\n"
                                  HOSTX "\r\n"), ERR, 414,
     .limits = &lim_small},
    {"request line over, no CRLF", S("GET /2345678901234567890 HTTP/1.1"),
     ERR, 414, .limits = &lim_small},
    {"request line at limit, no CRLF", S("GET /234567890123456789 HTTP/1.1"),
     PART, .limits = &lim_small},
    {"field at limit", S("GET / HTTP/1.1\r\nHost: 45678901234567\r\n\r\n"),
     OK, .limits = &lim_small},
    {"field over limit", S("GET / HTTP/1.1\r\nHost: 456789012345678\r\n\r\n"),
     ERR, 431, .limits = &lim_small},
    {"field over, no CRLF", S("GET / HTTP/1.1\r\nHost: 456789012345678"), ERR,
     431, .limits = &lim_small},
    {"field at limit, no CRLF", S("GET / HTTP/1.1\r\nHost: 45678901234567\r"),
     PART, .limits = &lim_small},
    {"field count at limit", S(GET11 HOSTX "A: 1\r\nB: 2\r\n\r\n"), OK,
     .nh = NH(3), .limits = &lim_small},
    {"field count over limit", S(GET11 HOSTX "A: 1\r\nB: 2\r\nC: 3\r\n"
                                 "\r\n"), ERR, 431, .limits = &lim_small},
    {"field count over, no end", S(GET11 HOSTX "A: 1\r\nB: 2\r\nC: 3\r\n"),
     ERR, 431, .limits = &lim_small},
    {"head size at limit", S(GET11 HOSTX "X: 01234567890123456789012345678901"
                             "\r\n\r\n"), OK, .limits = &lim_head64},
    {"head at limit, body follows", S(GET11 HOSTX "X: 012345678901234567890"
                                      "12345678901\r\n\r\nbody"), OK,
     .head = 64, .limits = &lim_head64},
    {"head size over limit", S(GET11 HOSTX "X: 012345678901234567890123456789"
                               "012\r\n\r\n"), ERR, 431,
     .limits = &lim_head64},
    {"head over limit, bare CR too", S(GET11 HOSTX "X: 0123456789012345678901"
                                       "23456789012\r\n\r\r\n"), ERR, 431,
     .limits = &lim_head64},
    {"bare CR just inside limit", S(GET11 HOSTX "X: 0123456789012345678901"
                                    "234567890\r\n\r\r\n"), ERR, 400,
     .limits = &lim_head64},
    {"leading CRLFs count", S("\r\n" GET11 HOSTX "X: 012345678901234567890123"
                              "45678901\r\n\r\n"), ERR, 431,
     .limits = &lim_head64},
    {"bad line before limits", S("GET / HTTP/1.1\nHost: 456789012345678901"),
     ERR, 400, .limits = &lim_small},
    {"long line before bad one", S("GET / HTTP/1.1\r\nHost: 45678901234567"
                                   "8\n"),
     ERR, 431, .limits = &lim_small},
    {"no fields allowed", S("GET / HTTP/1.0\r\n\r\n"), OK, .nh = NH(0),
     .limits = &lim_nohdr},
    {"no fields allowed, one sent", S("GET / HTTP/1.0\r\nA: b\r\n\r\n"), ERR,
     431, .limits = &lim_nohdr},
    {"request line at limit, bare CR", S("GET /234567890123456789 HTTP/1.1\r"
                                         "x"), ERR, 400, .limits = &lim_small},
    {"syntax error, then too long", S("G(T / HTTP/1.1\r\nHost: 456789012345678"
                                      "90\r\n\r\n"), ERR, 431,
     .limits = &lim_small},
};

static const ccase_t ccases[] = {
    {"one chunk", S("5\r\nhello\r\n0\r\n\r\n"), DONE, 0, S("hello")},
    {"two chunks", S("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), DONE, 0,
     S("hello world")},
    {"hex sizes", S("A\r\n0123456789\r\nb\r\nabcdefghijk\r\n0\r\n\r\n"), DONE,
     0, S("0123456789abcdefghijk")},
    {"leading zeros", S("0005\r\nhello\r\n000\r\n\r\n"), DONE, 0, S("hello")},
    {"data with CRLF and NUL", S("4\r\n\r\n\0\n\r\n0\r\n\r\n"), DONE, 0,
     S("\r\n\0\n")},
    {"no data", S("0\r\n\r\n"), DONE, 0, S("")},
    {"pipelined after body", S("1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n"), DONE,
     0, S("a"), .consumed = 11},
    {"extension", S("5;a=b\r\nhello\r\n0;x\r\n\r\n"), DONE, 0, S("hello")},
    {"extensions with BWS", S("5 ; a = b ;c\t;d=\"x\\\"y\"\r\nhello\r\n0\r\n"
                              "\r\n"), DONE, 0, S("hello")},
    {"ext trailing space", S("5;a=b \r\nhello\r\n0\r\n\r\n"), ERR, 400,
     S("")},
    {"quoted ext with obs-text", S("1;a=\"\xff;\\\t\"\r\nx\r\n0\r\n\r\n"),
     DONE, 0, S("x")},
    {"ext empty name", S("5;\r\nhello\r\n0\r\n\r\n"), ERR, 400, S("")},
    {"ext only =", S("5;=b\r\nhello\r\n0\r\n\r\n"), ERR, 400, S("")},
    {"ext empty value", S("5;a=\r\nhello\r\n0\r\n\r\n"), ERR, 400, S("")},
    {"ext value with space", S("5;a=b c\r\nhello\r\n"), ERR, 400, S("")},
    {"ext name then space", S("5;a \r\nhello\r\n"), ERR, 400, S("")},
    {"size then space", S("5 \r\nhello\r\n0\r\n\r\n"), ERR, 400, S("")},
    {"ext unterminated quote", S("5;a=\"x\r\nhello\r\n"), ERR, 400, S("")},
    {"ext quote with CTL", S("5;a=\"\x01\"\r\nhello\r\n"), ERR, 400, S("")},
    {"ext bad escape", S("5;a=\"\\\x01\"\r\nhello\r\n"), ERR, 400, S("")},
    {"ext junk after quote", S("5;a=\"x\"y\r\nhello\r\n"), ERR, 400, S("")},
    {"empty size line", S("\r\nhello\r\n"), ERR, 400, S("")},
    {"non-hex size", S("x\r\n"), ERR, 400, S("")},
    {"negative size", S("-5\r\n"), ERR, 400, S("")},
    {"0x size", S("0x5\r\nhello\r\n"), ERR, 400, S("")},
    {"size 2^63-1", S("7fffffffffffffff\r\nab"), MORE, 0, S("ab")},
    {"size 2^63", S("8000000000000000\r\n"), ERR, 400, S("")},
    {"17 significant digits", S("10000000000000000\r\n"), ERR, 400, S("")},
    {"zeros then 16 digits", S("000000000000000000007fffffffffffffff\r\n"),
     MORE, 0, S("")},
    {"missing CRLF after data", S("5\r\nhelloX\r\n0\r\n\r\n"), ERR, 400,
     S("hello")},
    {"LF only after data", S("5\r\nhello\n0\r\n\r\n"), ERR, 400, S("hello")},
    {"CR only after data", S("5\r\nhello\r0\r\n\r\n"), ERR, 400, S("hello")},
    {"bare LF after size", S("5\nhello\r\n0\r\n\r\n"), ERR, 400, S("")},
    {"bare CR after size", S("5\rhello\r\n0\r\n\r\n"), ERR, 400, S("")},
    {"bare LF ends body", S("0\r\n\n"), ERR, 400, S("")},
    {"incomplete data", S("5\r\nhel"), MORE, 0, S("hel")},
    {"incomplete after last chunk", S("5\r\nhello\r\n0\r\n"), MORE, 0,
     S("hello")},
    {"incomplete final CR", S("0\r\n\r"), MORE, 0, S("")},
    {"trailers", S("3\r\nabc\r\n0\r\nX-T: v\r\nY:\r\nZ: \t a b\xff\r\n\r\n"),
     DONE, 0, S("abc")},
    {"trailer obs-fold", S("0\r\nX: a\r\n b\r\n\r\n"), ERR, 400, S("")},
    /* RFC 9110 6.5.1: NO_TRAILER in http_parser.c */
    {"trailer Content-Length", S("3\r\nabc\r\n0\r\nContent-Length: 3\r\n"
                                 "\r\n"), ERR, 400, S("abc")},
    {"trailer content-length, case", S("0\r\ncOnTeNt-LeNgTh: 0\r\n\r\n"),
     ERR, 400, S("")},
    {"trailer Transfer-Encoding", S("0\r\nTransfer-Encoding: chunked\r\n"
                                    "\r\n"), ERR, 400, S("")},
    {"trailer Trailer", S("0\r\nTrailer: X\r\n\r\n"), ERR, 400, S("")},
    {"trailer Host", S("0\r\nHost: other\r\n\r\n"), ERR, 400, S("")},
    {"trailer Expect", S("0\r\nExpect: 100-continue\r\n\r\n"), ERR, 400,
     S("")},
    {"trailer Max-Forwards", S("0\r\nMax-Forwards: 0\r\n\r\n"), ERR, 400,
     S("")},
    {"trailer TE", S("0\r\nTE: trailers\r\n\r\n"), ERR, 400, S("")},
    {"trailer Cache-Control", S("0\r\nCache-Control: no-cache\r\n\r\n"),
     ERR, 400, S("")},
    {"trailer If-Match", S("0\r\nIf-Match: *\r\n\r\n"), ERR, 400, S("")},
    {"trailer If-None-Match", S("0\r\nIf-None-Match: *\r\n\r\n"), ERR, 400,
     S("")},
    {"trailer If-Modified-Since", S("0\r\nIf-Modified-Since: d\r\n\r\n"),
     ERR, 400, S("")},
    {"trailer If-Unmodified-Since", S("0\r\nIf-Unmodified-Since: d\r\n"
                                      "\r\n"), ERR, 400, S("")},
    {"trailer If-Range", S("0\r\nIf-Range: \"e\"\r\n\r\n"), ERR, 400,
     S("")},
    {"trailer Range", S("0\r\nRange: bytes=0-1\r\n\r\n"), ERR, 400, S("")},
    {"trailer Authorization", S("0\r\nAuthorization: Basic YTpi\r\n\r\n"),
     ERR, 400, S("")},
    {"trailer Proxy-Authorization", S("0\r\nProxy-Authorization: x\r\n"
                                      "\r\n"), ERR, 400, S("")},
    {"trailer Cookie", S("0\r\nCookie: a=b\r\n\r\n"), ERR, 400, S("")},
    {"trailer Content-Type", S("0\r\nContent-Type: a/b\r\n\r\n"), ERR, 400,
     S("")},
    {"trailer Content-Encoding", S("0\r\nContent-Encoding: gzip\r\n\r\n"),
     ERR, 400, S("")},
    {"trailer Content-Range", S("0\r\nContent-Range: bytes 0-0/1\r\n\r\n"),
     ERR, 400, S("")},
    {"trailer Connection", S("0\r\nConnection: close\r\n\r\n"), ERR, 400,
     S("")},
    {"trailer Keep-Alive", S("0\r\nKeep-Alive: 5\r\n\r\n"), ERR, 400,
     S("")},
    {"trailer Proxy-Connection", S("0\r\nProxy-Connection: close\r\n"
                                   "\r\n"), ERR, 400, S("")},
    {"trailer Upgrade", S("0\r\nUpgrade: h2c\r\n\r\n"), ERR, 400, S("")},
    {"trailer empty forbidden value", S("0\r\nHost:\r\n\r\n"), ERR, 400,
     S("")},
    {"trailer forbidden after allowed", S("1\r\nz\r\n0\r\nX-A: 1\r\n"
                                          "Cookie: a\r\n\r\n"), ERR, 400,
     S("z")},
    {"trailer forbidden, no end yet", S("0\r\nHost:"), ERR, 400, S("")},
    {"trailer forbidden name, 431 first", S("0\r\nContent-Length: 1\r\n"
                                            "\r\n"), ERR, 431, S(""),
     .limits = &lim_trailer},
    {"trailers allowed", S("2\r\nab\r\n0\r\nX-Checksum: 1\r\n"
                           "Server-Timing: a\r\nContent-Language: en\r\n"
                           "Content-Location: /x\r\nOrigin: null\r\n"
                           "User-Agent: u\r\nDigest: d\r\n\r\n"), DONE, 0,
     S("ab")},
    {"trailer names near forbidden", S("0\r\nHosts: 1\r\nX-Host: 1\r\n"
                                       "Content-Length2: 1\r\nTEE: 1\r\nT: 1"
                                       "\r\nIf-Unmodified-Sinc: 1\r\n"
                                       "If-Unmodified-Since2: 1\r\n"
                                       "Proxy-Authorization-X: 1\r\n"
                                       "Proxy-Authorizationn: 1\r\n\r\n"),
     DONE, 0, S("")},
    {"trailer space before colon", S("0\r\nX : a\r\n\r\n"), ERR, 400, S("")},
    {"trailer no colon", S("0\r\nX\r\n\r\n"), ERR, 400, S("")},
    {"trailer empty name", S("0\r\n: a\r\n\r\n"), ERR, 400, S("")},
    {"trailer NUL", S("0\r\nX: a\0\r\n\r\n"), ERR, 400, S("")},
    {"trailer DEL", S("0\r\nX: \x7f\r\n\r\n"), ERR, 400, S("")},
    {"trailer bare LF", S("0\r\nX: a\n\r\n"), ERR, 400, S("")},
    {"trailer bare CR", S("0\r\nX: a\rb\r\n\r\n"), ERR, 400, S("")},
    {"trailer count at limit", S("0\r\nA: 1\r\nB: 2\r\n\r\n"), DONE, 0, S(""),
     .limits = &lim_trailer},
    {"trailer count over limit", S("0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), ERR,
     431, S(""), .limits = &lim_trailer},
    {"trailer field at limit", S("0\r\nA: 3456789\r\n\r\n"), DONE, 0, S(""),
     .limits = &lim_trailer},
    {"trailer field over limit", S("0\r\nA: 34567890\r\n\r\n"), ERR, 431,
     S(""), .limits = &lim_trailer},
    {"trailer section at limit", S("0\r\nA: 1234567890123456789012345\r\n"
                                   "\r\n"), DONE, 0, S(""),
     .limits = &lim_tsect},
    {"trailer section over limit", S("0\r\nA: 12345678901234567890123456"
                                     "\r\n\r\n"), ERR, 431, S(""),
     .limits = &lim_tsect},
    {"trailer section over at CR", S("0\r\nA: 12345678901234567890123456"
                                     "\r\n\r\r"), ERR, 431, S(""),
     .limits = &lim_tsect},
    {"body at max", S("a\r\n0123456789\r\n0\r\n\r\n"), DONE, 0,
     S("0123456789"), .limits = &lim_trailer},
    {"chunk over max", S("b\r\n0123456789a\r\n0\r\n\r\n"), ERR, 413, S(""),
     .limits = &lim_trailer},
    {"second chunk over max", S("5\r\n01234\r\n6\r\n012345\r\n0\r\n\r\n"),
     ERR, 413, S("01234"), .limits = &lim_trailer},
    {"huge size over max", S("ffffffffffffffffffff\r\n"), ERR, 413, S(""),
     .limits = &lim_trailer},
};

/* ---- the guard page ---- */

/* ---- head cases ---- */

static int passed, failed;
static char errbuf[512];

#define FAILF(...) (snprintf(errbuf, sizeof(errbuf), __VA_ARGS__), errbuf)

static int
span_eq(const char *p, size_t n, const char *want)
{
    return p != NULL && strlen(want) == n && memcmp(p, want, n) == 0;
}

static int
inside(const char *p, size_t n, const char *buf, size_t len)
{
    return p != NULL && p >= buf && n <= len && p - buf <= (long)(len - n);
}

/* Check a complete head's results; NULL when all as expected. */
static const char *
check_req(const pcase_t *c, const char *buf, size_t head,
          const ymo_http_request_t *r)
{
    size_t i, k;

    if (!inside(r->method, r->method_len, buf, head)
        || !inside(r->target, r->target_len, buf, head)
        || !inside(r->path, r->path_len, buf, head)
        || !inside(r->query, r->query_len, buf, head)
        || (r->host && !inside(r->host, r->host_len, buf, head))) {
        return "a result points outside the head";
    }
    for (i = 0; i < r->num_headers; i++) {
        if (!inside(r->headers[i].name, r->headers[i].name_len, buf, head)
            || !inside(r->headers[i].value, r->headers[i].value_len, buf,
                       head)) {
            return "a header points outside the head";
        }
    }
    if (c->method && !span_eq(r->method, r->method_len, c->method)) {
        return FAILF("method %.*s", (int)r->method_len, r->method);
    }
    if (c->target && !span_eq(r->target, r->target_len, c->target)) {
        return FAILF("target %.*s", (int)r->target_len, r->target);
    }
    if (c->path && !span_eq(r->path, r->path_len, c->path)) {
        return FAILF("path %.*s", (int)r->path_len, r->path);
    }
    if (c->query && !span_eq(r->query, r->query_len, c->query)) {
        return FAILF("query %.*s", (int)r->query_len, r->query);
    }
    if (c->host == NOHOST && r->host != NULL) {
        return "host is not NULL";
    }
    if (c->host && c->host != NOHOST
        && !span_eq(r->host, r->host_len, c->host)) {
        return FAILF("host %.*s", (int)r->host_len,
                     r->host ? r->host : "(null)");
    }
    if (c->version && r->minor_version != c->version - 10) {
        return FAILF("minor version %d", r->minor_version);
    }
    if (c->nh && r->num_headers != (size_t)(c->nh - 1)) {
        return FAILF("%zu headers", r->num_headers);
    }
    if (c->body && r->body != c->body - 1) {
        return FAILF("body kind %d", r->body);
    }
    if (c->body && r->content_length != c->cl) {
        return FAILF("content_length %" PRIu64, r->content_length);
    }
    if (c->ka && r->keep_alive != (c->ka == YES)) {
        return FAILF("keep_alive %d", r->keep_alive);
    }
    if (c->ec && r->expect_continue != (c->ec == YES)) {
        return FAILF("expect_continue %d", r->expect_continue);
    }
    for (k = 0; k < 4 && c->hdrs[k].name; k++) {
        for (i = 0; i < r->num_headers; i++) {
            if (span_eq(r->headers[i].name, r->headers[i].name_len,
                        c->hdrs[k].name)) {
                break;
            }
        }
        if (i == r->num_headers) {
            return FAILF("no header %s", c->hdrs[k].name);
        }
        if (!span_eq(r->headers[i].value, r->headers[i].value_len,
                     c->hdrs[k].value)) {
            return FAILF("header %s: [%.*s]", c->hdrs[k].name,
                         (int)r->headers[i].value_len, r->headers[i].value);
        }
    }
    return NULL;
}

/* What a prefix of k bytes must give when the whole gives (wr, wst). */
static const char *
check_prefix(size_t k, int r, int st, int wr, int wst)
{
    if (wr > 0) {
        if ((size_t)wr > k ? r != -2 : r != wr) {
            return FAILF("prefix %zu: got %d, whole gave %d", k, r, wr);
        }
    }
    else if (r != -2 && (r != wr || st != wst)) {
        return FAILF("prefix %zu: got %d/%d, whole gave %d/%d", k, r, st, wr,
                     wst);
    }
    return NULL;
}

static const char *
run_pcase_inner(const pcase_t *c, ymo_http_header_t *hdrs)
{
    const ymo_http_limits_t *lim = c->limits ? c->limits : &lim_default;
    ymo_http_parser_t p;
    ymo_http_request_t req;
    const char *buf, *err;
    size_t k, step;
    int wr, wst, r;

    /* whole */
    memset(&req, 0, sizeof(req));
    req.headers = hdrs;
    ymo_http_parser_init(&p, lim);
    buf = place(c->in, c->len);
    wr = ymo_http_parse_request(&p, buf, c->len, &req);
    wst = wr == -1 ? p.status : 0;
    switch (c->ret) {
    case OK:
        if (wr != (int)(c->head ? c->head : c->len)) {
            return FAILF("whole: got %d (status %d), want %zu", wr, p.status,
                         c->head ? c->head : c->len);
        }
        if ((err = check_req(c, buf, (size_t)wr, &req)) != NULL) {
            return err;
        }
        break;
    case PART:
        if (wr != -2) {
            return FAILF("whole: got %d (status %d), want -2", wr, p.status);
        }
        break;
    default:
        if (wr != -1 || p.status != c->status) {
            return FAILF("whole: got %d (status %d), want status %d", wr,
                         p.status, c->status);
        }
    }
    /* asking again gives the same answer */
    r = ymo_http_parse_request(&p, buf, c->len, &req);
    if (r != wr || (r == -1 && p.status != wst)) {
        return FAILF("second call: got %d, first gave %d", r, wr);
    }

    /* Long inputs are checked at a subset of the prefixes (and so fed in
     * slices of `step` bytes) to keep the run quadratic but short.     */
    step = c->len > 20000 ? 97 : 1;

    /* every prefix on its own, each with a fresh parser */
    for (k = 0; k < c->len; k += step) {
        ymo_http_parser_init(&p, lim);
        r = ymo_http_parse_request(&p, place(c->in, k), k, &req);
        if ((err = check_prefix(k, r, p.status, wr, wst)) != NULL) {
            return err;
        }
    }

    /* one parser fed every prefix in turn */
    ymo_http_parser_init(&p, lim);
    for (k = 0; k <= c->len; k += (c->len - k < step ? 1 : step)) {
        buf = place(c->in, k);
        r = ymo_http_parse_request(&p, buf, k, &req);
        if ((err = check_prefix(k, r, p.status, wr, wst)) != NULL
            || (r > 0 && (err = check_req(c, buf, (size_t)r, &req)))) {
            char msg[sizeof(errbuf) / 2];

            snprintf(msg, sizeof(msg), "%.200s", err);
            return FAILF("incremental, prefix %zu: %s", k, msg);
        }
        if (k == c->len) {
            if (r != wr) {
                return FAILF("incremental: got %d, whole gave %d", r, wr);
            }
            break;
        }
    }
    return NULL;
}

static void
report(const char *kind, const char *name, const char *err)
{
    if (err) {
        failed++;
        printf("FAIL %s '%s': %s\n", kind, name, err);
    }
    else {
        passed++;
    }
}

static void
run_pcase(const pcase_t *c)
{
    const ymo_http_limits_t *lim = c->limits ? c->limits : &lim_default;
    /* exactly max_header_count entries, so ASan sees any overflow */
    ymo_http_header_t *hdrs = malloc(sizeof(*hdrs)
                                     * (lim->max_header_count + 1));

    report("head", c->name, run_pcase_inner(c, hdrs + 1));
    free(hdrs);
}

/* Head cases too long for the table: the default limits, exactly at them
 * and one over. */
static void
run_generated_pcases(void)
{
    size_t big = 70000;
    char *s = malloc(big);
    char *name = malloc(128);
    size_t n, i;
    pcase_t c;

    /* request line of exactly 4094 bytes (and 4095) */
    for (i = 0; i < 2; i++) {
        memset(&c, 0, sizeof(c));
        n = (size_t)sprintf(s, "GET /");
        memset(s + n, 'a', 4094 - 14 + i);
        n += 4094 - 14 + i;
        n += (size_t)sprintf(s + n, " HTTP/1.1\r\nHost: x\r\n\r\n");
        c.name = i ? "default request line + 1" : "default request line";
        c.in = s;
        c.len = n;
        c.ret = i ? ERR : OK;
        c.status = i ? 414 : 0;
        run_pcase(&c);
    }
    /* one field line of 8190 bytes (and 8191) */
    for (i = 0; i < 2; i++) {
        memset(&c, 0, sizeof(c));
        n = (size_t)sprintf(s, "GET / HTTP/1.1\r\nHost: x\r\nX: ");
        memset(s + n, 'v', 8190 - 3 + i);
        n += 8190 - 3 + i;
        n += (size_t)sprintf(s + n, "\r\n\r\n");
        c.name = i ? "default field size + 1" : "default field size";
        c.in = s;
        c.len = n;
        c.ret = i ? ERR : OK;
        c.status = i ? 431 : 0;
        run_pcase(&c);
    }
    /* 100 fields (and 101) */
    for (i = 0; i < 2; i++) {
        size_t f;

        memset(&c, 0, sizeof(c));
        n = (size_t)sprintf(s, "GET / HTTP/1.1\r\nHost: x\r\n");
        for (f = 1; f < 100 + i; f++) {
            n += (size_t)sprintf(s + n, "X-%zu: %zu\r\n", f, f);
        }
        n += (size_t)sprintf(s + n, "\r\n");
        c.name = i ? "default field count + 1" : "default field count";
        c.in = s;
        c.len = n;
        c.ret = i ? ERR : OK;
        c.status = i ? 431 : 0;
        c.nh = i ? 0 : NH(100);
        run_pcase(&c);
    }
    /* a head of exactly 65536 bytes (and 65537) */
    for (i = 0; i < 2; i++) {
        size_t f;

        memset(&c, 0, sizeof(c));
        n = (size_t)sprintf(s, "GET / HTTP/1.1\r\nHost: x\r\n");
        for (f = 0; f < 9; f++) {
            /* 9 lines of 7000 bytes plus CRLF */
            n += (size_t)sprintf(s + n, "X-%zu: ", f);
            memset(s + n, 'v', 7000 - 5);
            n += 7000 - 5;
            n += (size_t)sprintf(s + n, "\r\n");
        }
        /* pad with one more line up to the limit, then the blank line */
        f = 65536 - n - 2 - 2 + i;
        n += (size_t)sprintf(s + n, "Y: ");
        memset(s + n, 'w', f - 3);
        n += f - 3;
        n += (size_t)sprintf(s + n, "\r\n\r\n");
        c.name = i ? "default head size + 1" : "default head size";
        c.in = s;
        c.len = n;
        c.ret = i ? ERR : OK;
        c.status = i ? 431 : 0;
        run_pcase(&c);
    }
    /* body size limit of a chunked request is not the head's business */
    memset(&c, 0, sizeof(c));
    n = (size_t)sprintf(s, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:"
                        " chunked\r\n\r\n");
    c.name = "chunked is not limited in the head";
    c.in = s;
    c.len = n;
    c.ret = OK;
    c.body = B_CHUNKED;
    c.limits = &lim_body1;
    run_pcase(&c);
    free(name);
    free(s);
}

/* ---- chunked cases ---- */

typedef struct {
    char *data;
    size_t len;
    size_t consumed;
    int done, status;
    uint64_t total;
} chres_t;

/* Feed one slice; appends data to res. NULL or an error message. */
static const char *
feed_slice(ymo_http_chunked_t *d, const char *buf, size_t len, chres_t *res)
{
    size_t off = 0;

    while (off < len && !d->done) {
        const char *data = (const char *)1;
        size_t data_len = 12345;
        ssize_t n = ymo_http_chunked_feed(d, buf + off, len - off, &data,
                                          &data_len);

        if (n < 0) {
            if (n != -1 || d->status == 0) {
                return "error without status";
            }
            res->status = d->status;
            return NULL;
        }
        if (n == 0) {
            if (!d->done) {
                return "returned 0 with input left";
            }
            break;
        }
        if ((size_t)n > len - off) {
            return "consumed more than given";
        }
        if (data_len) {
            if ((size_t)n != data_len || data != buf + off) {
                return "data span is not the input's start";
            }
            memcpy(res->data + res->len, data, data_len);
            res->len += data_len;
        }
        off += (size_t)n;
        res->consumed += (size_t)n;
    }
    res->done = d->done;
    return NULL;
}

/* Feed `in` in slices of the given sizes (cycled; 0 = all at once). */
static const char *
feed_chunked(const ccase_t *c, const size_t *sizes, size_t nsizes,
             chres_t *res)
{
    const ymo_http_limits_t *lim = c->limits ? c->limits : &lim_default;
    ymo_http_chunked_t d;
    size_t off = 0, s = 0;
    const char *err;

    memset(res, 0, sizeof(*res));
    res->data = malloc(c->len + 1);
    ymo_http_chunked_init(&d, lim);
    while (off < c->len && !d.done && !res->status) {
        size_t n = sizes[s++ % nsizes];

        if (n == 0 || n > c->len - off) {
            n = c->len - off;
        }
        if ((err = feed_slice(&d, place(c->in + off, n), n, res)) != NULL) {
            return err;
        }
        off += n;
    }
    res->total = d.total;
    if (res->status) {
        const char *data;
        size_t data_len;

        if (ymo_http_chunked_feed(&d, place("0", 1), 1, &data, &data_len)
            != -1 || d.status != res->status) {
            return "feed after an error did not fail again";
        }
    }
    else if (d.done) {
        /* after the end, nothing more is taken */
        const char *data;
        size_t data_len;

        if (ymo_http_chunked_feed(&d, place("x", 1), 1, &data, &data_len)
            != 0) {
            return "feed after done did not return 0";
        }
    }
    return NULL;
}

static const char *
check_chunked(const ccase_t *c, const chres_t *res)
{
    int got = res->status ? ERR : res->done ? DONE : MORE;

    if (got != c->ret) {
        return FAILF("got %s (status %d)", got == ERR ? "error" : got == DONE
                     ? "done" : "need more", res->status);
    }
    if (c->ret == ERR && res->status != c->status) {
        return FAILF("status %d, want %d", res->status, c->status);
    }
    if (res->len != c->data_len || memcmp(res->data, c->data, res->len)) {
        return FAILF("data [%.*s]", (int)res->len, res->data);
    }
    if (res->total != res->len) {
        return FAILF("total %" PRIu64 " for %zu data bytes", res->total,
                     res->len);
    }
    if (c->ret == DONE && res->consumed != (c->consumed ? c->consumed
                                                        : c->len)) {
        return FAILF("consumed %zu", res->consumed);
    }
    return NULL;
}

static void
run_ccase(const ccase_t *c)
{
    static const size_t whole[] = {0}, one[] = {1}, odd[] = {2, 3, 5, 7, 1};
    const size_t *plans[] = {whole, one, odd};
    const size_t nplan[] = {1, 1, 5};
    const char *plan_name[] = {"whole", "byte by byte", "in odd slices"};
    const char *err = NULL;
    size_t i;

    for (i = 0; i < 3 && err == NULL; i++) {
        chres_t res;

        err = feed_chunked(c, plans[i], nplan[i], &res);
        if (err == NULL) {
            err = check_chunked(c, &res);
        }
        if (err != NULL) {
            char msg[sizeof(errbuf) / 2];

            snprintf(msg, sizeof(msg), "%.200s", err);
            err = FAILF("%s: %s", plan_name[i], msg);
        }
        free(res.data);
    }
    report("chunked", c->name, err);
}

/* Size lines at the 4096-byte bound and one over. */
static void
run_generated_ccases(void)
{
    char *s = malloc(8192);
    size_t i, n;
    ccase_t c;

    for (i = 0; i < 2; i++) {
        memset(&c, 0, sizeof(c));
        n = (size_t)sprintf(s, "1;e=");
        memset(s + n, 'x', 4096 - 4 + i);
        n += 4096 - 4 + i;
        n += (size_t)sprintf(s + n, "\r\nz\r\n0\r\n\r\n");
        c.name = i ? "size line over 4096" : "size line of 4096";
        c.in = s;
        c.len = n;
        c.ret = i ? ERR : DONE;
        c.status = i ? 400 : 0;
        c.data = i ? "" : "z";
        c.data_len = i ? 0 : 1;
        run_ccase(&c);
    }
    free(s);
}

/* ---- helpers ---- */

static void
run_misc(void)
{
    static const struct {
        const char *in, *out;
    } pd[] = {
        {"/a%20b", "/a b"}, {"%41%4a%4A", "AJJ"}, {"%", "%"}, {"%4", "%4"},
        {"%zz%4g", "%zz%4g"}, {"a%2", "a%2"}, {"%%41", "%A"}, {"", ""},
        {"%00x", "\0x"}, {"%ff", "\xff"},
    };
    static const struct {
        int code;
        const char *reason;
    } rs[] = {
        {100, "Continue"}, {200, "OK"}, {400, "Bad Request"},
        {404, "Not Found"}, {408, "Request Timeout"},
        {413, "Content Too Large"}, {414, "URI Too Long"},
        {417, "Expectation Failed"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"}, {501, "Not Implemented"},
        {503, "Service Unavailable"}, {505, "HTTP Version Not Supported"},
        {299, "Unknown"}, {0, "Unknown"}, {-1, "Unknown"},
    };
    size_t i;
    char out[16];

    for (i = 0; i < sizeof(pd) / sizeof(pd[0]); i++) {
        size_t len = strlen(pd[i].in);
        size_t want = strcmp(pd[i].in, "%00x") ? strlen(pd[i].out) : 2;
        size_t n = ymo_http_percent_decode(place(pd[i].in, len), len, out);

        report("percent_decode", pd[i].in,
               n == want && memcmp(out, pd[i].out, n) == 0 ? NULL
               : FAILF("[%.*s]", (int)n, out));
    }
    {
        /* in place */
        char s[] = "%2Fx%2f";
        size_t n = ymo_http_percent_decode(s, 7, s);

        report("percent_decode", "in place", n == 3 && !memcmp(s, "/x/", 3)
               ? NULL : "wrong");
    }
    for (i = 0; i < sizeof(rs) / sizeof(rs[0]); i++) {
        const char *got = ymo_http_reason(rs[i].code);

        report("reason", rs[i].reason, strcmp(got, rs[i].reason) == 0 ? NULL
               : FAILF("%d: %s", rs[i].code, got));
    }
}

/* ---- benchmark ---- */

static const char bench_head[] =
    "GET /index.html?user=42&lang=en HTTP/1.1\r\n"
    "Host: www.example.com\r\n"
    "Connection: keep-alive\r\n"
    "Cache-Control: max-age=0\r\n"
    "sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", "
    "\"Not-A.Brand\";v=\"99\"\r\n"
    "sec-ch-ua-mobile: ?0\r\n"
    "sec-ch-ua-platform: \"Linux\"\r\n"
    "Upgrade-Insecure-Requests: 1\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, "
    "like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,"
    "image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;"
    "v=b3;q=0.7\r\n"
    "Sec-Fetch-Site: none\r\n"
    "Sec-Fetch-Mode: navigate\r\n"
    "Sec-Fetch-User: ?1\r\n"
    "Sec-Fetch-Dest: document\r\n"
    "Accept-Encoding: gzip, deflate, br, zstd\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "\r\n";

static const char bench_small[] =
    "GET /api/v1/items?id=17 HTTP/1.1\r\n"
    "Host: localhost:8000\r\n"
    "User-Agent: curl/8.5.0\r\n"
    "Accept: */*\r\n"
    "Accept-Encoding: gzip\r\n"
    "\r\n";

static double
bench_one(const char *head, size_t len, long iters)
{
    ymo_http_limits_t lim = YMO_HTTP_LIMITS_DEFAULT;
    ymo_http_header_t hdrs[100];
    ymo_http_request_t req;
    ymo_http_parser_t p;
    struct timespec t0, t1;
    long i, sum = 0;

    req.headers = hdrs;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < iters; i++) {
        ymo_http_parser_init(&p, &lim);
        sum += ymo_http_parse_request(&p, head, len, &req);
        /* keep the compiler from hoisting the call out of the loop */
        __asm__ __volatile__("" : : "g"(head) : "memory");
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (sum != (long)len * iters) {
        fprintf(stderr, "benchmark head did not parse\n");
        exit(1);
    }
    return ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec))
           / (double)iters;
}

static int
bench(void)
{
    long iters = 1000000;

    bench_one(bench_head, sizeof(bench_head) - 1, iters / 10);  /* warm */
    printf("browser GET head (%zu bytes): %.1f ns/parse\n",
           sizeof(bench_head) - 1,
           bench_one(bench_head, sizeof(bench_head) - 1, iters));
    printf("small GET head (%zu bytes): %.1f ns/parse\n",
           sizeof(bench_small) - 1,
           bench_one(bench_small, sizeof(bench_small) - 1, iters));
    return 0;
}

int
main(int argc, char **argv)
{
    size_t i;

    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        return bench();
    }
    guard_init(70000);
    for (i = 0; i < sizeof(pcases) / sizeof(pcases[0]); i++) {
        run_pcase(&pcases[i]);
    }
    run_generated_pcases();
    for (i = 0; i < sizeof(ccases) / sizeof(ccases[0]); i++) {
        run_ccase(&ccases[i]);
    }
    run_generated_ccases();
    run_misc();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
