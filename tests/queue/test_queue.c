/* test_queue.c - the hand-off queue never allocates and never fails: with
 * its pool used up, items go in the spare nodes they bring. Linked with
 * malloc, calloc and realloc wrapped (-Wl,--wrap=...) to fail the test if
 * anything in queue.c calls them. Prints "N passed, N failed".          */
#include <stdio.h>
#include <stdlib.h>

#include "queue.h"

static int allocations;

void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);

void *
__wrap_malloc(size_t n)
{
    (void)n;
    allocations++;
    return NULL;                /* as if memory had run out */
}

void *
__wrap_calloc(size_t n, size_t m)
{
    (void)n;
    (void)m;
    allocations++;
    return NULL;
}

void *
__wrap_realloc(void *p, size_t n)
{
    (void)p;
    (void)n;
    allocations++;
    return NULL;
}

static int passed, failed;

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (cond) {                                                        \
            passed++;                                                      \
        }                                                                  \
        else {                                                             \
            failed++;                                                      \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);         \
        }                                                                  \
    } while (0)

#define N_ITEMS 1000

typedef struct {
    int id;
    ymo_queue_node_t node;      /* as an exchange brings node_in/node_out */
} item_t;

int
main(void)
{
    static item_t items[N_ITEMS];
    ymo_queue_node_t pool[4];
    ymo_queue_t q;
    ymo_queue_init(&q, pool, 4);
    for (int round = 0; round < 3; round++) {
        /* Far more items than pool nodes, in FIFO order. */
        for (int i = 0; i < N_ITEMS; i++) {
            items[i].id = i;
            ymo_queue_push(&q, &items[i], &items[i].node);
        }
        CHECK(q.count == N_ITEMS);
        int in_order = 1;
        for (int i = 0; i < N_ITEMS; i++) {
            item_t *it = ymo_queue_pop(&q);
            if (it == NULL || it->id != i) {
                in_order = 0;
            }
        }
        CHECK(in_order);
        CHECK(ymo_queue_pop(&q) == NULL);
        CHECK(q.count == 0 && q.head == NULL && q.tail == NULL);
        /* The pool is whole again: four pushes take pool nodes. */
        int from_pool = 1;
        for (int i = 0; i < 4; i++) {
            ymo_queue_push(&q, &items[i], &items[i].node);
            if (q.tail < pool || q.tail >= pool + 4) {
                from_pool = 0;
            }
        }
        CHECK(from_pool);
        for (int i = 0; i < 4; i++) {
            ymo_queue_pop(&q);
        }
        /* Interleaved pushes and pops reuse spare nodes safely. */
        int ok = 1, next = 0;
        for (int i = 0; i < N_ITEMS; i++) {
            ymo_queue_push(&q, &items[i], &items[i].node);
            if (i % 3 == 2) {
                item_t *it = ymo_queue_pop(&q);
                ok &= it != NULL && it->id == next++;
            }
        }
        while (q.count > 0) {
            item_t *it = ymo_queue_pop(&q);
            ok &= it != NULL && it->id == next++;
        }
        CHECK(ok && next == N_ITEMS);
    }
    CHECK(allocations == 0);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
