/* forwarded.h - what a trusted proxy says about the client, read from the
 * values of its request header fields: Forwarded (RFC 7239) and the de
 * facto X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host. Plain C,
 * allocates nothing; the worker calls it while it builds the environ, and
 * only for requests that carry such a field from a trusted peer.
 *
 * Which hop is believed: a list of addresses is walked from the right
 * (the hop nearest to us), past every address that is itself trusted; the
 * first one that is not is the client. A malformed value is ignored as a
 * whole, never guessed at. */
#ifndef YMO_FORWARDED_H
#define YMO_FORWARDED_H

#include <stddef.h>

#include "trust.h"

#define YMO_FORWARDED_HOST_MAX 256

enum { YMO_PROTO_NONE = 0, YMO_PROTO_HTTP, YMO_PROTO_HTTPS };

typedef struct ymo_forwarded {
    int has_addr;              /* addr holds the client's address */
    char addr[48];             /* numeric, canonical, no brackets */
    int port;                  /* the client's port, -1 when not given */
    int proto;                 /* YMO_PROTO_* */
    size_t host_len;           /* 0: not given */
    char host[YMO_FORWARDED_HOST_MAX];  /* uri-host [":" port] */
} ymo_forwarded_t;

/* Forwarded: the element of the client (see above) gives for=, proto=
 * and host=. An obfuscated or "unknown" for= ends the walk with no
 * address. Returns 0 with *out filled, -1 when the value is malformed
 * (out is then cleared). */
int ymo_forwarded_parse(const char *v, size_t len, const ymo_trust_t *t,
                        ymo_forwarded_t *out);

/* X-Forwarded-For: 0 with out->has_addr/addr/port set, -1 malformed. */
int ymo_forwarded_for(const char *v, size_t len, const ymo_trust_t *t,
                      ymo_forwarded_t *out);

/* X-Forwarded-Proto: the rightmost entry, "http" or "https" in any case;
 * YMO_PROTO_NONE for anything else. */
int ymo_forwarded_proto(const char *v, size_t len);

/* X-Forwarded-Host: the rightmost entry into out->host, if it is a valid
 * uri-host [":" port]. Returns 0 or -1. */
int ymo_forwarded_host(const char *v, size_t len, ymo_forwarded_t *out);

/* Split a valid host (as above) into name and port: *name_len, and the
 * port's offset and length (0 when there is none). */
void ymo_forwarded_split_host(const char *host, size_t len,
                              size_t *name_len, size_t *port_off,
                              size_t *port_len);

#endif /* YMO_FORWARDED_H */
