/* alloc.c - the allocation fault injector (see alloc.h), compiled only
 * with YMO_FAULT_INJECTION: which check fails, and the counters a test
 * reads to know which failure paths it reached. Plain C, lock-free: the
 * loop thread and every worker allocate concurrently.                   */
#include "alloc.h"

#ifdef YMO_FAULT_INJECTION

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Bounds of the section the YMO_ALLOC_SITE records' pointers are placed
 * in, provided by the linker because the section name is a C identifier.
 * Hidden: they must resolve inside this extension, not in another one
 * built the same way. */
extern ymo_alloc_site_t *const __start_ymo_alloc_sites[]
    __attribute__((visibility("hidden")));
extern ymo_alloc_site_t *const __stop_ymo_alloc_sites[]
    __attribute__((visibility("hidden")));

/* Every check counted, whatever its site: "the nth allocation" and the
 * random decisions are numbered by it. Any thread. */
static atomic_ulong checks;
static atomic_ulong failures;
/* The check number (in `checks`) that fails; 0: none. Any thread reads,
 * the controller writes. */
static atomic_ulong nth_target;
/* Random mode: a check fails when its hash is below the threshold
 * (p * 2^64); 0: off. Relaxed: see alloc.h on arming. */
static _Atomic uint64_t random_threshold;
static _Atomic uint64_t random_seed;

/* splitmix64's finaliser: a well-mixed hash of the check number, so the
 * decisions need no shared generator state (no lock, no CAS loop). */
static uint64_t
mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int
ymo_fi_fail(ymo_alloc_site_t *site)
{
    unsigned long i = atomic_fetch_add_explicit(&checks, 1,
                                                memory_order_relaxed) + 1;
    unsigned long h = atomic_fetch_add_explicit(&site->reached, 1,
                                                memory_order_relaxed) + 1;
    int fail = 0;
    unsigned long nth = atomic_load_explicit(&nth_target,
                                             memory_order_relaxed);
    if (nth != 0 && i == nth) {
        fail = 1;
    }
    unsigned long from = atomic_load_explicit(&site->fail_from,
                                              memory_order_relaxed);
    if (from != 0 && h >= from &&
        h - from < atomic_load_explicit(&site->fail_count,
                                        memory_order_relaxed)) {
        fail = 1;
    }
    uint64_t thr = atomic_load_explicit(&random_threshold,
                                        memory_order_relaxed);
    if (thr != 0 &&
        mix(atomic_load_explicit(&random_seed, memory_order_relaxed) ^
            mix((uint64_t)i)) < thr) {
        fail = 1;
    }
    if (fail) {
        atomic_fetch_add_explicit(&site->failed, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&failures, 1, memory_order_relaxed);
    }
    return fail;
}

void *
ymo_fi_malloc(size_t n, ymo_alloc_site_t *site)
{
    return ymo_fi_fail(site) ? NULL : malloc(n);
}

void *
ymo_fi_calloc(size_t k, size_t n, ymo_alloc_site_t *site)
{
    return ymo_fi_fail(site) ? NULL : calloc(k, n);
}

void *
ymo_fi_realloc(void *p, size_t n, ymo_alloc_site_t *site)
{
    /* Like a real failed realloc: p is left as it was. */
    return ymo_fi_fail(site) ? NULL : realloc(p, n);
}

ymo_alloc_site_t *const *
ymo_fi_sites(size_t *n)
{
    *n = (size_t)(__stop_ymo_alloc_sites - __start_ymo_alloc_sites);
    return __start_ymo_alloc_sites;
}

void
ymo_fi_reset(void)
{
    size_t n;
    ymo_alloc_site_t *const *sites = ymo_fi_sites(&n);
    atomic_store(&nth_target, 0);
    atomic_store(&random_threshold, 0);
    for (size_t i = 0; i < n; i++) {
        atomic_store(&sites[i]->fail_from, 0);
        atomic_store(&sites[i]->fail_count, 0);
        atomic_store(&sites[i]->reached, 0);
        atomic_store(&sites[i]->failed, 0);
    }
    atomic_store(&checks, 0);
    atomic_store(&failures, 0);
}

