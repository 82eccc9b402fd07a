/* fuzz_parser.c - libFuzzer target for ext/http_parser.c (run it with
 * fuzz/run.sh): each input is parsed as a request head and what follows it
 * (or the whole input) decoded as a chunked body, each whole and in
 * data-derived slices, aborting when the results differ or point outside
 * the input.                                                              */

#include "fuzz_check.h"
#include "http_parser.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Limits picked per input, small ones so that every limit is reachable. */
static const ymo_http_limits_t limit_sets[] = {
    YMO_HTTP_LIMITS_DEFAULT,
    {64, 4, 64, 256, 100},
    {16, 2, 16, 48, 5},
};
#define MAX_HEADERS 100

static uint64_t
fnv1a(const uint8_t *d, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    size_t i;

    for (i = 0; i < n; i++) {
        h = (h ^ d[i]) * 1099511628211ULL;
    }
    return h;
}

static void
check_inside(const char *p, size_t n, const char *buf, size_t len)
{
    CHECK(p != NULL);
    CHECK(p >= buf && n <= len && (size_t)(p - buf) <= len - n);
}

#define OFF(r, buf, f) ((r)->f ? (long)((r)->f - (buf)) : -1L)

/* Both parses of the same bytes must give the same offsets. */
static void
same_request(const ymo_http_request_t *a, const char *abuf,
             const ymo_http_request_t *b, const char *bbuf)
{
    size_t i;

    CHECK(OFF(a, abuf, method) == OFF(b, bbuf, method));
    CHECK(a->method_len == b->method_len);
    CHECK(OFF(a, abuf, target) == OFF(b, bbuf, target));
    CHECK(a->target_len == b->target_len);
    CHECK(OFF(a, abuf, path) == OFF(b, bbuf, path));
    CHECK(a->path_len == b->path_len);
    CHECK(OFF(a, abuf, query) == OFF(b, bbuf, query));
    CHECK(a->query_len == b->query_len);
    CHECK(OFF(a, abuf, host) == OFF(b, bbuf, host));
    CHECK(a->host_len == b->host_len);
    CHECK(a->minor_version == b->minor_version);
    CHECK(a->num_headers == b->num_headers);
    CHECK(a->body == b->body);
    CHECK(a->content_length == b->content_length);
    CHECK(a->keep_alive == b->keep_alive);
    CHECK(a->expect_continue == b->expect_continue);
    for (i = 0; i < a->num_headers; i++) {
        CHECK(a->headers[i].name - abuf == b->headers[i].name - bbuf);
        CHECK(a->headers[i].name_len == b->headers[i].name_len);
        CHECK(a->headers[i].value - abuf == b->headers[i].value - bbuf);
        CHECK(a->headers[i].value_len == b->headers[i].value_len);
    }
}

/* A complete head's results all lie inside it and make sense. */
static void
check_request(const ymo_http_request_t *r, const char *buf, size_t head,
              const ymo_http_limits_t *lim)
{
    size_t i;
    char *decoded;

    check_inside(r->method, r->method_len, buf, head);
    check_inside(r->target, r->target_len, buf, head);
    check_inside(r->path, r->path_len, buf, head);
    check_inside(r->query, r->query_len, buf, head);
    if (r->host) {
        check_inside(r->host, r->host_len, buf, head);
    }
    CHECK(r->method_len > 0 && r->target_len > 0 && r->path_len > 0);
    CHECK(r->minor_version == 0 || r->minor_version == 1);
    CHECK(r->minor_version == 0 || r->host != NULL);
    CHECK(r->num_headers <= lim->max_header_count);
    CHECK(r->body == YMO_HTTP_BODY_NONE || r->body == YMO_HTTP_BODY_LENGTH
          || r->body == YMO_HTTP_BODY_CHUNKED);
    CHECK(r->body == YMO_HTTP_BODY_LENGTH ? r->content_length > 0
          : r->content_length == 0);
    CHECK(!lim->max_body_size || r->content_length <= lim->max_body_size);
    for (i = 0; i < r->num_headers; i++) {
        check_inside(r->headers[i].name, r->headers[i].name_len, buf, head);
        check_inside(r->headers[i].value, r->headers[i].value_len, buf,
                     head);
        CHECK(r->headers[i].name_len > 0);
    }
    decoded = malloc(r->path_len);
    CHECK(ymo_http_percent_decode(r->path, r->path_len, decoded)
          <= r->path_len);
    free(decoded);
}

/* A prefix of k bytes gives -2 or what the whole gave. */
static void
check_prefix(size_t k, int r, int st, int wr, int wst)
{
    if (wr > 0) {
        CHECK((size_t)wr > k ? r == -2 : r == wr);
    }
    else {
        CHECK(r == -2 || (r == wr && st == wst));
    }
}

