/* http_parser.c - the strict, incremental HTTP/1.1 request head parser and
 * the streaming chunked body decoder declared in http_parser.h.          */

#include "http_parser.h"

#include <limits.h>
#include <string.h>

#include "ascii.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#ifndef SSIZE_MAX
#define SSIZE_MAX ((ssize_t)(SIZE_MAX >> 1))
#endif

/* A chunk-size line (size and extensions) longer than this is refused:
 * extensions are ignored, so there is no reason to accept big ones.     */
#define CHUNK_LINE_MAX 4096

/* Character classes (RFC 9110 5.6.2, 5.5, 5.6.4; RFC 3986 3.2.2). */
#define C_TCHAR   0x01  /* token character */
#define C_TARGET  0x02  /* request-target byte: 0x21-0x7E except '#' */
#define C_VALUE   0x04  /* field value byte: VCHAR, obs-text, SP, HTAB */
#define C_HEX     0x08  /* HEXDIG */
#define C_QDTEXT  0x10  /* qdtext of a quoted-string */
#define C_DIGIT   0x20  /* DIGIT */
#define C_REGNAME 0x40  /* reg-name byte: unreserved, sub-delims, '%' */

static const unsigned char cls[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  /* 00 */
    0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  /* 08 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  /* 10 */
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  /* 18 */
    0x14, 0x57, 0x06, 0x15, 0x57, 0x57, 0x57, 0x57,  /* 20 */
    0x56, 0x56, 0x57, 0x57, 0x56, 0x57, 0x57, 0x16,  /* 28 */
    0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f, 0x7f,  /* 30 */
    0x7f, 0x7f, 0x16, 0x56, 0x16, 0x56, 0x16, 0x16,  /* 38 */
    0x16, 0x5f, 0x5f, 0x5f, 0x5f, 0x5f, 0x5f, 0x57,  /* 40 */
    0x57, 0x57, 0x57, 0x57, 0x57, 0x57, 0x57, 0x57,  /* 48 */
    0x57, 0x57, 0x57, 0x57, 0x57, 0x57, 0x57, 0x57,  /* 50 */
    0x57, 0x57, 0x57, 0x16, 0x06, 0x16, 0x17, 0x57,  /* 58 */
    0x17, 0x5f, 0x5f, 0x5f, 0x5f, 0x5f, 0x5f, 0x57,  /* 60 */
    0x57, 0x57, 0x57, 0x57, 0x57, 0x57, 0x57, 0x57,  /* 68 */
    0x57, 0x57, 0x57, 0x57, 0x57, 0x57, 0x57, 0x57,  /* 70 */
    0x57, 0x57, 0x57, 0x16, 0x17, 0x16, 0x57, 0x00,  /* 78 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* 80 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* 88 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* 90 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* 98 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* a0 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* a8 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* b0 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* b8 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* c0 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* c8 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* d0 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* d8 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* e0 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* e8 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* f0 */
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,  /* f8 */
};

#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

#define IS(c, k) (cls[(unsigned char)(c)] & (k))
#define IS_WS(c) ((c) == ' ' || (c) == '\t')

static const ymo_http_limits_t default_limits = YMO_HTTP_LIMITS_DEFAULT;

static inline int
hexval(unsigned char c)
{
    if (c <= '9') {
        return c - '0';
    }
    return (c | 0x20) - 'a' + 10;
}


/* ---- fields known by name ---- */

/* The fields the parser acts on, in the head or in a trailer section. At
 * most 32, so that a set of them is one uint32_t.                       */
enum {
    F_OTHER = 0,
    F_HOST, F_CONTENT_LENGTH, F_TRANSFER_ENCODING, F_CONNECTION, F_EXPECT,
    F_CONTENT_TYPE, F_CONTENT_RANGE, F_CONTENT_ENCODING, F_AUTHORIZATION,
    F_PROXY_AUTHORIZATION, F_COOKIE, F_ORIGIN, F_REFERER, F_RANGE,
    F_IF_RANGE, F_IF_MATCH, F_IF_NONE_MATCH, F_IF_MODIFIED_SINCE,
    F_IF_UNMODIFIED_SINCE, F_MAX_FORWARDS, F_CACHE_CONTROL, F_TE, F_TRAILER,
    F_KEEP_ALIVE, F_PROXY_CONNECTION, F_UPGRADE,
    F_COUNT
};
_Static_assert(F_COUNT <= 32, "a set of fields is a uint32_t");

#define F(id) ((uint32_t)1 << (id))

/* Fields that a request may carry at most once (RFC 9110 5.3: they are not
 * lists, so two lines cannot be combined into one value). A proxy that
 * takes the first line and an app that takes the last, or the two joined
 * with ",", act on different values; no legitimate client repeats these:
 *   Host                  routing: which site the request is for.
 *   Content-Type,         how the content is read: a filter in front and
 *   Content-Range         the app could parse different formats / ranges.
 *   Authorization,        credentials: who the request is from.
 *   Proxy-Authorization
 *   Origin, Referer       cross-site checks (CSRF, CORS); RFC 6454 7.3:
 *                         a user agent sends at most one Origin.
 *   Range, If-Range,      what a cache stores or answers: a cache and the
 *   If-Modified-Since,    origin evaluating different conditions or
 *   If-Unmodified-Since   ranges is a cache poisoning recipe.
 *   Max-Forwards          whether a TRACE/OPTIONS is answered here or
 *                         forwarded (the app may be a gateway itself).
 * Content-Length is handled on its own: identical repeats are one value
 * (RFC 9110 8.6), different ones a 400. Singletons left out on purpose:
 * User-Agent (clients do send it twice, and nothing a proxy decides hangs
 * on it), Date, From and Content-Location (informational in a request).
 * Cookie is not a singleton here: HTTP/2 splits it into several lines and
 * gateways may pass them on as such; they are joined with "; ".        */
