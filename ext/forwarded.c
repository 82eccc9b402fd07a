/* forwarded.c - parsing what proxies forward (see forwarded.h). */
#include "forwarded.h"

#include <arpa/inet.h>
#include <string.h>

#include "ascii.h"

/* Most elements of a Forwarded value looked at; a longer chain is
 * treated as malformed rather than walked. */
#define MAX_ELEMENTS 64

static int
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static int
is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
        (c >= '0' && c <= '9')) {
        return 1;
    }
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void
trim(const char **p, const char **end)
{
    while (*p < *end && is_ows(**p)) {
        (*p)++;
    }
    while (*end > *p && is_ows((*end)[-1])) {
        (*end)--;
    }
}

static int
all_digits(const char *p, size_t n)
{
    if (n == 0 || n > 5) {
        return 0;
    }
    unsigned long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }
        v = v * 10 + (unsigned long)(p[i] - '0');
    }
    return v <= 65535;
}

static int
to_port(const char *p, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* An obfuscated identifier, "_" 1*(ALPHA / DIGIT / "." / "_" / "-"). */
static int
is_obf(const char *p, size_t n)
{
    if (n < 2 || p[0] != '_') {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

enum { NODE_BAD = -1, NODE_HIDDEN = 0, NODE_IP = 1 };

/* A node: IPv4 [":" port], "[" IPv6 "]" [":" port], a bare IPv6 address
 * (X-Forwarded-For only: hidden_ok == 0), or, with hidden_ok, "unknown"
 * or an obfuscated identifier, with an obfuscated port allowed. */
static int
parse_node(const char *p, size_t n, int hidden_ok, int *family,
           uint8_t addr[16], int *port)
{
    const char *name = p, *colon = NULL;
    size_t name_len;
    *port = -1;
    if (n > 0 && p[0] == '[') {
        const char *close = memchr(p, ']', n);
        if (close == NULL) {
            return NODE_BAD;
        }
        name = p + 1;
        name_len = (size_t)(close - name);
        if (close + 1 < p + n) {
            if (close[1] != ':') {
                return NODE_BAD;
            }
            colon = close + 1;
        }
        *family = ymo_trust_parse_ip(name, name_len, addr);
        /* Brackets hold IPv6 only ("[1.2.3.4]" is no address). */
        if (*family == 0 || memchr(name, ':', name_len) == NULL) {
            return NODE_BAD;
        }
    }
    else {
        colon = memchr(p, ':', n);
        if (colon != NULL && memchr(colon + 1, ':', (size_t)(p + n - colon
                                                             - 1)) != NULL) {
            /* More than one colon: a bare IPv6 address. */
            if (hidden_ok) {
                return NODE_BAD;      /* RFC 7239 wants brackets */
            }
            colon = NULL;
        }
        name_len = colon != NULL ? (size_t)(colon - p) : n;
        if (hidden_ok && (YMO_ASCII_IS(name, name_len, "unknown") ||
                          is_obf(name, name_len))) {
            *family = 0;
        }
        else {
            *family = ymo_trust_parse_ip(name, name_len, addr);
            if (*family == 0) {
                return NODE_BAD;
            }
        }
    }
    if (colon != NULL) {
        const char *pp = colon + 1;
        size_t pn = (size_t)(p + n - pp);
        if (all_digits(pp, pn)) {
            *port = to_port(pp, pn);
        }
        else if (!(hidden_ok && is_obf(pp, pn))) {
            return NODE_BAD;
        }
    }
    return *family == 0 ? NODE_HIDDEN : NODE_IP;
}

/* Dotted-quad text of an IPv4 address: inet_ntop goes through sprintf,
 * which was most of the cost of an X-Forwarded-For (about 1,800
 * instructions of some 2,400). */
static void
put_v4(char *p, const uint8_t *a)
{
    for (int i = 0; i < 4; i++) {
        unsigned v = a[i];
        if (v >= 100) {
            *p++ = (char)('0' + v / 100);
        }
        if (v >= 10) {
            *p++ = (char)('0' + v / 10 % 10);
        }
        *p++ = (char)('0' + v % 10);
        *p++ = i < 3 ? '.' : '\0';
    }
}

static void
set_addr(ymo_forwarded_t *out, int family, const uint8_t *addr, int port)
{
    if (family == 4) {
        put_v4(out->addr, addr);
        out->has_addr = 1;
    }
    else {
        out->has_addr = inet_ntop(AF_INET6, addr, out->addr,
                                  sizeof(out->addr)) != NULL;
    }
    out->port = out->has_addr ? port : -1;
}

/* reg-name / IPv4 / "[" IPv6 "]", then an optional ":" port. */
static int
host_ok(const char *h, size_t n)
{
    size_t name_len, port_off, port_len;
    if (n == 0 || n >= YMO_FORWARDED_HOST_MAX) {
        return 0;
    }
    ymo_forwarded_split_host(h, n, &name_len, &port_off, &port_len);
    if (name_len == 0) {
        return 0;
    }
    if (h[0] == '[') {
        uint8_t a[16];
        if (name_len < 3 || h[name_len - 1] != ']' ||
            ymo_trust_parse_ip(h + 1, name_len - 2, a) == 0) {
            return 0;
        }
    }
    else {
        for (size_t i = 0; i < name_len; i++) {
            unsigned char c = (unsigned char)h[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c >= '0' && c <= '9') ||
                  strchr("-._~%!$&'()*+,;=", c) != NULL) || c == 0) {
                return 0;
            }
        }
    }
    /* "name:" has an empty port, the scheme's default (RFC 3986). */
    return port_len == 0 || all_digits(h + port_off, port_len);
}

void
ymo_forwarded_split_host(const char *host, size_t len, size_t *name_len,
                         size_t *port_off, size_t *port_len)
{
    const char *colon;
    if (len > 0 && host[0] == '[') {
        const char *close = memchr(host, ']', len);
        colon = close != NULL && close + 1 < host + len && close[1] == ':'
                    ? close + 1 : NULL;
        *name_len = close != NULL ? (size_t)(close - host) + 1 : len;
    }
    else {
        colon = memchr(host, ':', len);
        *name_len = colon != NULL ? (size_t)(colon - host) : len;
    }
    if (colon != NULL) {
        *port_off = (size_t)(colon - host) + 1;
        *port_len = len - *port_off;
    }
    else {
        *port_off = *port_len = 0;
    }
}

/* A quoted-string at p (p[0] == '"'): its end (past the closing quote)
 * and, when dst is not NULL, its unescaped content (at most cap bytes;
 * -1 when longer). Returns the length scanned, or -1. */
static long
quoted(const char *p, const char *end, char *dst, size_t cap,
       size_t *dst_len)
{
    size_t k = 0;
    const char *q = p + 1;
    while (q < end && *q != '"') {
        unsigned char c = (unsigned char)*q;
        if (c == '\\') {
            if (q + 1 >= end) {
                return -1;
            }
            q++;
            c = (unsigned char)*q;
        }
        /* qdtext / quoted-pair: HTAB, SP, VCHAR, obs-text; no controls */
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            return -1;
        }
        if (dst != NULL) {
            if (k == cap) {
                return -1;
            }
            dst[k] = (char)c;
        }
        k++;
        q++;
    }
    if (q == end) {
        return -1;
    }
    if (dst_len != NULL) {
        *dst_len = k;
    }
    return (long)(q + 1 - p);
}

