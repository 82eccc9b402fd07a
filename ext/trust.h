/* trust.h - the peers whose word about the client is believed
 * (--forwarded-allow-ips): a small table of IPv4 and IPv6 networks, looked
 * up once per connection at accept (and per address when walking an
 * X-Forwarded-For list). Plain C; read-only once the server starts, so
 * any thread may read it without a lock. */
#ifndef YMO_TRUST_H
#define YMO_TRUST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct ymo_trust_net {
    uint8_t family;            /* 4 or 6 */
    uint8_t prefix;            /* leading bits that must match */
    uint8_t addr[16];          /* network order; 4 bytes used for IPv4 */
} ymo_trust_net_t;

typedef struct ymo_trust {
    int any;                   /* "*": every peer is trusted */
    size_t n;
    ymo_trust_net_t *nets;     /* owned (ymo_trust_free) */
} ymo_trust_t;

/* Add "ADDR", "ADDR/PREFIX" or "*" (len bytes of text, no NUL needed).
 * An IPv4-mapped "::ffff:a.b.c.d/N" is the IPv4 network /N-96 (N must be
 * 96..128). Returns 0, -EINVAL for text that is none of these, -ENOMEM. */
int ymo_trust_add(ymo_trust_t *t, const char *text, size_t len);

/* Free the table's memory (it stays usable, empty). */
void ymo_trust_free(ymo_trust_t *t);

/* Parse a numeric IPv4 or IPv6 address (no brackets, no port) from
 * text[0..len) into addr (16 bytes; an IPv4-mapped IPv6 address counts as
 * IPv4). Returns 4, 6 or 0 when it is not one. */
int ymo_trust_parse_ip(const char *text, size_t len, uint8_t addr[16]);

/* Whether an address (family 4 or 6, as ymo_trust_parse_ip gives it) is
 * in the table. */
int ymo_trust_match(const ymo_trust_t *t, int family, const uint8_t *addr);

/* Whether an accepted peer is trusted: AF_UNIX peers always are (the
 * socket file's permissions decide who may connect, as in gunicorn). */
int ymo_trust_match_sockaddr(const ymo_trust_t *t, const struct sockaddr *sa);

#endif /* YMO_TRUST_H */