#define SINGLETONS (F(F_HOST) | F(F_CONTENT_TYPE) | F(F_CONTENT_RANGE)     \
                    | F(F_AUTHORIZATION) | F(F_PROXY_AUTHORIZATION)         \
                    | F(F_ORIGIN) | F(F_REFERER) | F(F_RANGE)               \
                    | F(F_IF_RANGE) | F(F_IF_MODIFIED_SINCE)                \
                    | F(F_IF_UNMODIFIED_SINCE) | F(F_MAX_FORWARDS))

/* Fields refused in a trailer section. RFC 9110 6.5.1: a field whose
 * evaluation is needed before the content is received cannot be a trailer
 * field; a trailer section that carries one is either broken or meant for
 * a recipient that merges trailers into the header section, so it is a 400
 * and the connection closes (the bytes after it are never read as a
 * request). By the RFC's categories:
 *   framing               Content-Length, Transfer-Encoding, Trailer
 *   routing               Host
 *   request modifiers     Expect, Max-Forwards, TE, Cache-Control (the
 *                         controls), If-Match, If-None-Match,
 *                         If-Modified-Since, If-Unmodified-Since, If-Range
 *                         (the conditionals), Range
 *   authentication        Authorization, Proxy-Authorization, Cookie
 *   content format        Content-Type, Content-Encoding, Content-Range
 *   the connection        Connection, Keep-Alive, Proxy-Connection, Upgrade
 *                         (hop-by-hop: they are about this hop only)
 * Other trailer fields (checksums, Server-Timing, ...) are parsed and
 * dropped: WSGI has no way to hand them to the app.                     */
#define NO_TRAILER (F(F_CONTENT_LENGTH) | F(F_TRANSFER_ENCODING)           \
                    | F(F_TRAILER) | F(F_HOST) | F(F_EXPECT)                \
                    | F(F_MAX_FORWARDS) | F(F_TE) | F(F_CACHE_CONTROL)      \
                    | F(F_IF_MATCH) | F(F_IF_NONE_MATCH)                    \
                    | F(F_IF_MODIFIED_SINCE) | F(F_IF_UNMODIFIED_SINCE)     \
                    | F(F_IF_RANGE) | F(F_RANGE) | F(F_AUTHORIZATION)       \
                    | F(F_PROXY_AUTHORIZATION) | F(F_COOKIE)                \
                    | F(F_CONTENT_TYPE) | F(F_CONTENT_ENCODING)             \
                    | F(F_CONTENT_RANGE) | F(F_CONNECTION)                  \
                    | F(F_KEEP_ALIVE) | F(F_PROXY_CONNECTION)               \
                    | F(F_UPGRADE))

/* The fields the head parser looks at. */
#define HEAD_FIELDS (SINGLETONS | F(F_CONTENT_LENGTH)                      \
                     | F(F_TRANSFER_ENCODING) | F(F_CONNECTION)             \
                     | F(F_EXPECT))

/* The longest name field_id() knows ("if-unmodified-since",
 * "proxy-authorization"). */
#define FIELD_NAME_MAX 19
_Static_assert(sizeof(((ymo_http_chunked_t *)0)->_name) >= FIELD_NAME_MAX,
               "a trailer name that field_id() may know fits in _name");

/* Which of the fields in `want` s[0, n) names (case-insensitively), or
 * F_OTHER. Inlined with a constant `want` (GCC does not inline it on its
 * own: it is big, and called from two places), it only compares the
 * names the caller cares about, and the length picks the few candidates;
 * the head parser stays as fast as with its former five-name switch.   */
static ALWAYS_INLINE int
field_id(const char *s, size_t n, uint32_t want)
{
#define IS_NAME(lit, id)                                                  \
    do {                                                                  \
        if ((want & F(id)) && YMO_ASCII_IS(s, n, lit)) {                  \
            return id;                                                    \
        }                                                                 \
    } while (0)
    switch (n) {
    case 2:
        IS_NAME("te", F_TE);
        break;
    case 4:
        IS_NAME("host", F_HOST);
        break;
    case 5:
        IS_NAME("range", F_RANGE);
        break;
    case 6:
        IS_NAME("expect", F_EXPECT);
        IS_NAME("cookie", F_COOKIE);
        IS_NAME("origin", F_ORIGIN);
        break;
    case 7:
        IS_NAME("referer", F_REFERER);
        IS_NAME("trailer", F_TRAILER);
        IS_NAME("upgrade", F_UPGRADE);
        break;
    case 8:
        IS_NAME("if-range", F_IF_RANGE);
        IS_NAME("if-match", F_IF_MATCH);
        break;
    case 10:
        IS_NAME("connection", F_CONNECTION);
        IS_NAME("keep-alive", F_KEEP_ALIVE);
        break;
    case 12:
        IS_NAME("content-type", F_CONTENT_TYPE);
        IS_NAME("max-forwards", F_MAX_FORWARDS);
        break;
    case 13:
        IS_NAME("authorization", F_AUTHORIZATION);
        IS_NAME("cache-control", F_CACHE_CONTROL);
        IS_NAME("content-range", F_CONTENT_RANGE);
        IS_NAME("if-none-match", F_IF_NONE_MATCH);
        break;
    case 14:
        IS_NAME("content-length", F_CONTENT_LENGTH);
        break;
    case 16:
        IS_NAME("content-encoding", F_CONTENT_ENCODING);
        IS_NAME("proxy-connection", F_PROXY_CONNECTION);
        break;
    case 17:
        IS_NAME("transfer-encoding", F_TRANSFER_ENCODING);
        IS_NAME("if-modified-since", F_IF_MODIFIED_SINCE);
        break;
    case 19:
        IS_NAME("if-unmodified-since", F_IF_UNMODIFIED_SINCE);
        IS_NAME("proxy-authorization", F_PROXY_AUTHORIZATION);
        break;
    default:
        break;
    }
    return F_OTHER;
#undef IS_NAME
}


/* ---- host and authority syntax (RFC 3986 3.2.2, 3.2.3) ---- */

