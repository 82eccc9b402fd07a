/* test_queue.c - the hand-off queue never allocates and never fails: with
 * its pool used up, items go in the spare nodes they bring. Linked with
 * malloc, calloc and realloc wrapped (-Wl,--wrap=...) to fail the test if
 * anything in queue.c calls them. A turn's pushes (ymo_queue_push_turn)
 * come out in reverse, after the earlier turns'. Prints "N passed, N
 * failed". */
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
    /* Turns: each turn's pushes come out in reverse, after the earlier
     * turns', also when the last item before the turn is popped
     * meanwhile (the turn's items are at the head then). */
    int order[16], n = 0;
    ymo_queue_mark(&q);
    for (int i = 0; i < 3; i++) {
        ymo_queue_push_turn(&q, &items[i], &items[i].node);
    }
    ymo_queue_mark(&q);
    ymo_queue_push_turn(&q, &items[3], &items[3].node);
    ymo_queue_push_turn(&q, &items[4], &items[4].node);
    for (int i = 0; i < 3; i++) {
        order[n++] = ((item_t *)ymo_queue_pop(&q))->id;
    }
    ymo_queue_push_turn(&q, &items[5], &items[5].node);
    ymo_queue_push(&q, &items[6], &items[6].node);
    while (q.count > 0) {
        order[n++] = ((item_t *)ymo_queue_pop(&q))->id;
    }
    static const int expected[] = {2, 1, 0, 5, 4, 3, 6};
    int same = n == 7;
    for (int i = 0; same && i < 7; i++) {
        same = order[i] == expected[i];
    }
    CHECK(same);
    CHECK(q.count == 0 && q.head == NULL && q.tail == NULL);
    /* Carried items (ymo_queue_push_carried) go in order ahead of the
     * turn's reads, whenever they come, and also once the last carried
     * one is popped: ids 0-3 are reads (newest first), 10-13 carried. */
    n = 0;
    ymo_queue_mark(&q);
    static const int pushes[] = {3, 10, 2, 11, -1, 12, -2, -1, 13, 1, 0};
    for (size_t i = 0; i < sizeof(pushes) / sizeof(pushes[0]); i++) {
        int id = pushes[i];
        if (id < 0) {           /* -1: pop one; -2: pop two */
            for (int k = 0; k < -id; k++) {
                order[n++] = ((item_t *)ymo_queue_pop(&q))->id;
            }
            continue;
        }
        items[id].id = id;
        if (id >= 10) {
            ymo_queue_push_carried(&q, &items[id], &items[id].node);
        }
        else {
            ymo_queue_push_turn(&q, &items[id], &items[id].node);
        }
    }
    while (q.count > 0) {
        order[n++] = ((item_t *)ymo_queue_pop(&q))->id;
    }
    static const int carried[] = {10, 11, 12, 2, 13, 0, 1, 3};
    same = n == 8;
    for (int i = 0; same && i < 8; i++) {
        same = order[i] == carried[i];
    }
    CHECK(same);
    /* Many turns of every size, past the pool, with pops between. */
    int ok = 1, popped = 0, pushed = 0;
    for (int size = 1; pushed + size <= N_ITEMS; size++) {
        ymo_queue_mark(&q);
        for (int i = 0; i < size; i++) {
            int id = pushed + size - 1 - i;     /* newest first */
            items[id].id = id;
            ymo_queue_push_turn(&q, &items[id], &items[id].node);
        }
        pushed += size;
        for (int i = 0; i < size / 2 + 1 && q.count > 0; i++) {
            item_t *it = ymo_queue_pop(&q);
            ok &= it != NULL && it->id == popped++;
        }
    }
    while (q.count > 0) {
        item_t *it = ymo_queue_pop(&q);
        ok &= it != NULL && it->id == popped++;
    }
    CHECK(ok && popped == pushed);
    CHECK(q.head == NULL && q.tail == NULL);
    CHECK(allocations == 0);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
