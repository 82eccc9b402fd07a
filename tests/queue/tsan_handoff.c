/* tsan_handoff.c - ThreadSanitizer test of the loop -> worker -> loop
 * hand-off, without Python: the real queue.c, driven by the locking
 * protocol of wsgi_worker.c (re-stated here, since that file needs
 * Python and libev): a loop thread pushes exchanges into each worker's
 * queue_in under its lock_in and signals ready_in; workers pop from their
 * own queue, steal from peers' under the peer's lock_in, sleep on
 * ready_in after announcing `idle`, "run" the exchange under its own
 * lock, and push it to their queue_out under lock_out, waking the loop
 * (an eventfd in place of ev_async) only on the empty -> non-empty
 * transition; the loop drains queue_out in batches. Every exchange must
 * come back exactly once with its work done, and TSan must report
 * nothing. Usage: tsan_handoff [EXCHANGES [WORKERS]]; prints "ok N".  */
#define _GNU_SOURCE 1
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "queue.h"

#define POOL 64
#define INFLIGHT 256
#define MAX_WORKERS 16

typedef struct {
    pthread_mutex_t lock;      /* the exchange's lock */
    int state;                 /* lock: 0 free, 1 queued, 2 run */
    uint64_t seq;              /* lock: which round it carries */
    uint64_t result;           /* lock: the worker's "response" */
    ymo_queue_node_t node_in;  /* its spare nodes, as an exchange's */
    ymo_queue_node_t node_out;
} exchange_t;

typedef struct worker {
    pthread_t thread;
    size_t id;
    pthread_mutex_t lock_in;   /* guards queue_in, running, poked */
    pthread_cond_t ready_in;
    ymo_queue_t queue_in;
    ymo_queue_node_t pool_in[POOL];
    int running;
    int poked;
    atomic_int idle;           /* worker writes, loop reads */
    pthread_mutex_t lock_out;  /* guards queue_out */
    ymo_queue_t queue_out;
    ymo_queue_node_t pool_out[POOL];
} worker_t;

static worker_t workers[MAX_WORKERS];
static size_t n_workers;
static int wake_fd;            /* the loop's "ev_async" */

static exchange_t *
take_from(worker_t *from)
{
    pthread_mutex_lock(&from->lock_in);
    exchange_t *ex = ymo_queue_pop(&from->queue_in);
    pthread_mutex_unlock(&from->lock_in);
    return ex;
}

static exchange_t *
next_exchange(worker_t *self)
{
    for (;;) {
        exchange_t *ex = take_from(self);
        for (size_t i = 1; ex == NULL && i < n_workers; i++) {
            ex = take_from(&workers[(self->id + i) % n_workers]);
        }
        if (ex != NULL) {
            return ex;
        }
        atomic_store(&self->idle, 1);
        pthread_mutex_lock(&self->lock_in);
        while (self->queue_in.count == 0 && !self->poked && self->running) {
            pthread_cond_wait(&self->ready_in, &self->lock_in);
        }
        int running = self->running, queued = self->queue_in.count > 0;
        self->poked = 0;
        pthread_mutex_unlock(&self->lock_in);
        atomic_store(&self->idle, 0);
        if (!running && !queued) {
            return NULL;
        }
    }
}

static void *
worker_main(void *arg)
{
    worker_t *self = arg;
    exchange_t *ex;
    while ((ex = next_exchange(self)) != NULL) {
        pthread_mutex_lock(&ex->lock);
        if (ex->state != 1) {
            fprintf(stderr, "exchange run twice or not queued\n");
            abort();
        }
        ex->state = 2;
        ex->result = ex->seq * 2654435761u;
        pthread_mutex_unlock(&ex->lock);
        pthread_mutex_lock(&self->lock_out);
        ymo_queue_push(&self->queue_out, ex, &ex->node_out);
        int first = self->queue_out.count == 1;
        pthread_mutex_unlock(&self->lock_out);
        if (first) {
            uint64_t one = 1;
            if (write(wake_fd, &one, sizeof(one)) != sizeof(one)) {
                abort();
            }
        }
    }
    return NULL;
}