/* dec-octet "." dec-octet "." dec-octet "." dec-octet, where a dec-octet
 * is 0-255 without leading zeros. */
static int
valid_ipv4(const unsigned char *s, size_t n)
{
    size_t i = 0;
    int octet;

    for (octet = 0; octet < 4; octet++) {
        size_t start = i;
        unsigned v = 0;

        if (octet > 0) {
            if (i >= n || s[i] != '.') {
                return 0;
            }
            start = ++i;
        }
        while (i < n && IS(s[i], C_DIGIT) && i - start < 3) {
            v = v * 10 + (s[i] - '0');
            i++;
        }
        if (i == start || v > 255 || (s[start] == '0' && i - start > 1)) {
            return 0;
        }
    }
    return i == n;
}

/* IPv6address: up to eight groups of 1-4 hex digits separated by ':', at
 * most one "::" standing for one or more zero groups, and optionally an
 * IPv4 address in place of the last two groups. */
static int
valid_ipv6(const unsigned char *s, size_t n)
{
    size_t i = 0;
    int groups = 0, dcolon = 0;

    if (n >= 2 && s[0] == ':' && s[1] == ':') {
        dcolon = 1;
        i = 2;
        if (i == n) {
            return 1;
        }
    }
    for (;;) {
        size_t start = i;

        while (i < n && IS(s[i], C_HEX)) {
            i++;
        }
        if (i < n && s[i] == '.') {
            if (!valid_ipv4(s + start, n - start)) {
                return 0;
            }
            groups += 2;
            break;
        }
        if (i == start || i - start > 4) {
            return 0;
        }
        groups++;
        if (i == n) {
            break;
        }
        if (s[i] != ':' || ++i == n) {
            return 0;
        }
        if (s[i] == ':') {
            if (dcolon) {
                return 0;
            }
            dcolon = 1;
            if (++i == n) {
                break;
            }
        }
    }
    return dcolon ? groups <= 7 : groups == 8;
}

/* IP-literal content: IPv6address or IPvFuture ("v" 1*HEXDIG "."
 * 1*( unreserved / sub-delims / ":" )). */
static int
valid_ip_literal(const unsigned char *s, size_t n)
{
    size_t i = 1;

    if (n == 0 || (s[0] != 'v' && s[0] != 'V')) {
        return valid_ipv6(s, n);
    }
    while (i < n && IS(s[i], C_HEX)) {
        i++;
    }
    if (i == 1 || i == n || s[i] != '.' || ++i == n) {
        return 0;
    }
    for (; i < n; i++) {
        if (s[i] == '%' || !(IS(s[i], C_REGNAME) || s[i] == ':')) {
            return 0;
        }
    }
    return 1;
}

/* uri-host [ ":" port ] with a non-empty host; the port is at most 5
 * digits and not above 65535. It may be empty ("example.com:", RFC 3986
 * 3.2.3: the scheme's default) unless need_port: CONNECT names the port
 * to open a tunnel to, and there is no default for that. */
static int
valid_authority(const char *str, size_t n, int need_port)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, start;
    unsigned long port = 0;

    if (n == 0) {
        return 0;
    }
    if (s[0] == '[') {
        const unsigned char *close = memchr(s, ']', n);

        if (close == NULL || !valid_ip_literal(s + 1, close - s - 1)) {
            return 0;
        }
        i = close - s + 1;
    }
    else {
        /* reg-name (an IPv4address is also a reg-name) */
        while (i < n && IS(s[i], C_REGNAME)) {
            if (s[i] == '%') {
                if (n - i < 3 || !IS(s[i + 1], C_HEX)
                    || !IS(s[i + 2], C_HEX)) {
                    return 0;
                }
                i += 2;
            }
            i++;
        }
        if (i == 0) {
            return 0;
        }
    }
    if (i == n) {
        return !need_port;
    }
    if (s[i] != ':') {
        return 0;
    }
    start = ++i;
    while (i < n && IS(s[i], C_DIGIT) && i - start < 5) {
        port = port * 10 + (s[i] - '0');
        i++;
    }
    return i == n && (i > start || !need_port) && port <= 65535;
}


/* ---- the incremental scan ---- */

/* Offset of the first CR or LF in buf[from, to), or `to` when there is
 * none. Only whole 16-byte blocks inside the range are loaded.          */
static inline size_t
find_eol(const char *buf, size_t from, size_t to)
{
    size_t i = from;

#if defined(__SSE2__)
    const __m128i cr = _mm_set1_epi8('\r');
    const __m128i lf = _mm_set1_epi8('\n');

    while (to - i >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(buf + i));
        int m = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, cr),
                                               _mm_cmpeq_epi8(v, lf)));
        if (m) {
            return i + (size_t)__builtin_ctz((unsigned)m);
        }
        i += 16;
    }
#endif
    for (; i < to; i++) {
        if (buf[i] == '\r' || buf[i] == '\n') {
            return i;
        }
    }
    return i;
}

/* The validating pass runs over a complete head, which ends with CRLF, so
 * a loop that stops at CR may run without a bound; the SSE2 blocks are
 * only loaded while 16 bytes of the head are left.                      */

/* First offset from i that is not a field-value byte (VCHAR, obs-text,
 * SP, HTAB): a bad CTL, DEL, or the CR ending the line. */
static inline size_t
skip_value(const unsigned char *u, size_t i, size_t end)
{
#if defined(__SSE2__)
    const __m128i c1f = _mm_set1_epi8(0x1f);
    const __m128i tab = _mm_set1_epi8('\t');
    const __m128i del = _mm_set1_epi8(0x7f);

    while (end - i >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(u + i));
        /* v <= 0x1f, unsigned */
        __m128i bad = _mm_cmpeq_epi8(_mm_min_epu8(v, c1f), v);
        int m;

        bad = _mm_andnot_si128(_mm_cmpeq_epi8(v, tab), bad);
        bad = _mm_or_si128(bad, _mm_cmpeq_epi8(v, del));
        m = _mm_movemask_epi8(bad);
        if (m) {
            return i + (size_t)__builtin_ctz((unsigned)m);
        }
        i += 16;
    }
