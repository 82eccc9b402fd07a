/* alloc.h - the allocation calls of yimmo's C code, and the allocation
 * fault injector behind them in builds with YMO_FAULT_INJECTION
 * (setup.py: YIMMO_FAULT_INJECTION=1). Plain C: no Python here.
 *
 * In an ordinary build ymo_malloc/ymo_calloc/ymo_realloc are exactly
 * malloc/calloc/realloc and the YMO_SITE_* macros expand to nothing, so
 * neither a call nor a signature changes.
 *
 * With YMO_FAULT_INJECTION each call site gets a static site record of its
 * own, placed (by pointer) in the ELF section "ymo_alloc_sites", so every
 * site compiled in can be listed without a hand-kept table. A helper that
 * allocates for its callers (ymo_bucket_new, ymo_http_error_bucket, ...)
 * takes the caller's site as a hidden last argument (YMO_SITE_PARAM,
 * filled in by a macro of the helper's own name with YMO_SITE_HERE), so a
 * bucket for a "100 Continue" on the loop thread, one for a response body
 * on a worker and one for an error response are three sites, each of which
 * a test can make fail. Failing "allocations" that are not malloc calls
 * (pthread_mutex_init, pthread_cond_init) are sites too: YMO_FI_FAIL().  */
#ifndef YMO_ALLOC_H
#define YMO_ALLOC_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ymo_zalloc(n): one zeroed object of n bytes, for the allocations made
 * once per request (a connection's busy part, an exchange). It is malloc
 * and memset rather than calloc: glibc's calloc (2.36, Debian 12) skips
 * the thread's cache of freed chunks (tcache) that malloc tries first, and
 * costs about 300 instructions more a call (bench/README.md). n is
 * evaluated twice: a sizeof expression, never one with side effects. */
static inline void *
ymo_zero_(void *p, size_t n)
{
    if (p != NULL) {
        /* Hide p's origin from the compiler, which would otherwise turn
         * malloc and memset back into calloc (GCC does at -O2). */
        __asm__("" : "+r"(p));
        memset(p, 0, n);
    }
    return p;
}

/* Memory kept for reuse instead of freed (spare buckets, busy parts,
 * exchanges): under AddressSanitizer it is poisoned while kept, so a use
 * after its "free" is still reported. */
#if defined(__SANITIZE_ADDRESS__)
#define YMO_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define YMO_ASAN 1
#endif
#endif
#ifdef YMO_ASAN
#include <sanitizer/asan_interface.h>
#define YMO_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define YMO_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define YMO_POISON(p, n) ((void)(p), (void)(n))
#define YMO_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* Blocks of one size kept for reuse instead of freed, linked through
 * their first bytes (a pointer's worth, left unpoisoned). No lock: the
 * owner's (a thread of its own, or a lock around each call). */
typedef struct ymo_kept {
    void *head;
    size_t count;
} ymo_kept_t;

/* A kept block of `size` bytes (its contents as they were), or NULL. */
static inline void *
ymo_kept_take(ymo_kept_t *k, size_t size)
{
    void *p = k->head;
    if (p != NULL) {
        YMO_UNPOISON(p, size);
        k->head = *(void **)p;
        k->count--;
    }
    return p;
}

/* Keep p (size bytes) unless `max` are kept already: 1 if kept. */
static inline int
ymo_kept_put(ymo_kept_t *k, void *p, size_t size, size_t max)
{
    if (k->count >= max) {
        return 0;
    }
    *(void **)p = k->head;
    k->head = p;
    k->count++;
    YMO_POISON((char *)p + sizeof(void *), size - sizeof(void *));
    return 1;
}

/* Free every kept block. */
static inline void
ymo_kept_free(ymo_kept_t *k, size_t size)
{
    void *p;
    while ((p = ymo_kept_take(k, size)) != NULL) {
        free(p);
    }
}

#ifdef YMO_FAULT_INJECTION

#include <stdatomic.h>

/* One call site. The counters are updated from the loop thread and from
 * the workers at once, hence atomics; the arming fields are written by the
 * controller (a test, under the GIL) and read by every allocating thread:
 * relaxed order is enough, as a test arms before it drives traffic, and a
 * check racing with a re-arm may go either way without harm. */
typedef struct ymo_alloc_site {
    const char *file;
    int line;
    const char *func;
    const char *what;              /* what is allocated, for people */
    atomic_ulong reached;          /* checks at this site since reset */
    atomic_ulong failed;           /* of which failed on purpose */
    atomic_ulong fail_from;        /* fail checks number fail_from ..
                                    * fail_from + fail_count - 1 (counted
                                    * in `reached`); 0: not armed */
    atomic_ulong fail_count;
} ymo_alloc_site_t;

/* A new site record for this spot in the code. Its pointer goes to the
 * "ymo_alloc_sites" section; `used` keeps both from being dropped, even
 * where the compiler proves the call unreachable, so the list of sites is
 * the same at every optimisation level. */
#define YMO_ALLOC_SITE(what_)                                              \
    ({                                                                     \
        static ymo_alloc_site_t ymo_site_rec_ = {                          \
            __FILE__, __LINE__, __func__, (what_), 0, 0, 0, 0};            \
        static ymo_alloc_site_t *const ymo_site_ptr_                       \
            __attribute__((section("ymo_alloc_sites"), used)) =            \
                &ymo_site_rec_;                                            \
        (void)ymo_site_ptr_;                                               \
        &ymo_site_rec_;                                                    \
    })

/* Hidden site argument of an allocating helper: its parameter, a caller's
 * fresh site, and the helper passing its own caller's site on. */
#define YMO_SITE_PARAM , ymo_alloc_site_t *ymo_site
#define YMO_SITE_HERE(what_) , YMO_ALLOC_SITE(what_)
#define YMO_SITE_FWD , ymo_site

/* Should the allocation at `site` fail now? Counts the check. */
int ymo_fi_fail(ymo_alloc_site_t *site);

void *ymo_fi_malloc(size_t n, ymo_alloc_site_t *site);
void *ymo_fi_calloc(size_t k, size_t n, ymo_alloc_site_t *site);
void *ymo_fi_realloc(void *p, size_t n, ymo_alloc_site_t *site);

#define ymo_malloc(n) ymo_fi_malloc((n), YMO_ALLOC_SITE(#n))
#define ymo_calloc(k, n) ymo_fi_calloc((k), (n), YMO_ALLOC_SITE(#n))
#define ymo_realloc(p, n) ymo_fi_realloc((p), (n), YMO_ALLOC_SITE(#n))
#define ymo_zalloc(n) ymo_zero_(ymo_fi_malloc((n), YMO_ALLOC_SITE(#n)), (n))
/* Inside a helper declared with YMO_SITE_PARAM: allocate as its caller. */
#define ymo_malloc_fwd(n) ymo_fi_malloc((n), ymo_site)
/* A non-malloc resource whose creation can fail (a mutex, a condition
 * variable): true when the injector says this one fails. */
#define YMO_FI_FAIL(what_) ymo_fi_fail(YMO_ALLOC_SITE(what_))

/* -- Control (any thread; the Python binding calls these under the GIL).
 * Counting is global: arming applies to allocations on every thread. -- */

/* The sites compiled in, in section order; *n gets their number. */
ymo_alloc_site_t *const *ymo_fi_sites(size_t *n);

/* Zero every counter and disarm everything. */
void ymo_fi_reset(void);

/* Fail the nth check from now, counting every site (0 disarms). */
void ymo_fi_arm_nth(unsigned long nth);

/* Fail the kth to (k + count - 1)th check at `site` from now (k >= 1). */
void ymo_fi_arm_site(ymo_alloc_site_t *site, unsigned long k,
                     unsigned long count);

/* Fail each check with probability p (0 disarms), reproducibly for one
 * sequence of checks: the decision for the ith check overall is a hash of
 * (seed, i). */
void ymo_fi_arm_random(double p, unsigned long long seed);

/* Checks and failures at every site since the last reset. */
void ymo_fi_totals(unsigned long *checks, unsigned long *failures);

/* Arm from a string such as YIMMO_FAULT_ALLOC's (see alloc.c); 0, or -1
 * when it does not parse. */
int ymo_fi_configure(const char *spec);

#else /* !YMO_FAULT_INJECTION */

#define YMO_SITE_PARAM
#define YMO_SITE_HERE(what_)
#define YMO_SITE_FWD
#define ymo_malloc(n) malloc(n)
#define ymo_calloc(k, n) calloc((k), (n))
#define ymo_realloc(p, n) realloc((p), (n))
#define ymo_zalloc(n) ymo_zero_(malloc(n), (n))
#define ymo_malloc_fwd(n) malloc(n)
#define YMO_FI_FAIL(what_) 0

#endif /* YMO_FAULT_INJECTION */

#endif /* YMO_ALLOC_H */
