/* queue.c - FIFO with a node pool and caller-provided spare nodes (see
 * queue.h). Nothing here allocates. */
#include "queue.h"

void
ymo_queue_init(ymo_queue_t *q, ymo_queue_node_t *pool, size_t n)
{
    q->head = q->tail = NULL;
    q->mark = NULL;
    q->count = 0;
    q->free = NULL;
    q->pool = pool;
    q->pool_size = n;
    for (size_t i = n; i > 0; i--) {
        pool[i - 1].next = q->free;
        pool[i - 1].item = NULL;
        q->free = &pool[i - 1];
    }
}

static int
from_pool(const ymo_queue_t *q, const ymo_queue_node_t *node)
{
    return node >= q->pool && node < q->pool + q->pool_size;
}

static ymo_queue_node_t *
take_node(ymo_queue_t *q, void *item, ymo_queue_node_t *spare)
{
    ymo_queue_node_t *node = q->free;
    if (node != NULL) {
        q->free = node->next;
    }
    else {
        node = spare;
    }
    node->item = item;
    q->count++;
    return node;
}

void
ymo_queue_push(ymo_queue_t *q, void *item, ymo_queue_node_t *spare)
{
    ymo_queue_node_t *node = take_node(q, item, spare);
    node->next = NULL;
    if (q->tail != NULL) {
        q->tail->next = node;
    }
    else {
        q->head = node;
    }
    q->tail = node;
}

void
ymo_queue_mark(ymo_queue_t *q)
{
    q->mark = q->tail;
}

void
ymo_queue_push_turn(ymo_queue_t *q, void *item, ymo_queue_node_t *spare)
{
    ymo_queue_node_t *node = take_node(q, item, spare);
    ymo_queue_node_t **at = q->mark != NULL ? &q->mark->next : &q->head;
    node->next = *at;
    *at = node;
    if (node->next == NULL) {
        q->tail = node;
    }
}

void
ymo_queue_push_carried(ymo_queue_t *q, void *item, ymo_queue_node_t *spare)
{
    ymo_queue_push_turn(q, item, spare);
    q->mark = q->mark != NULL ? q->mark->next : q->head;
}

void *
ymo_queue_pop(ymo_queue_t *q)
{
    ymo_queue_node_t *node = q->head;
    if (node == NULL) {
        return NULL;
    }
    q->head = node->next;
    if (q->head == NULL) {
        q->tail = NULL;
    }
    if (q->mark == node) {
        q->mark = NULL;         /* the turn's items are at the head now */
    }
    q->count--;
    void *item = node->item;
    if (from_pool(q, node)) {
        node->next = q->free;
        q->free = node;
    }
    return item;
}