#else
    (void)end;
#endif
    while (IS(u[i], C_VALUE)) {
        i++;
    }
    return i;
}

/* First offset from i that is not a request-target byte. */
static inline size_t
skip_target(const unsigned char *u, size_t i, size_t end)
{
#if defined(__SSE2__)
    const __m128i sp = _mm_set1_epi8(0x20);
    const __m128i c7f = _mm_set1_epi8(0x7f);
    const __m128i hash = _mm_set1_epi8('#');

    while (end - i >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(u + i));
        /* v <= 0x20 or v >= 0x7f (unsigned) or v == '#' */
        __m128i bad = _mm_or_si128(_mm_cmpeq_epi8(_mm_min_epu8(v, sp), v),
                                   _mm_cmpeq_epi8(_mm_max_epu8(v, c7f), v));
        int m;

        bad = _mm_or_si128(bad, _mm_cmpeq_epi8(v, hash));
        m = _mm_movemask_epi8(bad);
        if (m) {
            return i + (size_t)__builtin_ctz((unsigned)m);
        }
        i += 16;
    }
#else
    (void)end;
#endif
    while (IS(u[i], C_TARGET)) {
        i++;
    }
    return i;
}

/* First offset from i that is not a tchar; four at a time while the head
 * has room, as field names are mostly longer than that. */
static inline size_t
skip_token(const unsigned char *u, size_t i, size_t end)
{
    while (end - i >= 4
           && (cls[u[i]] & cls[u[i + 1]] & cls[u[i + 2]] & cls[u[i + 3]]
               & C_TCHAR)) {
        i += 4;
    }
    while (IS(u[i], C_TCHAR)) {
        i++;
    }
    return i;
}

static int
fail(ymo_http_parser_t *p, int status)
{
    p->status = status;
    return -1;
}

void
ymo_http_parser_init(ymo_http_parser_t *p, const ymo_http_limits_t *limits)
{
    p->limits = limits ? limits : &default_limits;
    p->status = 0;
    p->_scanned = 0;
    p->_line_start = 0;
    p->_nlines = 0;
}


/* ---- the validating pass over a complete head ---- */

/* Set path and query from the request-target; for absolute-form also the
 * authority. Returns 0 or an error status. */
static int
parse_target(ymo_http_request_t *req, const char **auth, size_t *auth_len)
{
    const char *t = req->target;
    size_t n = req->target_len, start = 0;
    const char *q;

    /* Methods are case-sensitive (RFC 9110 9.1). */
    if (req->method_len == 7 && memcmp(req->method, "CONNECT", 7) == 0) {
        /* authority-form only, and the port is required (9110 9.3.6) */
        if (!valid_authority(t, n, 1)) {
            return 400;
        }
        /* A well-formed CONNECT asks for a tunnel, which a WSGI app
         * cannot give: after a 2xx the bytes that follow are tunnel data
         * to a proxy in front, which forwards them unread, and they must
         * never be served as requests (nor the head's Content-Length
         * frame a body it does not have). */
        return 501;
    }
    if (t[0] == '*') {
        if (n != 1 || req->method_len != 7
            || memcmp(req->method, "OPTIONS", 7) != 0) {
            return 400;
        }
        req->path = t;
        req->path_len = 1;
        req->query = t + 1;
        req->query_len = 0;
        return 0;
    }
    if (t[0] != '/') {
        size_t s, i;

        if (n >= 7 && ymo_ascii_ieq(t, "http://", 7)) {
            s = 7;
        }
        else if (n >= 8 && ymo_ascii_ieq(t, "https://", 8)) {
            s = 8;
        }
        else {
            return 400;
        }
        for (i = s; i < n && t[i] != '/' && t[i] != '?'; i++) {
        }
        /* No userinfo: '@' is not a host character (9110 4.2.4). */
        if (!valid_authority(t + s, i - s, 0)) {
            return 400;
        }
        *auth = t + s;
        *auth_len = i - s;
        if (i == n || t[i] == '?') {
            /* An empty path means "/": point at the second slash of
             * "//" so that every result stays inside the buffer. */
            req->path = t + s - 1;
            req->path_len = 1;
            req->query = i < n ? t + i + 1 : t + n;
            req->query_len = i < n ? n - i - 1 : 0;
            return 0;
        }
        start = i;
    }
    req->path = t + start;
    q = memchr(t + start, '?', n - start);
    if (q != NULL) {
        req->path_len = q - (t + start);
        req->query = q + 1;
        req->query_len = (t + n) - (q + 1);
    }
    else {
        req->path_len = n - start;
        req->query = t + n;
        req->query_len = 0;
    }
    return 0;
}

/* Skip a quoted-string starting at v[*i] == '"'; 0 when malformed. */
static int
skip_quoted(const unsigned char *v, size_t n, size_t *i)
{
    size_t j = *i + 1;

    while (j < n) {
        if (v[j] == '"') {
            *i = j + 1;
            return 1;
        }
        if (v[j] == '\\') {
            /* quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ) */
            if (j + 1 >= n || !IS(v[j + 1], C_VALUE)) {
                return 0;
            }
            j += 2;
        }
        else if (IS(v[j], C_QDTEXT)) {
            j++;
        }
        else {
            return 0;
        }
    }
    return 0;
}

#define SKIP_OWS(v, n, i) while ((i) < (n) && IS_WS((v)[i])) (i)++
#define SKIP_TOKEN(v, n, i) while ((i) < (n) && IS((v)[i], C_TCHAR)) (i)++

