/* queue.h - the FIFO that carries exchanges between the loop and a worker,
 * with a pre-allocated pool of nodes. A queue has no lock of its own: the
 * worker's lock_in or lock_out guards it (see wsgi_worker.h). When the
 * pool is empty a node is allocated, so a push never drops an item.     */
#ifndef YMO_QUEUE_H
#define YMO_QUEUE_H

#include <stddef.h>

typedef struct ymo_queue_node {
    struct ymo_queue_node *next;
    void *item;
} ymo_queue_node_t;

typedef struct ymo_queue {
    ymo_queue_node_t *head;
    ymo_queue_node_t *tail;
    size_t count;
    ymo_queue_node_t *free;        /* unused pool nodes */
    ymo_queue_node_t *pool;        /* the pool, to tell its nodes apart */
    size_t pool_size;
} ymo_queue_t;

/* Use pool[0..n) as the queue's node pool. */
void ymo_queue_init(ymo_queue_t *q, ymo_queue_node_t *pool, size_t n);

/* Append item. 0, or -ENOMEM when the pool is empty and malloc fails. */
int ymo_queue_push(ymo_queue_t *q, void *item);

/* Remove and return the first item; NULL when empty. */
void *ymo_queue_pop(ymo_queue_t *q);

/* Free any allocated (non-pool) nodes still queued; the items are the
 * caller's business. */
void ymo_queue_clear(ymo_queue_t *q);

#endif /* YMO_QUEUE_H */