typedef struct {
    const char *for_v, *proto_v, *host_v;  /* raw values (maybe quoted) */
    size_t for_n, proto_n, host_n;
} element_t;

/* One forwarded-element, p[0..end): pairs separated by ";". */
static int
parse_element(const char *p, const char *end, element_t *e)
{
    memset(e, 0, sizeof(*e));
    for (;;) {
        trim(&p, &end);
        const char *semi = p;
        /* Find this pair's end: a ";" outside a quoted string. */
        const char *name = p;
        while (semi < end && is_tchar((unsigned char)*semi)) {
            semi++;
        }
        size_t name_n = (size_t)(semi - name);
        if (name_n == 0) {
            /* An empty pair ("a=b;;c=d", or an empty element). */
            if (semi < end && *semi == ';') {
                p = semi + 1;
                continue;
            }
            return semi == end ? 0 : -1;
        }
        if (semi == end || *semi != '=') {
            return -1;
        }
        const char *val = semi + 1, *vend;
        if (val < end && *val == '"') {
            long q = quoted(val, end, NULL, 0, NULL);
            if (q < 0) {
                return -1;
            }
            vend = val + q;
        }
        else {
            vend = val;
            while (vend < end && is_tchar((unsigned char)*vend)) {
                vend++;
            }
            if (vend == val) {
                return -1;
            }
        }
        const char **slot = NULL;
        size_t *slot_n = NULL;
        if (YMO_ASCII_IS(name, name_n, "for")) {
            slot = &e->for_v, slot_n = &e->for_n;
        }
        else if (YMO_ASCII_IS(name, name_n, "proto")) {
            slot = &e->proto_v, slot_n = &e->proto_n;
        }
        else if (YMO_ASCII_IS(name, name_n, "host")) {
            slot = &e->host_v, slot_n = &e->host_n;
        }
        if (slot != NULL) {
            if (*slot != NULL) {
                return -1;          /* a parameter twice in one element */
            }
            *slot = val;
            *slot_n = (size_t)(vend - val);
        }
        p = vend;
        while (p < end && is_ows(*p)) {
            p++;
        }
        if (p == end) {
            return 0;
        }
        if (*p != ';') {
            return -1;
        }
        p++;
    }
}

/* A value as written (token, or quoted-string) unquoted into buf. */
static int
unquote(const char *v, size_t n, char *buf, size_t cap, size_t *out_n)
{
    if (n > 0 && v[0] == '"') {
        return quoted(v, v + n, buf, cap, out_n) < 0 ? -1 : 0;
    }
    if (n > cap) {
        return -1;
    }
    memcpy(buf, v, n);
    *out_n = n;
    return 0;
}

