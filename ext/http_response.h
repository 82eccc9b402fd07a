/* http_response.h - responses the server writes on its own (errors). */
#ifndef YMO_HTTP_RESPONSE_H
#define YMO_HTTP_RESPONSE_H

#include "bucket.h"

/* A complete "HTTP/1.1 <status>" response with a short text body and
 * "Connection: close", as a bucket not counted as exchange output.
 * NULL when out of memory. */
ymo_bucket_t *ymo_http_error_bucket(int status);

#endif /* YMO_HTTP_RESPONSE_H */
