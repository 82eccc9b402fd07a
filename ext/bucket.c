/* bucket.c - allocation of output buckets (see bucket.h). */
#include "bucket.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* An empty memory bucket of cap bytes, on its own. */
static ymo_bucket_t *
bucket_init(ymo_bucket_t *b, size_t cap)
{
    b->next = NULL;
    b->ptr = b->data;
    b->owner = NULL;
    b->rel = NULL;
    b->len = 0;
    b->off = 0;
    b->cap = cap;
    b->fd = -1;
    b->from_ex = 1;
    b->spares = NULL;
    b->file_off = 0;
    return b;
}

ymo_bucket_t *
(ymo_bucket_new)(size_t cap YMO_SITE_PARAM)
{
    ymo_bucket_t *b = ymo_malloc_fwd(sizeof(*b) + cap);
    return b != NULL ? bucket_init(b, cap) : NULL;
}

/* Counts the forks of the process (server.c). */
extern unsigned ymo_fork_gen;

/* Whether sp may be used on this side of a fork (see fork_gen). */
static int
spares_here(const ymo_spares_t *sp)
{
    return __builtin_expect(sp->fork_gen == ymo_fork_gen, 1);
}

void
ymo_spares_init(ymo_spares_t *sp, size_t cap, size_t max)
{
    pthread_mutex_init(&sp->lock, NULL);
    sp->kept.head = NULL;
    sp->kept.count = 0;
    sp->max = max;
    sp->cap = cap;
    sp->fork_gen = ymo_fork_gen;
}

void
ymo_spares_drain(ymo_spares_t *sp)
{
    if (!spares_here(sp)) {
        return;     /* the parent's: left alone, as the rest of its heap */
    }
    pthread_mutex_lock(&sp->lock);
    ymo_kept_free(&sp->kept, sizeof(ymo_bucket_t) + sp->cap);
    sp->max = 0;
    pthread_mutex_unlock(&sp->lock);
}

/* A bucket of sp's is freed: keep it unless sp has enough. */
static void
spares_put(ymo_bucket_t *b)
{
    ymo_spares_t *sp = b->spares;
    if (!spares_here(sp)) {
        free(b);
        return;
    }
    pthread_mutex_lock(&sp->lock);
    int kept = ymo_kept_put(&sp->kept, b, sizeof(*b) + sp->cap, sp->max);
    pthread_mutex_unlock(&sp->lock);
    if (!kept) {
        free(b);
    }
}

ymo_bucket_t *
(ymo_bucket_new_from)(ymo_spares_t *sp, size_t cap YMO_SITE_PARAM)
{
    if (sp == NULL || cap != sp->cap || !spares_here(sp)) {
        return (ymo_bucket_new)(cap YMO_SITE_FWD);
    }
    pthread_mutex_lock(&sp->lock);
    ymo_bucket_t *b = ymo_kept_take(&sp->kept, sizeof(*b) + sp->cap);
    pthread_mutex_unlock(&sp->lock);
    if (b == NULL) {
        b = (ymo_bucket_new)(cap YMO_SITE_FWD);
        if (b != NULL) {
            b->spares = sp;
        }
        return b;
    }
#ifdef YMO_FAULT_INJECTION
    /* The same site as the malloc above: a test fails "this bucket"
     * whether a spare was at hand or not. */
    if (ymo_fi_fail(ymo_site)) {
        spares_put(b);
        return NULL;
    }
#endif
    bucket_init(b, cap);
    b->spares = sp;
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

ymo_bucket_t *
(ymo_bucket_ref)(const void *ptr, size_t len, void *owner,
                 ymo_release_t *rel YMO_SITE_PARAM)
{
    ymo_bucket_t *b = (ymo_bucket_new)(0 YMO_SITE_FWD);
    if (b != NULL) {
        b->ptr = ptr;
        b->len = len;
        b->owner = owner;
        b->rel = rel;
    }
    return b;
}

void
ymo_release_init(ymo_release_t *r, void (*wake)(void *), void *arg)
{
    atomic_init(&r->head, NULL);
    r->wake = wake;
    r->wake_arg = arg;
}

ymo_bucket_t *
ymo_release_take(ymo_release_t *r)
{
    if (atomic_load_explicit(&r->head, memory_order_relaxed) == NULL) {
        return NULL;            /* the common case: no exchange needed */
    }
    return atomic_exchange(&r->head, NULL);
}

/* seq_cst, so a waker that then looks for a thread able to take the
 * list pairs with that thread's own store-then-look (see the list's
 * owner). */
void
ymo_release_push(ymo_release_t *r, ymo_bucket_t *b)
{
    ymo_bucket_t *old = atomic_load_explicit(&r->head, memory_order_relaxed);
    do {
        b->next = old;
    } while (!atomic_compare_exchange_weak(&r->head, &old, b));
    if (old == NULL && r->wake != NULL) {
        r->wake(r->wake_arg);
    }
}

void
ymo_bucket_free_taken(ymo_bucket_t *b)
{
    free(b);
}

void
ymo_bucket_free(ymo_bucket_t *b)
{
    if (b->owner != NULL) {
        ymo_release_push(b->rel, b);
        return;
    }
    if (b->fd >= 0) {
        close(b->fd);
    }
    if (b->spares != NULL) {
        spares_put(b);
        return;
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