void
ymo_fi_arm_nth(unsigned long nth)
{
    atomic_store(&nth_target, nth == 0 ? 0 : atomic_load(&checks) + nth);
}

void
ymo_fi_arm_site(ymo_alloc_site_t *site, unsigned long k,
                unsigned long count)
{
    /* The count first: a check that sees the new fail_from must not use
     * an old count. */
    atomic_store(&site->fail_count, count);
    atomic_store(&site->fail_from,
                 k == 0 || count == 0 ? 0 : atomic_load(&site->reached) + k);
}

void
ymo_fi_arm_random(double p, unsigned long long seed)
{
    uint64_t thr;
    if (!(p > 0)) {
        thr = 0;
    }
    else if (p >= 1) {
        thr = UINT64_MAX;
    }
    else {
        thr = (uint64_t)(p * 18446744073709551616.0);
    }
    atomic_store(&random_seed, (uint64_t)seed);
    atomic_store(&random_threshold, thr);
}

void
ymo_fi_totals(unsigned long *n_checks, unsigned long *n_failures)
{
    *n_checks = atomic_load(&checks);
    *n_failures = atomic_load(&failures);
}

/* A site named "file:line" (file as compiled, or its last component). */
static ymo_alloc_site_t *
find_site(const char *name, size_t len)
{
    size_t n;
    ymo_alloc_site_t *const *sites = ymo_fi_sites(&n);
    for (size_t i = 0; i < n; i++) {
        const char *file = sites[i]->file;
        const char *slash = strrchr(file, '/');
        char buf[256];
        int k = snprintf(buf, sizeof(buf), "%s:%d",
                         slash != NULL ? slash + 1 : file, sites[i]->line);
        if (k > 0 && (size_t)k == len && memcmp(buf, name, len) == 0) {
            return sites[i];
        }
        k = snprintf(buf, sizeof(buf), "%s:%d", file, sites[i]->line);
        if (k > 0 && (size_t)k == len && memcmp(buf, name, len) == 0) {
            return sites[i];
        }
    }
    return NULL;
}

/* spec: items separated by ',' or ' ':
 *     nth=N                      fail the Nth check from now
 *     site=FILE:LINE[@K[+COUNT]] fail the Kth (default 1st) check at that
 *                                site, and COUNT-1 more after it
 *     random=P[@SEED]            fail each check with probability P
 * For a server in a subprocess (YIMMO_FAULT_ALLOC). */
int
ymo_fi_configure(const char *spec)
{
    const char *p = spec;
    while (*p != '\0') {
        while (*p == ',' || *p == ' ') {
            p++;
        }
        if (*p == '\0') {
            break;
        }
        size_t len = strcspn(p, ", ");
        char item[300];
        if (len >= sizeof(item)) {
            return -1;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        p += len;
        char *end;
        if (strncmp(item, "nth=", 4) == 0) {
            unsigned long nth = strtoul(item + 4, &end, 10);
            if (*end != '\0') {
                return -1;
            }
            ymo_fi_arm_nth(nth);
        }
        else if (strncmp(item, "site=", 5) == 0) {
            char *name = item + 5;
            char *at = strchr(name, '@');
            unsigned long k = 1, count = 1;
            if (at != NULL) {
                *at = '\0';
                k = strtoul(at + 1, &end, 10);
                if (*end == '+') {
                    count = strtoul(end + 1, &end, 10);
                }
                if (*end != '\0') {
                    return -1;
                }
            }
            ymo_alloc_site_t *site = find_site(name, strlen(name));
            if (site == NULL) {
                return -1;
            }
            ymo_fi_arm_site(site, k, count);
        }
        else if (strncmp(item, "random=", 7) == 0) {
            double prob = strtod(item + 7, &end);
            unsigned long long seed = 0;
            if (*end == '@') {
                seed = strtoull(end + 1, &end, 10);
            }
            if (*end != '\0') {
                return -1;
            }
            ymo_fi_arm_random(prob, seed);
        }
        else {
            return -1;
        }
    }
    return 0;
}

#else

/* ISO C wants a translation unit to declare something. */
typedef int ymo_alloc_unused_t;

#endif /* YMO_FAULT_INJECTION */
