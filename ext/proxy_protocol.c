/* proxy_protocol.c - the PROXY protocol header parser (see
 * proxy_protocol.h). Strict, as the specification asks of a receiver:
 * anything that is not exactly a header is an error, and the caller
 * closes the connection. */
#include "proxy_protocol.h"

#include <arpa/inet.h>
#include <string.h>

static const char v1_sig[] = "PROXY ";
#define V1_SIG_LEN (sizeof(v1_sig) - 1)
static const char v2_sig[12] = "\r\n\r\n\0\r\nQUIT\n";
#define V2_SIG_LEN sizeof(v2_sig)

/* Version 2 address block sizes. */
#define V2_INET_LEN 12
#define V2_INET6_LEN 36
#define V2_UNIX_LEN 216
#define V2_UNIX_PATH 108

int
ymo_proxy_signature(const char *buf, size_t len)
{
    size_t n1 = len < V1_SIG_LEN ? len : V1_SIG_LEN;
    size_t n2 = len < V2_SIG_LEN ? len : V2_SIG_LEN;
    if (memcmp(buf, v1_sig, n1) == 0) {
        return n1 == V1_SIG_LEN ? 1 : -2;
    }
    if (memcmp(buf, v2_sig, n2) == 0) {
        return n2 == V2_SIG_LEN ? 1 : -2;
    }
    return 0;
}

/* A decimal port: 1 to 5 digits, no leading zero (other than "0" itself),
 * at most 65535. Returns 0 or -1. */
static int
parse_port(const char *p, size_t n, uint16_t *port)
{
    if (n == 0 || n > 5 || (n > 1 && p[0] == '0')) {
        return -1;
    }
    unsigned long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }
        v = v * 10 + (unsigned long)(p[i] - '0');
    }
    if (v > 65535) {
        return -1;
    }
    *port = (uint16_t)v;
    return 0;
}

/* A numeric address of family af (AF_INET or AF_INET6) in p[0..n). */
static int
parse_addr(int af, const char *p, size_t n, uint8_t *out)
{
    char tmp[48];              /* INET6_ADDRSTRLEN is 46 */
    if (n == 0 || n >= sizeof(tmp)) {
        return -1;
    }
    memcpy(tmp, p, n);
    tmp[n] = '\0';
    return inet_pton(af, tmp, out) == 1 ? 0 : -1;
}

/* "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" or "PROXY UNKNOWN ...\r\n";
 * buf starts with "PROXY ". */
static int
parse_v1(const char *buf, size_t len, ymo_proxy_header_t *h)
{
    size_t max = len < YMO_PROXY_V1_MAX ? len : YMO_PROXY_V1_MAX;
    const char *lf = memchr(buf, '\n', max);
    size_t line = lf != NULL ? (size_t)(lf - buf) : max;
    /* Printable ASCII up to the CR: anything else cannot be a header, so
     * it fails at once rather than at the timeout. */
    for (size_t i = V1_SIG_LEN; i < line; i++) {
        unsigned char ch = (unsigned char)buf[i];
        if ((ch < 0x20 || ch > 0x7e) &&
            !(ch == '\r' && (i + 1 == line || i + 1 == len))) {
            return -1;
        }
    }
    if (lf == NULL) {
        return len < YMO_PROXY_V1_MAX ? -2 : -1;
    }
    if (line < V1_SIG_LEN + 1 || buf[line - 1] != '\r') {
        return -1;
    }
    size_t consumed = line + 1;
    const char *p = buf + V1_SIG_LEN, *end = buf + line - 1;
    memset(h, 0, sizeof(*h));
    h->version = 1;
    if ((size_t)(end - p) >= 7 && memcmp(p, "UNKNOWN", 7) == 0 &&
        (end - p == 7 || p[7] == ' ')) {
        /* The proxy does not know (or say) the addresses: what follows up
         * to the CRLF is to be ignored. */
        h->family = YMO_PROXY_UNSPEC;
        return (int)consumed;
    }
    /* Exactly five fields after "PROXY ", single spaces between. */
    const char *field[5];
    size_t flen[5];
    for (size_t i = 0; i < 5; i++) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        if ((sp == NULL) != (i == 4)) {
            return -1;
        }
        const char *stop = sp != NULL ? sp : end;
        field[i] = p;
        flen[i] = (size_t)(stop - p);
        p = stop + 1;
    }
    int af;
    if (flen[0] == 4 && memcmp(field[0], "TCP4", 4) == 0) {
        af = AF_INET;
        h->family = YMO_PROXY_INET;
    }
    else if (flen[0] == 4 && memcmp(field[0], "TCP6", 4) == 0) {
        af = AF_INET6;
        h->family = YMO_PROXY_INET6;
    }
    else {
        return -1;
    }
    if (parse_addr(af, field[1], flen[1], h->src_addr) < 0 ||
        parse_addr(af, field[2], flen[2], h->dst_addr) < 0 ||
        parse_port(field[3], flen[3], &h->src_port) < 0 ||
        parse_port(field[4], flen[4], &h->dst_port) < 0) {
        return -1;
    }
    return (int)consumed;
}

