/* test_forwarded.c - table-driven tests of ext/forwarded.c's Forwarded
 * parser and ext/trust.c's network table. Each Forwarded value ends right
 * before a PROT_NONE guard page, so that reading past it crashes; a value
 * that is malformed must leave its output cleared (forwarded.h), whatever
 * part of it was read before the fault was found. */
#include "forwarded.h"
#include "trust.h"

#include "../guard_page.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#define X50 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
#define X300 X50 X50 X50 X50 X50 X50

/* Trusted: 127.0.0.1 and 10.0.0.0/8. */
typedef struct {
    const char *name;
    const char *in;
    int ret;                   /* 0 or -1 */
    const char *addr;          /* with 0: NULL when no address */
    int port;
    int proto;
    const char *host;          /* with 0: NULL when none */
} fcase_t;

static const fcase_t fcases[] = {
    {"plain", "for=192.0.2.60;proto=https;host=a.example", 0, "192.0.2.60",
     -1, YMO_PROTO_HTTPS, "a.example"},
    {"trusted hop walked", "for=192.0.2.1, for=10.1.1.1", 0, "192.0.2.1",
     -1, YMO_PROTO_NONE, NULL},
    {"hidden", "for=_hidden;proto=http", 0, NULL, -1, YMO_PROTO_HTTP, NULL},
    {"trailing comma", "for=192.0.2.7,", 0, "192.0.2.7", -1,
     YMO_PROTO_NONE, NULL},
    {"quoted comma", "for=\"[2001:db8::1]:80\";host=\"h,x\", for=1.2.3.4",
     0, "1.2.3.4", -1, YMO_PROTO_NONE, NULL},
    {"ends in a quote", "for=\"[2001:db8::1]:4711\"", 0, "2001:db8::1",
     4711, YMO_PROTO_NONE, NULL},
    /* Review D1: the address was set before proto= was found too long. */
    {"long proto after for", "for=203.0.113.66;proto=\"" X300 "\"", -1},
    {"long proto, host too",
     "host=h.example;proto=\"" X300 "\";for=203.0.113.66", -1},
    {"long escaped proto", "for=203.0.113.66;proto=\"\\x" X300 "\"", -1},
    {"long for", "for=\"" X300 "\";proto=https", -1},
    {"bad for", "for=999.1.1.1;proto=https;host=h", -1},
    {"unterminated", "for=1.2.3.4;proto=\"https", -1},
    {"empty", "", -1},
    {"only commas", ",,", -1},
};

typedef struct {
    const char *net;           /* NULL: end of a group */
    int ok;                    /* ymo_trust_add accepts it */
} tnet_t;

typedef struct {
    const char *net;
    const char *peer;          /* numeric, as ymo_trust_parse_ip reads */
    int match;
} tcase_t;

static const tnet_t tnets[] = {
    {"10.0.0.0/8", 1},
    {"::ffff:0:0/96", 1},      /* review D3: refused before */
    {"::ffff:10.0.0.0/104", 1},
    {"::ffff:127.0.0.1/128", 1},
    {"::ffff:127.0.0.1", 1},
    {"::ffff:0:0/95", 0},
    {"::ffff:0:0/0", 0},
    {"::ffff:127.0.0.1/129", 0},
    {"10.0.0.0/33", 0},
    {"::/0", 1},
    {"fd00::/8", 1},
    {"*", 1},
    {"1.2.3.4/", 0},
    {"1.2.3.4/0032", 0},
};

static const tcase_t tcases[] = {
    {"::ffff:0:0/96", "203.0.113.9", 1},
    {"::ffff:0:0/96", "::ffff:203.0.113.9", 1},
    {"::ffff:0:0/96", "2001:db8::1", 0},
    {"::ffff:10.0.0.0/104", "10.200.0.1", 1},
    {"::ffff:10.0.0.0/104", "11.0.0.1", 0},
    {"::ffff:127.0.0.1/128", "127.0.0.1", 1},
    {"::ffff:127.0.0.1/128", "127.0.0.2", 0},
    {"::ffff:127.0.0.1", "127.0.0.1", 1},
    {"::ffff:127.0.0.0/120", "127.0.0.255", 1},
    {"::ffff:127.0.0.0/120", "127.0.1.0", 0},
    {"::/0", "2001:db8::1", 1},
};

static int failed, passed;

static void
fail(const char *name, const char *what)
{
    printf("FAIL %s: %s\n", name, what);
    failed++;
}

static void
run_fcase(const ymo_trust_t *t, const fcase_t *c)
{
    int before = failed;
    size_t len = strlen(c->in);
    ymo_forwarded_t out;
    memset(&out, 0xa5, sizeof(out));
    int r = ymo_forwarded_parse(place(c->in, len), len, t, &out);
    if (r != c->ret) {
        fail(c->name, "return value");
        return;
    }
    if (r < 0) {
        if (out.has_addr != 0 || out.port != -1 ||
            out.proto != YMO_PROTO_NONE || out.host_len != 0) {
            fail(c->name, "out not cleared on -1");
        }
    }
    else {
        if ((c->addr != NULL) != (out.has_addr != 0) ||
            (c->addr != NULL && strcmp(c->addr, out.addr) != 0)) {
            fail(c->name, "address");
        }
        if (out.port != c->port) {
            fail(c->name, "port");
        }
        if (out.proto != c->proto) {
            fail(c->name, "proto");
        }
        if ((c->host != NULL) != (out.host_len != 0) ||
            (c->host != NULL && (out.host_len != strlen(c->host) ||
                                 memcmp(out.host, c->host,
                                        out.host_len) != 0))) {
            fail(c->name, "host");
        }
    }
    if (failed == before) {
        passed++;
    }
}

static void
trust_cases(void)
{
    for (size_t i = 0; i < sizeof(tnets) / sizeof(tnets[0]); i++) {
        ymo_trust_t t = {0, 0, NULL};
        int r = ymo_trust_add(&t, tnets[i].net, strlen(tnets[i].net));
        if ((r == 0) != tnets[i].ok) {
            fail(tnets[i].net, tnets[i].ok ? "refused" : "accepted");
        }
        else {
            passed++;
        }
        ymo_trust_free(&t);
    }
    for (size_t i = 0; i < sizeof(tcases) / sizeof(tcases[0]); i++) {
        const tcase_t *c = &tcases[i];
        ymo_trust_t t = {0, 0, NULL};
        uint8_t a[16];
        int family = ymo_trust_parse_ip(c->peer, strlen(c->peer), a);
        if (ymo_trust_add(&t, c->net, strlen(c->net)) != 0 || family == 0) {
            fail(c->net, "setup");
        }
        else if (ymo_trust_match(&t, family, a) != c->match) {
            char msg[80];
            snprintf(msg, sizeof(msg), "%s %s", c->peer,
                     c->match ? "not matched" : "matched");
            fail(c->net, msg);
        }
        else {
            passed++;
        }
        ymo_trust_free(&t);
    }
}

int
main(void)
{
    guard_init(4096);
    ymo_trust_t t = {0, 0, NULL};
    if (ymo_trust_add(&t, "127.0.0.1", 9) != 0 ||
        ymo_trust_add(&t, "10.0.0.0/8", 10) != 0) {
        printf("FAIL trust setup\n");
        return 1;
    }
    for (size_t i = 0; i < sizeof(fcases) / sizeof(fcases[0]); i++) {
        run_fcase(&t, &fcases[i]);
    }
    ymo_trust_free(&t);
    trust_cases();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
