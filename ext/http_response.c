/* http_response.c - the server's own responses (see http_response.h). */
#include "http_response.h"

#include <stdio.h>
#include <string.h>

#include "http_parser.h"

ymo_bucket_t *
ymo_http_error_bucket(int status)
{
    const char *reason = ymo_http_reason(status);
    char buf[512];
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %zu\r\n"
                     "Connection: close\r\n"
                     "\r\n"
                     "%s\n",
                     status, reason, strlen(reason) + 1, reason);
    ymo_bucket_t *b = ymo_bucket_copy(buf, (size_t)n);
    if (b != NULL) {
        b->from_ex = 0;
    }
    return b;
}
