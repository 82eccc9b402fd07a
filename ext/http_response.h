/* http_response.h - what the server writes on its own: the Date header
 * line, and complete error responses. Plain C: no Python here.          */
#ifndef YMO_HTTP_RESPONSE_H
#define YMO_HTTP_RESPONSE_H

#include <stddef.h>

#include "bucket.h"

/* Room a caller needs for ymo_http_date_header()'s line (it is 37 bytes
 * while years have four digits). */
#define YMO_HTTP_DATE_HEADER_MAX 64

/* "Date: <IMF-fixdate>\r\n" for the current second (RFC 9110 6.6.1), its
 * length in *len (0 only if the clock cannot be read). Any thread: each
 * thread formats the line at most once a second into a buffer of its own,
 * valid until that thread's next call. */
const char *ymo_http_date_header(size_t *len);

/* A complete "HTTP/1.1 <status>" response with Date, a short text body
 * (none when `head`: the answer to a HEAD request) and "Connection:
 * close", as a bucket not counted as exchange output. NULL when out of
 * memory. (The macro adds the caller's site in a fault-injection build:
 * see alloc.h.) */
ymo_bucket_t *(ymo_http_error_bucket)(int status, int head YMO_SITE_PARAM);
#define ymo_http_error_bucket(status, head)                                \
    (ymo_http_error_bucket)((status), (head) YMO_SITE_HERE("error response"))

/* The body bytes of that response (for the access log). */
size_t ymo_http_error_body_len(int status, int head);

#endif /* YMO_HTTP_RESPONSE_H */
