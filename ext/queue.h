/* queue.h - the FIFO that carries exchanges between the loop and a worker,
 * with a pre-allocated pool of nodes. A queue has no lock of its own: the
 * worker's lock_in or lock_out guards it (see wsgi_worker.h). When the
 * pool is empty the caller's spare node is used: every item brings one
 * (an exchange embeds a node per queue it can be in, and is in each at
 * most once), so a push never allocates and never fails.               */
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
    ymo_queue_node_t *mark;        /* ymo_queue_push_turn inserts after
                                    * it: the last node queued before the
                                    * current turn (NULL: at the head) */
    ymo_queue_node_t *free;        /* unused pool nodes */
    ymo_queue_node_t *pool;        /* the pool, to tell its nodes apart */
    size_t pool_size;
} ymo_queue_t;

/* Use pool[0..n) as the queue's node pool. */
void ymo_queue_init(ymo_queue_t *q, ymo_queue_node_t *pool, size_t n);

/* Append item, in a pool node or, when the pool is used up, in `spare`
 * (owned by the caller, in no queue now, and left alone until the item is
 * popped). Cannot fail. */
void ymo_queue_push(ymo_queue_t *q, void *item, ymo_queue_node_t *spare);

/* Start a turn: the items ymo_queue_push_turn pushes from now on go
 * after every item queued now. */
void ymo_queue_mark(ymo_queue_t *q);

/* As ymo_queue_push, but ahead of the items pushed since the last
 * ymo_queue_mark: a turn's items come out in the reverse of the order
 * they were pushed in, after the earlier turns' items. */
void ymo_queue_push_turn(ymo_queue_t *q, void *item,
                         ymo_queue_node_t *spare);

/* As ymo_queue_push_turn, but after the items pushed with it since the
 * last ymo_queue_mark, before the turn's ymo_queue_push_turn items: a
 * turn's carried items come out in the order they were pushed in. */
void ymo_queue_push_carried(ymo_queue_t *q, void *item,
                            ymo_queue_node_t *spare);

/* Remove and return the first item; NULL when empty. */
void *ymo_queue_pop(ymo_queue_t *q);

#endif /* YMO_QUEUE_H */