static void
dispatch(worker_t *w, exchange_t *ex)
{
    pthread_mutex_lock(&w->lock_in);
    ymo_queue_push(&w->queue_in, ex, &ex->node_in);
    w->poked = 1;
    pthread_cond_signal(&w->ready_in);
    pthread_mutex_unlock(&w->lock_in);
}

int
main(int argc, char **argv)
{
    uint64_t total = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000;
    n_workers = argc > 2 ? (size_t)atoi(argv[2]) : 4;
    if (n_workers < 1 || n_workers > MAX_WORKERS) {
        return 2;
    }
    wake_fd = eventfd(0, EFD_CLOEXEC);
    static exchange_t exchanges[INFLIGHT];
    for (size_t i = 0; i < n_workers; i++) {
        worker_t *w = &workers[i];
        w->id = i;
        w->running = 1;
        pthread_mutex_init(&w->lock_in, NULL);
        pthread_mutex_init(&w->lock_out, NULL);
        pthread_cond_init(&w->ready_in, NULL);
        ymo_queue_init(&w->queue_in, w->pool_in, POOL);
        ymo_queue_init(&w->queue_out, w->pool_out, POOL);
        atomic_init(&w->idle, 0);
    }
    for (size_t i = 0; i < INFLIGHT; i++) {
        pthread_mutex_init(&exchanges[i].lock, NULL);
    }
    for (size_t i = 0; i < n_workers; i++) {
        pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
    }
    uint64_t sent = 0, done = 0;
    size_t rr = 0;
    /* Fill the pipeline, then send one more per one back. */
    for (size_t i = 0; i < INFLIGHT && sent < total; i++, sent++) {
        exchange_t *ex = &exchanges[i];
        pthread_mutex_lock(&ex->lock);
        ex->state = 1;
        ex->seq = sent;
        pthread_mutex_unlock(&ex->lock);
        dispatch(&workers[rr++ % n_workers], ex);
    }
    while (done < total) {
        uint64_t n;
        if (read(wake_fd, &n, sizeof(n)) != sizeof(n)) {
            abort();
        }
        for (size_t i = 0; i < n_workers; i++) {
            worker_t *w = &workers[i];
            for (;;) {
                exchange_t *batch[64];
                size_t k = 0;
                pthread_mutex_lock(&w->lock_out);
                while (k < 64 && (batch[k] = ymo_queue_pop(&w->queue_out))) {
                    k++;
                }
                pthread_mutex_unlock(&w->lock_out);
                for (size_t j = 0; j < k; j++) {
                    exchange_t *ex = batch[j];
                    pthread_mutex_lock(&ex->lock);
                    if (ex->state != 2 ||
                        ex->result != ex->seq * 2654435761u) {
                        fprintf(stderr, "exchange %llu came back wrong\n",
                                (unsigned long long)ex->seq);
                        abort();
                    }
                    done++;
                    int again = sent < total;
                    if (again) {
                        ex->state = 1;
                        ex->seq = sent++;
                    }
                    else {
                        ex->state = 0;
                    }
                    pthread_mutex_unlock(&ex->lock);
                    if (again) {
                        dispatch(&workers[rr++ % n_workers], ex);
                    }
                }
                if (k < 64) {
                    break;
                }
            }
        }
    }
    for (size_t i = 0; i < n_workers; i++) {
        pthread_mutex_lock(&workers[i].lock_in);
        workers[i].running = 0;
        pthread_cond_signal(&workers[i].ready_in);
        pthread_mutex_unlock(&workers[i].lock_in);
    }
    for (size_t i = 0; i < n_workers; i++) {
        pthread_join(workers[i].thread, NULL);
    }
    printf("ok %llu\n", (unsigned long long)done);
    return 0;
}