int
ymo_forwarded_parse(const char *v, size_t len, const ymo_trust_t *t,
                    ymo_forwarded_t *out)
{
    element_t el_[MAX_ELEMENTS];
    size_t n = 0;
    memset(out, 0, sizeof(*out));
    out->port = -1;
    /* Split at commas outside quoted strings. */
    const char *p = v, *end = v + len, *el = v;
    for (;;) {
        if (p < end && *p == '"') {
            long q = quoted(p, end, NULL, 0, NULL);
            if (q < 0) {
                return -1;
            }
            p += q;
            continue;
        }
        if (p == end || *p == ',') {
            const char *a = el, *b = p;
            trim(&a, &b);
            if (a < b) {            /* empty list elements are allowed */
                if (n == MAX_ELEMENTS || parse_element(a, b, &el_[n]) < 0) {
                    return -1;
                }
                n++;
            }
            if (p == end) {
                break;          /* never step past the end (not even p+1) */
            }
            el = p + 1;
        }
        p++;
    }
    if (n == 0) {
        return -1;
    }
    const element_t *e = NULL;
    char buf[YMO_FORWARDED_HOST_MAX];
    size_t bn;
    int family = 0, port = -1, kind = NODE_HIDDEN;
    uint8_t addr[16];
    for (size_t k = n; k-- > 0;) {
        e = &el_[k];
        if (e->for_v == NULL) {
            kind = NODE_HIDDEN;
            break;
        }
        if (unquote(e->for_v, e->for_n, buf, sizeof(buf), &bn) < 0) {
            return -1;
        }
        kind = parse_node(buf, bn, 1, &family, addr, &port);
        if (kind == NODE_BAD) {
            return -1;
        }
        if (kind == NODE_HIDDEN || !ymo_trust_match(t, family, addr)) {
            break;
        }
        /* A trusted proxy: its own client is one element further left
         * (or, at the left end, it is the client itself). */
    }
    /* Nothing is written to out before the last -1 (a malformed proto=):
     * out stays cleared, and the address is filled in at the end. */
    if (e->proto_v != NULL) {
        if (unquote(e->proto_v, e->proto_n, buf, sizeof(buf), &bn) < 0) {
            return -1;
        }
        out->proto = YMO_ASCII_IS(buf, bn, "https") ? YMO_PROTO_HTTPS
                     : YMO_ASCII_IS(buf, bn, "http") ? YMO_PROTO_HTTP
                                            : YMO_PROTO_NONE;
    }
    if (e->host_v != NULL) {
        if (unquote(e->host_v, e->host_n, out->host, sizeof(out->host),
                    &bn) < 0 || !host_ok(out->host, bn)) {
            out->host_len = 0;
        }
        else {
            out->host_len = bn;
        }
    }
    if (kind == NODE_IP) {
        set_addr(out, family, addr, port);
    }
    return 0;
}

/* The rightmost non-empty entry of a comma-separated list, trimmed. */
static int
rightmost(const char *v, size_t len, const char **p, size_t *n)
{
    const char *end = v + len;
    while (end > v) {
        const char *b = end;
        const char *a = b;
        while (a > v && a[-1] != ',') {
            a--;
        }
        const char *s = a, *e = b;
        trim(&s, &e);
        if (s < e) {
            *p = s;
            *n = (size_t)(e - s);
            return 0;
        }
        end = a > v ? a - 1 : v;
    }
    return -1;
}

int
ymo_forwarded_for(const char *v, size_t len, const ymo_trust_t *t,
                  ymo_forwarded_t *out)
{
    const char *end = v + len;
    int family = 0, port = -1, found = 0;
    uint8_t addr[16];
    out->has_addr = 0;
    out->port = -1;
    /* From the right, past trusted hops; empty entries are skipped. */
    while (end > v) {
        const char *a = end;
        while (a > v && a[-1] != ',') {
            a--;
        }
        const char *s = a, *e = end;
        trim(&s, &e);
        if (s < e) {
            if (parse_node(s, (size_t)(e - s), 0, &family, addr, &port) !=
                NODE_IP) {
                return -1;
            }
            found = 1;
            if (!ymo_trust_match(t, family, addr)) {
                break;
            }
        }
        end = a > v ? a - 1 : v;
    }
    if (!found) {
        return -1;
    }
    set_addr(out, family, addr, port);
    return out->has_addr ? 0 : -1;
}

int
ymo_forwarded_proto(const char *v, size_t len)
{
    const char *p;
    size_t n;
    if (rightmost(v, len, &p, &n) < 0) {
        return YMO_PROTO_NONE;
    }
    return YMO_ASCII_IS(p, n, "https") ? YMO_PROTO_HTTPS
           : YMO_ASCII_IS(p, n, "http") ? YMO_PROTO_HTTP
                               : YMO_PROTO_NONE;
}

int
ymo_forwarded_host(const char *v, size_t len, ymo_forwarded_t *out)
{
    const char *p;
    size_t n;
    if (rightmost(v, len, &p, &n) < 0 || !host_ok(p, n)) {
        return -1;
    }
    memcpy(out->host, p, n);
    out->host_len = n;
    return 0;
}
