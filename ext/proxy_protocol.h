/* proxy_protocol.h - a parser for the PROXY protocol header (HAProxy's
 * proxy-protocol.txt, versions 1 and 2) that a load balancer sends at the
 * start of a connection to pass on the client's address. Plain C: like
 * the HTTP parser it allocates nothing, keeps no state between calls and
 * returns bytes consumed / -2 (incomplete) / -1 (not a valid header);
 * what it returns points into the caller's buffer. */
#ifndef YMO_PROXY_PROTOCOL_H
#define YMO_PROXY_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

/* The longest version 1 header, CRLF included (the spec's 107). */
#define YMO_PROXY_V1_MAX 107
/* Version 2: the fixed part (signature, command, family, length). */
#define YMO_PROXY_V2_FIXED 16

enum ymo_proxy_family {
    YMO_PROXY_UNSPEC = 0,      /* LOCAL, UNKNOWN or AF_UNSPEC: use the
                                * connection's own addresses */
    YMO_PROXY_INET,
    YMO_PROXY_INET6,
    YMO_PROXY_UNIX,
};

typedef struct ymo_proxy_header {
    int version;               /* 1 or 2 */
    int family;                /* enum ymo_proxy_family */
    uint8_t src_addr[16];      /* network order: 4 bytes for INET */
    uint8_t dst_addr[16];
    uint16_t src_port;         /* host order */
    uint16_t dst_port;
    const char *src_path;      /* UNIX: the source path, up to 108 bytes,
                                * not NUL-terminated (src_path_len) */
    size_t src_path_len;
    const uint8_t *tlv;        /* version 2: the TLVs after the addresses
                                * (checked to be well framed), or NULL */
    size_t tlv_len;
} ymo_proxy_header_t;

/* Parse the PROXY header at the start of buf[0..len). Returns its length
 * (the HTTP request follows it), -2 when buf is a proper prefix of what
 * may still become a valid header, -1 when it cannot be one (including
 * input that is not a PROXY header at all, and version 2 datagram
 * families: this is a stream server). Reads nothing past buf + len. */
int ymo_proxy_parse(const char *buf, size_t len, ymo_proxy_header_t *h);

/* Whether buf starts with a PROXY signature ("PROXY " for version 1, the
 * 12-byte binary one for version 2): 1 yes, 0 no, -2 buf is too short to
 * tell (it is a proper prefix of a signature). */
int ymo_proxy_signature(const char *buf, size_t len);

#endif /* YMO_PROXY_PROTOCOL_H */
