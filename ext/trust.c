/* trust.c - the table of trusted proxy networks (see trust.h). */
#include "trust.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "alloc.h"

static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                      0xff, 0xff};

int
ymo_trust_parse_ip(const char *text, size_t len, uint8_t addr[16])
{
    char tmp[48];              /* INET6_ADDRSTRLEN is 46 */
    if (len == 0 || len >= sizeof(tmp)) {
        return 0;
    }
    memcpy(tmp, text, len);
    tmp[len] = '\0';
    if (memchr(tmp, ':', len) == NULL) {
        return inet_pton(AF_INET, tmp, addr) == 1 ? 4 : 0;
    }
    if (inet_pton(AF_INET6, tmp, addr) != 1) {
        return 0;
    }
    if (memcmp(addr, v4_mapped, 12) == 0) {
        memmove(addr, addr + 12, 4);
        return 4;
    }
    return 6;
}

int
ymo_trust_add(ymo_trust_t *t, const char *text, size_t len)
{
    if (len == 1 && text[0] == '*') {
        t->any = 1;
        return 0;
    }
    const char *slash = memchr(text, '/', len);
    size_t alen = slash != NULL ? (size_t)(slash - text) : len;
    ymo_trust_net_t net;
    memset(&net, 0, sizeof(net));
    int family = ymo_trust_parse_ip(text, alen, net.addr);
    if (family == 0) {
        return -EINVAL;
    }
    /* An IPv4-mapped address ("::ffff:a.b.c.d") is the IPv4 address, and
     * peers are matched as IPv4 (ymo_trust_match_sockaddr): its prefix
     * counts the 96 bits of ::ffff:0:0/96 too, so /96../128 is IPv4
     * /0../32. A shorter one would reach past the mapped addresses into
     * IPv6 proper, which no IPv4 network is: refused. */
    int mapped = family == 4 && memchr(text, ':', alen) != NULL;
    unsigned max = family == 4 && !mapped ? 32 : 128, prefix = max;
    if (slash != NULL) {
        const char *p = slash + 1, *end = text + len;
        if (p == end || end - p > 3) {
            return -EINVAL;
        }
        prefix = 0;
        for (; p < end; p++) {
            if (*p < '0' || *p > '9') {
                return -EINVAL;
            }
            prefix = prefix * 10 + (unsigned)(*p - '0');
        }
        if (prefix > max || (mapped && prefix < 96)) {
            return -EINVAL;
        }
    }
    if (mapped) {
        prefix -= 96;
    }
    net.family = (uint8_t)family;
    net.prefix = (uint8_t)prefix;
    ymo_trust_net_t *nets = ymo_realloc(t->nets,
                                        (t->n + 1) * sizeof(*nets));
    if (nets == NULL) {
        return -ENOMEM;
    }
    nets[t->n++] = net;
    t->nets = nets;
    return 0;
}

void
ymo_trust_free(ymo_trust_t *t)
{
    free(t->nets);
    t->nets = NULL;
    t->n = 0;
    t->any = 0;
}

static int
prefix_eq(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(a, b, whole) != 0) {
        return 0;
    }
    if (rest == 0) {
        return 1;
    }
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return ((a[whole] ^ b[whole]) & mask) == 0;
}

int
ymo_trust_match(const ymo_trust_t *t, int family, const uint8_t *addr)
{
    if (t->any) {
        return 1;
    }
    for (size_t i = 0; i < t->n; i++) {
        const ymo_trust_net_t *net = &t->nets[i];
        if (net->family == family && prefix_eq(net->addr, addr, net->prefix)) {
            return 1;
        }
    }
    return 0;
}

int
ymo_trust_match_sockaddr(const ymo_trust_t *t, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_UNIX) {
        return 1;
    }
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        return ymo_trust_match(t, 4, (const uint8_t *)&sin->sin_addr);
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        const uint8_t *a = sin6->sin6_addr.s6_addr;
        if (memcmp(a, v4_mapped, 12) == 0) {
            return ymo_trust_match(t, 4, a + 12);
        }
        return ymo_trust_match(t, 6, a);
    }
    return 0;
}