/* One Transfer-Encoding field value: #transfer-coding where
 * transfer-coding = token *( OWS ";" OWS token BWS "=" BWS ( token /
 * quoted-string ) ). Only a single, final, parameterless "chunked" is
 * accepted; *chunked carries over between fields. Empty list elements
 * (", chunked", "chunked,") are ignored as RFC 9110 5.6.1 asks, but a
 * field line that names no coding at all is refused even when another
 * line says chunked: a recipient that reads that line alone (or takes
 * the first Transfer-Encoding line) sees no transfer coding and frames the
 * body differently. Returns 0 or a status: 400 for bad syntax, no coding,
 * or anything after "chunked" (it must be last and appear once, RFC 9112
 * 6.3), 501 for other codings.                                         */
static int
parse_te(const char *str, size_t n, int *chunked)
{
    const unsigned char *v = (const unsigned char *)str;
    size_t i = 0;
    int codings = 0;

    for (;;) {
        size_t start;
        int is_chunked, params = 0;

        SKIP_OWS(v, n, i);
        if (i == n) {
            return codings ? 0 : 400;
        }
        if (v[i] == ',') {
            i++;
            continue;
        }
        start = i;
        SKIP_TOKEN(v, n, i);
        if (i == start) {
            return 400;
        }
        is_chunked = YMO_ASCII_IS(str + start, i - start, "chunked");
        SKIP_OWS(v, n, i);
        while (i < n && v[i] == ';') {
            i++;
            SKIP_OWS(v, n, i);
            start = i;
            SKIP_TOKEN(v, n, i);
            if (i == start) {
                return 400;
            }
            SKIP_OWS(v, n, i);
            if (i == n || v[i] != '=') {
                return 400;
            }
            i++;
            SKIP_OWS(v, n, i);
            if (i < n && v[i] == '"') {
                if (!skip_quoted(v, n, &i)) {
                    return 400;
                }
            }
            else {
                start = i;
                SKIP_TOKEN(v, n, i);
                if (i == start) {
                    return 400;
                }
            }
            params = 1;
            SKIP_OWS(v, n, i);
        }
        if (i < n && v[i] != ',') {
            return 400;
        }
        if (*chunked) {
            return 400;
        }
        if (!is_chunked) {
            return 501;
        }
        if (params) {
            return 400;
        }
        *chunked = 1;
        codings++;
    }
}

/* One Expect field value (HTTP/1.1): #expectation, where the only
 * expectation we know is "100-continue" (RFC 9110 10.1.1). Empty list
 * elements are ignored (RFC 9110 5.6.1), so an empty value expects
 * nothing. Sets *expect for 100-continue. Returns 0, or 417 for any other
 * expectation. A ',' inside a quoted parameter of another expectation may
 * split it, but every piece of that element is still not 100-continue.  */
static int
parse_expect(const char *str, size_t n, int *expect)
{
    const unsigned char *v = (const unsigned char *)str;
    size_t i = 0;

    for (;;) {
        size_t start, end;

        SKIP_OWS(v, n, i);
        if (i == n) {
            return 0;
        }
        if (v[i] == ',') {
            i++;
            continue;
        }
        start = i;
        while (i < n && v[i] != ',') {
            i++;
        }
        end = i;
        while (IS_WS(v[end - 1])) {
            end--;
        }
        if (!YMO_ASCII_IS(str + start, end - start, "100-continue")) {
            return 417;
        }
        *expect = 1;
    }
}

#define CONN_CLOSE 1
#define CONN_KEEP_ALIVE 2

/* One Connection field value: #token. Empty list elements are ignored as
 * RFC 9110 5.6.1 asks; anything that is not a token is an error.
 * Returns 0 or 400. */
static int
parse_connection(const char *str, size_t n, int *flags)
{
    const unsigned char *v = (const unsigned char *)str;
    size_t i = 0;

    for (;;) {
        size_t start;

        SKIP_OWS(v, n, i);
        if (i == n) {
            return 0;
        }
        if (v[i] == ',') {
            i++;
            continue;
        }
        start = i;
        SKIP_TOKEN(v, n, i);
        if (i == start) {
            return 400;
        }
        if (YMO_ASCII_IS(str + start, i - start, "close")) {
            *flags |= CONN_CLOSE;
        }
        else if (YMO_ASCII_IS(str + start, i - start, "keep-alive")) {
            *flags |= CONN_KEEP_ALIVE;
        }
        SKIP_OWS(v, n, i);
        if (i == n) {
            return 0;
        }
        if (v[i] != ',') {
            return 400;
        }
        i++;
    }
}

/* Content-Length = 1*DIGIT, at most 19 digits and at most 2^63 - 1. */
static int
parse_content_length(const char *str, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;

    if (n == 0 || n > 19) {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (!IS(str[i], C_DIGIT)) {
            return 0;
        }
        /* 19 digits always fit in 64 unsigned bits */
        v = v * 10 + (uint64_t)(str[i] - '0');
    }
    if (v > (uint64_t)INT64_MAX) {
        return 0;
    }
    *out = v;
    return 1;
}

/* Parse and validate the complete head buf[0, head_len), which the scan
 * has checked to be CRLF-terminated lines without a stray CR or LF, the
 * last one empty, within the limits. Returns head_len or -1.            */
