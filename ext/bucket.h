/* bucket.h - the unit of response output handed from a worker to the loop:
 * a block of bytes (copied out of Python objects) or a slice of an open
 * file to send with sendfile(2). Buckets form singly linked chains.        */
#ifndef YMO_BUCKET_H
#define YMO_BUCKET_H

#include <stddef.h>
#include <sys/types.h>

#include "alloc.h"

typedef struct ymo_bucket {
    struct ymo_bucket *next;
    size_t len;       /* bytes of data in this bucket (or of the file) */
    size_t off;       /* bytes already written; loop thread only */
    size_t cap;       /* room in data[] */
    int fd;           /* -1: memory bucket; else a file descriptor owned
                       * by the bucket (closed when freed) */
    unsigned from_ex : 1;  /* counts toward the exchange's out_buffered */
    off_t file_off;   /* file offset of the first byte to send */
    char data[];
} ymo_bucket_t;

/* The three allocate, and return NULL when out of memory. Each is called
 * through a macro of its name, which in a fault-injection build adds the
 * caller's site (see alloc.h): which bucket failed is the caller's
 * business, not this file's. */

/* A memory bucket with room for cap bytes, len 0. */
ymo_bucket_t *(ymo_bucket_new)(size_t cap YMO_SITE_PARAM);
#define ymo_bucket_new(cap) (ymo_bucket_new)((cap) YMO_SITE_HERE("bucket"))

/* A memory bucket holding a copy of data[0..len). */
ymo_bucket_t *(ymo_bucket_copy)(const void *data, size_t len YMO_SITE_PARAM);
#define ymo_bucket_copy(data, len)                                         \
    (ymo_bucket_copy)((data), (len) YMO_SITE_HERE("bucket copy"))

/* A file bucket; takes ownership of fd when it succeeds (on failure the
 * caller still owns it). */
ymo_bucket_t *(ymo_bucket_file)(int fd, off_t off, size_t len YMO_SITE_PARAM);
#define ymo_bucket_file(fd, off, len)                                      \
    (ymo_bucket_file)((fd), (off), (len) YMO_SITE_HERE("file bucket"))

/* Free one bucket (closing its file, if any). */
void ymo_bucket_free(ymo_bucket_t *b);

/* Free a whole chain. */
void ymo_bucket_free_chain(ymo_bucket_t *b);

#endif /* YMO_BUCKET_H */