static uint16_t
get16(const unsigned char *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

/* The binary header; buf starts with the 12-byte signature. */
static int
parse_v2(const char *buf, size_t len, ymo_proxy_header_t *h)
{
    const unsigned char *u = (const unsigned char *)buf;
    if (len < YMO_PROXY_V2_FIXED) {
        /* Reject a bad version or command as soon as it is in. */
        if (len > 12 && (u[12] >> 4 != 2 || (u[12] & 0xf) > 1)) {
            return -1;
        }
        return -2;
    }
    int ver = u[12] >> 4, cmd = u[12] & 0xf, fam = u[13];
    size_t body = get16(u + 14);
    if (ver != 2 || cmd > 1) {
        return -1;
    }
    if (len < YMO_PROXY_V2_FIXED + body) {
        return -2;
    }
    const unsigned char *a = u + YMO_PROXY_V2_FIXED;
    memset(h, 0, sizeof(*h));
    h->version = 2;
    size_t need = 0;
    if (cmd == 0) {
        /* LOCAL: the proxy's own connection (a health check); whatever
         * the block holds is to be skipped. */
        h->family = YMO_PROXY_UNSPEC;
        return (int)(YMO_PROXY_V2_FIXED + body);
    }
    switch (fam) {
    case 0x00:                 /* UNSPEC: use the real addresses */
        h->family = YMO_PROXY_UNSPEC;
        return (int)(YMO_PROXY_V2_FIXED + body);
    case 0x11:                 /* TCP over IPv4 */
        need = V2_INET_LEN;
        if (body < need) {
            return -1;
        }
        h->family = YMO_PROXY_INET;
        memcpy(h->src_addr, a, 4);
        memcpy(h->dst_addr, a + 4, 4);
        h->src_port = get16(a + 8);
        h->dst_port = get16(a + 10);
        break;
    case 0x21:                 /* TCP over IPv6 */
        need = V2_INET6_LEN;
        if (body < need) {
            return -1;
        }
        h->family = YMO_PROXY_INET6;
        memcpy(h->src_addr, a, 16);
        memcpy(h->dst_addr, a + 16, 16);
        h->src_port = get16(a + 32);
        h->dst_port = get16(a + 34);
        break;
    case 0x31:                 /* a unix stream socket */
        need = V2_UNIX_LEN;
        if (body < need) {
            return -1;
        }
        h->family = YMO_PROXY_UNIX;
        h->src_path = (const char *)a;
        {
            const void *nul = memchr(a, '\0', V2_UNIX_PATH);
            h->src_path_len = nul != NULL
                                  ? (size_t)((const unsigned char *)nul - a)
                                  : V2_UNIX_PATH;
        }
        break;
    default:                   /* datagrams, or an unknown family */
        return -1;
    }
    /* The TLVs: each is type, 16-bit length, value; skipped, but one that
     * runs past the block means the header is corrupt. */
    const unsigned char *t = a + need, *end = a + body;
    h->tlv = t < end ? t : NULL;
    h->tlv_len = (size_t)(end - t);
    while (t < end) {
        if (end - t < 3 || (size_t)(end - t - 3) < get16(t + 1)) {
            return -1;
        }
        t += 3 + get16(t + 1);
    }
    return (int)(YMO_PROXY_V2_FIXED + body);
}

int
ymo_proxy_parse(const char *buf, size_t len, ymo_proxy_header_t *h)
{
    int sig = ymo_proxy_signature(buf, len);
    if (sig == 0) {
        return -1;
    }
    if (sig < 0) {
        return len == 0 ? -2 : sig;
    }
    if (buf[0] == 'P') {
        return parse_v1(buf, len, h);
    }
    return parse_v2(buf, len, h);
}