static int
parse_head(ymo_http_parser_t *p, const char *buf, size_t head_len,
           ymo_http_request_t *req)
{
    const unsigned char *u = (const unsigned char *)buf;
    const ymo_http_limits_t *lim = p->limits;
    size_t i = 0, start, n = 0;
    const char *auth = NULL, *host = NULL, *cl = NULL;
    size_t auth_len = 0, host_len = 0, cl_len = 0;
    int te = 0, chunked = 0, conn = 0, expect = 0, status;
    uint32_t seen = 0;        /* the known fields met so far */
    uint64_t content_length = 0;

    /* Leading empty lines (RFC 9112 2.2); each CR is known to be
     * followed by LF, and the request line is not empty. */
    while (u[i] == '\r') {
        i += 2;
    }

    /* request-line = method SP request-target SP HTTP-version */
    start = i;
    i = skip_token(u, i, head_len);
    if (i == start || u[i] != ' ') {
        return fail(p, 400);
    }
    req->method = buf + start;
    req->method_len = i - start;
    start = ++i;
    i = skip_target(u, i, head_len);
    if (i == start || u[i] != ' ') {
        return fail(p, 400);
    }
    req->target = buf + start;
    req->target_len = i - start;
    start = ++i;
    while (u[i] != '\r') {
        i++;
    }
    if (i - start != 8 || memcmp(buf + start, "HTTP/", 5) != 0
        || !IS(u[start + 5], C_DIGIT) || u[start + 6] != '.'
        || !IS(u[start + 7], C_DIGIT)) {
        return fail(p, 400);
    }
    if (u[start + 5] != '1') {
        return fail(p, 505);
    }
    /* RFC 9110 2.5: a higher minor version of HTTP/1 is handled as the
     * highest one implemented, HTTP/1.1 (framing, keep-alive, Host). */
    req->minor_version = u[start + 7] == '0' ? 0 : 1;
    status = parse_target(req, &auth, &auth_len);
    if (status) {
        return fail(p, status);
    }
    i += 2;

    /* field-line = field-name ":" OWS field-value OWS */
    while (u[i] != '\r') {
        size_t name_len, vs, ve;
        const char *name;
        int id;

        start = i;
        i = skip_token(u, i, head_len);
        /* An empty name also catches obs-fold and whitespace after the
         * start line; a space before the colon is not a tchar.        */
        if (i == start || u[i] != ':') {
            return fail(p, 400);
        }
        name = buf + start;
        name_len = i - start;
        i++;
        while (IS_WS(u[i])) {
            i++;
        }
        vs = i;
        i = skip_value(u, i, head_len);
        if (u[i] != '\r') {
            return fail(p, 400);
        }
        ve = i;
        while (ve > vs && IS_WS(u[ve - 1])) {
            ve--;
        }
        i += 2;
        /* The scan has kept n within max_header_count. */
        req->headers[n].name = name;
        req->headers[n].name_len = name_len;
        req->headers[n].value = buf + vs;
        req->headers[n].value_len = ve - vs;
        n++;

        /* The fields that decide framing, routing and the connection,
         * and the ones that may not be repeated. */
        id = field_id(name, name_len, HEAD_FIELDS);
        if (id == F_OTHER) {
            continue;
        }
        if (seen & SINGLETONS & F(id)) {
            return fail(p, 400);
        }
        seen |= F(id);
        switch (id) {
        case F_HOST:
            host = buf + vs;
            host_len = ve - vs;
            if (host_len && !valid_authority(host, host_len, 0)) {
                return fail(p, 400);
            }
            break;
        case F_EXPECT:
            /* RFC 9110 10.1.1: HTTP/1.0 expectations are ignored. */
            if (req->minor_version == 1) {
                status = parse_expect(buf + vs, ve - vs, &expect);
                if (status) {
                    return fail(p, status);
                }
            }
            break;
        case F_CONNECTION:
            status = parse_connection(buf + vs, ve - vs, &conn);
            if (status) {
                return fail(p, status);
            }
            break;
        case F_CONTENT_LENGTH:
            if (cl != NULL) {
                /* Repeats must be byte-identical (RFC 9110 8.6). */
                if (ve - vs != cl_len || memcmp(cl, buf + vs, cl_len)) {
                    return fail(p, 400);
                }
            }
            else if (!parse_content_length(buf + vs, ve - vs,
                                           &content_length)) {
                return fail(p, 400);
            }
            cl = buf + vs;
            cl_len = ve - vs;
            break;
        case F_TRANSFER_ENCODING:
            /* HTTP/1.0 has no chunked coding (RFC 9112 6.1). */
            if (req->minor_version == 0) {
                return fail(p, 400);
            }
            te = 1;
            status = parse_te(buf + vs, ve - vs, &chunked);
            if (status) {
                return fail(p, status);
            }
            break;
        default:
            break;
        }
    }

    if (req->minor_version == 1 && !(seen & F(F_HOST))) {
        return fail(p, 400);
    }
    if (te && cl != NULL) {
        return fail(p, 400);
    }
    req->content_length = 0;
    if (te) {
        req->body = YMO_HTTP_BODY_CHUNKED;
    }
    else if (cl != NULL && content_length > 0) {
        if (lim->max_body_size && content_length > lim->max_body_size) {
            return fail(p, 413);
        }
        req->body = YMO_HTTP_BODY_LENGTH;
        req->content_length = content_length;
    }
    else {
        /* No body, or "Content-Length: 0", which is the same thing. */
        req->body = YMO_HTTP_BODY_NONE;
    }
    if (auth != NULL) {
        /* RFC 9112 3.2.2: the target's authority overrides Host. */
        req->host = auth;
        req->host_len = auth_len;
    }
    else {
        req->host = host;
        req->host_len = host_len;
    }
    req->num_headers = n;
    if (conn & CONN_CLOSE) {
        req->keep_alive = 0;
    }
    else if (req->minor_version == 1) {
        req->keep_alive = 1;
    }
    else {
        req->keep_alive = (conn & CONN_KEEP_ALIVE) != 0;
    }
    req->expect_continue = expect;
    return (int)head_len;
}

/* The head is parsed in two steps. An incremental scan (SSE2 where
 * available) only looks for line ends and enforces the limits and the
 * CRLF rule on the bytes new since the previous call; once it finds the
 * blank line that ends the head, one validating pass parses the whole
 * head. Every error the scan reports is tied to the byte that triggers
 * it and the scan looks at the bytes in order, so a head delivered in any
 * slices gives the same result as the head delivered at once.            */
