/* fuzz_proxy.c - libFuzzer target for ext/proxy_protocol.c and
 * ext/forwarded.c (run it with fuzz/run.sh). Each input is parsed as a
 * PROXY header whole and at every prefix (a prefix of a valid header must
 * be "incomplete", never an error or a different length; a header must
 * not read past its input, caught by ASan on an exact-size copy), and as
 * the value of each forwarding field, checking what comes out. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "forwarded.h"
#include "proxy_protocol.h"
#include "trust.h"

static void
check_proxy(const char *in, size_t len)
{
    ymo_proxy_header_t h;
    int n = ymo_proxy_parse(in, len, &h);
    CHECK(n >= -2 && n != 0 && (n < 0 || (size_t)n <= len));
    int sig = ymo_proxy_signature(in, len);
    if (n > 0) {
        CHECK(sig == 1);
        CHECK(h.version == 1 || h.version == 2);
        CHECK(h.family >= YMO_PROXY_UNSPEC && h.family <= YMO_PROXY_UNIX);
        if (h.version == 1) {
            CHECK((size_t)n <= YMO_PROXY_V1_MAX);
            CHECK(in[n - 2] == '\r' && in[n - 1] == '\n');
        }
        if (h.family == YMO_PROXY_UNIX) {
            CHECK(h.src_path >= in && h.src_path_len <= 108 &&
                  h.src_path + h.src_path_len <= in + n);
        }
        if (h.tlv != NULL) {
            CHECK((const char *)h.tlv >= in &&
                  (const char *)h.tlv + h.tlv_len == in + n);
        }
        /* Every proper prefix is incomplete; the header is the same with
         * anything after it. */
        for (size_t k = 0; k < (size_t)n; k++) {
            char *p = dup_exact((const uint8_t *)in, k);
            ymo_proxy_header_t h2;
            int r = ymo_proxy_parse(p, k, &h2);
            if (r != -2) {
                fprintf(stderr, "prefix %zu of %d gives %d\n", k, n, r);
            }
            CHECK(r == -2);
            free(p);
        }
    }
    if (n == -2) {
        CHECK(sig != 0);
    }
    if (sig == 0) {
        CHECK(n == -1);
    }
}

static void
check_forwarded(const char *in, size_t len, const ymo_trust_t *t)
{
    ymo_forwarded_t fw;
    uint8_t a[16];
    if (ymo_forwarded_parse(in, len, t, &fw) == 0) {
        CHECK(fw.port >= -1 && fw.port <= 65535);
        CHECK(fw.host_len < sizeof(fw.host));
        CHECK(fw.proto >= YMO_PROTO_NONE && fw.proto <= YMO_PROTO_HTTPS);
        if (fw.has_addr) {
            CHECK(ymo_trust_parse_ip(fw.addr, strlen(fw.addr), a) != 0);
        }
    }
    if (ymo_forwarded_for(in, len, t, &fw) == 0) {
        CHECK(fw.has_addr);
        CHECK(ymo_trust_parse_ip(fw.addr, strlen(fw.addr), a) != 0);
        CHECK(fw.port >= -1 && fw.port <= 65535);
    }
    int proto = ymo_forwarded_proto(in, len);
    CHECK(proto >= YMO_PROTO_NONE && proto <= YMO_PROTO_HTTPS);
    if (ymo_forwarded_host(in, len, &fw) == 0) {
        size_t name_len, port_off, port_len;
        CHECK(fw.host_len > 0 && fw.host_len <= len);
        ymo_forwarded_split_host(fw.host, fw.host_len, &name_len, &port_off,
                                 &port_len);
        CHECK(name_len > 0 && name_len <= fw.host_len);
        CHECK(port_off == 0 || port_off + port_len == fw.host_len);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ymo_trust_t trust;
    static int ready;
    if (!ready) {
        static const char *const nets[] = {"127.0.0.1", "::1",
                                           "10.0.0.0/8", "2001:db8::/33"};
        for (size_t i = 0; i < 4; i++) {
            CHECK(ymo_trust_add(&trust, nets[i], strlen(nets[i])) == 0);
        }
        ready = 1;
    }
    char *in = dup_exact(data, size);
    check_proxy(in, size);
    check_forwarded(in, size, &trust);
    /* The table parser too: text that is accepted must match itself. */
    ymo_trust_t t = {0, 0, NULL};
    if (size < 64 && ymo_trust_add(&t, in, size) == 0 && !t.any) {
        CHECK(t.n == 1);
        CHECK(ymo_trust_match(&t, t.nets[0].family, t.nets[0].addr));
    }
    ymo_trust_free(&t);
    free(in);
    return 0;
}