static int
fuzz_head(const uint8_t *data, size_t size, uint64_t h,
          const ymo_http_limits_t *lim)
{
    static ymo_http_header_t hw[MAX_HEADERS], hi[MAX_HEADERS];
    ymo_http_request_t whole, inc;
    ymo_http_parser_t p;
    char *buf = dup_exact(data, size), *part = NULL;
    size_t cuts[3];
    int wr, wst, r = 0, i;

    memset(&whole, 0, sizeof(whole));
    whole.headers = hw;
    ymo_http_parser_init(&p, lim);
    wr = ymo_http_parse_request(&p, buf, size, &whole);
    wst = p.status;
    CHECK(wr > 0 || wr == -1 || wr == -2);
    if (wr > 0) {
        CHECK((size_t)wr <= size && (size_t)wr <= lim->max_head_size);
        check_request(&whole, buf, (size_t)wr, lim);
    }
    else if (wr == -1) {
        CHECK(wst == 400 || wst == 413 || wst == 414 || wst == 417
              || wst == 431 || wst == 501 || wst == 505);
    }

    /* the same parser fed three growing prefixes */
    cuts[0] = size ? (size_t)(h % (size + 1)) : 0;
    cuts[1] = cuts[0] + (size_t)((h >> 20) % (size - cuts[0] + 1));
    cuts[2] = size;
    memset(&inc, 0, sizeof(inc));
    inc.headers = hi;
    ymo_http_parser_init(&p, lim);
    for (i = 0; i < 3; i++) {
        free(part);
        part = dup_exact(data, cuts[i]);
        r = ymo_http_parse_request(&p, part, cuts[i], &inc);
        check_prefix(cuts[i], r, p.status, wr, wst);
    }
    CHECK(r == wr && (r != -1 || p.status == wst));
    if (r > 0) {
        same_request(&whole, buf, &inc, part);
    }
    /* short inputs: also every prefix in turn, one byte more each time */
    if (size <= 128) {
        ymo_http_parser_init(&p, lim);
        for (i = 0; (size_t)i <= size; i++) {
            free(part);
            part = dup_exact(data, (size_t)i);
            r = ymo_http_parse_request(&p, part, (size_t)i, &inc);
            check_prefix((size_t)i, r, p.status, wr, wst);
            if (r != -2) {
                break;
            }
        }
        if (r > 0) {
            same_request(&whole, buf, &inc, part);
        }
    }
    /* and a fresh parser on the first prefix alone */
    free(part);
    part = dup_exact(data, cuts[0]);
    ymo_http_parser_init(&p, lim);
    r = ymo_http_parse_request(&p, part, cuts[0], &inc);
    check_prefix(cuts[0], r, p.status, wr, wst);
    free(part);
    free(buf);
    return wr;
}

typedef struct {
    char *data;
    size_t len, consumed;
    int done, status;
    uint64_t total;
} body_t;

/* Decode in[0, n) in slices ending at the given cuts (the last is n). */
static void
decode(const uint8_t *in, size_t n, const size_t *cuts, int ncuts,
       const ymo_http_limits_t *lim, body_t *out)
{
    ymo_http_chunked_t d;
    size_t off = 0;
    int c;

    memset(out, 0, sizeof(*out));
    out->data = malloc(n ? n : 1);
    ymo_http_chunked_init(&d, lim);
    for (c = 0; c < ncuts && !d.done && !out->status; c++) {
        size_t slen = cuts[c] - off, soff = 0;
        char *slice = dup_exact(in + off, slen);

        while (soff < slen && !d.done) {
            const char *data = NULL;
            size_t data_len = 0;
            ssize_t r = ymo_http_chunked_feed(&d, slice + soff, slen - soff,
                                              &data, &data_len);

            if (r < 0) {
                CHECK(r == -1);
                CHECK(d.status == 400 || d.status == 413
                      || d.status == 431);
                out->status = d.status;
                break;
            }
            CHECK(r > 0 || d.done);
            if (r == 0) {
                break;
            }
            CHECK((size_t)r <= slen - soff);
            if (data_len) {
                CHECK((size_t)r == data_len && data == slice + soff);
                memcpy(out->data + out->len, data, data_len);
                out->len += data_len;
            }
            soff += (size_t)r;
            out->consumed += (size_t)r;
        }
        free(slice);
        off = cuts[c];
    }
    out->done = d.done;
    out->total = d.total;
    CHECK(out->total == out->len);
    CHECK(!lim->max_body_size || out->total <= lim->max_body_size);
}

static void
fuzz_chunked(const uint8_t *in, size_t n, uint64_t h,
             const ymo_http_limits_t *lim)
{
    body_t whole, sliced;
    size_t all[1] = {n}, cuts[3];

    decode(in, n, all, 1, lim, &whole);
    cuts[0] = n ? (size_t)((h >> 32) % (n + 1)) : 0;
    cuts[1] = cuts[0] + (size_t)((h >> 44) % (n - cuts[0] + 1));
    cuts[2] = n;
    decode(in, n, cuts, 3, lim, &sliced);
    CHECK(whole.done == sliced.done && whole.status == sliced.status);
    CHECK(whole.len == sliced.len && whole.total == sliced.total);
    CHECK(whole.len == 0 || memcmp(whole.data, sliced.data, whole.len) == 0);
    CHECK(!whole.done || whole.consumed == sliced.consumed);
    free(whole.data);
    free(sliced.data);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t h = fnv1a(data, size);
    const ymo_http_limits_t *lim = &limit_sets[h % 3];
    int head = fuzz_head(data, size, h, lim);

    if (head > 0) {
        fuzz_chunked(data + head, size - (size_t)head, h, lim);
    }
    else {
        fuzz_chunked(data, size, h, lim);
    }
    return 0;
}
