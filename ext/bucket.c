/* bucket.c - allocation of output buckets (see bucket.h). */
#include "bucket.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

ymo_bucket_t *
(ymo_bucket_new)(size_t cap YMO_SITE_PARAM)
{
    ymo_bucket_t *b = ymo_malloc_fwd(sizeof(*b) + cap);
    if (b == NULL) {
        return NULL;
    }
    b->next = NULL;
    b->len = 0;
    b->off = 0;
    b->cap = cap;
    b->fd = -1;
    b->from_ex = 1;
    b->file_off = 0;
    return b;
}

ymo_bucket_t *
(ymo_bucket_copy)(const void *data, size_t len YMO_SITE_PARAM)
{
    ymo_bucket_t *b = (ymo_bucket_new)(len YMO_SITE_FWD);
    if (b != NULL) {
        memcpy(b->data, data, len);
        b->len = len;
    }
    return b;
}

ymo_bucket_t *
(ymo_bucket_file)(int fd, off_t off, size_t len YMO_SITE_PARAM)
{
    ymo_bucket_t *b = (ymo_bucket_new)(0 YMO_SITE_FWD);
    if (b != NULL) {
        b->fd = fd;
        b->file_off = off;
        b->len = len;
    }
    return b;
}

void
ymo_bucket_free(ymo_bucket_t *b)
{
    if (b->fd >= 0) {
        close(b->fd);
    }
    free(b);
}

void
ymo_bucket_free_chain(ymo_bucket_t *b)
{
    while (b != NULL) {
        ymo_bucket_t *next = b->next;
        ymo_bucket_free(b);
        b = next;
    }
}
