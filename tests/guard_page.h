/* The guard page shared by the C table tests (tests/parser, tests/proxy):
 * every input is copied so that its last byte sits right before a
 * PROT_NONE page, so a parser that reads one byte past its input faults
 * at once (and AddressSanitizer, which the tests run under, names the
 * line), whatever the input's length. Single-threaded test programs only:
 * the region is one static buffer. */
#ifndef YMO_TESTS_GUARD_PAGE_H
#define YMO_TESTS_GUARD_PAGE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static char *guard_region;      /* readable bytes, then one PROT_NONE page */
static size_t guard_region_size;

/* Once, before any place(): room for inputs up to max_input bytes. */
static void
guard_init(size_t max_input)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *m;

    guard_region_size = (max_input + page - 1) / page * page + page;
    m = mmap(NULL, guard_region_size + page, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED
        || mprotect(m + guard_region_size, page, PROT_NONE)) {
        perror("mmap");
        exit(2);
    }
    guard_region = m;
}

/* Copy n bytes so that they end right before the guard page; the copy
 * stays valid until the next place(). */
static const char *
place(const char *src, size_t n)
{
    char *dst = guard_region + guard_region_size - n;

    if (n > guard_region_size) {
        fprintf(stderr, "input too large for the guard region\n");
        exit(2);
    }
    if (n) {
        memcpy(dst, src, n);
    }
    return dst;
}

#endif