int
ymo_http_parse_request(ymo_http_parser_t *p, const char *buf, size_t len,
                       ymo_http_request_t *req)
{
    const ymo_http_limits_t *lim = p->limits;
    size_t max_head = lim->max_head_size < INT_MAX
                      ? lim->max_head_size : INT_MAX;
    /* Bytes past max_head cannot belong to a valid head. */
    size_t end = len < max_head ? len : max_head;
    size_t pos = p->_scanned, ls = p->_line_start, nlines = p->_nlines;

    if (pos > end) {
        /* The buffer shrank: not the documented use, start over. */
        pos = ls = nlines = 0;
    }
    /* Each error below is reported when the byte that makes it certain
     * arrives, in byte order: the same error whatever the slicing. The
     * state is only saved when more input is needed, so a call after a
     * result repeats that result. */
    for (;;) {
        size_t limit = nlines ? lim->max_field_size : lim->max_request_line;
        size_t i = find_eol(buf, pos, end);

        if (i == end) {
            if (end - ls > limit) {
                goto too_long;
            }
            pos = end;
            break;
        }
        if (i - ls > limit) {
            goto too_long;
        }
        if (buf[i] == '\n') {
            return fail(p, 400);
        }
        if (i + 1 == end) {
            /* A CR as the last byte: decide when the next one comes. */
            pos = i;
            break;
        }
        if (buf[i + 1] != '\n') {
            return fail(p, 400);
        }
        if (i == ls) {
            if (nlines) {
                return parse_head(p, buf, i + 2, req);
            }
            /* an empty line before the request line is skipped */
        }
        else if (++nlines - 1 > lim->max_header_count) {
            return fail(p, 431);
        }
        pos = ls = i + 2;
    }
    if (len > max_head) {
        return fail(p, 431);
    }
    p->_scanned = pos;
    p->_line_start = ls;
    p->_nlines = nlines;
    return -2;

too_long:
    return fail(p, nlines ? 431 : 414);
}


/* ---- chunked transfer coding (RFC 9112 7.1) ---- */

enum {
    CH_SIZE = 0,        /* chunk-size hex digits */
    CH_EXT_SEMI,        /* BWS before ";" */
    CH_EXT_NAME_START,  /* BWS after ";", then chunk-ext-name */
    CH_EXT_NAME,        /* in chunk-ext-name */
    CH_EXT_EQ,          /* BWS after the name: "=" or ";" */
    CH_EXT_VAL_START,   /* BWS after "=", then token or quoted-string */
    CH_EXT_TOKEN,       /* in a token value */
    CH_EXT_QS,          /* in a quoted-string value */
    CH_EXT_QS_ESC,      /* after "\" in a quoted-string */
    CH_EXT_QS_END,      /* after the closing DQUOTE */
    CH_SIZE_LF,         /* after the CR ending the size line */
    CH_DATA,            /* chunk-data */
    CH_DATA_CR,         /* the CRLF after chunk-data */
    CH_DATA_LF,
    CH_TR_START,        /* start of a trailer line (or the final CRLF) */
    CH_TR_NAME,
    CH_TR_VALUE,
    CH_TR_LF,           /* after the CR ending a trailer field line */
    CH_TR_END_LF,       /* after the CR of the final empty line */
    CH_DONE,
    CH_ERROR
};

void
ymo_http_chunked_init(ymo_http_chunked_t *d, const ymo_http_limits_t *limits)
{
    d->limits = limits ? limits : &default_limits;
    d->status = 0;
    d->done = 0;
    d->total = 0;
    d->_state = CH_SIZE;
    d->_remaining = 0;
    d->_line = 0;
    d->_trailer_bytes = 0;
    d->_trailer_count = 0;
    d->_digits = 0;
}

static ssize_t
ch_fail(ymo_http_chunked_t *d, int status)
{
    d->_state = CH_ERROR;
    d->status = status;
    return -1;
}

/* Is this state one of the chunk-size line's (before its CR)? */
#define IN_SIZE_LINE(s) ((s) <= CH_EXT_QS_END)

