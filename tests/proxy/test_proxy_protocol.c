/* test_proxy_protocol.c - table-driven tests of ext/proxy_protocol.c: each
 * input is parsed whole and at every prefix, always ending right before a
 * PROT_NONE guard page so that reading past the input crashes. A valid
 * header must be "incomplete" (-2) at every proper prefix and give the
 * same result with bytes after it; an invalid one must never be accepted
 * at any prefix. */
#include "proxy_protocol.h"

#include "../guard_page.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#define S(lit) lit, sizeof(lit) - 1
#define SIG "\r\n\r\n\0\r\nQUIT\n"

enum { OK = 1, PART, ERR };

#define X13 "xxxxxxxxxxxxx"
#define X91 X13 X13 X13 X13 X13 X13 X13

typedef struct {
    const char *name;
    const char *in;
    size_t len;
    int ret;                   /* OK, PART or ERR */
    size_t consumed;           /* with OK: 0 = the whole input */
    int family;                /* with OK */
    const char *src;           /* with OK and INET/INET6: numeric text */
    int src_port;
    const char *dst;
    int dst_port;
    const char *path;          /* with UNIX */
    size_t tlv_len;
} pcase_t;

static const pcase_t cases[] = {
    /* -- version 1 -- */
    {"v1 tcp4", S("PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"), OK, 0,
     YMO_PROXY_INET, "192.0.2.1", 56324, "198.51.100.2", 443},
    {"v1 tcp4 then http",
     S("PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\nGET / HTTP/1.1\r\n"), OK,
     sizeof("PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\n") - 1,
     YMO_PROXY_INET, "192.0.2.1", 1, "198.51.100.2", 2},
    {"v1 tcp6", S("PROXY TCP6 2001:db8::1 ::1 0 65535\r\n"), OK, 0,
     YMO_PROXY_INET6, "2001:db8::1", 0, "::1", 65535},
    {"v1 tcp6 longest",
     S("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
       "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"), OK, 0,
     YMO_PROXY_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
     "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535},
    {"v1 unknown", S("PROXY UNKNOWN\r\n"), OK, 0, YMO_PROXY_UNSPEC},
    {"v1 unknown with addresses",
     S("PROXY UNKNOWN ffff::1 ::1 1 2\r\n"), OK, 0, YMO_PROXY_UNSPEC},
    {"v1 partial", S("PROXY TCP4 192.0.2.1"), PART},
    {"v1 partial cr", S("PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r"), PART},
    {"v1 signature prefix", S("PROX"), PART},
    {"empty", S(""), PART},
    {"http", S("GET / HTTP/1.1\r\n\r\n"), ERR},
    {"v1 lowercase", S("proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n"), ERR},
    {"v1 bare lf", S("PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n"), ERR},
    {"v1 double space", S("PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n"),
     ERR},
    {"v1 trailing space", S("PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n"),
     ERR},
    {"v1 missing port", S("PROXY TCP4 192.0.2.1 198.51.100.2 1\r\n"), ERR},
    {"v1 extra field", S("PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n"),
     ERR},
    {"v1 port too big", S("PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n"),
     ERR},
    {"v1 port leading zero",
     S("PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n"), ERR},
    {"v1 port sign", S("PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n"), ERR},
    {"v1 v6 in tcp4", S("PROXY TCP4 ::1 ::1 1 2\r\n"), ERR},
    {"v1 v4 in tcp6", S("PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n"), ERR},
    {"v1 bad address", S("PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n"),
     ERR},
    {"v1 udp", S("PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n"), ERR},
    {"v1 no protocol", S("PROXY \r\n"), ERR},
    {"v1 unknownx", S("PROXY UNKNOWNX\r\n"), ERR},
    {"v1 nul", S("PROXY TCP4 192.0.2.1\0"), ERR},
    {"v1 cr inside", S("PROXY TCP4\r 192.0.2.1 198.51.100.2 1 2\r\n"), ERR},
    /* The longest header the spec allows is 107 bytes, CRLF included. */
    {"v1 too long",
     S("PROXY UNKNOWN " X91 "x\r\n"), ERR},
    {"v1 longest unknown", S("PROXY UNKNOWN " X91 "\r\n"), OK, 0,
     YMO_PROXY_UNSPEC},
    /* -- version 2 -- */
    {"v2 tcp4",
     S(SIG "\x21\x11\x00\x0c" "\xc0\x00\x02\x01" "\x0a\x00\x00\x01"
       "\x04\xd2" "\x00\x50"), OK, 0,
     YMO_PROXY_INET, "192.0.2.1", 1234, "10.0.0.1", 80},
    {"v2 tcp4 with tlvs then http",
     S(SIG "\x21\x11\x00\x17" "\xc0\x00\x02\x01" "\x0a\x00\x00\x01"
       "\x04\xd2" "\x00\x50" "\x04\x00\x02" "ab" "\x05\x00\x00"
       "\x20\x00\x00" "GET"), OK, 16 + 23,
     YMO_PROXY_INET, "192.0.2.1", 1234, "10.0.0.1", 80, NULL, 11},
    {"v2 tcp6",
     S(SIG "\x21\x21\x00\x24"
       "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
       "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
       "\xff\xff" "\x00\x00"), OK, 0,
     YMO_PROXY_INET6, "2001:db8::1", 65535, "::1", 0},
    {"v2 local", S(SIG "\x20\x00\x00\x00"), OK, 0, YMO_PROXY_UNSPEC},
    {"v2 local with junk", S(SIG "\x20\x11\x00\x03" "abc"), OK, 0,
     YMO_PROXY_UNSPEC},
    {"v2 unspec", S(SIG "\x21\x00\x00\x00"), OK, 0, YMO_PROXY_UNSPEC},
    {"v2 partial fixed", S(SIG "\x21\x11\x00"), PART},
    {"v2 partial body", S(SIG "\x21\x11\x00\x0c" "\xc0\x00\x02"), PART},
    {"v2 signature prefix", S("\r\n\r\n\0\r"), PART},
    {"v2 bad signature", S("\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x00"), ERR},
    {"v2 version 1", S(SIG "\x11\x11\x00\x0c"), ERR},
    {"v2 version 3 early", S(SIG "\x31"), ERR},
    {"v2 command 2", S(SIG "\x22\x11\x00\x0c"), ERR},
    {"v2 udp4",
     S(SIG "\x21\x12\x00\x0c" "\xc0\x00\x02\x01" "\x0a\x00\x00\x01"
       "\x04\xd2" "\x00\x50"), ERR},
    {"v2 udp6", S(SIG "\x21\x22\x00\x00"), ERR},
    {"v2 unknown family", S(SIG "\x21\x41\x00\x00"), ERR},
    {"v2 tcp4 short block", S(SIG "\x21\x11\x00\x0b" "\xc0\x00\x02\x01"
                              "\x0a\x00\x00\x01" "\x04\xd2" "\x00"), ERR},
    {"v2 tcp6 short block", S(SIG "\x21\x21\x00\x0c" "\xc0\x00\x02\x01"
                              "\x0a\x00\x00\x01" "\x04\xd2" "\x00\x50"),
     ERR},
    {"v2 tlv overruns",
     S(SIG "\x21\x11\x00\x10" "\xc0\x00\x02\x01" "\x0a\x00\x00\x01"
       "\x04\xd2" "\x00\x50" "\x04\x00\x02" "a"), ERR},
    {"v2 tlv header cut",
     S(SIG "\x21\x11\x00\x0e" "\xc0\x00\x02\x01" "\x0a\x00\x00\x01"
       "\x04\xd2" "\x00\x50" "\x04\x00"), ERR},
};

static int failed, passed;

static void
fail(const pcase_t *c, const char *what, size_t at)
{
    printf("FAIL %s (prefix %zu): %s\n", c->name, at, what);
    failed++;
}

static int
addr_is(int family, const uint8_t *a, const char *text)
{
    char buf[64];
    inet_ntop(family == YMO_PROXY_INET ? AF_INET : AF_INET6, a, buf,
              sizeof(buf));
    return strcmp(buf, text) == 0;
}

static void
run_case(const pcase_t *c)
{
    int before = failed;
    ymo_proxy_header_t h;
    const char *in = place(c->in, c->len);
    int n = ymo_proxy_parse(in, c->len, &h);
    size_t want = c->consumed ? c->consumed : c->len;
    switch (c->ret) {
    case OK:
        if (n != (int)want) {
            char msg[64];
            snprintf(msg, sizeof(msg), "returned %d, want %zu", n, want);
            fail(c, msg, c->len);
            return;
        }
        if (h.family != c->family) {
            fail(c, "family", c->len);
        }
        if ((c->family == YMO_PROXY_INET || c->family == YMO_PROXY_INET6) &&
            (!addr_is(c->family, h.src_addr, c->src) ||
             !addr_is(c->family, h.dst_addr, c->dst) ||
             h.src_port != c->src_port || h.dst_port != c->dst_port)) {
            fail(c, "addresses or ports", c->len);
        }
        if (c->tlv_len != h.tlv_len && h.version == 2) {
            fail(c, "tlv_len", c->len);
        }
        if (ymo_proxy_signature(in, c->len) != 1) {
            fail(c, "signature", c->len);
        }
        /* Every proper prefix of the header is incomplete. */
        for (size_t k = 0; k < want; k++) {
            int r = ymo_proxy_parse(place(c->in, k), k, &h);
            if (r != -2) {
                fail(c, "a prefix is not incomplete", k);
                break;
            }
        }
        break;
    case PART:
        if (n != -2) {
            fail(c, "not incomplete", c->len);
        }
        break;
    case ERR:
        if (n != -1) {
            fail(c, "not an error", c->len);
        }
        /* No prefix may be accepted. */
        for (size_t k = 0; k < c->len; k++) {
            if (ymo_proxy_parse(place(c->in, k), k, &h) >= 0) {
                fail(c, "a prefix is accepted", k);
                break;
            }
        }
        break;
    }
    if (failed == before) {
        passed++;
    }
}

/* v2 with a unix address block: built here (216 bytes of paths). */
static void
unix_case(void)
{
    static char buf[16 + 216 + 4];
    memcpy(buf, SIG, 12);
    buf[12] = 0x21;
    buf[13] = 0x31;
    buf[14] = 0;
    buf[15] = (char)(216 + 4);
    memset(buf + 16, 0, 216);
    memcpy(buf + 16, "/run/client.sock", 16);
    memcpy(buf + 16 + 108, "/run/yimmo.sock", 15);
    memcpy(buf + 16 + 216, "\x04\x00\x01x", 4);
    pcase_t c = {"v2 unix", buf, sizeof(buf), OK, 0, YMO_PROXY_UNIX};
    c.tlv_len = 4;
    run_case(&c);
    ymo_proxy_header_t h;
    const char *in = place(buf, sizeof(buf));
    if (ymo_proxy_parse(in, sizeof(buf), &h) != (int)sizeof(buf) ||
        h.src_path_len != 16 || memcmp(h.src_path, "/run/client.sock", 16)) {
        fail(&c, "unix path", sizeof(buf));
    }
    /* A path filling all 108 bytes has no NUL: its length is 108. */
    memset(buf + 16, 'p', 108);
    in = place(buf, sizeof(buf));
    if (ymo_proxy_parse(in, sizeof(buf), &h) != (int)sizeof(buf) ||
        h.src_path_len != 108) {
        fail(&c, "unix path without NUL", sizeof(buf));
    }
    /* A short unix block is an error. */
    buf[15] = (char)215;
    if (ymo_proxy_parse(place(buf, 16 + 215), 16 + 215, &h) != -1) {
        fail(&c, "short unix block", 16 + 215);
    }
}

/* The signature check that refuses untrusted peers. */
static void
signature_cases(void)
{
    static const struct {
        const char *in;
        size_t len;
        int want;
    } sigs[] = {
        {S("PROXY "), 1}, {S("PROXY TCP4"), 1}, {S("PROX"), -2},
        {S(""), -2}, {S("P"), -2}, {S("POST / HTTP/1.1\r\n"), 0},
        {S("PROPFIND / HTTP/1.1\r\n"), 0}, {S("PRI * HTTP/2.0\r\n"), 0},
        {S("PROXY"), -2}, {S("PROXYX"), 0}, {S(SIG), 1},
        {S("\r\n\r\n\0"), -2}, {S("\r\n\r\n\1"), 0}, {S("\r\n"), -2},
        {S("GET"), 0},
    };
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        const char *in = place(sigs[i].in, sigs[i].len);
        int r = ymo_proxy_signature(in, sigs[i].len);
        if (r != sigs[i].want) {
            printf("FAIL signature case %zu: %d, want %d\n", i, r,
                   sigs[i].want);
            failed++;
        }
        else {
            passed++;
        }
    }
}

int
main(void)
{
    guard_init(65536 + 32);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_case(&cases[i]);
    }
    unix_case();
    signature_cases();
    /* The longest version 2 header: 65535 bytes of TLVs after LOCAL. */
    static char big[16 + 65535];
    memcpy(big, SIG, 12);
    big[12] = 0x20;
    big[13] = 0x00;
    big[14] = (char)0xff;
    big[15] = (char)0xff;
    ymo_proxy_header_t h;
    if (ymo_proxy_parse(place(big, sizeof(big)), sizeof(big), &h) !=
            (int)sizeof(big) ||
        ymo_proxy_parse(place(big, sizeof(big) - 1), sizeof(big) - 1,
                        &h) != -2) {
        printf("FAIL longest v2\n");
        failed++;
    }
    else {
        passed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
