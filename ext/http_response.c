/* http_response.c - the server's own response parts: the cached Date
 * line and the error responses (see http_response.h).                    */
#include "http_response.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "http_parser.h"

/* The Date line is formatted at most once a second per thread: the loop
 * thread (error responses) and every worker (app responses) keep their
 * own, so no lock is needed. */
static __thread time_t date_when;
static __thread char date_line[YMO_HTTP_DATE_HEADER_MAX];
static __thread size_t date_len;

const char *
ymo_http_date_header(size_t *len)
{
    /* HTTP-date names are English whatever the locale, so they are not
     * left to strftime(), whose %a and %b follow LC_TIME (an app may call
     * setlocale()). */
    static const char days[7][4] = {
        "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat",
    };
    static const char months[12][4] = {
        "Jan", "Feb", "Mar", "Apr", "May", "Jun",
        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    };
    time_t t = time(NULL);
    if (t != date_when) {
        struct tm tm;
        if (t == (time_t)-1 || gmtime_r(&t, &tm) == NULL) {
            *len = date_len;
            return date_line;
        }
        int n = snprintf(date_line, sizeof(date_line),
                         "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
                         days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
                         tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                         tm.tm_sec);
        /* At most 44 bytes even with an int's widest year. */
        date_len = n > 0 ? (size_t)n : 0;
        date_when = t;
    }
    *len = date_len;
    return date_line;
}

size_t
ymo_http_error_body_len(int status, int head)
{
    return head ? 0 : strlen(ymo_http_reason(status)) + 1;     /* and LF */
}

ymo_bucket_t *
(ymo_http_error_bucket)(int status, int head YMO_SITE_PARAM)
{
    const char *reason = ymo_http_reason(status);
    size_t date_n;
    const char *date = ymo_http_date_header(&date_n);
    char buf[512];
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %d %s\r\n"
                     "%.*s"
                     "Content-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %zu\r\n"
                     "%s"
                     "Connection: close\r\n"
                     "\r\n"
                     "%s%s",
                     status, reason, (int)date_n, date,
                     ymo_http_error_body_len(status, 0),
                     /* Overloaded: a client may try again shortly. */
                     status == 503 ? "Retry-After: 1\r\n" : "",
                     /* A HEAD response has no body (RFC 9110 9.3.2). */
                     head ? "" : reason, head ? "" : "\n");
    ymo_bucket_t *b = (ymo_bucket_copy)(buf, (size_t)n YMO_SITE_FWD);
    if (b != NULL) {
        b->from_ex = 0;
    }
    return b;
}