ssize_t
ymo_http_chunked_feed(ymo_http_chunked_t *d, const char *buf, size_t len,
                      const char **data, size_t *data_len)
{
    const unsigned char *u = (const unsigned char *)buf;
    const ymo_http_limits_t *lim = d->limits;
    size_t i;

    *data = buf;
    *data_len = 0;
    if (d->_state == CH_ERROR) {
        return -1;
    }
    if (d->_state == CH_DONE || len == 0) {
        return 0;
    }
    if (len > (size_t)SSIZE_MAX) {
        len = (size_t)SSIZE_MAX;
    }
    if (d->_state == CH_DATA) {
        size_t n = len;

        if (n > d->_remaining) {
            n = (size_t)d->_remaining;
        }
        d->_remaining -= n;
        d->total += n;
        if (d->_remaining == 0) {
            d->_state = CH_DATA_CR;
        }
        *data_len = n;
        return (ssize_t)n;
    }

    for (i = 0; i < len; i++) {
        unsigned char c = u[i];
        int st = d->_state;

        if (IN_SIZE_LINE(st) && c != '\r' && ++d->_line > CHUNK_LINE_MAX) {
            return ch_fail(d, 400);
        }
        switch (st) {
        case CH_SIZE:
            if (IS(c, C_HEX)) {
                uint64_t v = d->_remaining;
                unsigned h = (unsigned)hexval(c);

                if (v > ((uint64_t)INT64_MAX - h) >> 4) {
                    return ch_fail(d, 400);
                }
                v = (v << 4) | h;
                /* 413 as soon as the declared size is too much. */
                if (v > UINT64_MAX - d->total || (lim->max_body_size
                        && d->total + v > lim->max_body_size)) {
                    return ch_fail(d, 413);
                }
                d->_remaining = v;
                d->_digits++;
                break;
            }
            if (d->_digits == 0) {
                return ch_fail(d, 400);
            }
            if (c == '\r') {
                d->_state = CH_SIZE_LF;
            }
            else if (c == ';') {
                d->_state = CH_EXT_NAME_START;
            }
            else if (IS_WS(c)) {
                d->_state = CH_EXT_SEMI;
            }
            else {
                return ch_fail(d, 400);
            }
            break;
        case CH_EXT_SEMI:
            /* chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS val ] ):
             * whitespace must lead to another extension. */
            if (c == ';') {
                d->_state = CH_EXT_NAME_START;
            }
            else if (!IS_WS(c)) {
                return ch_fail(d, 400);
            }
            break;
        case CH_EXT_NAME_START:
            if (IS(c, C_TCHAR)) {
                d->_state = CH_EXT_NAME;
            }
            else if (!IS_WS(c)) {
                return ch_fail(d, 400);
            }
            break;
        case CH_EXT_NAME:
            if (IS(c, C_TCHAR)) {
                break;
            }
            if (c == '\r') {
                d->_state = CH_SIZE_LF;
            }
            else if (c == ';') {
                d->_state = CH_EXT_NAME_START;
            }
            else if (c == '=') {
                d->_state = CH_EXT_VAL_START;
            }
            else if (IS_WS(c)) {
                d->_state = CH_EXT_EQ;
            }
            else {
                return ch_fail(d, 400);
            }
            break;
        case CH_EXT_EQ:
            if (c == '=') {
                d->_state = CH_EXT_VAL_START;
            }
            else if (c == ';') {
                d->_state = CH_EXT_NAME_START;
            }
            else if (!IS_WS(c)) {
                return ch_fail(d, 400);
            }
            break;
        case CH_EXT_VAL_START:
            if (c == '"') {
                d->_state = CH_EXT_QS;
            }
            else if (IS(c, C_TCHAR)) {
                d->_state = CH_EXT_TOKEN;
            }
            else if (!IS_WS(c)) {
                return ch_fail(d, 400);
            }
            break;
        case CH_EXT_TOKEN:
        case CH_EXT_QS_END:
            /* a token value goes on; either value ends the same way */
            if (st == CH_EXT_TOKEN && IS(c, C_TCHAR)) {
                break;
            }
            if (c == '\r') {
                d->_state = CH_SIZE_LF;
            }
            else if (c == ';') {
                d->_state = CH_EXT_NAME_START;
            }
            else if (IS_WS(c)) {
                d->_state = CH_EXT_SEMI;
            }
            else {
                return ch_fail(d, 400);
            }
            break;
        case CH_EXT_QS:
            if (c == '"') {
                d->_state = CH_EXT_QS_END;
            }
            else if (c == '\\') {
                d->_state = CH_EXT_QS_ESC;
            }
            else if (!IS(c, C_QDTEXT)) {
                return ch_fail(d, 400);
            }
            break;
        case CH_EXT_QS_ESC:
            if (!IS(c, C_VALUE)) {
                return ch_fail(d, 400);
            }
            d->_state = CH_EXT_QS;
            break;
        case CH_SIZE_LF:
            if (c != '\n') {
                return ch_fail(d, 400);
            }
            d->_line = 0;
            d->_digits = 0;
            if (d->_remaining == 0) {
                d->_state = CH_TR_START;
                break;
            }
            d->_state = CH_DATA;
            return (ssize_t)(i + 1);
        case CH_DATA_CR:
            if (c != '\r') {
                return ch_fail(d, 400);
            }
            d->_state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != '\n') {
                return ch_fail(d, 400);
            }
            d->_state = CH_SIZE;
            break;
        default:
            /* The trailer section: field lines like the head's. */
            if (++d->_trailer_bytes > lim->max_head_size) {
                return ch_fail(d, 431);
            }
            switch (st) {
            case CH_TR_START:
                if (c == '\r') {
                    d->_state = CH_TR_END_LF;
                    break;
                }
                /* no empty name, no obs-fold */
                if (!IS(c, C_TCHAR)) {
                    return ch_fail(d, 400);
                }
                if (++d->_trailer_count > lim->max_header_count) {
                    return ch_fail(d, 431);
                }
                d->_name[0] = (char)c;
                d->_line = 0;
                d->_state = CH_TR_NAME;
                break;
            case CH_TR_NAME:
                /* d->_line is the name's length so far */
                if (c == ':') {
                    if (d->_line <= FIELD_NAME_MAX
                        && field_id(d->_name, d->_line, NO_TRAILER)
                           != F_OTHER) {
                        return ch_fail(d, 400);
                    }
                    d->_state = CH_TR_VALUE;
                }
                else if (!IS(c, C_TCHAR)) {
                    return ch_fail(d, 400);
                }
                else if (d->_line < FIELD_NAME_MAX) {
                    d->_name[d->_line] = (char)c;
                }
                break;
            case CH_TR_VALUE:
                if (c == '\r') {
                    d->_state = CH_TR_LF;
                    break;
                }
                if (!IS(c, C_VALUE)) {
                    return ch_fail(d, 400);
                }
                break;
            case CH_TR_LF:
                if (c != '\n') {
                    return ch_fail(d, 400);
                }
                d->_state = CH_TR_START;
                break;
            case CH_TR_END_LF:
                if (c != '\n') {
                    return ch_fail(d, 400);
                }
                d->_state = CH_DONE;
                d->done = 1;
                return (ssize_t)(i + 1);
            default:
                return ch_fail(d, 400);  /* not reached */
            }
            if ((d->_state == CH_TR_NAME || d->_state == CH_TR_VALUE)
                && ++d->_line > lim->max_field_size) {
                return ch_fail(d, 431);
            }
            break;
        }
    }
    return (ssize_t)len;
}


/* ---- helpers ---- */

size_t
ymo_http_percent_decode(const char *in, size_t len, char *out)
{
    size_t i = 0, o = 0;

    while (i < len) {
        unsigned char c = (unsigned char)in[i];

        if (c == '%' && len - i >= 3 && IS(in[i + 1], C_HEX)
            && IS(in[i + 2], C_HEX)) {
            c = (unsigned char)(hexval((unsigned char)in[i + 1]) << 4
                                | hexval((unsigned char)in[i + 2]));
            i += 3;
        }
        else {
            i++;
        }
        out[o++] = (char)c;
    }
    return o;
}

const char *
ymo_http_reason(int status)
{
    /* RFC 9110 section 15 names. */
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}
