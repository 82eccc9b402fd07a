/* test_spares.c - the response buckets kept for reuse (ext/bucket.c,
 * ymo_spares_t): a freed one comes back reset, no more than `max` are
 * kept, a drained set frees what comes back, and in a fork of the process
 * taken while another thread held the lock, nothing waits for that lock
 * (a child the app forks must reach the fork guard, not hang in a free).
 * Built with bucket.c alone by tests/test_parser.py. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bucket.h"

/* server.c's: counts forks (its pthread_atfork handler increments it in
 * the child; this test does the same by hand). */
unsigned ymo_fork_gen;

static int failed;
static int passed;

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (cond) {                                                        \
            passed++;                                                      \
        }                                                                  \
        else {                                                             \
            failed++;                                                      \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__,         \
                    __LINE__, #cond);                                      \
        }                                                                  \
    } while (0)

static size_t
count(ymo_spares_t *sp)
{
    pthread_mutex_lock(&sp->lock);
    size_t n = sp->kept.count;
    pthread_mutex_unlock(&sp->lock);
    return n;
}

static void
test_reuse_resets_the_bucket(void)
{
    ymo_spares_t sp;
    ymo_spares_init(&sp, 4096, 4);
    ymo_bucket_t *b = ymo_bucket_new_from(&sp, 4096);
    CHECK(b != NULL && b->spares == &sp && b->cap == 4096);
    /* What the writer and the loop leave in a used bucket. */
    memset(b->data, 'x', 100);
    b->len = 100;
    b->off = 60;
    b->from_ex = 0;
    b->file_off = 7;
    b->next = (ymo_bucket_t *)&sp;
    ymo_bucket_free(b);
    CHECK(count(&sp) == 1);
    ymo_bucket_t *again = ymo_bucket_new_from(&sp, 4096);
    CHECK(again == b);
    CHECK(count(&sp) == 0);
    CHECK(again->next == NULL && again->ptr == again->data &&
          again->owner == NULL && again->rel == NULL && again->len == 0 &&
          again->off == 0 && again->cap == 4096 && again->fd == -1 &&
          again->from_ex == 1 && again->file_off == 0 &&
          again->spares == &sp);
    ymo_bucket_free(again);
    ymo_spares_drain(&sp);
}

static void
test_other_sizes_are_not_spares(void)
{
    ymo_spares_t sp;
    ymo_spares_init(&sp, 4096, 4);
    ymo_bucket_t *small = ymo_bucket_new_from(&sp, 32);
    ymo_bucket_t *big = ymo_bucket_new_from(&sp, 8192);
    ymo_bucket_t *none = ymo_bucket_new_from(NULL, 4096);
    CHECK(small != NULL && small->spares == NULL && small->cap == 32);
    CHECK(big != NULL && big->spares == NULL && big->cap == 8192);
    CHECK(none != NULL && none->spares == NULL);
    ymo_bucket_free(small);
    ymo_bucket_free(big);
    ymo_bucket_free(none);
    CHECK(count(&sp) == 0);
    ymo_spares_drain(&sp);
}

static void
test_no_more_than_max_are_kept(void)
{
    enum { MAX = 5, MANY = 12 };
    ymo_spares_t sp;
    ymo_spares_init(&sp, 4096, MAX);
    ymo_bucket_t *b[MANY];
    for (int i = 0; i < MANY; i++) {
        b[i] = ymo_bucket_new_from(&sp, 4096);
        CHECK(b[i] != NULL);
    }
    for (int i = 0; i < MANY; i++) {
        ymo_bucket_free(b[i]);      /* the rest are freed: ASan's leak
                                     * check sees any that is lost */
    }
    CHECK(count(&sp) == MAX);
    ymo_spares_drain(&sp);
    CHECK(count(&sp) == 0);
}

static void
test_a_bucket_back_after_the_drain_is_freed(void)
{
    ymo_spares_t sp;
    ymo_spares_init(&sp, 4096, 4);
    ymo_bucket_t *late = ymo_bucket_new_from(&sp, 4096);
    ymo_spares_drain(&sp);
    ymo_bucket_free(late);
    CHECK(count(&sp) == 0);
}

/* -- A fork taken while another thread holds the lock -- */

static ymo_spares_t forked_sp;
static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static int holding, release_it;

static void *
holder(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&forked_sp.lock);
    pthread_mutex_lock(&gate);
    holding = 1;
    pthread_cond_broadcast(&gate_cond);
    while (!release_it) {
        pthread_cond_wait(&gate_cond, &gate);
    }
    pthread_mutex_unlock(&gate);
    pthread_mutex_unlock(&forked_sp.lock);
    return NULL;
}

static void
test_a_fork_does_not_wait_for_a_lock_held_at_the_fork(void)
{
    ymo_spares_init(&forked_sp, 4096, 4);
    ymo_bucket_t *before = ymo_bucket_new_from(&forked_sp, 4096);
    ymo_bucket_t *kept = ymo_bucket_new_from(&forked_sp, 4096);
    ymo_bucket_free(kept);          /* one spare in the set at the fork */
    pthread_t t;
    if (pthread_create(&t, NULL, holder, NULL) != 0) {
        CHECK(!"pthread_create");
        return;
    }
    pthread_mutex_lock(&gate);
    while (!holding) {
        pthread_cond_wait(&gate_cond, &gate);
    }
    pthread_mutex_unlock(&gate);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* The child: the holder is gone, its lock stays held. */
        ymo_fork_gen++;
        alarm(5);                   /* a wait for the lock ends here */
        ymo_bucket_t *b = ymo_bucket_new_from(&forked_sp, 4096);
        int ok = b != NULL && b->spares == NULL && b->cap == 4096;
        ymo_bucket_free(b);
        ymo_bucket_free(before);    /* a spare of the parent's */
        ymo_spares_drain(&forked_sp);
        _exit(ok ? 0 : 3);
    }
    CHECK(pid > 0);
    int status = 0;
    if (pid > 0) {
        waitpid(pid, &status, 0);
        if (WIFSIGNALED(status)) {
            fprintf(stderr, "the child died of signal %d (SIGALRM: it "
                    "waited for the lock)\n", WTERMSIG(status));
        }
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    pthread_mutex_lock(&gate);
    release_it = 1;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate);
    pthread_join(t, NULL);
    /* The parent goes on using the set. */
    ymo_bucket_free(before);
    CHECK(count(&forked_sp) == 2);
    ymo_spares_drain(&forked_sp);
}

int
main(void)
{
    test_reuse_resets_the_bucket();
    test_other_sizes_are_not_spares();
    test_no_more_than_max_are_kept();
    test_a_bucket_back_after_the_drain_is_freed();
    test_a_fork_does_not_wait_for_a_lock_held_at_the_fork();
    printf("spares: %d passed, %d failed\n", passed, failed);
    return failed != 0;
}
